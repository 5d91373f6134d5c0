"""Tools and environments for the online algorithms: multi-turn rollouts (docs/tools_and_environments.md).

    options.py       ToolOptions (the ``tools`` group: functions, environment, max_tool_calls, max_turns, timeout,
                     max_result_chars)
    calls.py         tool schemas, parsing ``<tool_call>`` blocks, running one call within its time and size limits
    chat.py          prompts rendered with their tools; the tokens of tool messages between the policy's turns
    environments.py  TRL-shaped environments: factories by import path, their tool methods, get_reward, seeding
    multi_turn.py    ToolRunner: the rollout loop, the tool mask, the tools/* metrics; check_tool_data (the
                     data check before training)
    calculator.py    an arithmetic calculator tool (parsed, never evaluated)
    games.py         GuessTheNumber, a multi-turn environment with its own reward (the example)
"""

from __future__ import annotations

from lit_align.tools.options import ToolOptions

__all__ = ["ToolOptions"]
