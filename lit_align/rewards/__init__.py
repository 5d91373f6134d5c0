"""Reward functions with TRL's signature ``f(prompts, completions, **kwargs) -> list[float | None]``, and the part
that scores a rollout with them.

    verifiers.py     rule-based rewards for verifiable tasks (arithmetic, exact and normalized match, formats)
    math_answer.py   a math final answer read as an exact rational and compared
    length.py        DAPO's soft overlong punishment
    model_scorer.py  a trained reward model as a reward function (``model:<dir>``)
    resolve.py       import paths, ``model:`` and ``{class_path, init_args}`` -> callables, and back to plain data
    scoring.py       a rollout scored: a (B, F) table with NaN for None -> one weighted reward; the data check
    signal.py        RewardSignal: a step whose rewards carry no signal is said, not trained on in silence
    reward_set.py    RewardOptions (the ``rewards`` group) and RewardSet, the part an online module (and evaluate) holds
"""

from lit_align.rewards.model_scorer import RewardModelScorer
from lit_align.rewards.resolve import import_reward_func, resolve_reward_funcs
from lit_align.rewards.verifiers import (
    arithmetic_answer_reward,
    completion_text,
    exact_match_reward,
    extract_final_number,
    format_reward,
)

__all__ = [
    "RewardModelScorer",
    "arithmetic_answer_reward",
    "completion_text",
    "exact_match_reward",
    "extract_final_number",
    "format_reward",
    "import_reward_func",
    "resolve_reward_funcs",
]
