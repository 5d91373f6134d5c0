"""Scoring a rollout: reward functions -> a (B, F) table with NaN where a function returned None -> one reward.

Pure tensor functions; the online algorithms (``lit_align.algorithms.online``) call them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_align.rewards.resolve import RewardFunc


def score_completions(
    reward_funcs: Sequence[RewardFunc],
    prompts: list[Any],
    texts: list[str],
    columns: dict[str, list[Any]],
    completion_ids: list[list[int]],
    num_generations: int,
) -> Tensor:
    """Rewards (B, F) of B completions under F functions, NaN where a function returned None.

    ``prompts`` and each list in ``columns`` hold one entry per PROMPT and are repeated G times, as
    TRL repeats its inputs. A chat prompt gets its completion as ``[{"role": "assistant", ...}]``.
    """
    prompts = [p for p in prompts for _ in range(num_generations)]
    columns = {k: [v for v in values for _ in range(num_generations)] for k, values in columns.items()}
    completions = [
        [{"role": "assistant", "content": t}] if isinstance(p, list) else t for p, t in zip(prompts, texts, strict=True)
    ]
    out = torch.full((len(texts), len(reward_funcs)), math.nan)
    for i, func in enumerate(reward_funcs):
        values = func(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        if len(values) != len(texts):
            name = getattr(func, "__name__", type(func).__name__)
            raise ValueError(f"reward function {name!r} returned {len(values)} rewards for {len(texts)} completions")
        out[:, i] = torch.tensor([math.nan if v is None else float(v) for v in values])
    return out


def fill_unscorable(rewards: Tensor, num_generations: int) -> Tensor:
    """NaN rewards replaced by their group's mean scorable reward (0 when the whole group is NaN)."""
    grouped = rewards.view(-1, num_generations)
    means = grouped.nanmean(dim=1, keepdim=True).nan_to_num(0.0).expand_as(grouped)
    return torch.where(grouped.isnan(), means, grouped).view(-1)


def weighted_rewards(per_func: Tensor, weights: Tensor | None) -> Tensor:
    """(B,) weighted sum of the (B, F) per-function rewards (``None``: weights of 1); NaN where every function
    returned None (an unscorable completion), else NaN entries count as 0 (TRL's ``nansum``)."""
    total = (per_func if weights is None else per_func * weights.to(per_func.device)).nansum(dim=1)
    return total.masked_fill(per_func.isnan().all(dim=1), math.nan)


def nanstd(grouped: Tensor) -> Tensor:
    """Unbiased std of each row over its non-NaN entries (NaN with fewer than two), as TRL's ``nanstd``."""
    count = (~grouped.isnan()).sum(dim=1)
    variance = ((grouped - grouped.nanmean(dim=1, keepdim=True)) ** 2).nansum(dim=1) / (count - 1)
    return variance.masked_fill(count < 2, math.nan).sqrt()


def batch_zscore(scores: Tensor, min_std: float = 1e-6) -> Tensor:
    """(B,) scores standardized over their non-NaN entries: z = (s − μ) / σ, μ and σ the mean and the
    POPULATION standard deviation (÷ n) of the n scored entries, so the z's have mean 0 and mean square 1.

    NaN entries (not scored) stay NaN. Fewer than two scored entries, or zero spread (σ < ``min_std``, which
    absorbs the rounding of equal scores), give z = 0 for every scored entry: the batch then says nothing
    about which completion is better.
    """
    scored = ~scores.isnan()
    n = int(scored.sum())
    if n < 2:
        return torch.where(scored, torch.zeros_like(scores), scores)
    values = scores[scored]
    mean = values.mean()
    std = ((values - mean) ** 2).mean().sqrt()
    z = (scores - mean) / std if std >= min_std else torch.zeros_like(scores)
    return torch.where(scored, z, scores)
