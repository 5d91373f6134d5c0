"""Pairwise preference losses: DPO and its variants, SPIN, SimPO, ORPO, and the Bradley-Terry reward-model loss.

Shapes: B = batch of (chosen, rejected) pairs. Every input and output tensor is (B,) unless said; the
log-probs are sequence-level (summed or token-mean, as each docstring says). Losses are per example,
unreduced: the caller picks the aggregation. Rewards are detached, for logging only.

Notation: h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)), the difference of log-ratios.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LN_HALF = -math.log(2.0)


def _smoothed_sigmoid_loss(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """−(1−ε)·log σ(logits) − ε·log σ(−logits): the sigmoid loss with labels flipped with probability ε."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _log_ratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO (Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7), with conservative DPO.

        losses = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h),   ε = label_smoothing

    ε = 0 is DPO; ε > 0 is cDPO (Mitchell 2023, "A note on DPO with noisy preferences"): the label is
    assumed flipped with probability ε. This is the formula of TRL's CPOTrainer (loss_type="sigmoid") and
    of TRL's DPOTrainer before 1.0. TRL 1.16 `DPOTrainer._compute_loss` (loss_type="sigmoid") ignores
    `label_smoothing` (it is only read by "robust", "exo_pair", "aot"), so parity with it holds at ε = 0.

    Inputs are summed log-probs of the completions. Returns (losses, chosen_rewards, rejected_rewards)
    with rewards β·(log π − log π_ref).
    """
    chosen_logratios, rejected_logratios = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = _smoothed_sigmoid_loss(beta * (chosen_logratios - rejected_logratios), label_smoothing)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def spin_loss(
    policy_real_logps: torch.Tensor,
    policy_generated_logps: torch.Tensor,
    opponent_real_logps: torch.Tensor,
    opponent_generated_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPIN's self-play loss (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong
    Language Models", Eq. 4.7 with the logistic loss ℓ(t) = log(1 + e^{−t}); β is the paper's λ).

        losses = ℓ(λ·log(p_θ(y|x) / p_θt(y|x)) − λ·log(p_θ(y'|x) / p_θt(y'|x)))

    y is the ground-truth response (real), y' ~ p_θt(·|x) the opponent's own response (generated), p_θt the
    opponent: the policy as it stood when the iteration began. Since ℓ(t) = −log σ(t), this is `dpo_loss`
    (ε = 0) with y_w = y, y_l = y' and π_ref = p_θt. Inputs are summed log-probs of the completions.
    Returns (losses, real_rewards, generated_rewards) with rewards λ·(log p_θ − log p_θt), detached.
    """
    real_logratios = policy_real_logps - opponent_real_logps
    generated_logratios = policy_generated_logps - opponent_generated_logps
    losses = F.softplus(-beta * (real_logratios - generated_logratios))  # log(1 + e^{−t})
    return losses, beta * real_logratios.detach(), beta * generated_logratios.detach()


