"""Policy-gradient surrogates: how the importance weight of a sampled token (or sequence) and its advantage make
the per-token loss. The GRPO family of TRL 1.16 (``GRPOTrainer._compute_loss``) and of its papers, as pure functions.

Notation: ρ_t = π(y_t | ·) / π_old(y_t | ·) per token; w the importance weight at the chosen level
(:func:`importance_log_weights`); A the advantage, (B, 1) per sequence or (B, T) per token; sg[·] stops the gradient.
Shapes: B sequences, T completion tokens, ``mask`` (B, T); a sequence-level weight is (B, 1) and broadcasts over the
tokens, so every surrogate returns a (B, 1) or (B, T) per-token loss that :func:`~lit_align.losses.policy_gradient.
aggregate_loss` reduces (after broadcasting to (B, T)).

The surrogates (paper; TRL 1.16 ``loss_type``):

- clip: −min(w·A, clip(w, 1−ε, 1+ε_high)·A), w capped at δ in the first term (PPO; DAPO's ε_high; INTELLECT-2's
  δ; TRL grpo, bnpo, dr_grpo, dapo, luspo);
- cispo: −sg[min(w, ε_max)]·A·log π_t (MiniMax-M1 2025, eq. 4; TRL cispo);
- sapo: −(4/τ)·σ(τ·(w − 1))·A, τ = τ_pos if A > 0 else τ_neg (SAPO, Gao et al. 2025; TRL sapo);
- vespo: −sg[φ(W)]·A·log π_t, φ(W) = e^λ·W^k·e^(−λW), W the sequence ratio (VESPO 2026; TRL vespo).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

ImportanceLevel = Literal["token", "sequence", "sequence_mean", "sequence_mean_token"]


def importance_log_weights(log_ratio: Tensor, mask: Tensor, level: ImportanceLevel) -> Tensor:
    """log w from the per-token log ratios log ρ_t = log π_t − log π_old,t (B, T), at a level:

        token                log w_t = log ρ_t                                      (B, T)  PPO, GRPO
        sequence             log w   = Σ_t log ρ_t   (the sequences' probability ratio) (B, 1)  RLOO (TRL's RLOO)
        sequence_mean        log w   = Σ_t log ρ_t / |y|   (geometric mean, GSPO eq. 7)    (B, 1)  TRL
                             ``importance_sampling_level="sequence"``
        sequence_mean_token  log w_t = sg[log w] + log π_t − sg[log π_t]   (GSPO-token, eq. 13)  (B, T)

    GSPO-token's weight equals GSPO's in value on every token, and its gradient is GSPO's per token: with one
    advantage per sequence the two losses and gradients are equal (the paper's remark; tested), and a per-token
    advantage can then weight tokens differently. |y| is the masked length, clamped to 1.
    """
    if level == "token":
        return log_ratio
    mask = mask.to(log_ratio.dtype)
    summed = (log_ratio * mask).sum(-1, keepdim=True)
    if level == "sequence":
        return summed
    mean = summed / mask.sum(-1, keepdim=True).clamp(min=1.0)
    if level == "sequence_mean":
        return mean
    if level == "sequence_mean_token":
        return mean.detach() + log_ratio - log_ratio.detach()
    raise ValueError(f"importance level must be token, sequence, sequence_mean or sequence_mean_token, got {level!r}")


def clip_objective(
    log_weights: Tensor, advantages: Tensor, epsilon: float = 0.2, epsilon_high: float | None = None,
    delta: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The clipped surrogate (PPO, Schulman et al. 2017, eq. 7; DAPO's clip-higher ε_high; INTELLECT-2's two-sided
    clip δ, arXiv 2505.07291, eq. 3):

        loss = −min(min(w, δ)·A, clip(w, 1 − ε, 1 + ε_high)·A),   w = exp(log_weights)

    Returns ``(loss, low, high)``, broadcast to the shape of ``log_weights`` x ``advantages``: where the clip is
    active as TRL counts it (low: w < 1 − ε and A < 0; high: w > 1 + ε_high and A > 0).
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    weights = torch.exp(log_weights)
    clipped = torch.clamp(weights, 1 - epsilon, 1 + epsilon_high)
    capped = weights if delta is None else torch.clamp(weights, max=delta)
    loss = -torch.min(capped * advantages, clipped * advantages)
    return loss, (weights < 1 - epsilon) & (advantages < 0), (weights > 1 + epsilon_high) & (advantages > 0)


def cispo_objective(log_weights: Tensor, logps: Tensor, advantages: Tensor, max_weight: float) -> tuple[Tensor, Tensor]:
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4; the ScaleRL study's ε_max, arXiv 2510.13786): the importance
    weight is clipped and detached, so every token keeps a gradient (none is dropped by a clip):

        loss_t = −sg[min(w, ε_max)]·A·log π_t

    Returns ``(loss, clipped)``: clipped where w > ε_max and A > 0 (TRL's ``cispo_clip_ratio``).
    """
    weights = torch.exp(log_weights)
    loss = -torch.clamp(weights, max=max_weight).detach() * advantages * logps
    return loss, (weights > max_weight) & (advantages > 0)


def sapo_objective(log_weights: Tensor, advantages: Tensor, tau_pos: float = 1.0, tau_neg: float = 1.05) -> Tensor:
    """SAPO (Soft Adaptive Policy Optimization, Gao et al. 2025, arXiv 2511.20347, eq. 5): a smooth gate instead
    of the hard clip,

        loss = −f(w)·A,   f(w) = (4/τ)·σ(τ·(w − 1)),   τ = τ_pos where A > 0, else τ_neg

    f(1) = 2/τ and f'(1) = 1: on-policy the gradient is the plain policy gradient; off-policy, tokens far from
    w = 1 are attenuated smoothly (τ_neg > τ_pos damps negative advantages faster)."""
    tau = torch.where(advantages > 0, torch.as_tensor(tau_pos, dtype=advantages.dtype),
                      torch.as_tensor(tau_neg, dtype=advantages.dtype)).to(log_weights.device)  # fmt: skip
    return -torch.sigmoid(tau * (torch.exp(log_weights) - 1)) * 4 / tau * advantages


@torch.no_grad()
def vespo_weights(
    log_ratio: Tensor, mask: Tensor, advantages: Tensor, k_pos: float = 2.0, lambda_pos: float = 3.0,
    k_neg: float = 3.0, lambda_neg: float = 2.0, rollout_log_ratio: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """VESPO's sequence weight (Variational Sequence-level Soft Policy Optimization, arXiv 2602.10693), no grad:

        φ(W) = e^λ·W^k·e^(−λ·W),   log W = Σ_t clip(log ρ_t, −20, 20) [+ Σ_t log ρ^IS_t]   (clamped to [log 1e-8, 20])

    (k, λ) = (k_pos, λ_pos) where A ≥ 0, else (k_neg, λ_neg); φ(1) = 1. ``rollout_log_ratio`` (B, T): the
    log of a token-level rollout importance correction, folded into W (TRL 1.16 ``get_gamma_weights``). Returns
    (B, 1); a non-finite φ is 0.
    """
    floor = math.log(1e-8)
    log_w = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)
    if rollout_log_ratio is not None:
        log_w = log_w + rollout_log_ratio.clamp(floor, 20.0).sum(-1, keepdim=True)
    log_w = log_w.clamp(floor, 20.0)
    nonnegative = advantages >= 0
    if nonnegative.dim() == 2 and nonnegative.shape[1] != 1:
        nonnegative = nonnegative[:, :1]
    k = torch.where(nonnegative, k_pos, k_neg).to(log_w.dtype)
    lam = torch.where(nonnegative, lambda_pos, lambda_neg).to(log_w.dtype).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_objective(phi: Tensor, logps: Tensor, advantages: Tensor) -> Tensor:
    """VESPO's per-token loss: −sg[φ(W)]·A·log π_t (:func:`vespo_weights`)."""
    return -phi * advantages * logps


RolloutCorrection = Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def rollout_correction_weights(
    old_logps: Tensor, sampler_logps: Tensor, mask: Tensor, mode: RolloutCorrection = "sequence_mask",
    clip_min: float | None = None, clip_max: float | None = 3.0,
) -> Tensor:  # fmt: skip
    """The importance weight π_old / π_sampler that corrects for a rollout engine (vLLM) whose log-probs of the
    sampled tokens differ from the trainer's (TRL 1.16's ``vllm_importance_sampling_correction``; truncated IS:
    Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"; masked IS: OpenRLHF's
    icepop / seq-mask-tis, verl's ``rollout_correction``):

        d_t = (log π_old,t − log π_sampler,t)·m_t   (a NaN engine log-prob: d_t = 0, no correction)
        token_*:     w_t = exp(d_t)                  (B, T)
        sequence_*:  w   = exp(Σ_t d_t)              (B, 1)
        *_truncate:  w ← clip(w, C_min, C_max)
        *_mask:      w ← 0 where w < C_min or w > C_max      (a missing bound is no bound)

    The per-token loss is multiplied by w (VESPO folds it into its sequence weight instead).
    """
    if mode == "none":
        raise ValueError("rollout_correction_weights: mode 'none' computes no weights")
    diff = ((old_logps - sampler_logps) * mask.to(old_logps.dtype)).nan_to_num(0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    weights = torch.exp(diff)
    if mode.endswith("truncate"):
        if clip_min is not None or clip_max is not None:
            weights = torch.clamp(weights, min=clip_min, max=clip_max)
        return weights
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return weights.masked_fill((weights < low) | (weights > high), 0.0)
