"""REINFORCE++'s advantages: per-token returns of a token-level reward, normalized over the whole batch.

Hu et al. 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"
(https://arxiv.org/abs/2501.03262), as OpenRLHF implements it (``openrlhf/trainer/ppo_utils/experience_maker.py``,
estimators ``reinforce`` and ``reinforce_baseline``; ``openrlhf/models/utils.py``, ``compute_reward`` and
``compute_approx_kl``; read at commit 3c3be62). With s_i the sequence score, k1 the per-token KL estimate
log π_old − log π_ref clipped to [−10, 10] and T_i the last completion token:

    s_i ← s_i − mean_group(s)                  REINFORCE++-baseline only (G completions per prompt; then γ = 1)
    r_{i,t} = −β·k1_{i,t} + [t = T_i]·s_i       the KL as a per-token reward
    G_{i,t} = Σ_{u ≥ t} γ^(u−t) r_{i,u}         the return from token t on
    A = (G − μ) / sqrt(max(σ², 1e-8))           μ, σ² the mean and POPULATION variance over every completion token
                                                of the batch (all ranks together here; OpenRLHF's batch):
                                                :func:`~lit_align.losses.policy_gradient.whiten`, ``openrlhf``

The per-token rewards are PPO's (:func:`~lit_align.losses.policy_gradient.token_level_rewards`) with the KL clipped.

Shapes: B sequences (prompt-major), T completion tokens, ``mask`` (B, T) right-padded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lit_align.losses.policy_gradient import token_level_rewards, whiten

KL_CLIP = 10.0  # OpenRLHF clips its per-token KL estimates to [-10, 10]


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = Σ_{u ≥ t} γ^(k(u)−k(t)) r_u over each row's masked tokens, k counting masked tokens only (a hole in the
    mask, a multi-turn rollout's tool tokens, is no step); 0 outside ``mask``."""
    rewards = rewards * mask.to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(mask[:, t].bool(), rewards[:, t] + gamma * running, running)
        returns[:, t] = running
    return returns * mask.to(rewards.dtype)


def reinforce_pp_advantages(
    scores: Tensor, token_kl: Tensor, mask: Tensor, beta: float, num_generations: int, baseline: bool,
    gamma: float = 1.0, all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """REINFORCE++ (``baseline=False``) or REINFORCE++-baseline advantages (B, T), and the per-token rewards (B, T).

    Args:
        scores: (B,) sequence scores (the reward functions' combined reward).
        token_kl: (B, T) per-token KL estimate (k1 = log π_old − log π_ref; zeros without a reference).
        mask: (B, T) completion mask.
        beta: the KL coefficient.
        num_generations: G, completions per prompt (prompt-major).
        baseline: subtract each prompt's mean score first (REINFORCE++-baseline; γ must be 1).
        gamma: the discount of the returns.
        all_reduce: sums a tensor over ranks (the normalization is over every rank's tokens).
    """
    if baseline:
        grouped = scores.view(-1, num_generations)
        scores = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    rewards = token_level_rewards(scores, token_kl.clamp(-KL_CLIP, KL_CLIP), mask, beta)
    returns = discounted_returns(rewards, mask, gamma)
    return whiten(returns, mask, all_reduce=all_reduce, convention="openrlhf"), rewards
