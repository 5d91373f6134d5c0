"""Unpaired (binary-feedback) losses: KTO, its KL reference point, and unpaired APO-zero.

Shapes: B = batch of (prompt, completion) examples, each labelled desirable or undesirable; every input
and output tensor is (B,) unless said. Log-probs are summed over the completion, as TRL's KTOTrainer
computes them. Losses are per example, unreduced; rewards are detached, for logging only.

TRL 1.16 `KTOTrainer._compute_loss` splits the batch by label, computes each side's losses, concatenates
(desirable_weight·chosen_losses, undesirable_weight·rejected_losses) and takes `.nanmean()`. Order does not
change a mean, so TRL's scalar is `losses.mean()` of the per-example losses here (an empty side simply
has no entries). Its reward/logp metrics are per-side sums divided by per-side counts, each gathered
across ranks: `kto_side_sums` returns those pieces.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    is_desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", Eq. 7).

        r = log π(y|x) − log π_ref(y|x),   z = kl (the reference point, see `kto_kl_estimate`)
        desirable:   losses = λ_D·(1 − σ(β·(r − z)))
        undesirable: losses = λ_U·(1 − σ(β·(z − r)))

    λ_D, λ_U = desirable_weight, undesirable_weight. `kl` is a detached scalar (shape () or (1,)).
    1 − σ(x) is computed as σ(−x), which is the same value without cancellation for large x.
    Mixed, all-desirable and all-undesirable batches all work: each example takes its own side's formula.
    Returns (losses, rewards = β·r).
    """
    logratios = policy_logps - ref_logps
    desirable_losses = desirable_weight * torch.sigmoid(-beta * (logratios - kl))
    undesirable_losses = undesirable_weight * torch.sigmoid(-beta * (kl - logratios))
    losses = torch.where(is_desirable.bool(), desirable_losses, undesirable_losses)
    return losses, beta * logratios.detach()


def kto_kl_estimate(
    policy_kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """KTO's reference point z_ref (Ethayarajh et al. 2024), a detached scalar:

        z = max(0, mean_ranks(mean_i(log π(y'_i|x_i) − log π_ref(y'_i|x_i))))

    over mismatched (x_i, y'_i) pairs (each prompt with another example's completion): a biased but
    low-variance estimate of KL(π ‖ π_ref), not back-propagated through.

    `all_reduce_mean` maps a scalar to its mean over ranks (e.g. `lambda t: fabric.all_gather(t).mean()`
    or Lightning's `self.all_gather(t).mean()`); None means a single process. This copies TRL 1.16
    `KTOTrainer._compute_loss`: each rank takes its local mean, the local means are gathered and averaged,
    and only then clamped at 0. A mean of rank means equals the global mean only when every rank holds the
    same number of KL pairs (true for equal per-device batches; the last, smaller batch differs slightly).
    """
    kl = (policy_kl_logps - ref_kl_logps).mean().detach()
    if all_reduce_mean is not None:
        kl = all_reduce_mean(kl)
    return kl.clamp(min=0)


def kto_side_sums(
    values: torch.Tensor, is_desirable: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-side sums and counts of `values` (e.g. rewards or log-probs), detached, for TRL-style metrics.

    Returns (desirable_sum, desirable_count, undesirable_sum, undesirable_count), each a scalar. TRL
    gathers each across ranks, sums, and logs sum/count only for a side whose global count is > 0, so an
    empty side contributes nothing instead of a NaN mean. Sums skip NaNs like TRL's `nansum`.
    """
    mask = is_desirable.bool()
    values = values.detach()
    zero = values.new_zeros(())
    desirable_sum = torch.where(mask, values, zero).nansum()
    undesirable_sum = torch.where(mask, zero, values).nansum()
    desirable_count = mask.sum().to(values.dtype)
    return desirable_sum, desirable_count, undesirable_sum, mask.numel() - desirable_count


def apo_zero_unpaired_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    is_desirable: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpaired APO-zero, TRL 1.16 KTOTrainer loss_type="apo_zero_unpaired".

        r = log π(y|x) − log π_ref(y|x)
        desirable:   losses = λ_D·(1 − σ(β·r))
        undesirable: losses = λ_U·σ(β·r)

    APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions",
    Eq. 7) is paired: −σ(β·r_c) + σ(β·r_r), pushing chosen up and rejected down each against a fixed
    anchor instead of against each other. The unpaired split is TRL's, not the paper's; TRL also applies
    desirable_weight/undesirable_weight to it and computes no KL term. Returns (losses, rewards = β·r).
    """
    logratios = policy_logps - ref_logps
    desirable_losses = desirable_weight * torch.sigmoid(-beta * logratios)
    undesirable_losses = undesirable_weight * torch.sigmoid(beta * logratios)
    losses = torch.where(is_desirable.bool(), desirable_losses, undesirable_losses)
    return losses, beta * logratios.detach()
