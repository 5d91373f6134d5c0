"""Tools and environments for the online algorithms: multi-turn rollouts (docs/tools_and_environments.md).

    options.py       ToolOptions (the ``tools`` group: functions, environment, max_tool_calls, max_turns, timeout,
                     max_result_chars)
    calls.py         tool schemas, parsing ``<tool_call>`` blocks, running one call within its time and size limits
    chat.py          prompts rendered with their tools; the tokens of tool messages between the policy's turns
    environments.py  TRL-shaped environments: factories by import path, their tool methods, get_reward, seeding
    multi_turn.py    ToolRunner: the rollout loop, the tool mask, the tools/* metrics
    calculator.py    an arithmetic calculator tool (parsed, never evaluated)
    games.py         GuessTheNumber, a multi-turn environment with its own reward (the example)
"""

from __future__ import annotations

from typing import Any

from lit_align.tools.options import ToolOptions


def check_tool_data(options: ToolOptions, batch: dict[str, Any], source: str) -> list[Any] | None:
    """Before training, on the first rows of the data: the tools and environments resolve (each with its schema), the
    prompts are chats, each row names a configured environment (with several), and each row's environment is made and
    reset as a rollout would; returns one reset environment per row (for the reward functions' check), or None
    without environments."""
    from lit_align.errors import row_label
    from lit_align.tools.multi_turn import ToolRunner

    runner = ToolRunner(options)
    rows = runner.rows(batch, source)
    if not runner.factories:
        return None
    return [runner.reset(row, f"{source}: {row_label(i)}", f"check/{i}")[0] for i, row in enumerate(rows)]

__all__ = ["ToolOptions", "check_tool_data"]
