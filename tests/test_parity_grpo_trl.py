"""GRPO against TRL 1.16's own ``GRPOTrainer`` on fixed completions: losses and gradients within 1e-5.

TRL computes everything after generation itself (rewards, advantages, old and reference log-probs at its
temperature, ``_compute_loss``); lit-align runs its module's ``update`` on the same completions. Every optimizer step
is compared: on-policy (``num_iterations=1``: no old log-probs, TRL and lit-align both use the live ones detached)
and off-policy (``num_iterations=2``: the second pass is taken after an AdamW step, its old log-probs are the
sampling state's), with and without gradient accumulation, at temperature 1 and 0.7, for each aggregation
(``sequence_mean`` = TRL ``grpo``, ``token_mean`` = ``dapo``, ``constant`` = ``dr_grpo``), β = 0 and β > 0 with the
KL importance correction on (TRL's default ``use_bias_correction_kl=True``) and off. How both sides are driven:
:mod:`tests.online_parity`.
"""

from __future__ import annotations

import pytest
import torch

from lit_align.algorithms.grpo import GRPO
from tests.online_parity import (
    ATOL,
    BETA,
    assert_parity,
    deviations,
    lit_align_module,
    make_fixture,
    max_gradient,
    run_lit_align,
    run_trl,
    trl_generation_batch,
    trl_trainer,
)

pytestmark = pytest.mark.slow  # TRL trainers

AGGREGATIONS = [("sequence_mean", "grpo"), ("token_mean", "dapo"), ("constant", "dr_grpo")]
KL = [(0.0, True), (BETA, True), (BETA, False)]  # (beta, importance correction)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("grpo-parity"))


def run_both(fx, tmp_path, monkeypatch, aggregation, loss_type, beta, correction, temperature, iterations, accumulation,
             **extra):  # fmt: skip
    module = lit_align_module(GRPO, fx, loss_aggregation=aggregation, beta=beta, kl_importance_correction=correction,
                              temperature=temperature, num_iterations=iterations,
                              gradient_accumulation_steps=accumulation, **extra)  # fmt: skip
    ours = run_lit_align(module, fx)
    trainer = trl_trainer("grpo", fx, tmp_path, monkeypatch, accumulation, loss_type=loss_type, beta=beta,
                          use_bias_correction_kl=correction, temperature=temperature, num_iterations=iterations,
                          **extra)  # fmt: skip
    batch = trl_generation_batch(trainer, fx)
    theirs = run_trl(trainer, batch, [step.state for step in ours.steps], accumulation)
    return ours, theirs, batch


@pytest.mark.parametrize("accumulation", [1, 2], ids=["no-accum", "accum2"])
@pytest.mark.parametrize("iterations", [1, 2], ids=["on-policy", "off-policy"])
@pytest.mark.parametrize("temperature", [1.0, 0.7], ids=["t1", "t0.7"])
@pytest.mark.parametrize(("beta", "correction"), KL, ids=["beta0", "kl-corrected", "kl-plain"])
@pytest.mark.parametrize(("aggregation", "loss_type"), AGGREGATIONS, ids=[a for a, _ in AGGREGATIONS])
def test_grpo_matches_trl(fx, tmp_path, monkeypatch, aggregation, loss_type, beta, correction, temperature,
                          iterations, accumulation):  # fmt: skip
    ours, theirs, batch = run_both(fx, tmp_path, monkeypatch, aggregation, loss_type, beta, correction, temperature,
                                   iterations, accumulation)  # fmt: skip
    # Inputs of the loss first: advantages, and the log-probs of the no-grad passes (at the temperature).
    torch.testing.assert_close(ours.exp.advantages, batch["advantages"], atol=1e-6, rtol=0)
    for name, key in (("ref_logps", "ref_per_token_logps"), ("old_logps", "old_per_token_logps")):
        assert (getattr(ours.exp, name) is None) == (key not in batch), name
        if key in batch:
            torch.testing.assert_close(getattr(ours.exp, name), batch[key], atol=ATOL, rtol=0)
    assert len(ours.steps) == iterations
    assert_parity(ours, theirs, metrics=("entropy", "clip_ratio/region_mean", *(("kl",) if beta else ())))
    assert max_gradient(ours) > 1e-2  # the compared gradients are not vacuously small
    if iterations == 2:  # the second pass is off-policy: its ratios move the loss (and at τ = 0.7 clip some tokens)
        assert abs(ours.steps[1].loss - ours.steps[0].loss) > 1e-2
        assert temperature == 1.0 or theirs.metrics["clip_ratio/region_mean"] > 0


