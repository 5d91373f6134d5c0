"""Errors in what the user gave, and how the commands print them.

:class:`UserError` marks an error the project raises for the user: an option out of its range, a row that is not
what the DataModule reads, a path that does not exist, a model that cannot be loaded, a missing optional package.
Its message says where (the option, the file and row, the field), what was expected, and the fix. Each subclass
is also the built-in type such an error has in Python (an :class:`OptionError` is a ``ValueError``, a
:class:`PathNotFound` a ``FileNotFoundError``), so code that catches those still does.

The commands (every recipe, ``evaluate``, ``generate``, ``plot``, ``lit-align``) run their ``main`` through
:func:`command`, under :func:`reported`: a user error is
printed as its message alone (``error: ...``) and the command exits with status 1; ``LIT_ALIGN_DEBUG=1`` prints
the traceback as well. Any other exception is a bug or a broken environment and keeps its traceback. A
Ctrl-C outside training (training has its own stop, :mod:`lit_align.callbacks.preemption`) exits with 130 and no
traceback. Rows are numbered from 1 in every message (:func:`row_label`): the first row of a file is row 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DEBUG_VARIABLE = "LIT_ALIGN_DEBUG"


class UserError(Exception):
    """An error in what the user gave; its message is the whole report (see the module docstring)."""


class OptionError(UserError, ValueError):
    """An option (``--model.*``, ``--data.*``, a command's flag, a keyword in Python) with a value it cannot take."""


class KeywordError(UserError, TypeError):
    """A keyword argument a module or DataModule does not take (the message names the right spelling)."""


class DataError(UserError, ValueError):
    """A row, field or file of the user's data is not what the DataModule reads; the message says where and why."""


class PathNotFound(UserError, FileNotFoundError):
    """A file or folder the user named (data, checkpoint, model, run) does not exist, or is not the kind named."""


class PathExists(UserError, FileExistsError):
    """A file a run would write exists from an earlier run (the message says which folder to use instead)."""


class ModelFileError(UserError, ValueError):
    """A model file is not what its name says (a cut download, a GGUF header that does not parse, ...)."""


class ModelSourceError(UserError, OSError):
    """A model named by the user cannot be loaded: not a preset, a folder, a file or a reachable hub id."""


class MissingExtra(UserError, ModuleNotFoundError):
    """An optional package an option needs is not installed; the message names the ``pip install``."""


def row_label(index: int) -> str:
    """``row 3 (1-based)`` for the row at 0-based ``index``: every message counts rows from 1."""
    return f"row {index + 1} (1-based)"


def debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


@contextmanager
def reported(command: str) -> Iterator[None]:
    """Run a command's body: a :class:`UserError` prints ``error: <message>`` to stderr and exits 1 (the traceback
    too under ``LIT_ALIGN_DEBUG=1``); a ``KeyboardInterrupt`` prints that the command stopped and exits 130."""
    try:
        yield
    except UserError as err:
        if debug():
            raise
        sys.stderr.write(f"{command}: error: {err}\n  (set {DEBUG_VARIABLE}=1 to see where it was raised)\n")
        sys.exit(1)
    except KeyboardInterrupt:
        if debug():
            raise
        sys.stderr.write(f"\n{command}: interrupted (Ctrl-C)\n")
        sys.exit(130)


_COMMAND: list[str | None] = [None]  # the name :func:`command` runs under (``lit-align dpo``), for messages


def command(main: Callable[[], object], name: str | None = None) -> None:
    """Run a command's ``main()`` as a user runs it: under :func:`reported`, named as it was called (``lit-align dpo``,
    or the script's name: ``dpo.py``)."""
    _COMMAND[0] = name
    with reported(name or program()):
        main()


def command_name() -> str | None:
    """The name the running command was given by the ``lit-align`` command (``lit-align dpo``), else ``None``."""
    return _COMMAND[0]


def program() -> str:
    """How the running command names itself in usage lines: ``lit-align dpo``, else the script's file name."""
    return _COMMAND[0] or (Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "lit-align")
