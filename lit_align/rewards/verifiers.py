"""Rule-based reward functions for verifiable tasks.

Every function has TRL's reward-function signature
``f(prompts, completions, **kwargs) -> list[float | None]``: one score per completion, where dataset
columns (here ``answer``) arrive as keyword lists aligned with ``completions``. A completion is
either a string or a list of chat messages (``[{"role": "assistant", "content": ...}]``). ``None``
means "no opinion" (the row carries no answer), so a caller summing several rewards can skip it
rather than count it as wrong.

Model output is only ever matched with regular expressions, never evaluated: ``"2 + 3"`` is not 5
here, and ``"__import__('os')..."`` simply has no number in it.

Left out: partial credit, units (any number counts: "5 apples" is 5) and non-integer targets
(answers are integers, though "42.0" still matches 42).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

# A sign counts only when no digit precedes it, so "10-5" yields 10 and 5, not 10 and -5.
# Commas are thousands separators only in groups of three: "1,234" is one number, "3,4" two.
_NUMBER = re.compile(r"(?<!\d)-?\d+(?:,\d{3})*(?:\.\d+)?")
# The prompts in datamodules/samples/arithmetic_prompts.jsonl ask: "Answer with just the number."
_JUST_A_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)\.?")

Completion = str | Sequence[dict[str, Any]]


def completion_text(completion: Completion) -> str:
    """The text of a completion given as a string or as a list of chat messages.

    Message contents may be strings or lists of content parts (``{"type": "text", "text": ...}``);
    the texts of all messages are joined with newlines.
    """
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content") or ""
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(parts)


def _parse_number(text: str) -> Fraction | None:
    try:
        return Fraction(text.strip().rstrip(".").replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def extract_final_number(text: str) -> Fraction | None:
    """The first number after the last ``####`` if there is one, else the last number in the text."""
    if "####" in text:
        match = _NUMBER.search(text.rsplit("####", 1)[1])
        return _parse_number(match.group()) if match else None
    matches = _NUMBER.findall(text)
    return _parse_number(matches[-1]) if matches else None


def arithmetic_answer_reward(
    prompts: list, completions: list[Completion], answer: list[str | int | None], **kwargs: Any
) -> list[float | None]:
    """1.0 where the completion's final number equals ``answer``, 0.0 otherwise, None without an answer."""
    rewards: list[float | None] = []
    for completion, target in zip(completions, answer, strict=True):
        if target is None:
            rewards.append(None)
            continue
        expected = _parse_number(str(target))
        got = extract_final_number(completion_text(completion))
        rewards.append(float(expected is not None and got == expected))
    return rewards


def format_reward(prompts: list, completions: list[Completion], **kwargs: Any) -> list[float | None]:
    """1.0 where the completion is just a number (the format the arithmetic prompts ask for), else 0.0.

    Surrounding whitespace, a leading minus, thousands commas and one trailing period are allowed.
    """
    return [float(_JUST_A_NUMBER.fullmatch(completion_text(c).strip()) is not None) for c in completions]


def exact_match_reward(
    prompts: list, completions: list[Completion], answer: list[str | None], **kwargs: Any
) -> list[float | None]:
    """1.0 where the stripped, case-folded completion equals the stripped, case-folded ``answer``."""
    return [
        None if target is None else float(completion_text(c).strip().casefold() == str(target).strip().casefold())
        for c, target in zip(completions, answer, strict=True)
    ]