@pytest.mark.parametrize("accumulation", [1, 2], ids=["no-accum", "accum2"])
def test_token_mean_is_trl_bnpo_only_without_accumulation(fx, tmp_path, monkeypatch, accumulation):
    """TRL's ``bnpo`` divides each micro-batch's token sum by that micro-batch's token count, then by the number of
    micro-batches: unlike ``dapo`` (= ``token_mean``) it changes with accumulation when micro-batches hold different
    token counts (here 24 and 20). Without accumulation the two are the same loss."""
    options = dict(loss_aggregation="token_mean", beta=BETA, kl_importance_correction=True, temperature=0.7)
    ours = run_lit_align(lit_align_module(GRPO, fx, gradient_accumulation_steps=accumulation, **options), fx)
    trainer = trl_trainer("grpo", fx, tmp_path, monkeypatch, accumulation, loss_type="bnpo", beta=BETA,
                          temperature=0.7)  # fmt: skip
    theirs = run_trl(trainer, trl_generation_batch(trainer, fx), [s.state for s in ours.steps], accumulation)
    if accumulation == 1:
        assert_parity(ours, theirs)
    else:
        tokens = [int(m.sum()) for m in fx.rollout.completion_mask.chunk(2)]
        assert tokens == [24, 20]
        ((loss, grad),) = deviations(ours, theirs)
        assert loss > 1e-3 and grad > 1e-3  # bnpo's accumulation-dependent normalizer


def test_mask_truncated_completions_matches_trl(fx, tmp_path, monkeypatch):
    """TRL zeroes a truncated completion's mask in the attention as well; lit-align only in the loss. The truncated
    rows' tokens are then scored differently, but they carry no loss, so loss and gradient still agree."""
    ours, theirs, _ = run_both(fx, tmp_path, monkeypatch, "token_mean", "dapo", BETA, True, 0.7, 2, 2,
                               mask_truncated_completions=True)  # fmt: skip
    assert_parity(ours, theirs, metrics=("entropy", "kl"))


# The GRPO loss family (issue 22): each of our (objective, aggregation, importance level) combinations against the
# TRL 1.16 loss_type (and importance_sampling_level) it names. Off-policy passes move the weights by ~0.1, so the
# caps below (cispo_max_weight 1.05, delta 1.05 with epsilon 0.02) are active on some tokens.
FAMILY = {
    "cispo": ({"objective": {"name": "cispo", "cispo_max_weight": 1.05}, "loss_aggregation": "token_mean"},
              {"loss_type": "cispo", "epsilon_high": 1.05}, "cispo_clip_ratio"),
    "sapo": ({"objective": {"name": "sapo"}, "loss_aggregation": "sequence_mean"}, {"loss_type": "sapo"}, None),
    "sapo-temperatures": ({"objective": {"name": "sapo", "sapo_temperature_pos": 2.0, "sapo_temperature_neg": 0.5}},
                          {"loss_type": "sapo", "sapo_temperature_pos": 2.0, "sapo_temperature_neg": 0.5}, None),
    "vespo": ({"objective": {"name": "vespo"}, "loss_aggregation": "token_mean"}, {"loss_type": "vespo"},
              "vespo/phi_seq_mean"),
    "gspo": ({"importance_ratio": "sequence_mean", "loss_aggregation": "sequence_mean"},
             {"loss_type": "grpo", "importance_sampling_level": "sequence"}, "clip_ratio/region_mean"),
    "gspo-dapo": ({"importance_ratio": "sequence_mean", "loss_aggregation": "token_mean"},
                  {"loss_type": "dapo", "importance_sampling_level": "sequence"}, "clip_ratio/region_mean"),
    "luspo": ({"importance_ratio": "sequence_mean", "loss_aggregation": "sequence_sum"},
              {"loss_type": "luspo", "importance_sampling_level": "sequence"}, "clip_ratio/region_mean"),
    "two-sided-clip": ({"objective": {"delta": 1.05}, "epsilon": 0.02, "loss_aggregation": "token_mean"},
                       {"loss_type": "dapo", "delta": 1.05, "epsilon": 0.02}, "clip_ratio/region_mean"),
}  # fmt: skip


