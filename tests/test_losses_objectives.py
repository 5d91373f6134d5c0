"""The GRPO loss family's surrogates (lit_align/losses/objectives.py) against hand-computed values from their papers'
equations; TRL parity is in tests/test_parity_grpo_trl.py (test_grpo_family_matches_trl)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.losses.objectives import (
    cispo_objective,
    clip_objective,
    importance_log_weights,
    sapo_objective,
    vespo_objective,
    vespo_weights,
)
from lit_align.training.objective import ObjectiveOptions

LOG_RATIO = torch.tensor([[0.2, -0.4, 0.6], [0.1, 0.3, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_importance_weights_at_each_level_by_hand():
    assert torch.equal(importance_log_weights(LOG_RATIO, MASK, "token"), LOG_RATIO)
    torch.testing.assert_close(importance_log_weights(LOG_RATIO, MASK, "sequence"), torch.tensor([[0.4], [0.4]]))
    # GSPO eq. 7: the length-normalized (geometric-mean) ratio: 0.4 / 3 and 0.4 / 2
    torch.testing.assert_close(importance_log_weights(LOG_RATIO, MASK, "sequence_mean"),
                               torch.tensor([[0.4 / 3], [0.2]]))  # fmt: skip
    token = importance_log_weights(LOG_RATIO, MASK, "sequence_mean_token")
    torch.testing.assert_close(token, torch.tensor([[0.4 / 3] * 3, [0.2] * 3]))  # GSPO's value on every token
    with pytest.raises(ValueError, match="importance level"):
        importance_log_weights(LOG_RATIO, MASK, "sentence")


def test_gspo_token_equals_gspo_in_loss_and_gradient_with_one_advantage_per_sequence():
    """GSPO paper, section 4.3: with A_{i,t} = A_i, GSPO-token's objective and gradient are GSPO's."""
    advantages = torch.tensor([[1.5], [-0.7]])
    results = []
    for level in ("sequence_mean", "sequence_mean_token"):
        logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -4.0]], requires_grad=True)
        old = logps.detach() - LOG_RATIO
        loss, _, _ = clip_objective(importance_log_weights(logps - old, MASK, level), advantages, 0.2)
        total = ((loss.expand_as(MASK) * MASK).sum(1) / MASK.sum(1)).mean()
        total.backward()
        results.append((total.detach(), logps.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_clip_with_the_two_sided_cap_by_hand():
    """INTELLECT-2 eq. 3: −min(min(w, δ)·A, clip(w, 1−ε, 1+ε_high)·A). With A < 0 the clip's max side binds:
    w = e^0.6 = 1.822 > 1 + ε: the plain PPO loss is −(w·A) = 1.822·|A| (the min picks the unclipped, more negative
    term); δ = 1.5 caps it at 1.5·|A|."""
    log_w, advantage = torch.tensor([0.6]), torch.tensor([-2.0])
    plain, low, high = clip_objective(log_w, advantage, 0.2)
    assert plain.item() == pytest.approx(math.exp(0.6) * 2.0) and not low.item() and not high.item()
    capped, _, _ = clip_objective(log_w, advantage, 0.2, delta=1.5)
    assert capped.item() == pytest.approx(1.5 * 2.0)
    _, low, _ = clip_objective(torch.tensor([-0.5]), advantage, 0.2)  # w = 0.61 < 0.8 with A < 0: clipped low
    assert low.item()


def test_cispo_keeps_every_token_in_the_gradient_with_a_capped_detached_weight():
    """MiniMax-M1 eq. 4: ∇ = −min(w, ε_max)·A·∇log π, the weight detached: a token whose w exceeds the cap still
    gets (cap·A) of the gradient, where PPO's clip would give it none."""
    logps = torch.tensor([-1.0, -2.0], requires_grad=True)
    log_w = torch.tensor([0.1, 1.0])  # w = 1.105, 2.718
    loss, clipped = cispo_objective(log_w, logps, torch.tensor([2.0, 2.0]), max_weight=2.0)
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([-math.exp(0.1) * 2.0, -2.0 * 2.0]))
    assert clipped.tolist() == [False, True]


def test_sapo_gate_by_hand():
    """SAPO eq. 5: f(w) = (4/τ)σ(τ(w − 1)); f(1) = 2/τ, f'(1) = 1 (on-policy it is the plain policy gradient)."""
    advantages = torch.tensor([1.0, -1.0])
    log_w = torch.zeros(2, requires_grad=True)
    loss = sapo_objective(log_w, advantages, tau_pos=1.0, tau_neg=2.0)
    torch.testing.assert_close(loss.detach(), torch.tensor([-2.0, 1.0]))  # −(2/τ)·A
    loss.sum().backward()
    torch.testing.assert_close(log_w.grad, torch.tensor([-1.0, 1.0]))  # −A·f'(1)·dw/dlog w, f'(1) = 1
    w = 1.5
    expected = -(4 / 1.0) / (1 + math.exp(-1.0 * (w - 1)))
    assert sapo_objective(torch.tensor([math.log(w)]), torch.tensor([1.0])).item() == pytest.approx(expected)


def test_vespo_weight_by_hand():
    """VESPO: φ(W) = e^λ·W^k·e^(−λW) of the sequence ratio W = Π_t ρ_t; φ(1) = 1; (k, λ) by the advantage's sign."""
    log_ratio = torch.tensor([[0.3, 0.4, 9.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    phi = vespo_weights(log_ratio, mask, torch.tensor([[1.0], [-1.0]]), k_pos=2.0, lambda_pos=3.0, k_neg=3.0,
                        lambda_neg=2.0)  # fmt: skip
    w = math.exp(0.7)
    assert phi[0, 0].item() == pytest.approx(math.exp(3.0) * w**2 * math.exp(-3.0 * w), rel=1e-5)
    assert phi[1, 0].item() == pytest.approx(1.0)
    logps = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
    vespo_objective(phi[:1], logps, torch.tensor([[2.0]])).sum().backward()
    torch.testing.assert_close(logps.grad, -phi[:1].expand(1, 3) * 2.0)  # φ carries no gradient


def test_objective_options_refuse_knobs_of_another_objective():
    with pytest.raises(ValueError, match=r"--model.objective.sapo_temperature_neg=2.0: applies to objective.name=sapo, "
                                         r"not clip"):  # fmt: skip
        ObjectiveOptions(sapo_temperature_neg=2.0)
    with pytest.raises(ValueError, match=r"--model.objective.name='ppo': clip, cispo, sapo or vespo"):
        ObjectiveOptions(name="ppo")
    assert ObjectiveOptions(name="vespo", vespo_k_pos=1.0).metric_names() == ("vespo/phi_seq_mean",)
