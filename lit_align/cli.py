"""The LightningCLI every recipe runs: model and DataModule classes, a default YAML, the tokenizer link.

``--help`` is compact: one line per option (its description's first sentence and a short default), so
that the whole list fits a screen or two; the full descriptions are the classes' docstrings (``Args:``)
and the docs pages, and ``--print_config`` shows every resolved value.
"""

from __future__ import annotations

import re
from argparse import SUPPRESS, Action
from pathlib import Path

import lightning as L
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningCLI

DESCRIPTION_CHARS = 100  # a description longer than this is cut at a word boundary (…)
DEFAULT_CHARS = 28  # a longer default (a list of callbacks, a logger's init args) is not printed
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bal)(?<!\bvs)\.\s+(?=[A-Z(`])")
_ROLE = re.compile(r":\w+:`~?([^`]+)`")


def one_line(text: str) -> str:
    """The first sentence of ``text``, Sphinx markup removed, at most ``DESCRIPTION_CHARS`` characters."""
    text = " ".join(text.split())
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text).replace("``", "")
    text = _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(".")
    if len(text) > DESCRIPTION_CHARS:
        text = text[:DESCRIPTION_CHARS].rsplit(" ", 1)[0] + "…"
    return text


class CompactHelpFormatter(DefaultHelpFormatter):
    """One line per option: ``--group.name METAVAR  first sentence [default]``; a short usage line."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 60, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, width=200)

    def _format_usage(self, usage, actions, groups, prefix) -> str:
        if prefix == "":  # a subcommand's prog is built from its parent's usage: keep it to the program name
            return self._prog
        return f"usage: {self._prog} [-h] [-c CONFIG] [--print_config] [--<group>.<option> VALUE ...]\n\n"

    def _get_help_string(self, action: Action) -> str:
        text = one_line(action.help or "").replace("%", "%%")
        default = action.default
        if action.option_strings and default is not SUPPRESS and not _is_help(action):
            shown = "null" if default is None else str(default)
            if len(shown) <= DEFAULT_CHARS:
                text += f" [{shown.replace('%', '%%')}]"
        return text

    def _format_action_invocation(self, action: Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._metavar_formatter(action, self._get_default_metavar_for_optional(action))(1)[0]
        if len(metavar) > 24:  # a long choice list: the choices are in the description's type anyway
            metavar = self._get_default_metavar_for_optional(action)
        long_option = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        return f"{long_option} {metavar}"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return [text]


def _is_help(action: Action) -> bool:
    return type(action).__name__ in ("_HelpAction", "ActionConfigFile", "_ActionPrintConfig")


class AlignCLI(LightningCLI):
    """LightningCLI that feeds the policy's name to the DataModule as its tokenizer."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.policy", "data.tokenizer")


def run(
    model_class: type[L.LightningModule],
    datamodule_class: type[L.LightningDataModule],
    default_config: str | Path,
    args: list[str] | None = None,
) -> AlignCLI:
    """Run a recipe: ``python recipes/<algo>.py fit [--config extra.yaml] [--model.beta 0.2 ...]``.

    ``default_config`` is layered first (for ``fit``, ``validate``, ``test``); ``--config`` and
    flags override it. Saving the resolved config overwrites an earlier one in the same log dir.
    The optimizer and scheduler are the module's own options (AdamW; ``--model.learning_rate``,
    ``--model.scheduler``, ...), so LightningCLI's ``--optimizer``/``--lr_scheduler`` are not offered.
    """
    default = [str(default_config)]
    compact = {"formatter_class": CompactHelpFormatter}
    parser_kwargs = {cmd: {"default_config_files": default, **compact} for cmd in ("fit", "validate", "test")}
    return AlignCLI(
        model_class,
        datamodule_class,
        args=args,  # None: LightningCLI reads sys.argv
        parser_kwargs={**parser_kwargs, **compact},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
