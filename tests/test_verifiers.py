"""Hand-checked cases for the rule-based reward functions."""

from __future__ import annotations

import pytest

from lit_align.rewards import (
    arithmetic_answer_reward,
    completion_text,
    exact_match_reward,
    format_reward,
)


def _msg(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("42", "42", 1.0),
        ("42.", "42", 1.0),
        ("The answer is 42.", "42", 1.0),
        ("17 + 25 = 42.", "42", 1.0),  # last number wins
        ("17 + 25 = 43.", "42", 0.0),
        ("First 40, no wait: 42", 42, 1.0),  # int answers work too
        ("It costs 1,234 dollars.", "1234", 1.0),
        ("It costs 1,234 dollars.", "1,234", 1.0),
        ("5 - 8 = -3", "-3", 1.0),
        ("10-7 = 3", "3", 1.0),  # a minus right after a digit is subtraction, not a sign
        ("The result is -3.", "3", 0.0),
        ("42.5", "42", 0.0),
        ("Let me think... #### 7\nso 99", "7", 1.0),  # "####" takes precedence over the last number
        ("#### 1,000.", "1000", 1.0),
        ("####", "7", 0.0),
        ("I have no idea.", "7", 0.0),
        ("", "7", 0.0),
        ("__import__('os').system('x')", "0", 0.0),  # never evaluated
        ("6 * 7", "42", 0.0),  # expressions are not computed
    ],
)
def test_arithmetic_answer_reward(completion, answer, expected):
    assert arithmetic_answer_reward(["p"], [completion], answer=[answer]) == [expected]


def test_arithmetic_answer_reward_messages_and_none():
    completions = [_msg("3 + 4 = 7."), _msg("8"), _msg("whatever")]
    assert arithmetic_answer_reward([None] * 3, completions, answer=["7", None, "1"]) == [1.0, None, 0.0]


def test_arithmetic_answer_reward_ignores_extra_columns():
    assert arithmetic_answer_reward(["p"], ["5"], answer=["5"], trainer_state=None, other=[1]) == [1.0]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("42", 1.0),
        ("  42.\n", 1.0),
        ("-3", 1.0),
        ("1,234", 1.0),
        ("The answer is 42.", 0.0),
        ("3 + 4 = 7", 0.0),
        ("42.5", 0.0),
        ("12,34", 0.0),
        ("", 0.0),
        ("__import__('os').system('x')", 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert format_reward(["p"], [completion]) == [expected]
    assert format_reward(["p"], [_msg(completion)]) == [expected]


def test_exact_match_reward():
    completions = ["  HELLO World ", _msg("Paris"), "paris!", "x"]
    answers = ["hello world", "paris", "Paris", None]
    assert exact_match_reward([None] * 4, completions, answer=answers) == [1.0, 1.0, 0.0, None]


def test_completion_text():
    assert completion_text("plain") == "plain"
    assert completion_text(_msg("hi")) == "hi"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]) == "a"
    assert completion_text([{"role": "assistant", "content": None}]) == ""


def test_lengths_must_match():
    with pytest.raises(ValueError):
        arithmetic_answer_reward(["p", "q"], ["1", "2"], answer=["1"])
