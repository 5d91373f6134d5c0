"""Hyperparameters as plain data: what a module's or DataModule's ``__init__`` chain saves for checkpoints and logs.

Options are flat keyword arguments, except the options of a part a module holds, which come as one group (a
frozen dataclass, e.g. ``sampling: SamplingOptions``): ``--model.sampling.temperature`` on the command line, a
nested mapping in YAML and in a checkpoint's hyperparameters. :func:`as_group` accepts a group as its dataclass, a
mapping of its fields, or ``None`` (the defaults). Checkpoints written before the groups existed keep the same
options as flat keys; :func:`upgrade_hyperparameters` nests them, so those checkpoints still load.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from types import FrameType
from typing import Any, TypeVar

from lightning.pytorch.core.mixins import HyperparametersMixin
from lightning.pytorch.utilities.parsing import collect_init_args

from lit_align.errors import KeywordError, OptionError

G = TypeVar("G")


def check_option(ok: bool, name: str, value: Any, expected: str, group: str = "model") -> None:
    """Raise :class:`~lit_align.errors.OptionError` naming the option by its command-line name (``--model.<name>``,
    ``--data.<name>`` for ``group="data"``) unless ``ok``.

    A module calls it before the ``super().__init__`` that loads weights, so a bad option fails before any model
    loads; a DataModule before it reads any data.
    """
    if not ok:
        raise OptionError(f"--{group}.{name}={value!r}: {expected}")


def check_options(*checks: tuple[bool, str, Any, str]) -> None:
    """:func:`check_option` for each ``(ok, name, value, expected)``."""
    for check in checks:
        check_option(*check)


def fix_options(options: dict[str, Any], owner: str, why: str, **fixed: Any) -> None:
    """Options that ``owner`` fixes (it passes them to its base itself, so they are not among its options): a value
    given anyway is refused unless it is the fixed one, which is then taken out of ``options``."""
    for name, value in fixed.items():
        if name in options:
            given = options.pop(name)
            if dataclasses.is_dataclass(value) and isinstance(given, dict):  # an options group given as a mapping
                given = as_group(type(value), given)
            check_option(given == value, name, given, f"{owner} fixes it to {value!r} ({why}); not an option there")


def check_beta(beta: float, what: str = "β") -> None:
    """β > 0 for the losses that scale a log-ratio by it: 0 makes the loss constant (no gradient), < 0 learns to
    prefer the rejected completion."""
    check_option(beta > 0, "beta", beta, f"{what} must be > 0 (0: a constant loss, no gradient; < 0: learns backwards)")


def check_label_smoothing(label_smoothing: float) -> None:
    expected = "ε must be in [0, 0.5): at 0.5 the loss ignores the preference, above it learns backwards"
    check_option(0 <= label_smoothing < 0.5, "label_smoothing", label_smoothing, expected)


def is_plain(value: Any) -> bool:
    """Whether ``value`` is plain config data (what a checkpoint's hyperparameters may hold)."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def keyword_options(cls: type) -> dict[str, Any]:
    """The keyword options of ``cls``'s ``__init__`` chain (each class forwards the rest with ``**kwargs``), by name,
    with their defaults: what a constructor call may name."""
    options: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or not klass.__module__.startswith("lit_align"):
            continue
        for name, parameter in inspect.signature(init).parameters.items():
            if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                options.setdefault(name, parameter.default)
    return options


def check_keywords(cls: type, given: dict[str, Any]) -> None:
    """Refuse a keyword ``cls`` does not take with its right spelling: an option of a group (``GRPO(max_new_tokens=4)``
    is ``GRPO(sampling={"max_new_tokens": 4})``), the nearest option's name, or the options there are. Python's own
    ``TypeError`` names only the base class the keyword reached."""
    options = keyword_options(cls)
    for name in given:
        if name in options:
            continue
        groups = [group for group, default in options.items()
                  if dataclasses.is_dataclass(default) and name in {f.name for f in dataclasses.fields(default)}]
        if groups:
            right = f'{cls.__name__}({groups[0]}={{"{name}": {given[name]!r}}})'
            why = f"it is an option of the {groups[0]} group: {right}"
        elif close := difflib.get_close_matches(name, list(options), n=1, cutoff=0.6):
            why = f"did you mean {close[0]!r}?"
        else:
            why = f"its options: {', '.join(sorted(options))}"
        raise KeywordError(f"{cls.__name__}() got an unexpected keyword argument {name!r}; {why}")


class ChecksKeywords(type):
    """The metaclass of the modules and DataModules: a constructor call's keywords are checked
    (:func:`check_keywords`) before any ``__init__`` of the chain runs. (A metaclass, because jsonargparse reads a
    class's options from ``__new__`` when it defines one.)"""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        check_keywords(cls, kwargs)
        return super().__call__(*args, **kwargs)


def as_group(cls: type[G], value: G | dict[str, Any] | None) -> G:
    """``value`` as a ``cls`` options group: an instance as it is, a mapping (from Python, or a checkpoint's
    hyperparameters) as its fields, ``None`` as the defaults."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for name in value:
            if name not in fields:
                close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
                why = f"did you mean {close[0]!r}?" if close else f"its options: {', '.join(fields)}"
                raise KeywordError(f"{cls.__name__} has no option {name!r}; {why}")
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or a mapping of its fields, got {type(value).__name__}")


def group_as_plain(group: Any) -> dict[str, Any]:
    """An options group as a mapping of its plain fields (``group.plain()`` where the group records its own)."""
    if hasattr(group, "plain"):
        return group.plain()
    values = {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}
    return {k: v for k, v in values.items() if is_plain(v)}


def save_plain_hyperparameters(obj: HyperparametersMixin, frame: FrameType | None = None) -> dict[str, Any]:
    """``save_hyperparameters`` over the whole ``__init__`` chain (subclass, mixins, base), leaving out values that
    are not plain data (a model or tokenizer given as an object, callables) and saving options groups as mappings:
    checkpoints then hold plain data only and load with ``weights_only=True``. Call it from the innermost
    ``__init__`` (the base's), the only frame that sees every argument: the defaults of the shared options live
    there. Returns the arguments as given (objects included)."""
    frame = frame or inspect.currentframe().f_back
    init_args: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    for args in collect_init_args(frame, []):  # innermost __init__ first; the outermost's values win, as given
        init_args.update(args)
        for name, value in args.items():  # a group as the class that declares it normalized it (a dataclass)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                groups.setdefault(name, value)
    objects = [name for name, value in init_args.items() if not is_plain(value)]
    obj.save_hyperparameters(ignore=objects, frame=frame)
    for name, group in groups.items():  # every field, defaults included
        obj.hparams[name] = group_as_plain(group)
    return init_args


# -- checkpoints of earlier versions ---------------------------------------------------------------------------
LEGACY_GROUPS = {  # option (flat before the groups) -> (group, its name there)
    "max_new_tokens": ("sampling", "max_new_tokens"),
    "temperature": ("sampling", "temperature"),
    "top_p": ("sampling", "top_p"),
    "top_k": ("sampling", "top_k"),
    "sampling_seed": ("sampling", "seed"),
    "generation_backend": ("sampling", "generation_backend"),
    "vllm_gpu_memory_utilization": ("sampling", "vllm_gpu_memory_utilization"),
    "kv_cache": ("sampling", "kv_cache"),
    "reward_funcs": ("rewards", "reward_funcs"),
    "reward_weights": ("rewards", "reward_weights"),
    "log_completions_every_n_steps": ("rewards", "log_completions_every_n_steps"),
}


def accepted_options(cls: type) -> set[str]:
    """The options ``cls`` offers, as LightningCLI resolves its ``__init__`` chain (without ``--model.``)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "module", fail_untyped=False)
    return {action.dest.split(".")[1] for action in parser._actions if action.dest.startswith("module.")}


def is_legacy(hparams: dict[str, Any], accepted: set[str]) -> bool:
    """Whether ``hparams`` were saved before the options groups (a flat sampling or reward option)."""
    return any(key in LEGACY_GROUPS and key not in accepted for key in hparams)


def upgraded_checkpoint(checkpoint_path: Any, cls: type) -> Any:
    """What ``cls.load_from_checkpoint`` should read: ``checkpoint_path`` itself, or, for an earlier version's
    checkpoint file (:func:`is_legacy`), an in-memory copy with its hyperparameters upgraded."""
    if not (isinstance(checkpoint_path, str | bytes) or hasattr(checkpoint_path, "__fspath__")):
        return checkpoint_path
    import io

    import torch

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    hparams, accepted = checkpoint.get("hyper_parameters") or {}, accepted_options(cls)
    if not is_legacy(hparams, accepted):
        return checkpoint_path
    checkpoint["hyper_parameters"] = upgrade_hyperparameters(hparams, accepted)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer


def upgrade_hyperparameters(hparams: dict[str, Any], accepted: set[str]) -> dict[str, Any]:
    """A checkpoint's hyperparameters as this version's modules take them. ``accepted``: the options the module
    class offers (its command-line keys, without ``--model.``).

    Before the options groups, sampling and reward options were flat keys: they move into their group. Options a
    module class no longer offers because they have a single legal value there (``precompute_reference`` of the
    online modules, RLOO's ``kl_penalty``, ...) are dropped: the earlier version refused every other value. A
    sequence-level ratio had no loss aggregation, although one was saved: it is dropped.
    """
    upgraded: dict[str, Any] = {}
    for key, value in hparams.items():
        if key in LEGACY_GROUPS and key not in accepted:
            group, name = LEGACY_GROUPS[key]
            upgraded.setdefault(group, {})[name] = value
        else:
            upgraded[key] = value
    if upgraded.get("importance_ratio") == "sequence":
        upgraded.pop("loss_aggregation", None)
    for key in ("precompute_reference", "kl_penalty", "importance_ratio", "kl_importance_correction"):
        if key in upgraded and key not in accepted:
            del upgraded[key]
    return upgraded
