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
    """Before training, on the first rows of the data: the prompts are chats, each row names a configured environment
    (with several), and each row's environment is made and reset; returns one reset environment per row (for the
    reward functions' check), or None without environments."""
    from lit_align.tools.environments import ENVIRONMENT_COLUMN, resolve_factories, seeded_random

    for i, prompt in enumerate(batch["prompt"]):
        if not (isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)):
            raise ValueError(f"{source}: row {i} has a text prompt ({str(prompt)[:60]!r}); tool use needs chat "
                             "prompts: set --data.user_template to make text prompts user messages")  # fmt: skip
    factories = resolve_factories(options.environment)
    if not factories:
        return None
    multi = None not in factories
    if multi and ENVIRONMENT_COLUMN not in batch:
        raise ValueError(f"{source}: several environments are configured ({', '.join(factories)}), and the rows "
                         f"have no {ENVIRONMENT_COLUMN!r} column naming each row's")  # fmt: skip
    columns = {k: v for k, v in batch.items() if k != "prompt" and isinstance(v, list)}
    environments = []
    for i, prompt in enumerate(batch["prompt"]):
        row = {"prompt": prompt, **{k: v[i] for k, v in columns.items()}}
        name = row.pop(ENVIRONMENT_COLUMN, None) if multi else None
        if name not in factories:
            raise ValueError(f"{source}: row {i} has {ENVIRONMENT_COLUMN}={name!r}, not one of the configured "
                             f"environments: {', '.join(map(str, factories))}")  # fmt: skip
        with seeded_random(f"check/{i}"):
            environment = factories[name]()
            try:
                environment.reset(**row)
            except Exception as err:
                raise ValueError(f"{source}: row {i}: {type(environment).__name__}.reset(**row) failed with the row's "
                                 f"columns ({', '.join(row)}): {type(err).__name__}: {err}") from err
        environments.append(environment)
    return environments


__all__ = ["ToolOptions", "check_tool_data"]
