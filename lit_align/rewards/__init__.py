"""Reward functions with TRL's signature ``f(prompts, completions, **kwargs) -> list[float | None]``."""

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
