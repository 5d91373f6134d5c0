"""The LightningCLI every recipe runs: model and DataModule classes, a default YAML, the tokenizer link.

``--help`` is compact: one line per option (its description's first sentence and a short default), so
that the whole list fits a screen or two; the full descriptions are the classes' docstrings (``Args:``)
and the docs pages, and ``--print_config`` shows every resolved value.

Every input that can be checked without weights is checked before the model is built
(:meth:`AlignCLI.check_inputs_before_model`): ``--ckpt_path``, the DataModule's options and data (read,
validated and tokenized), and the model's bindings to that data (reward functions called on its first rows).
"""

from __future__ import annotations

import difflib
import re
import sys
from argparse import SUPPRESS, Action
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_align.console import ConsoleSummary, quiet

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


NOT_OFFERED = {
    "--optimizer": "lit-align's modules build AdamW themselves: set --model.learning_rate and --model.weight_decay",
    "--lr_scheduler": "lit-align's modules build the schedule themselves: set --model.scheduler (constant, linear, "
    "cosine) and --model.warmup_ratio",
}


def option_strings(parser: Any) -> set[str]:
    """Every ``--option`` of ``parser`` and of its subcommands' parsers."""
    names: set[str] = set()
    for action in parser._actions:
        names.update(o for o in action.option_strings if o.startswith("--"))
        for sub in (getattr(action, "choices", None) or {}).values() if isinstance(action.choices, dict) else ():
            if hasattr(sub, "_actions"):
                names |= option_strings(sub)
    return names


def hint(message: str, options: set[str]) -> str:
    """``message`` plus, for each unrecognized ``--option`` in it, why it is not offered or the nearest option."""
    if "unrecognized arguments" not in message.lower():
        return message
    notes = []
    for token in re.findall(r"--[\w.]+", message):
        if token in NOT_OFFERED:
            notes.append(f"{token} is not offered: {NOT_OFFERED[token]}")
            continue
        close = difflib.get_close_matches(token, sorted(options), n=1, cutoff=0.6)
        if close:
            notes.append(f"{token}: did you mean {close[0]}?")
    return message + "".join(f"\n  {note}" for note in notes)


class AlignArgumentParser(LightningArgumentParser):
    """Parse errors say which option was probably meant (difflib over every option, subcommands included)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        root = self
        while getattr(root, "parent_parser", None) is not None:
            root = root.parent_parser
        super().error(hint(message, option_strings(root) | option_strings(self)), ex)


STAGES = {"fit": "fit", "validate": "validate"}  # the subcommands offered
LIGHTNING_CKPT_NAMES = ("best", "last", "hpc")  # ckpt_path values Lightning resolves itself


class AlignCLI(LightningCLI):
    """LightningCLI that feeds the policy's name to the DataModule as its tokenizer, offers ``fit`` and ``validate``
    (evaluation and generation have their own commands), checks every input before it builds the model
    (:meth:`check_inputs_before_model`) and resumes a run into its own log version."""

    prepared_datamodule: L.LightningDataModule | None = None

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.policy", "data.tokenizer")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> L.Trainer:
        """Every run prints plain progress lines where no terminal watches, validation results and a summary
        (:class:`~lit_align.console.ConsoleSummary`); without a terminal the progress bar is off."""
        if not any(isinstance(c, ConsoleSummary) for c in [*callbacks, *(config.get("callbacks") or [])]):
            callbacks = [*callbacks, ConsoleSummary()]
        if config.get("enable_progress_bar") is None and not sys.stdout.isatty():
            config = {**config, "enable_progress_bar": False}
        return super()._instantiate_trainer(config, callbacks)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        offered = ("fit", "validate")  # test/predict would need steps the modules do not define: not offered
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in offered}

    def before_instantiate_classes(self) -> None:
        """``fit --ckpt_path runs/<algo>/version_N/checkpoints/x.ckpt`` logs into version_N again, from the
        checkpoint's step on (TensorBoard's ``purge_step`` drops what the killed run logged after it), so a
        resumed run continues its own curves instead of starting version_N+1."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is None or not config.get("ckpt_path"):
            return
        resume_into_own_version(config)

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        self.prepared_datamodule = self.check_inputs_before_model()

    def _parse_ckpt_path(self) -> None:
        """LightningCLI applies a ``--ckpt_path`` checkpoint's hyperparameters to the config; those of an earlier
        lit-align version are upgraded first (its flat sampling and reward options nested into their groups, options
        this module class no longer offers dropped: :func:`~lit_align.hparams.upgrade_hyperparameters`)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file() and not self.subclass_mode_model:
            from lit_align.hparams import accepted_options, upgrade_hyperparameters

            checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
            hparams = dict(checkpoint.get("hyper_parameters") or {})
            hparams.pop("_instantiator", None)
            if hparams:
                hparams = upgrade_hyperparameters(hparams, accepted_options(self.model_class))
                try:
                    self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
                except SystemExit:
                    sys.stderr.write(f"Parsing of the hyperparameters of --ckpt_path {ckpt_path} failed!\n")
                    raise
            return
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self.prepared_datamodule is not None:  # the run uses the DataModule already set up, not a fresh copy
            self.datamodule = self.config_init[self.subcommand]["data"] = self.prepared_datamodule

    def check_inputs_before_model(self) -> L.LightningDataModule | None:
        """Check, before any weights load and cheapest first: that ``--ckpt_path`` is a checkpoint loadable with
        ``weights_only=True``; the DataModule's options (its constructor) and its data (``setup``: files read, rows
        validated and tokenized, counts logged); and the model class's bindings to that data (``check_data``, e.g.
        the reward functions called on the first rows). Returns the set-up DataModule, which the run then uses.
        The module's own options are checked by its constructor before it loads weights."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        check_checkpoint(config.get("ckpt_path"))
        if subcommand not in STAGES or self.datamodule_class is None or self.subclass_mode_data:
            return None
        datamodule = self.datamodule_class(**config["data"].as_dict())
        datamodule.setup(STAGES[subcommand])
        check_data = getattr(self.model_class, "check_data", None)
        if check_data is not None and not self.subclass_mode_model:
            check_data(datamodule, config["model"].as_dict())
        return datamodule



