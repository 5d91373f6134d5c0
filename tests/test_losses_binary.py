"""Hand-computed tests for lit_align.losses.binary, plus parity with TRL 1.16 KTOTrainer's formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_align.losses import apo_zero_unpaired_loss, kto_kl_estimate, kto_loss, kto_side_sums

ATOL = 1e-6


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=grad)


def mixed_batch(grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """policy (−1, −2, −3, −4), ref (−1.5, −1.5, −2, −5): log-ratios r = (0.5, −0.5, −1, 1);
    labels desirable, undesirable, desirable, undesirable."""
    return t(-1.0, -2.0, -3.0, -4.0, grad=grad), t(-1.5, -1.5, -2.0, -5.0), torch.tensor([1, 0, 1, 0])


def test_kto_hand_computed_mixed_batch():
    """β = 0.1, z = 0.2, λ_D = 1.5, λ_U = 0.5:
    ex. 0 (desirable, r = 0.5):   1.5·(1 − σ(0.1·0.3))  = 1.5·σ(−0.03) = 0.7387508
    ex. 1 (undesirable, r = −0.5): 0.5·(1 − σ(0.1·0.7)) = 0.5·σ(−0.07) = 0.2412536
    ex. 2 (desirable, r = −1):    1.5·(1 − σ(0.1·−1.2)) = 1.5·σ(0.12)  = 0.7949461
    ex. 3 (undesirable, r = 1):   0.5·(1 − σ(0.1·−0.8)) = 0.5·σ(0.08)  = 0.2599947
    rewards β·r = (0.05, −0.05, −0.1, 0.1)."""
    policy, ref, is_desirable = mixed_batch()
    losses, rewards = kto_loss(policy, ref, is_desirable, torch.tensor(0.2), 0.1, 1.5, 0.5)
    expected = t(1.5 * sigmoid(-0.03), 0.5 * sigmoid(-0.07), 1.5 * sigmoid(0.12), 0.5 * sigmoid(0.08))
    torch.testing.assert_close(losses, expected, atol=ATOL, rtol=0)
    assert losses[0].item() == pytest.approx(0.7387508, abs=ATOL)
    torch.testing.assert_close(rewards, t(0.05, -0.05, -0.1, 0.1))


def test_kto_at_reference_point_is_half_weight():
    """Limit case: r = z ⇒ 1 − σ(0) = ½ on either side, so losses are λ/2."""
    losses, _ = kto_loss(t(-1.0, -1.0), t(-1.3, -1.3), torch.tensor([True, False]), torch.tensor(0.3), 0.1, 2.0)
    torch.testing.assert_close(losses, t(1.0, 0.5))


@pytest.mark.parametrize("label", [True, False])
def test_kto_single_sided_batches(label):
    """All-desirable / all-undesirable: no NaN in losses or gradients, every example uses its side's formula,
    and the empty side contributes nothing (its sum and count are 0; the mean is the present side's mean)."""
    policy, ref, _ = mixed_batch(grad=True)
    is_desirable = torch.full((4,), label)
    kl = torch.tensor(0.2)
    losses, rewards = kto_loss(policy, ref, is_desirable, kl, beta=0.1)
    r = policy.detach() - ref
    side = torch.sigmoid(-0.1 * (r - kl)) if label else torch.sigmoid(-0.1 * (kl - r))
    torch.testing.assert_close(losses, side)
    losses.mean().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(policy.grad).all()
    d_sum, d_count, u_sum, u_count = kto_side_sums(rewards, is_desirable)
    empty_sum, empty_count = (u_sum, u_count) if label else (d_sum, d_count)
    assert empty_sum.item() == 0.0 and empty_count.item() == 0.0
    assert (d_count + u_count).item() == 4


def test_kto_side_sums_hand_computed():
    """Rewards (0.05, −0.05, −0.1, 0.1), labels (1, 0, 1, 0): desirable sum −0.05 over 2, undesirable 0.05
    over 2, so TRL-style rewards/chosen = −0.025, rewards/rejected = 0.025."""
    _, rewards = kto_loss(*mixed_batch(), torch.tensor(0.0))
    d_sum, d_count, u_sum, u_count = kto_side_sums(rewards, mixed_batch()[2])
    torch.testing.assert_close(torch.stack([d_sum, d_count, u_sum, u_count]), t(-0.05, 2.0, 0.05, 2.0))


def test_kto_kl_estimate_hand_computed():
    """policy_kl (−1, −2), ref_kl (−1.5, −3): diffs (0.5, 1) ⇒ mean 0.75. Against ref (−1.5, −1): diffs
    (0.5, −1) ⇒ mean −0.25 ⇒ clamped to 0. Result is detached even when inputs need grad."""
    policy_kl = t(-1.0, -2.0, grad=True)
    kl = kto_kl_estimate(policy_kl, t(-1.5, -3.0))
    assert kl.item() == pytest.approx(0.75) and not kl.requires_grad and kl.dim() == 0
    assert kto_kl_estimate(policy_kl, t(-1.5, -1.0)).item() == 0.0


def test_kto_kl_estimate_reduces_across_ranks_before_clamping():
    """Two ranks with local means −0.25 and 0.75: the mean of rank means is 0.25, clamped after the reduction
    (as TRL does). Clamping first would give (0 + 0.75)/2 = 0.375."""
    other_rank = torch.tensor(0.75)
    kl = kto_kl_estimate(t(-1.0, -2.0), t(-1.5, -1.0), all_reduce_mean=lambda x: (x + other_rank) / 2)
    assert kl.item() == pytest.approx(0.25)


def test_apo_zero_unpaired_hand_computed():
    """β = 0.1. Desirable r = 0.5: 1 − σ(0.05) = σ(−0.05) = 0.4875026; undesirable r = 1: σ(0.1) = 0.5249792;
    with λ_U = 2 the undesirable loss doubles. Limit r = 0: ½ on both sides."""
    losses, rewards = apo_zero_unpaired_loss(
        t(-1.0, -4.0), t(-1.5, -5.0), torch.tensor([1, 0]), beta=0.1, undesirable_weight=2.0
    )
    torch.testing.assert_close(losses, t(sigmoid(-0.05), 2 * sigmoid(0.1)), atol=ATOL, rtol=0)
    torch.testing.assert_close(rewards, t(0.05, 0.1))
    half, _ = apo_zero_unpaired_loss(t(-1.0, -1.0), t(-1.0, -1.0), torch.tensor([1, 0]))
    torch.testing.assert_close(half, t(0.5, 0.5))


def test_gradients_finite_and_rewards_detached():
    policy, ref, is_desirable = mixed_batch(grad=True)
    kto_losses, kto_rewards = kto_loss(policy, ref, is_desirable, torch.tensor(0.1))
    apo_losses, apo_rewards = apo_zero_unpaired_loss(policy, ref, is_desirable)
    (kto_losses.sum() + apo_losses.sum()).backward()
    assert torch.isfinite(policy.grad).all() and (policy.grad != 0).all()
    assert not kto_rewards.requires_grad and not apo_rewards.requires_grad


# --- parity with TRL 1.16 -------------------------------------------------------------------------------


def trl_kto_scalar(loss_type, beta, desirable_weight, undesirable_weight, logps, ref_logps, label, kl):
    """Transcribed from trl/trainer/kto_trainer.py `KTOTrainer._compute_loss` (TRL 1.16): split by label with
    index_select, compute each side (an empty side becomes an empty tensor), concatenate weighted sides,
    `.nanmean()`. The method needs a model, so the formulas are copied, not called."""
    bool_labels = torch.as_tensor(label, dtype=torch.bool)
    chosen_idx = torch.nonzero(bool_labels, as_tuple=False).view(-1)
    rejected_idx = torch.nonzero(~bool_labels, as_tuple=False).view(-1)
    chosen_logratios = logps.index_select(0, chosen_idx) - ref_logps.index_select(0, chosen_idx)
    rejected_logratios = logps.index_select(0, rejected_idx) - ref_logps.index_select(0, rejected_idx)
    if loss_type == "kto":
        chosen_losses = 1 - F.sigmoid(beta * (chosen_logratios - kl))
        rejected_losses = 1 - F.sigmoid(beta * (kl - rejected_logratios))
    else:  # apo_zero_unpaired
        chosen_losses = 1 - F.sigmoid(beta * chosen_logratios)
        rejected_losses = F.sigmoid(beta * rejected_logratios)
    losses = torch.cat((desirable_weight * chosen_losses, undesirable_weight * rejected_losses), 0)
    return losses.nanmean()


@pytest.mark.parametrize("labels", [[1, 0, 1, 1, 0, 0, 1, 0], [1] * 8, [0] * 8])
def test_kto_and_apo_match_trl_scalar(labels):
    """TRL's scalar loss equals losses.mean() of our per-example losses, for mixed and one-sided batches."""
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(0)
    logps, ref_logps = -torch.rand(8, generator=g) * 30, -torch.rand(8, generator=g) * 30
    label = torch.tensor(labels)
    policy_kl, ref_kl = -torch.rand(8, generator=g) * 30, -torch.rand(8, generator=g) * 30
    # TRL: kl = (KL_logps - ref_KL_logps).mean().detach(); gather_for_metrics(kl).mean().clamp(min=0)
    trl_kl = (policy_kl - ref_kl).mean().detach().reshape(1).mean().clamp(min=0)
    kl = kto_kl_estimate(policy_kl, ref_kl)
    torch.testing.assert_close(kl, trl_kl)
    ours = kto_loss(logps, ref_logps, label, kl, beta=0.1, desirable_weight=1.3, undesirable_weight=0.7)[0]
    theirs = trl_kto_scalar("kto", 0.1, 1.3, 0.7, logps, ref_logps, label, trl_kl)
    torch.testing.assert_close(ours.mean(), theirs, atol=ATOL, rtol=0)
    ours = apo_zero_unpaired_loss(logps, ref_logps, label, beta=0.1, desirable_weight=1.3, undesirable_weight=0.7)
    theirs = trl_kto_scalar("apo_zero_unpaired", 0.1, 1.3, 0.7, logps, ref_logps, label, None)
    torch.testing.assert_close(ours[0].mean(), theirs, atol=ATOL, rtol=0)
