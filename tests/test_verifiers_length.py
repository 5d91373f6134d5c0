"""DAPO's soft overlong punishment, by hand and against TRL's implementation."""

from __future__ import annotations

import pytest

from lit_align.rewards.length import OverlongPenalty, overlong_penalty, soft_overlong_penalty


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        # L_max = 10, L_cache = 4: no penalty up to 10 - 4 = 6 tokens, then (6 - L) / 4, then -1 past 10.
        (0, 0.0),
        (6, 0.0),
        (7, -0.25),
        (8, -0.5),
        (9, -0.75),
        (10, -1.0),  # L = L_max is still in the soft interval, where it reaches -1
        (11, -1.0),
        (1000, -1.0),
    ],
)
def test_soft_overlong_penalty_by_hand(length, expected):
    assert soft_overlong_penalty(length, max_length=10, cache_length=4) == expected


def test_no_soft_interval():
    assert [soft_overlong_penalty(n, 10, 0) for n in (9, 10, 11)] == [0.0, 0.0, -1.0]


def test_reads_completion_ids_and_defaults_to_dapo_lengths():
    ids = [[1] * 16384, [1] * 16385, [1] * 18432, [1] * 20480, [1] * 20481]
    assert overlong_penalty(["p"] * 5, ["x"] * 5, completion_ids=ids) == [0.0, -1 / 4096, -0.5, -1.0, -1.0]
    assert overlong_penalty.__name__ == "overlong_penalty"


def test_character_count_without_completion_ids():
    penalty = OverlongPenalty(max_length=10, cache_length=4, name="length")
    completions = ["abcdef", [{"role": "assistant", "content": "abcdefgh"}], "a" * 11]
    assert penalty(["p"] * 3, completions) == [0.0, -0.5, -1.0]
    # completion_ids win over the text: a short text of many tokens is long
    assert penalty(["p"], ["ab"], completion_ids=[[5] * 9]) == [-0.75]
    assert penalty.__name__ == "length"
    with pytest.raises(ValueError):
        penalty(["p", "q"], ["a", "b"], completion_ids=[[1]])


@pytest.mark.parametrize(("max_length", "cache_length"), [(10, 11), (10, -1)])
def test_bad_lengths(max_length, cache_length):
    with pytest.raises(ValueError, match="cache_length"):
        OverlongPenalty(max_length=max_length, cache_length=cache_length)


def test_matches_trl():
    trl_rewards = pytest.importorskip("trl.rewards")
    ids = [[1] * n for n in range(0, 140, 3)]
    theirs = trl_rewards.get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20)(ids)
    ours = OverlongPenalty(max_length=100, cache_length=20)(["p"] * len(ids), ["x"] * len(ids), completion_ids=ids)
    assert ours == pytest.approx(theirs, abs=0)
