"""The verifiers by import path and through the online modules' scoring (score_completions)."""

from __future__ import annotations

import inspect
import math
import typing

import pytest

from lit_align.rewards import resolve_reward_funcs
from lit_align.rewards.length import OverlongPenalty
from lit_align.rewards.math_answer import MathAnswerReward
from lit_align.rewards.scoring import score_completions
from lit_align.rewards.verifiers import FormatReward, NormalizedMatchReward


def test_import_paths_and_metric_names():
    funcs, names, _ = resolve_reward_funcs(
        [
            "lit_align.rewards.math_answer:math_answer_reward",
            "lit_align.rewards.verifiers:think_answer_format_reward",
            "lit_align.rewards.verifiers:normalized_match_reward",
            "lit_align.rewards.length:overlong_penalty",
            MathAnswerReward(require_marker=True, name="strict_math"),
            FormatReward(tags=["answer"]),
            FormatReward(pattern=r"\d+"),
        ]
    )
    assert names == [
        "math_answer_reward", "think_answer_format_reward", "normalized_match_reward", "overlong_penalty",
        "strict_math", "format_reward", "format_reward_2",
    ]  # fmt: skip
    assert all(callable(f) for f in funcs)


def test_through_score_completions():
    """Two chat prompts, two generations each: columns are repeated per generation, ids give the lengths."""
    funcs = [
        MathAnswerReward(),
        FormatReward(tags=["think", "answer"]),
        OverlongPenalty(max_length=8, cache_length=4),
    ]
    prompts = [[{"role": "user", "content": "6*7?"}], [{"role": "user", "content": "Capital of France?"}]]
    texts = ["<think>6*7</think><answer>42</answer>", "41", "<think>hm</think><answer>Paris</answer>", "Paris"]
    ids = [[1] * 3, [1] * 7, [1] * 8, [1] * 9]
    table = score_completions(funcs, prompts, texts, {"answer": ["42", None]}, ids, num_generations=2)
    assert table[:, 0].tolist()[:2] == [1.0, 0.0] and all(math.isnan(v) for v in table[2:, 0].tolist())
    assert table[:, 1].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert table[:, 2].tolist() == [0.0, -0.75, -1.0, -1.0]


@pytest.mark.parametrize(
    "reward",
    [
        MathAnswerReward(column="gold", max_chars=100, require_marker=True, name="m"),
        FormatReward(tags=["think", "answer"], strict=False, name="f"),
        FormatReward(pattern=r"\d+"),
        NormalizedMatchReward(column="gold", tag="answer", articles=False, punctuation=False, name="n"),
        OverlongPenalty(max_length=64, cache_length=16, name="o"),
    ],
    ids=repr,
)
def test_plain_typed_init_args_are_attributes(reward):
    """Each __init__ takes plain types only, and each argument is kept under its own name, so a config
    (class_path + init_args) can be rebuilt from an instance."""
    signature = inspect.signature(type(reward))
    hints = typing.get_type_hints(type(reward).__init__)
    plain = {str, int, float, bool, type(None), list[str]}
    for param in signature.parameters:
        hint = hints[param]
        assert set(typing.get_args(hint) or (hint,)) <= plain, (param, hint)
    init_args = {param: getattr(reward, param) for param in signature.parameters}
    rebuilt = type(reward)(**init_args)
    assert repr(rebuilt) == repr(reward) and rebuilt.__name__ == reward.__name__ == init_args["name"]
