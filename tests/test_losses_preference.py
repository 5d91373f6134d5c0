"""Hand-computed tests for lit_align.losses.preference, plus parity with TRL 1.16 at the loss level.

softplus(x) = log(1 + e^x), so −log σ(x) = softplus(−x), and softplus(x) − softplus(−x) = x.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lit_align.losses import (
    bradley_terry_loss,
    dpo_loss,
    hinge_loss,
    log1mexp,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
)
from lit_align.losses.dpo_family import Pair, ipo

ATOL = 1e-6


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=grad)


def pair(grad: bool = False) -> tuple[torch.Tensor, ...]:
    """policy (c, r) = (-1, -2), ref (c, r) = (-1.5, -1.5): log-ratios 0.5 and -0.5, so h = 1.0."""
    return t(-1.0, grad=grad), t(-2.0, grad=grad), t(-1.5), t(-1.5)


def random_pairs(seed: int = 0, n: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(-torch.rand(n, generator=g) * 20 for _ in range(4))


def test_dpo_hand_computed():
    """h = 1, β = 0.1: loss = −log σ(0.1) = softplus(−0.1) = 0.6443967; rewards 0.1·0.5 = 0.05 and −0.05."""
    losses, chosen_rewards, rejected_rewards = dpo_loss(*pair(), beta=0.1)
    assert losses.item() == pytest.approx(softplus(-0.1), abs=ATOL)
    assert losses.item() == pytest.approx(0.6443967, abs=ATOL)
    assert chosen_rewards.item() == pytest.approx(0.05) and rejected_rewards.item() == pytest.approx(-0.05)


def test_cdpo_label_smoothing():
    """ε = 0.1, βh = 0.1: 0.9·softplus(−0.1) + 0.1·softplus(0.1) = 0.9·0.6443967 + 0.1·0.7443967
    = 0.6543967."""
    losses, _, _ = dpo_loss(*pair(), beta=0.1, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.6543967, abs=ATOL)


def test_dpo_equal_log_ratios_is_log2():
    """Limit case: h = 0 ⇒ −log σ(0) = log 2 for any β, with or without smoothing."""
    policy_c, policy_r = t(-3.0, -7.0), t(-4.0, -1.0)
    ref_c, ref_r = policy_c + 0.3, policy_r + 0.3  # equal log-ratios −0.3 on both sides
    for ls in (0.0, 0.2):
        losses, _, _ = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.5, label_smoothing=ls)
        torch.testing.assert_close(losses, torch.full((2,), math.log(2)))


def test_robust_dpo_hand_computed():
    """ε = 0.1, βh = 0.1: [0.9·softplus(−0.1) − 0.1·softplus(0.1)] / 0.8 = softplus(−0.1) − 0.1·0.1/0.8
    = 0.6443967 − 0.0125 = 0.6318967 (robust = DPO − εβh/(1−2ε)). ε = 0 gives plain DPO; ε = 0.5 raises."""
    losses, _, _ = robust_dpo_loss(*pair(), beta=0.1, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.6318967, abs=ATOL)
    torch.testing.assert_close(robust_dpo_loss(*pair())[0], dpo_loss(*pair())[0])
    with pytest.raises(ValueError):
        robust_dpo_loss(*pair(), label_smoothing=0.5)


def test_hinge_hand_computed():
    """β = 0.1: h = 1 ⇒ relu(1 − 0.1) = 0.9; h = 20 (chosen log-ratio 18 − (−1.5) = 19.5, rejected −0.5)
    ⇒ relu(1 − 2) = 0."""
    losses, _, _ = hinge_loss(t(-1.0, 18.0), t(-2.0, -2.0), t(-1.5, -1.5), t(-1.5, -1.5), beta=0.1)
    torch.testing.assert_close(losses, t(0.9, 0.0))


def test_ipo_hand_computed_and_zero_at_target():
    """β = 0.1 ⇒ target 1/(2β) = 5. Summed (the paper's h): h = 1 ⇒ (1 − 5)² = 16; h = 5 ⇒ 0 (the loss vanishes at the
    target). Length-normalized (TRL's), 2 chosen and 4 rejected tokens, c = 0.5, r = −0.5: h = 0.5/2 + 0.5/4 = 0.375 ⇒
    (0.375 − 5)² = 21.390625."""
    lengths = t(2.0, 2.0), t(4.0, 4.0)
    pair = Pair(t(-1.0, 3.0), t(-2.0, -2.0), t(-1.5, -1.5), t(-1.5, -1.5), *lengths)
    torch.testing.assert_close(ipo(pair, beta=0.1, length_normalized=False), t(16.0, 0.0))
    torch.testing.assert_close(ipo(pair, beta=0.1)[0], torch.tensor(21.390625))


def test_simpo_hand_computed():
    """β = 2, γ = 1 (defaults). Means (−1, −1.5): 2·0.5 − 1 = 0 ⇒ log 2. Means (−1, −2): 2·1 − 1 = 1 ⇒
    softplus(−1) = 0.3132617. Rewards β·mean: (−2, −2) and (−3, −4)."""
    losses, chosen_rewards, rejected_rewards = simpo_loss(t(-1.0, -1.0), t(-1.5, -2.0))
    torch.testing.assert_close(losses, t(math.log(2), softplus(-1.0)))
    torch.testing.assert_close(chosen_rewards, t(-2.0, -2.0))
    torch.testing.assert_close(rejected_rewards, t(-3.0, -4.0))


def test_log1mexp_accuracy():
    """log(1 − e^x): x = −ln 2 ⇒ log ½ = −ln 2; x = −1 ⇒ log(1 − e^{−1}) = −0.4586751;
    x = −1e−10 ⇒ log(1e−10 − 5e−21 …) = −23.0258509 (naive log(1 − exp(x)) gives −inf in fp32);
    x = −100 ⇒ −e^{−100} = −3.7200760e−44 (naive gives 0; checked to relative accuracy in fp64)."""
    x = t(-math.log(2), -1.0, -1e-10, -100.0)
    expected = t(-math.log(2), math.log(1 - math.exp(-1)), math.log(1e-10), -math.exp(-100))
    # −3.7e−44 is subnormal in fp32 (spacing 1.4e−45), hence the tiny atol; fp64 checks it relatively.
    torch.testing.assert_close(log1mexp(x), expected, rtol=1e-6, atol=1e-44)
    x64 = torch.tensor([-1e-10, -100.0], dtype=torch.float64)
    expected64 = torch.tensor([math.log(-math.expm1(-1e-10)), -math.exp(-100)], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x64), expected64, rtol=1e-12, atol=0.0)


def test_log1mexp_gradients_finite_near_zero():
    """d/dx log(1 − e^x) = −e^x/(1 − e^x): at x = −1e−10 it is ≈ −1e10, at −100 ≈ −3.7e−44; both finite.
    x = 0 (probability 1) is clamped to −tiny: finite value log(tiny), zero gradient, no NaN."""
    x = t(-1e-10, -100.0, -0.5, 0.0, grad=True)
    y = log1mexp(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert x.grad[0].item() == pytest.approx(-1e10, rel=1e-3)


def test_orpo_hand_computed():
    """mean_c = log ½, mean_r = log ¼: odds_c = ½/½ = 1, odds_r = ¼/¾ = ⅓ ⇒ log_odds = log 3 = 1.0986123;
    log σ(log 3) = log(3/4) = −0.2876821; β = 0.1 ⇒ loss = 0.02876821; rewards β·mean."""
    losses, chosen_rewards, rejected_rewards, log_odds_ratio, log_odds = orpo_loss(
        t(math.log(0.5)), t(math.log(0.25)), beta=0.1
    )
    assert log_odds.item() == pytest.approx(math.log(3), abs=ATOL)
    assert log_odds_ratio.item() == pytest.approx(math.log(0.75), abs=ATOL)
    assert losses.item() == pytest.approx(-0.1 * math.log(0.75), abs=ATOL)
    assert chosen_rewards.item() == pytest.approx(0.1 * math.log(0.5), abs=ATOL)
    assert rejected_rewards.item() == pytest.approx(0.1 * math.log(0.25), abs=ATOL)


def test_orpo_equal_logps_is_beta_log2():
    """Limit case: mean_c = mean_r ⇒ log_odds = 0 ⇒ loss = −β·log σ(0) = β·log 2."""
    losses, *_ = orpo_loss(t(-0.3, -5.0), t(-0.3, -5.0), beta=0.2)
    torch.testing.assert_close(losses, torch.full((2,), 0.2 * math.log(2)))


def test_bradley_terry_hand_computed():
    """r_c = (2, 0), r_r = (1, 0), margin (0.5, 0), coefficient 0.01:
    ex. 0: softplus(−(2 − 1 − 0.5)) + 0.01·3² = 0.4740770 + 0.09; ex. 1: log 2 + 0."""
    losses = bradley_terry_loss(t(2.0, 0.0), t(1.0, 0.0), margin=t(0.5, 0.0), center_rewards_coefficient=0.01)
    torch.testing.assert_close(losses, t(softplus(-0.5) + 0.09, math.log(2)))
    torch.testing.assert_close(bradley_terry_loss(t(2.0), t(1.0)), t(softplus(-1.0)))


@pytest.mark.parametrize(
    "fn",
    [dpo_loss, robust_dpo_loss, hinge_loss],
)
def test_reference_losses_gradients_finite(fn):
    """Gradients flow to the policy log-probs, are finite, and rewards are detached."""
    policy_c, policy_r, ref_c, ref_r = pair(grad=True)
    losses, chosen_rewards, rejected_rewards = fn(policy_c, policy_r, ref_c, ref_r)
    losses.sum().backward()
    assert torch.isfinite(policy_c.grad).all() and torch.isfinite(policy_r.grad).all()
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_reference_free_gradients_finite():
    """SimPO, ORPO (even at mean log-prob −1e−10, where TRL's log1mexp has a NaN gradient) and BT."""
    c, r = t(-1e-10, -2.0, grad=True), t(-1.0, -1e-10, grad=True)
    (simpo_loss(c, r)[0].sum() + orpo_loss(c, r)[0].sum() + bradley_terry_loss(c, r, 0.1, 0.1).sum()).backward()
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()


# --- parity with TRL 1.16 -------------------------------------------------------------------------------


def trl_dpo_per_sequence_loss(loss_type, beta, label_smoothing, pc, pr, rc, rr):
    """Transcribed from trl/trainer/dpo_trainer.py `DPOTrainer._compute_loss` (TRL 1.16,
    f_divergence_type="reverse_kl"); the method needs a model, so the formulas are copied, not called."""
    chosen_logratios, rejected_logratios = pc - rc, pr - rr
    delta_score = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta_score)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta_score)
    if loss_type == "robust":
        clean_loss_term = -(1 - label_smoothing) * F.logsigmoid(beta * delta_score)
        flipped_loss_term = -label_smoothing * F.logsigmoid(-beta * delta_score)
        return (clean_loss_term - flipped_loss_term) / (1 - 2 * label_smoothing)
    raise ValueError(loss_type)