def check_checkpoint(path: str | None) -> None:
    """Refuse a ``--ckpt_path`` that is not a checkpoint this project can load safely (``weights_only=True``),
    naming the file; never advise unsafe loading. Memory-mapped: the weights are not read."""
    if not path or path in LIGHTNING_CKPT_NAMES or str(path).startswith("registry"):
        return
    file = Path(path)
    if file.is_dir():
        return  # a distributed (DCP) checkpoint folder: Lightning's loader checks its layout
    if not file.is_file():
        raise FileNotFoundError(f"--ckpt_path {path}: no such file (resolved to {file.resolve()})")
    advice = "give a .ckpt written by a lit-align run (runs/<algo>/version_N/checkpoints/last.ckpt)"
    try:
        checkpoint: Any = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(
            f"--ckpt_path {file}: not a checkpoint that loads safely ({_load_failure(err)}); {advice}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(
            f"--ckpt_path {file}: a PyTorch file, but not a Lightning checkpoint (no 'state_dict'); {advice}"
        )


def _load_failure(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to load it unsafely."""
    text = str(err)
    blocked = re.search(r"(?:unsupported|Unsupported) (?:global|GLOBAL):? ?(?:GLOBAL )?([\w.]+)", text)
    if blocked:
        return f"it would run code ({blocked.group(1)}), which is refused"
    if "mmap can only be used" in text or "invalid load key" in text or "zip archive" in text:
        return "not a PyTorch checkpoint file"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first if "weights_only" not in first else "its contents are not plain tensors and containers"


def run(
    model_class: type[L.LightningModule],
    datamodule_class: type[L.LightningDataModule],
    default_config: str | Path,
    args: list[str] | None = None,
) -> AlignCLI:
    """Run a recipe: ``python recipes/<algo>.py fit [--config extra.yaml] [--model.beta 0.2 ...]``.

    ``default_config`` is layered first (for ``fit`` and ``validate``); ``--config`` and
    flags override it. Saving the resolved config overwrites an earlier one in the same log dir.
    The optimizer and scheduler are the module's own options (AdamW; ``--model.learning_rate``,
    ``--model.scheduler``, ...), so LightningCLI's ``--optimizer``/``--lr_scheduler`` are not offered.
    """
    quiet()
    default = [str(default_config)]
    compact = {"formatter_class": CompactHelpFormatter}
    parser_kwargs = {cmd: {"default_config_files": default, **compact} for cmd in ("fit", "validate")}
    return AlignCLI(
        model_class,
        datamodule_class,
        args=args,  # None: LightningCLI reads sys.argv
        parser_kwargs={**parser_kwargs, **compact},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_class=AlignArgumentParser,
    )


def resume_into_own_version(config: Any) -> None:
    """Point a TensorBoardLogger at the version directory that holds ``config.ckpt_path``, purging later steps."""
    ckpt = Path(str(config.ckpt_path)).resolve()
    if ckpt.parent.name != "checkpoints" or not ckpt.parent.parent.name.startswith("version_"):
        return
    logger = config.get("trainer", {}).get("logger")
    if not logger or not str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        return
    init = logger.init_args
    run_dir = ckpt.parent.parent
    expected = (Path(str(init.get("save_dir") or ".")) / str(init.get("name") or "lightning_logs")).resolve()
    if run_dir.parent != expected or init.get("version") is not None:
        return  # a checkpoint of another run, or a version set on purpose
    init.version = run_dir.name
    meta = ckpt / "meta.pt" if ckpt.is_dir() else ckpt  # a sharded (DCP) checkpoint keeps its step in meta.pt
    try:
        init.purge_step = int(torch.load(meta, map_location="cpu", weights_only=True)["global_step"])
    except (OSError, KeyError, RuntimeError, ValueError):  # unreadable: keep every logged step (Lightning will fail)
        pass


def recipe_names() -> list[str]:
    """The recipes installed in ``lit_align.recipes`` (the repository's ``recipes/`` folder)."""
    import importlib.resources

    folder = importlib.resources.files("lit_align.recipes")
    return sorted(p.name[:-3] for p in folder.iterdir() if p.name.endswith(".py") and not p.name.startswith("_"))


def main(argv: list[str] | None = None) -> None:
    """The ``lit-align`` command: ``lit-align <recipe> [fit|validate] [--config ...] [--model.* ...]``."""
    import importlib

    argv = sys.argv[1:] if argv is None else list(argv)
    names = recipe_names()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lit-align <recipe> ...   (then e.g. `lit-align dpo fit --help`)\n\nrecipes: " + ", ".join(names))
        return
    name = argv[0]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        sys.exit(f"lit-align: no recipe {name!r}.{suggestion} Recipes: {', '.join(names)}")
    # The recipe reads its arguments from sys.argv, named as typed: usage lines and tips then say `lit-align <name>`
    # (and LightningCLI does not warn about arguments given both ways).
    saved, sys.argv = sys.argv, [f"lit-align {name}", *argv[1:]]
    try:
        importlib.import_module(f"lit_align.recipes.{name}").main()
    finally:
        sys.argv = saved