@pytest.mark.parametrize("accumulation", [1, 2], ids=["no-accum", "accum2"])
@pytest.mark.parametrize("iterations", [1, 2], ids=["on-policy", "off-policy"])
@pytest.mark.parametrize(("beta", "correction"), KL[:2], ids=["beta0", "kl-corrected"])
@pytest.mark.parametrize("variant", list(FAMILY))
def test_grpo_family_matches_trl(fx, tmp_path, monkeypatch, variant, beta, correction, iterations, accumulation):
    ours_options, trl_config, metric = FAMILY[variant]
    module = lit_align_module(GRPO, fx, beta=beta, kl_importance_correction=correction, num_iterations=iterations,
                              gradient_accumulation_steps=accumulation, **ours_options)  # fmt: skip
    ours = run_lit_align(module, fx)
    trainer = trl_trainer("grpo", fx, tmp_path, monkeypatch, accumulation, beta=beta, num_iterations=iterations,
                          use_bias_correction_kl=correction, **trl_config)  # fmt: skip
    theirs = run_trl(trainer, trl_generation_batch(trainer, fx), [step.state for step in ours.steps], accumulation)
    # A per-sequence metric is a row mean in both; the TRL side of this harness weighs micro-batches by tokens, which
    # agrees with rows only without accumulation (the micro-batches hold 24 and 20 tokens).
    per_sequence = metric is not None and (metric.startswith("vespo") or "sequence" in str(ours_options))
    metrics = () if metric is None or (per_sequence and accumulation > 1) else (metric,)
    assert_parity(ours, theirs, metrics=("entropy", *metrics, *(("kl",) if beta else ())))
    assert max_gradient(ours) > 1e-2
    if iterations == 2 and metric is not None and not metric.startswith("vespo"):
        assert theirs.metrics[metric] > 0 or variant.startswith(("gspo", "luspo"))  # the caps are active somewhere


@pytest.mark.parametrize("iterations", [1, 2], ids=["on-policy", "off-policy"])
@pytest.mark.parametrize("objective", ["clip", "vespo"])
@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_rollout_correction_matches_trl(fx, tmp_path, monkeypatch, mode, objective, iterations):
    """The engine's log-probs are the trainer's own perturbed by up to ±0.1 per token (vLLM's numerics), given to
    both sides as their vLLM backend would return them; TRL corrects with ``use_vllm`` and
    ``vllm_importance_sampling_correction`` on, its bounds tightened to [0.9, 1.1] so that some weights are clipped
    or masked. Loss, gradients and TRL's ``sampling/*`` metrics agree. VESPO takes token modes only (TRL refuses
    the sequence ones) and folds the correction into its sequence weight."""
    if objective == "vespo" and mode.startswith("sequence"):
        pytest.skip("TRL 1.16 refuses VESPO with a sequence-level rollout correction")
    import dataclasses

    module = lit_align_module(GRPO, fx, num_iterations=iterations, loss_aggregation="token_mean",
                              objective={"name": objective}, sampling={"max_new_tokens": 8, "rollout_correction": mode,
                              "rollout_correction_min": 0.9, "rollout_correction_max": 1.1})  # fmt: skip
    trainer_logps = module._no_grad_logps(fx.rollout, module.policy)
    noise = (torch.rand(trainer_logps.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.2
    engine = dataclasses.replace(fx, rollout=dataclasses.replace(fx.rollout, sampler_logps=trainer_logps + noise))
    ours = run_lit_align(module, engine)
    trainer = trl_trainer("grpo", fx, tmp_path, monkeypatch, 1, num_iterations=iterations, loss_type=(
        "dapo" if objective == "clip" else "vespo"))  # fmt: skip
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True
    trainer.vllm_importance_sampling_mode = mode
    trainer.vllm_importance_sampling_clip_min, trainer.vllm_importance_sampling_clip_max = 0.9, 1.1
    batch = trl_generation_batch(trainer, engine)
    torch.testing.assert_close(ours.exp.rollout_weights, batch["importance_sampling_ratio"], atol=1e-6, rtol=0)
    weights = ours.exp.rollout_weights
    assert ((weights != 1.0) & (weights > 0.9) & (weights < 1.1)).any()  # some corrected inside the bounds
    assert ((weights == 0.0) | (weights == 0.9) | (weights == 1.1)).any()  # and some clipped or masked
    theirs = run_trl(trainer, batch, [step.state for step in ours.steps], 1)
    names = ("sampling/sampling_logp_difference/mean", "sampling/sampling_logp_difference/max",
             "sampling/importance_sampling_ratio/min", "sampling/importance_sampling_ratio/mean",
             "sampling/importance_sampling_ratio/max")  # fmt: skip
    assert_parity(ours, theirs, metrics=names)
