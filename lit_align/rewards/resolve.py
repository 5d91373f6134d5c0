"""Reward functions named in a config: import paths (and reward-model directories) -> callables.

A spec is one of
    ``"package.module:function"`` or ``"package.module.function"``  imported with importlib;
    ``"model:<directory or hub id>"``  a :class:`~lit_align.rewards.model_scorer.RewardModelScorer`;
    ``{"class_path": "package.module.Class", "init_args": {...}}``  the class imported, then called with
                                        ``init_args`` (how a checkpoint records a configured instance);
    a callable                          used as is (from Python).

Nothing is ever evaluated: a spec names a module and an attribute, nothing else.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

from lit_align.errors import OptionError
from lit_align.hparams import is_plain

RewardFunc = Callable[..., list]
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def import_reward_func(spec: str) -> RewardFunc:
    """Import ``package.module:function`` (or ``package.module.function``)."""
    if spec.startswith("model:"):
        from lit_align.rewards.model_scorer import RewardModelScorer

        return RewardModelScorer(spec.removeprefix("model:"))
    module_name, sep, attribute = spec.partition(":")
    if not sep:
        module_name, _, attribute = spec.rpartition(".")
    if not (module_name and attribute and _DOTTED.fullmatch(module_name) and _DOTTED.fullmatch(attribute)):
        raise OptionError(
            f"reward function {spec!r}: expected an import path like 'package.module:function' "
            "or 'package.module.function', or 'model:<reward model directory>'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise OptionError(f"reward function {spec!r}: cannot import module {module_name!r} ({err})") from err
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise OptionError(f"reward function {spec!r}: {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise OptionError(f"reward function {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def build_reward_func(config: dict[str, Any]) -> RewardFunc:
    """``{"class_path": "package.module.Class", "init_args": {...}}`` -> ``Class(**init_args)``.

    The class is imported by its path (as :func:`import_reward_func` imports a function, never evaluated)
    and must be a class whose instances are callable; ``init_args`` are keyword arguments.
    """
    unknown = set(config) - {"class_path", "init_args"}
    class_path, init_args = config.get("class_path"), config.get("init_args") or {}
    if unknown or not isinstance(class_path, str) or class_path.startswith("model:") or not isinstance(init_args, dict):
        raise OptionError(
            f"reward function {config!r}: expected {{'class_path': 'package.module.Class', 'init_args': {{...}}}}"
        )
    cls = import_reward_func(class_path)
    if not isinstance(cls, type):
        raise OptionError(f"reward function {config!r}: {class_path!r} is not a class")
    func = cls(**init_args)
    if not callable(func):
        raise OptionError(f"reward function {config!r}: a {cls.__name__} instance is not callable")
    return func


def reward_func_name(func: RewardFunc) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def resolve_reward_funcs(
    specs: Sequence[str | dict[str, Any] | RewardFunc], reward_weights: Sequence[float] | None = None
) -> tuple[list[RewardFunc], list[str], list[float]]:
    """Callables, their metric names (``rewards/<name>/mean``; repeats get ``_2``, ``_3``) and weights.

    ``reward_weights`` defaults to 1.0 for each function, as in TRL.
    """
    if not specs:
        raise OptionError("at least one reward function is needed (--model.rewards.reward_funcs), or an environment "
                          "with a get_reward method (--model.tools.environment)")
    funcs = [
        import_reward_func(s) if isinstance(s, str) else build_reward_func(s) if isinstance(s, dict) else s
        for s in specs
    ]
    for spec, func in zip(specs, funcs, strict=True):
        if not callable(func):
            raise OptionError(f"reward function {spec!r} is not callable")
    names: list[str] = []
    seen: dict[str, int] = {}
    for func in funcs:
        name = reward_func_name(func)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    weights = [1.0] * len(funcs) if reward_weights is None else [float(w) for w in reward_weights]
    if len(weights) != len(funcs):
        raise OptionError(f"{len(weights)} reward_weights for {len(funcs)} reward functions")
    return funcs, names, weights


def recorded_reward_func(spec: str | dict[str, Any] | Callable) -> str | dict[str, Any]:
    """A reward function as plain data for the hyperparameters: strings and mappings as given; an instance of a
    module-level class whose every ``__init__`` argument is kept as a plain attribute of the same name (the
    verifier classes) as ``{"class_path", "init_args"}``; anything else by import path (a function's)."""
    if isinstance(spec, str) or (isinstance(spec, dict) and is_plain(spec)):
        return spec
    cls = type(spec)
    if inspect.isroutine(spec) or isinstance(spec, type) or "." in cls.__qualname__:
        return _import_path(spec)
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return _import_path(spec)
    init_args = {}
    for param in parameters:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = getattr(spec, param.name, inspect.Parameter.empty)
        if not is_plain(value):  # not kept (or not plain data): the instance cannot be rebuilt from its config
            return _import_path(spec)
        init_args[param.name] = value
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _import_path(func: Callable) -> str:
    module, name = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    return f"{module}:{name}" if module and name else repr(func)
