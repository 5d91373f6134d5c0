"""What the package ships, found by short names from any directory: the recipes, their configs, the demo data.

- A config by name: ``--config examples/grpo_guess_number`` (or ``tiny``, ``dpo``) is the shipped
  ``recipes/configs/examples/grpo_guess_number.yaml`` when no such file exists where the command runs
  (:func:`config_path`).
- A demo data file by name: a data path ``samples/<file>`` (or ``datamodules/samples/<file>``, the clone's
  spelling) that does not exist where the command runs is the shipped ``datamodules/samples/<file>``
  (:func:`data_path`). The shipped configs use ``samples/...``, so they run from any directory.

A local file of the same name always wins, and every fallback is said once in the log. Only the standard library
is imported here: ``lit-align --help`` lists the recipes without importing Lightning.
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

log = logging.getLogger(__name__)
SAMPLE_PREFIXES = ("samples/", "datamodules/samples/")  # how a data path names a shipped demo file


def _folder(package: str) -> Path:
    return Path(str(importlib.resources.files(package)))


def recipes_folder() -> Path:
    return _folder("lit_align.recipes")


def configs_folder() -> Path:
    return recipes_folder() / "configs"


def samples_folder() -> Path:
    return _folder("lit_align.datamodules") / "samples"


def recipe_names() -> list[str]:
    """The recipes installed in ``lit_align.recipes`` (the repository's ``recipes/`` folder)."""
    return sorted(p.stem for p in recipes_folder().glob("*.py") if not p.name.startswith("_"))


def config_names() -> list[str]:
    """The shipped configs by short name: ``dpo``, ``tiny``, ``examples/rlvr_gsm8k``, ..."""
    folder = configs_folder()
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def config_path(name: str) -> str:
    """``name`` as given when it is a file here; else the shipped config it names (``examples/grpo_guess_number``,
    with or without ``.yaml``); else ``name`` unchanged (the parser then says it is not found)."""
    if Path(name).expanduser().exists():
        return name
    stem = name.removesuffix(".yaml").removeprefix("recipes/configs/")
    shipped = configs_folder() / f"{stem}.yaml"
    if shipped.is_file():
        return str(shipped)
    return name


def expand_config_names(argv: list[str]) -> list[str]:
    """The command line with every ``--config NAME`` / ``-c NAME`` / ``--config=NAME`` that names a shipped config
    (and no file here) replaced by its path; a ``--config`` naming neither is refused with the shipped names."""
    out, expect_value = [], False
    for arg in argv:
        if expect_value:
            out.append(_config_value(arg))
            expect_value = False
        elif arg in ("--config", "-c"):
            out.append(arg)
            expect_value = True
        elif arg.startswith("--config="):
            out.append("--config=" + _config_value(arg.removeprefix("--config=")))
        else:
            out.append(arg)
    return out


def _config_value(value: str) -> str:
    path = config_path(value)
    if path == value and not Path(value).expanduser().exists() and not _inline(value):
        from lit_align.errors import PathNotFound

        raise PathNotFound(f"--config {value}: no such file (resolved to {Path(value).expanduser().resolve()}), and "
                           f"no shipped config of that name; shipped: {', '.join(config_names())}")  # fmt: skip
    return path


def _inline(value: str) -> bool:
    """Whether a ``--config`` value is the config itself (jsonargparse takes YAML or JSON text too)."""
    return "\n" in value or value.lstrip().startswith(("{", "["))


def data_path(path: str) -> str:
    """A data path as given when it exists here (or names no shipped sample); else the shipped sample it names."""
    if not path.startswith(SAMPLE_PREFIXES) or Path(path).exists():
        return path
    name = path.removeprefix("datamodules/").removeprefix("samples/")
    shipped = samples_folder() / name
    if not shipped.is_file():
        return path
    if path not in _SAID:
        _SAID.add(path)
        log.info("%s: no such file here; reading the shipped demo file %s", path, shipped)
    return str(shipped)


_SAID: set[str] = set()
