"""The ``tools`` options group of the online modules: which tools and environments a rollout may use, and its limits."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lit_align.errors import OptionError
from lit_align.hparams import check_options


@dataclass(frozen=True)
class ToolOptions:
    """Multi-turn rollouts with tools and environments (the ``tools`` group: ``--model.tools.functions``).

    With neither ``functions`` nor ``environment`` a rollout is one completion per prompt, as before. With either,
    the prompts must be chats (``--data.user_template`` makes text prompts chats) and each completion is a
    conversation: the policy's turns, the tools' messages between them (in the context, never trained or scored;
    :mod:`lit_align.tools.multi_turn`). ``sampling.max_new_tokens`` bounds the WHOLE conversation after the prompt,
    tool messages included, as TRL's ``max_completion_length`` does.

    Args:
        functions: tools by import path (``package.module:function``; callables from Python): plain functions with
            type hints and a Google-style docstring (their schema), returning a string or JSON-able value.
        environment: an environment factory by import path (a class with ``reset``, tool methods and an optional
            ``get_reward``: TRL's shape, :mod:`lit_align.tools.environments`), or a mapping of names to factories,
            each row choosing by its ``environment`` column.
        max_tool_calls: the most calls one completion runs; a turn whose calls would pass it ends the conversation
            (its calls are not run).
        max_turns: the most assistant turns per completion (a turn that still calls a tool then ends it).
        timeout: seconds one call may run before it fails.
        max_result_chars: a result longer than this is cut (with a note of the cut) before the model reads it.
    """

    functions: Sequence[str | Callable] = ()
    environment: str | Mapping[str, str] | Callable | None = None
    max_tool_calls: int = 8
    max_turns: int = 4
    timeout: float = 10.0
    max_result_chars: int = 2000

    def __post_init__(self) -> None:
        check_options(
            (self.max_tool_calls >= 1, "tools.max_tool_calls", self.max_tool_calls, "at least 1"),
            (self.max_turns >= 2, "tools.max_turns", self.max_turns, "at least 2 (a call and the answer after it)"),
            (self.timeout > 0, "tools.timeout", self.timeout, "seconds > 0"),
            (self.max_result_chars >= 1, "tools.max_result_chars", self.max_result_chars, "at least 1 character"),
        )  # fmt: skip
        if isinstance(self.functions, str):
            raise OptionError(f"--model.tools.functions={self.functions!r}: a list of import paths, e.g. "
                              f"'[{self.functions}]'")  # fmt: skip

    @property
    def enabled(self) -> bool:
        return bool(self.functions) or self.environment is not None

    def plain(self) -> dict[str, Any]:
        """As plain data for the hyperparameters: callables by import path."""
        from lit_align.rewards.resolve import recorded_reward_func

        environment = self.environment
        if isinstance(environment, Mapping):
            environment = {k: recorded_reward_func(v) for k, v in environment.items()}
        elif environment is not None:
            environment = recorded_reward_func(environment)
        return {"functions": [recorded_reward_func(f) for f in self.functions], "environment": environment,
                "max_tool_calls": self.max_tool_calls, "max_turns": self.max_turns, "timeout": self.timeout,
                "max_result_chars": self.max_result_chars}  # fmt: skip
