"""Format (tags or a regular expression) and normalized string match verifiers."""

from __future__ import annotations

import time

import pytest

from lit_align.rewards.verifiers import (
    FormatReward,
    NormalizedMatchReward,
    normalize_text,
    normalized_match_reward,
    think_answer_format_reward,
)


def _msg(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    ("completion", "strict", "expected"),
    [
        ("<think>2+2 is 4</think><answer>4</answer>", True, 1.0),
        ("  <think>\nreasoning\n</think>\n\n<answer> 4 </answer>\n", True, 1.0),  # whitespace around is fine
        ("<answer>4</answer><think>late</think>", True, 0.0),  # wrong order
        ("<think>x</think>", True, 0.0),  # a block missing
        ("<think>x</think><answer>   </answer>", True, 0.0),  # blank content
        ("<think>a<think>b</think></think><answer>4</answer>", True, 0.0),  # nested / repeated
        ("<think>x</think><answer>4</answer><answer>5</answer>", True, 0.0),  # twice
        ("<think><answer>4</answer></think>", True, 0.0),  # answer inside think
        ("Sure! <think>x</think><answer>4</answer>", True, 0.0),  # text outside the blocks
        ("Sure! <think>x</think><answer>4</answer>", False, 1.0),  # ... allowed when not strict
        ("<think>x</think> so <answer>4</answer> done", False, 1.0),
        ("<think>x</think><answer>4", False, 0.0),  # unclosed
        ("<THINK>x</THINK><ANSWER>4</ANSWER>", True, 0.0),  # tags are case-sensitive
        ("", True, 0.0),
    ],
)
def test_format_reward_tags(completion, strict, expected):
    reward = FormatReward(tags=["think", "answer"], strict=strict)
    assert reward(["p"], [completion]) == [expected]
    assert reward(["p"], [_msg(completion)]) == [expected]


def test_think_answer_default_and_names():
    ok, bad = "<think>x</think><answer>4</answer>", "4"
    assert think_answer_format_reward(["p", "p"], [ok, bad]) == [1.0, 0.0]
    assert think_answer_format_reward.__name__ == "think_answer_format_reward"
    assert FormatReward(tags=["answer"], name="has_answer").__name__ == "has_answer"


def test_format_reward_pattern():
    boxed = FormatReward(pattern=r".*\\boxed\{[^{}]+\}\.?")
    assert boxed(["p"] * 3, ["so \\boxed{4}.", "  \\boxed{4}\n", "\\boxed{4} and more"]) == [1.0, 1.0, 0.0]
    anywhere = FormatReward(pattern=r"\\boxed\{", strict=False)
    assert anywhere(["p"] * 2, ["so \\boxed{4} and more", "4"]) == [1.0, 0.0]
    multiline = FormatReward(pattern=r"Step 1:.*Answer: \d+")  # re.DOTALL: "." crosses lines
    assert multiline(["p"], ["Step 1: add\nStep 2: carry\nAnswer: 42"]) == [1.0]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"tags": ["a"], "pattern": "x"}, {"tags": []}, {"tags": ["a b"]}, {"tags": ["a", "a"]}, {"pattern": "("}],
)
def test_format_reward_bad_config(kwargs):
    with pytest.raises(ValueError):
        FormatReward(**kwargs)


def test_format_reward_is_linear_on_huge_output():
    text = "<think>" + "</think>" * 100_000 + "x" * 500_000 + "<answer>" * 10_000
    start = time.perf_counter()
    assert FormatReward(tags=["think", "answer"])(["p"], [text]) == [0.0]
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  PARIS.  ", "paris"),
        ("U.S.A.", "usa"),  # punctuation removed, not replaced by a space (SQuAD)
        ("rock-'n'-roll", "rocknroll"),
        ("a an the", ""),
        ("Theatre", "theatre"),  # articles only as whole words
        ("An apple, a day", "apple day"),
        ("Straße", "strasse"),  # case folding
        ("ＰＡＲＩＳ", "paris"),  # NFKC: full-width letters
        ("“quoted” — text…", "quoted text"),  # Unicode punctuation
        ("$1,000 (approx.)", "1000 approx"),  # symbols go too
        ("snake_case", "snakecase"),
        ("tab\tand\nnewline", "tab and newline"),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_normalize_text_options():
    assert normalize_text("The U.S.", articles=False) == "the us"
    assert normalize_text("The U.S.", punctuation=False) == "u.s."


def test_normalized_match_reward():
    completions = ["The Eiffel Tower.", _msg("eiffel  TOWER"), "Tower", "x", "Paris!", ""]
    answers = ["Eiffel Tower", "the eiffel tower", "Eiffel Tower", None, ["Paris", "City of Light"], "..."]
    # "..." normalizes to nothing: no completion could match it, so no opinion (None), not a wrong answer (0.0)
    assert normalized_match_reward([None] * 6, completions, answer=answers) == [1.0, 1.0, 0.0, None, 1.0, None]
    assert normalized_match_reward.__name__ == "normalized_match_reward"


def test_normalized_match_tag_column_and_errors():
    reward = NormalizedMatchReward(column="gold", tag="answer", name="qa")
    completions = ["<think>maybe Lyon</think><answer>Paris</answer>", "Paris", "<answer>Lyon</answer>"]
    assert reward([None] * 3, completions, gold=["paris"] * 3) == [1.0, 0.0, 0.0]  # no block: 0.0
    assert reward.__name__ == "qa"
    with pytest.raises(ValueError, match="no 'gold' column"):
        reward(["p"], ["x"], answer=["x"])
    with pytest.raises(ValueError, match="tag"):
        NormalizedMatchReward(tag="<answer>")
    assert NormalizedMatchReward(articles=False)(["p"], ["The end"], answer=["end"]) == [0.0]
