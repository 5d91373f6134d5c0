"""The LightningCLI every recipe runs: model and DataModule classes, a default YAML, the tokenizer link.

``--help`` is compact: one line per option (its description's first sentence, a closed set's values and a short
default), so that the whole list fits a screen or two; the full descriptions are the classes' docstrings (``Args:``)
and the docs pages, and ``--print_config`` shows every resolved value. A parse error says it in a line or two: the
nearest option for a mistyped flag, a closed set's values and the nearest for a bad value, the type for a value
that is not one. The function commands (``evaluate``, ``generate``, ``plot``) run through :func:`run_function`.

Every input that can be checked without weights is checked before the model is built
(:meth:`AlignCLI.check_inputs_before_model`): ``--ckpt_path``, the DataModule's options and data (read,
validated and tokenized), and the model's bindings to that data (reward functions called on its first rows).
"""

from __future__ import annotations

import difflib
import re
import sys
import textwrap
import warnings
from argparse import SUPPRESS, Action
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args, get_origin

import lightning as L
import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_align.callbacks.console import ConsoleSummary, StepProgressBar, quiet
from lit_align.callbacks.preemption import StopOnSignal
from lit_align.errors import OptionError, PathNotFound, command_name, program
from lit_align.shipped import expand_config_names

DESCRIPTION_CHARS = 100  # a description longer than this is cut at a word boundary (…)
DEFAULT_CHARS = 28  # a longer default (a list of callbacks, a logger's init args) is not printed
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bal)(?<!\bvs)\.\s+(?=[A-Z(`])")
_ROLE = re.compile(r":\w+:`~?([^`]+)`")


def plain(text: str) -> str:
    """``text`` with its Sphinx markup removed (``` ``x`` ``` -> ``x``, ``:class:`~a.B``` -> ``B``), on one line."""
    text = " ".join(text.split())
    return _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text).replace("``", "")


def one_line(text: str) -> str:
    """The first sentence of ``text``, Sphinx markup removed, at most ``DESCRIPTION_CHARS`` characters."""
    text = _SENTENCE_END.split(plain(text), maxsplit=1)[0].rstrip(".")
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
        positional = "".join(f" {a.dest.upper()}" for a in actions if not a.option_strings and not a.choices)
        return f"usage: {self._prog}{positional} [-h] [-c CONFIG] [--print_config] [--<option> VALUE ...]\n\n"

    def _get_help_string(self, action: Action) -> str:
        text = one_line(action.help or "").replace("%", "%%")
        values = [v for v in literal_values(getattr(action, "_typehint", None)) if not isinstance(v, bool)]
        if values and self._metavar(action) != "{" + ",".join(map(str, values)) + "}":
            text += f" {{{', '.join(map(str, values))}}}"  # a closed set the metavar does not show: its values
        default = action.default
        if action.option_strings and default is not SUPPRESS and not _is_help(action):
            shown = "null" if default is None else str(default)
            if len(shown) <= DEFAULT_CHARS:
                text += f" [{shown.replace('%', '%%')}]"
        return text

    def _format_action_invocation(self, action: Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._metavar(action)
        long_option = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        return f"{long_option} {metavar}"

    def _metavar(self, action: Action) -> str:
        """The option's value placeholder: its choices when they are short (``{stop,skip}``), else its name."""
        metavar = self._metavar_formatter(action, self._get_default_metavar_for_optional(action))(1)[0]
        if len(metavar) > 24:  # a long choice list: the description lists the values
            metavar = self._get_default_metavar_for_optional(action)
        return metavar

    def start_section(self, heading: str | None) -> None:
        super().start_section(plain(heading) if heading else heading)

    def _format_text(self, text: str) -> str:
        """A command's description, its markup removed, wrapped to 100 columns."""
        return "\n".join(textwrap.fill(plain(p), 100) for p in text.split("\n\n") if p.strip()) + "\n\n"

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


def literal_values(typehint: Any) -> list[Any]:
    """The values of every ``Literal`` in ``typehint`` (through ``Union``, ``Optional`` and ``list``), in order."""
    if typehint is None:
        return []
    if get_origin(typehint) is Literal:
        return list(get_args(typehint))
    values: list[Any] = []
    for arg in get_args(typehint):
        values += [v for v in literal_values(arg) if v not in values]
    return values


def closed_set_error(parser: Any, message: str) -> str | None:
    """A value outside an option's closed set, said in one line: its values and the nearest one (``None`` for
    other errors). jsonargparse's own message lists the union's subtypes with every value twice."""
    key = re.match(r'Parser key "([^"]+)":', message)
    given = re.search(r"(?:Given|Got) value: (.*)\s*$", message)
    if key is None or given is None:
        return None
    action = parser._option_string_actions.get(f"--{key.group(1)}")
    typehint = getattr(action, "_typehint", None)
    values = literal_values(typehint)
    if not values:
        return None
    text = given.group(1).strip()
    items = text.strip("[]").split(",") if text.startswith("[") else [text]
    bad = [item.strip().strip("'\"") for item in items if item.strip().strip("'\"") not in map(str, values)]
    if not bad:
        return None
    listed = ", ".join(map(str, values))
    as_list = any(get_origin(arg) is list for arg in (*get_args(typehint), typehint))
    lines = [f"--{key.group(1)}: {', '.join(map(repr, bad))} is not one of {listed}"
             + (" (or a list of them)" if as_list else "")]  # fmt: skip
    for value in bad:
        close = difflib.get_close_matches(value, list(map(str, values)), n=1, cutoff=0.5)
        if close:
            lines.append(f"  {value!r}: did you mean {close[0]!r}?")
    return "\n".join(lines)


def type_error(message: str) -> str | None:
    """jsonargparse's ``Parser key "model.beta": Expected a <class 'float'>. Got value: abc`` as one line:
    ``--model.beta: expected a float, got 'abc'`` (``None`` for other errors)."""
    pattern = r"""Parser key "([^"]+)":\s+Expected a <class '(\w+)'>\. Got value: (.*)"""
    found = re.fullmatch(pattern, message.strip(), re.S)
    if found is None:
        return None
    key, kind, value = found.groups()
    return f"--{key}: expected {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {value.strip()!r}"


class AlignArgumentParser(LightningArgumentParser):
    """Parse errors say which option was probably meant (difflib over every option, subcommands included), and a
    value outside an option's closed set lists its values and the nearest one."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        root = self
        while getattr(root, "parent_parser", None) is not None:
            root = root.parent_parser
        said = closed_set_error(self, message) or type_error(message)
        super().error(said or hint(message, option_strings(root) | option_strings(self)), ex)


STAGES = {"fit": "fit", "validate": "validate"}  # the subcommands offered
LIGHTNING_CKPT_NAMES = ("best", "last", "hpc")  # ckpt_path values Lightning resolves itself


class AlignCLI(LightningCLI):
    """LightningCLI that feeds the policy's name to the DataModule as its tokenizer, offers ``fit`` and ``validate``
    (evaluation and generation have their own commands), checks every input before it builds the model
    (:meth:`check_inputs_before_model`) and resumes a run into its own log version."""

    prepared_datamodule: L.LightningDataModule | None = None

    def __init__(self, *args: Any, command_line: list[str] | None = None, **kwargs: Any) -> None:
        self.command_line = command_line  # as typed, for the resume hint of a stopped run
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.policy", "data.tokenizer")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "validate":  # ConsoleSummary prints the results as fit does, not Lightning's 16-digit table
            parser.set_defaults(verbose=False)
        return parser

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> L.Trainer:
        """Every run prints plain progress lines where no terminal watches, validation results and a summary
        (:class:`~lit_align.callbacks.console.ConsoleSummary`), and stops on SIGTERM/SIGINT/SIGUSR1 with a checkpoint
        at the step (:class:`~lit_align.callbacks.preemption.StopOnSignal`); without a terminal the progress bar is
        off, on one it counts optimizer steps of ``max_steps``
        (:class:`~lit_align.callbacks.console.StepProgressBar`)."""
        given = [*callbacks, *(config.get("callbacks") or [])]
        if not any(isinstance(c, ConsoleSummary) for c in given):
            callbacks = [*callbacks, ConsoleSummary()]
        if not any(isinstance(c, StopOnSignal) for c in given):
            callbacks = [*callbacks, StopOnSignal(command=self.command_line)]
        if config.get("enable_progress_bar") is None and not sys.stdout.isatty():
            config = {**config, "enable_progress_bar": False}
        bar_wanted = config.get("enable_progress_bar") is not False
        if bar_wanted and _RICH_AVAILABLE and not any(isinstance(c, ProgressBar) for c in given):
            callbacks = [*callbacks, StepProgressBar()]
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
        # Resuming writes into the checkpoints' own folder, on purpose: Lightning's warning about it is not news.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
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
        raise PathNotFound(f"--ckpt_path {path}: no such file (resolved to {file.resolve()})")
    advice = "give a .ckpt written by a lit-align run (runs/<algo>/version_N/checkpoints/last.ckpt)"
    try:
        checkpoint: Any = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise OptionError(
            f"--ckpt_path {file}: not a checkpoint that loads safely ({_load_failure(err)}); {advice}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise OptionError(
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
    # As typed, for the resume hint of a stopped run: `lit-align dpo fit ...`, or `python recipes/dpo.py fit ...`.
    command_line = [command_name() or sys.argv[0], *(sys.argv[1:] if args is None else args)]
    if args is None:  # LightningCLI reads sys.argv itself
        sys.argv[1:] = expand_config_names(sys.argv[1:])
    else:  # `lit-align dpo ...` passes what follows the recipe's name; sys.argv holds it too, on purpose
        args = expand_config_names(list(args))
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within")
    default = [str(default_config)]
    compact = {"formatter_class": CompactHelpFormatter}
    parser_kwargs = {cmd: {"default_config_files": default, **compact} for cmd in ("fit", "validate")}
    return AlignCLI(
        model_class,
        datamodule_class,
        args=args,  # None: LightningCLI reads sys.argv
        parser_kwargs={**parser_kwargs, **compact, "prog": program()},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_class=AlignArgumentParser,
        command_line=command_line,
    )


def run_function(function: Any, args: list[str] | None = None) -> Any:
    """Run a command that is a function (``evaluate``, ``generate``, ``plot``): its typed signature is the command
    line (positional arguments first), its docstring up to ``Args:`` the description, ``--help`` in the recipes'
    compact style."""
    import inspect

    from jsonargparse import CLI

    quiet()
    description = (inspect.getdoc(function) or "").split("Args:")[0].strip()
    return CLI(function, args=args, as_positional=True, prog=program(), formatter_class=CompactHelpFormatter,
               description=description)  # fmt: skip


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