def robust_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"), TRL loss_type="robust".

        losses = [(1 − ε)·(−log σ(β·h)) − ε·(−log σ(−β·h))] / (1 − 2ε),   ε = label_smoothing ∈ [0, 0.5)

    An unbiased estimate of the clean DPO loss when labels flip with probability ε. Algebraically it equals
    the DPO loss minus ε·β·h / (1 − 2ε), so it is not bounded below; ε = 0 is DPO.
    Returns (losses, chosen_rewards, rejected_rewards) as `dpo_loss`.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5), got {label_smoothing}")
    chosen_logratios, rejected_logratios = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (chosen_logratios - rejected_logratios)
    clean = -(1 - label_smoothing) * F.logsigmoid(logits)
    flipped = -label_smoothing * F.logsigmoid(-logits)
    losses = (clean - flipped) / (1 - 2 * label_smoothing)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def hinge_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hinge loss on the log-ratio margin (RSO, Liu et al. 2023, "hinge-norm"; SLiC, Zhao et al. 2023).

        losses = max(0, 1 − β·h)

    TRL loss_type="hinge". SLiC's calibration loss is max(0, δ − log π(y_c) + log π(y_r)) without a
    reference; RSO's hinge-norm adds the reference; with δ = 1/β this is β·max(0, 1/β − h).
    Returns (losses, chosen_rewards, rejected_rewards) as `dpo_loss`.
    """
    chosen_logratios, rejected_logratios = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward").

        losses = −log σ(β·(mean_c − mean_r) − γ)          (ε = 0; ε > 0 smooths as in `dpo_loss`)

    Inputs are LENGTH-AVERAGED (token-mean) policy log-probs; no reference model. `gamma` is the target
    reward margin γ, the same quantity as TRL's `simpo_gamma`: TRL 1.16 `CPOTrainer.cpo_loss`
    (loss_type="simpo") computes logits = (mean_c − mean_r) − simpo_gamma/β and then σ(β·logits).
    Defaults β = 2.0, γ = 1.0 (γ/β = 0.5): the SimPO authors recommend β in 2.0–2.5 and γ/β = 0.5 as the
    starting point (their Llama3-Base setting). TRL's defaults (β = 0.1, simpo_gamma = 0.5) are CPO's.
    Returns (losses, chosen_rewards = β·mean_c, rejected_rewards = β·mean_r).
    """
    logits = beta * (policy_chosen_logps - policy_rejected_logps) - gamma
    losses = _smoothed_sigmoid_loss(logits, label_smoothing)
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate everywhere (Mächler 2012, "Accurately Computing log(1 − exp(−|a|))
    Assessed by the Rmpfr package").

        log1mexp(x) = log(−expm1(x))   for x ≥ −ln 2
                      log1p(−exp(x))   otherwise

    Each branch only ever sees inputs in its own range, so the branch torch.where discards cannot be
    ±inf and turn a zero gradient into NaN (TRL's `log1mexp` in trl/experimental/orpo/orpo_trainer.py
    evaluates both branches on all inputs: its gradient is NaN for |x| ≲ 6e-8 in fp32). x is clamped to
    at most −tiny, so x = 0 (probability 1) gives log(tiny) ≈ −87.3 in fp32 instead of −inf.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = x >= _LN_HALF
    small = torch.log(-torch.expm1(torch.where(near_zero, x, _LN_HALF)))
    large = torch.log1p(-torch.exp(torch.where(near_zero, _LN_HALF, x)))
    return torch.where(near_zero, small, large)


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO's odds-ratio term (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without
    Reference Model", Eqs. 4, 7; β is the paper's λ).

        log_odds = log(odds_c / odds_r) = (mean_c − mean_r) − (log(1 − e^mean_c) − log(1 − e^mean_r))
        losses   = −β·log σ(log_odds)

    Inputs are token-mean policy log-probs; the full ORPO objective is NLL(chosen) + losses. Computed in
    fp32 like TRL. TRL 1.16 `ORPOTrainer.odds_ratio_loss` (trl/experimental/orpo) returns +β·log σ(log_odds)
    and subtracts its mean in the caller, and returns the two logging terms as batch means; here the
    loss carries its sign and the logging terms are per example. Only `log1mexp`'s safety differs.
    Returns (losses, chosen_rewards = β·mean_c, rejected_rewards = β·mean_r,
    log_odds_ratio = log σ(log_odds), log_odds_chosen = log_odds); the last two are detached.
    """
    chosen, rejected = policy_chosen_logps.float(), policy_rejected_logps.float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    ratio = F.logsigmoid(log_odds)
    losses = -beta * ratio
    return (
        losses,
        beta * chosen.detach(),
        beta * rejected.detach(),
        ratio.detach(),
        log_odds.detach(),
    )


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """Pairwise reward-model loss (Bradley & Terry 1952; Ouyang et al. 2022, Eq. 1), with Llama 2's margin
    (Touvron et al. 2023, Eq. 2) and reward centering (Eisenstein et al. 2023, "Helping or Herding?").

        losses = −log σ(r_c − r_r − margin) + center_rewards_coefficient·(r_c + r_r)²

    Inputs are scalar reward-model outputs r_c, r_r. TRL 1.16 `RewardTrainer.compute_loss` adds
    coefficient·mean over the batch of (r_c + r_r)² to the mean Bradley-Terry loss; that is exactly the
    mean of these per-example losses, so `losses.mean()` reproduces TRL's scalar.
    """
    logits = chosen_rewards - rejected_rewards
    if margin is not None:
        logits = logits - margin
    losses = -F.logsigmoid(logits)
    if center_rewards_coefficient is not None:
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return losses