@pytest.mark.parametrize(
    ("fn", "loss_type", "label_smoothing"),
    [(dpo_loss, "sigmoid", 0.0), (hinge_loss, "hinge", 0.0), (robust_dpo_loss, "robust", 0.2)],
)
def test_dpo_family_matches_trl(fn, loss_type, label_smoothing):
    pytest.importorskip("trl")
    pc, pr, rc, rr = random_pairs()
    kwargs = {"label_smoothing": label_smoothing} if fn is robust_dpo_loss else {}
    ours = fn(pc, pr, rc, rr, beta=0.3, **kwargs)[0]
    theirs = trl_dpo_per_sequence_loss(loss_type, 0.3, label_smoothing, pc, pr, rc, rr)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_ipo_matches_trl_token_mean():
    """TRL 1.16 DPOTrainer loss_type="ipo" divides the summed log-ratios by completion length, as our (one) IPO does
    by default."""
    pytest.importorskip("trl")
    pc, pr, rc, rr = random_pairs()
    chosen_len, rejected_len = torch.arange(1, 9.0), torch.arange(8, 0, -1.0)
    beta = 0.1
    chosen_avg_score = (pc - rc) / chosen_len.clamp(min=1.0)  # transcribed from dpo_trainer.py
    rejected_avg_score = (pr - rr) / rejected_len.clamp(min=1.0)
    theirs = (chosen_avg_score - rejected_avg_score - 1 / (2 * beta)) ** 2
    ours = ipo(Pair(pc, pr, rc, rr, chosen_len, rejected_len), beta=beta)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-6)  # values ~100: fp32 relative error


