"""RLOO against TRL 1.16's own ``RLOOTrainer`` on fixed completions: losses and gradients within 1e-5.

TRL's loss is comparable with lit-align's RLOO defaults: the k1 KL penalty subtracted from the sequence reward
(β Σ_t (log π_old − log π_ref), at the sampling temperature), leave-one-out advantages (optionally whitened over
the batch), one clipped ratio per sequence exp(Σ_t log π − Σ_t log π_old), mean over sequences. TRL computes the
rewards, KL penalty, advantages and old / reference log-probs itself; lit-align runs its module's ``update`` on the
same completions. Compared per optimizer step, on- and off-policy, with and without accumulation, at temperature 1
and 0.7, β = 0 and β > 0. ``importance_ratio="token"`` (lit-align only) has no TRL counterpart. How both sides are
driven: :mod:`tests.online_parity`.
"""

from __future__ import annotations

import pytest
import torch

from lit_align.algorithms.rloo import RLOO
from tests.online_parity import (
    ATOL,
    BETA,
    assert_parity,
    lit_align_module,
    make_fixture,
    max_gradient,
    run_lit_align,
    run_trl,
    trl_generation_batch,
    trl_trainer,
)

pytestmark = pytest.mark.slow  # TRL trainers


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("rloo-parity"))


def run_both(fx, tmp_path, monkeypatch, beta, temperature, iterations, accumulation, normalize=False):
    module = lit_align_module(RLOO, fx, beta=beta, temperature=temperature, num_iterations=iterations,
                              gradient_accumulation_steps=accumulation, normalize_advantages=normalize)  # fmt: skip
    assert (module.kl_penalty, module.importance_ratio) == ("reward", "sequence")  # RLOO's defaults, TRL's loss
    ours = run_lit_align(module, fx)
    trainer = trl_trainer("rloo", fx, tmp_path, monkeypatch, accumulation, beta=beta, temperature=temperature,
                          num_iterations=iterations, normalize_advantages=normalize)  # fmt: skip
    batch = trl_generation_batch(trainer, fx)
    theirs = run_trl(trainer, batch, [step.state for step in ours.steps], accumulation)
    return ours, theirs, batch


def check(ours, theirs, batch, beta, iterations):
    # Inputs of the loss first: the KL-penalized leave-one-out advantages and the sampling policy's sequence log-probs.
    torch.testing.assert_close(ours.exp.advantages, batch["advantages"], atol=1e-5, rtol=0)
    if ours.exp.old_logps is not None:  # lit-align skips that pass on-policy without a KL penalty (ratio exactly 1)
        old = (ours.exp.old_logps * ours.exp.loss_mask).sum(1)
        torch.testing.assert_close(old, batch["old_logps"], atol=ATOL, rtol=0)
    assert len(ours.steps) == iterations
    assert_parity(ours, theirs, metrics=("entropy", "clip_ratio/region_mean", *(("kl",) if beta else ())))
    assert max_gradient(ours) > 1e-2
    if beta:
        assert abs(ours.metrics["kl"]) > 1e-2  # the penalty is live: policy and reference differ
    if iterations == 2:  # the second pass is off-policy: its sequence ratios move the loss
        assert abs(ours.steps[1].loss - ours.steps[0].loss) > 1e-3


@pytest.mark.parametrize("accumulation", [1, 2], ids=["no-accum", "accum2"])
@pytest.mark.parametrize("iterations", [1, 2], ids=["on-policy", "off-policy"])
@pytest.mark.parametrize("temperature", [1.0, 0.7], ids=["t1", "t0.7"])
@pytest.mark.parametrize("beta", [0.0, BETA], ids=["beta0", "kl-reward"])
def test_rloo_matches_trl(fx, tmp_path, monkeypatch, beta, temperature, iterations, accumulation):
    ours, theirs, batch = run_both(fx, tmp_path, monkeypatch, beta, temperature, iterations, accumulation)
    check(ours, theirs, batch, beta, iterations)


@pytest.mark.parametrize("iterations", [1, 2], ids=["on-policy", "off-policy"])
def test_rloo_normalized_advantages_match_trl(fx, tmp_path, monkeypatch, iterations):
    """``normalize_advantages=True``: advantages whitened over the batch (TRL's option, off by default in both)."""
    ours, theirs, batch = run_both(fx, tmp_path, monkeypatch, BETA, 0.7, iterations, 2, normalize=True)
    check(ours, theirs, batch, BETA, iterations)
