"""Hyperparameters as plain data: what a module's or DataModule's ``__init__`` chain saves for checkpoints and logs."""

from __future__ import annotations

import inspect
from types import FrameType
from typing import Any

from lightning.pytorch.core.mixins import HyperparametersMixin
from lightning.pytorch.utilities.parsing import collect_init_args


def is_plain(value: Any) -> bool:
    """Whether ``value`` is plain config data (what a checkpoint's hyperparameters may hold)."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def save_plain_hyperparameters(obj: HyperparametersMixin, frame: FrameType | None = None) -> None:
    """``save_hyperparameters`` over the whole ``__init__`` chain (subclass, mixins, base), leaving out values that
    are not plain data (a model or tokenizer given as an object, callables): checkpoints then hold plain data only
    and load with ``weights_only=True``. Call it from the innermost ``__init__`` (the base's), the only frame that
    sees every argument: the defaults of the shared options live there."""
    frame = frame or inspect.currentframe().f_back
    init_args: dict[str, Any] = {}
    for args in collect_init_args(frame, []):
        init_args.update(args)
    objects = [name for name, value in init_args.items() if not is_plain(value)]
    obj.save_hyperparameters(ignore=objects, frame=frame)