def test_simpo_and_cdpo_match_trl_cpo_loss():
    """Call TRL's CPOTrainer.cpo_loss unbound with a stand-in `self` (it reads alpha, beta, loss_type,
    simpo_gamma, label_smoothing, accelerator.device). CPO's "sigmoid" is cDPO's formula without a reference,
    so dpo_loss with zero reference log-probs must match it."""
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    c, r, _, _ = random_pairs(seed=1)
    c, r = c / 10, r / 10  # token-mean scale
    device = SimpleNamespace(device=torch.device("cpu"))
    for beta, gamma, ls in [(2.0, 1.0, 0.0), (2.5, 0.55 * 2.5, 0.1)]:
        stub = SimpleNamespace(
            alpha=0.0, beta=beta, loss_type="simpo", simpo_gamma=gamma, label_smoothing=ls, accelerator=device
        )
        theirs = cpo.CPOTrainer.cpo_loss(stub, c, r)
        ours = simpo_loss(c, r, beta=beta, gamma=gamma, label_smoothing=ls)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    stub = SimpleNamespace(alpha=0.0, beta=0.1, loss_type="sigmoid", label_smoothing=0.2, accelerator=device)
    zeros = torch.zeros_like(c)
    ours = dpo_loss(c, r, zeros, zeros, beta=0.1, label_smoothing=0.2)[0]
    torch.testing.assert_close(ours, cpo.CPOTrainer.cpo_loss(stub, c, r)[0], atol=ATOL, rtol=0)


