"""Environments in TRL 1.16's shape, so a TRL environment class works here unchanged.

An environment is made by a factory (a class, or any callable returning an instance) named by import path. Its
instance has ``reset(**row)`` (the row's prompt and columns; it may return a string, which is appended to the
prompt's last user message), its PUBLIC methods are the rollout's tools (everything but ``reset``, ``get_reward`` and
names starting with ``_``; type hints and docstrings as for any tool), and an optional ``get_reward()`` scores the
finished rollout from the environment's state: it adds a reward column named after the class, weight 1, as TRL does.
One instance per rollout (per completion), made fresh for it. A dict of factories mixes environments in one run:
each row names its own in an ``environment`` column (not passed to ``reset``).

Exact resume and multi-process equivalence: ``reset`` and every tool call run with Python's ``random`` module seeded
from (``sampling.seed``, the sampling key = step and rank, the completion's row, the call's number), and restored
after, so an environment that draws its task with ``random`` draws the same one in a resumed run. An environment
with other sources of randomness (its own generator, numpy) must seed them in ``reset`` from what it is given.
"""

from __future__ import annotations

import hashlib
import inspect
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lit_align.errors import OptionError
from lit_align.rewards.resolve import import_reward_func

ENVIRONMENT_COLUMN = "environment"
HIDDEN = ("reset", "get_reward")


def resolve_factory(spec: str | Callable, where: str) -> Callable[[], Any]:
    """A factory from an import path (``package.module:Class``) or a callable given from Python."""
    factory = import_reward_func(spec) if isinstance(spec, str) else spec
    if not callable(factory):
        raise OptionError(f"{where}: {spec!r} is not a class or a callable that makes an environment")
    return factory


def resolve_factories(spec: str | Callable | Mapping[str, str | Callable] | None) -> dict[str | None, Callable]:
    """``{name: factory}``: one unnamed factory (every row) or the named ones of a dict (rows choose by column)."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        if not spec:
            raise OptionError("--model.tools.environment: an empty mapping; give at least one name: factory")
        return {str(name): resolve_factory(f, f"--model.tools.environment.{name}") for name, f in spec.items()}
    return {None: resolve_factory(spec, "--model.tools.environment")}


def environment_methods(instance: Any) -> list[Callable]:
    """The tools an environment instance offers: its class's public functions but ``reset`` and ``get_reward``,
    bound to the instance (listed on the class, so properties are not evaluated), in name order."""
    return [getattr(instance, name) for name, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)
            if name not in HIDDEN and not name.startswith("_")]  # fmt: skip


def check_environment(instance: Any, name: str | None) -> None:
    label = type(instance).__name__ + ("" if name is None else f" (environment {name!r})")
    if not callable(getattr(instance, "reset", None)):
        raise OptionError(f"{label}: an environment needs a callable reset(**row); TRL's environment shape")
    reward = getattr(instance, "get_reward", None)
    if reward is not None and not callable(reward):
        raise OptionError(f"{label}: get_reward must be a method taking no argument and returning a float")


def has_reward(instance: Any) -> bool:
    return callable(getattr(instance, "get_reward", None))


@contextmanager
def seeded_random(key: str) -> Iterator[None]:
    """Run the block with Python's ``random`` seeded from ``key``, restoring its state after."""
    state = random.getstate()
    random.seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    try:
        yield
    finally:
        random.setstate(state)


class EnvironmentReward:
    """The reward column of one environment class: ``get_reward()`` of each completion's environment when it is
    exactly that class (``None`` otherwise, as TRL: a mixed run scores each row by its own environment)."""

    def __init__(self, environment_type: type) -> None:
        self.environment_type = environment_type
        self.__name__ = environment_type.__name__

    def __call__(self, environments: list[Any] | None = None, **kwargs: Any) -> list[float | None]:
        if environments is None:
            raise ValueError(f"the {self.__name__} reward needs the rollout's environments")
        out = []
        for env in environments:
            if type(env) is not self.environment_type:
                out.append(None)
                continue
            value = env.get_reward()
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise OptionError(f"{self.__name__}.get_reward() returned {type(value).__name__} {value!r:.40}; "
                                  "expected a float (or None where it does not apply)")  # fmt: skip
            out.append(value)
        return out