def test_orpo_matches_trl_odds_ratio_loss():
    """TRL's ORPOTrainer.odds_ratio_loss (reads beta, accelerator.device) returns +β·log σ(log_odds) and
    batch means of log σ(log_odds) and log_odds; ours returns the negated loss and per-example terms."""
    orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    c, r, _, _ = random_pairs(seed=2)
    c, r = c / 10, r / 10
    stub = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device=torch.device("cpu")))
    t_losses, t_chosen, t_rejected, t_ratio_mean, t_log_odds_mean = orpo.ORPOTrainer.odds_ratio_loss(stub, c, r)
    losses, chosen, rejected, ratio, log_odds = orpo_loss(c, r, beta=0.1)
    torch.testing.assert_close(losses, -t_losses, atol=ATOL, rtol=0)
    torch.testing.assert_close(chosen, t_chosen, atol=ATOL, rtol=0)
    torch.testing.assert_close(rejected, t_rejected, atol=ATOL, rtol=0)
    torch.testing.assert_close(ratio.mean(), t_ratio_mean, atol=ATOL, rtol=0)
    torch.testing.assert_close(log_odds.mean(), t_log_odds_mean, atol=ATOL, rtol=0)
    x = -torch.logspace(-6, 2, 50)
    torch.testing.assert_close(log1mexp(x), orpo.log1mexp(x), atol=ATOL, rtol=1e-6)


def test_bradley_terry_matches_trl_reward_trainer():
    """Transcribed from trl/trainer/reward_trainer.py `RewardTrainer.compute_loss` (TRL 1.16): mean BT loss
    plus coefficient · mean((r_c + r_r)²). Our per-example losses average to that scalar."""
    pytest.importorskip("trl")
    rewards_chosen, rewards_rejected, margin, _ = random_pairs(seed=3)
    coef = 0.01
    loss = -F.logsigmoid(rewards_chosen - rewards_rejected - margin).mean()
    loss += coef * torch.mean((rewards_chosen + rewards_rejected) ** 2)
    ours = bradley_terry_loss(rewards_chosen, rewards_rejected, margin, center_rewards_coefficient=coef)
    torch.testing.assert_close(ours.mean(), loss, atol=1e-5, rtol=1e-6)
