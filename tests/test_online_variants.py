"""Every online module with every KL placement (kl_penalty) and importance ratio it allows: the module builds,
the KL lands where the option says (in the reward OR in the loss, never both), and the on-policy gradient equals
the one written out by hand; every combination it does not allow is refused before any model loads, and an option
with a single legal value is not offered at all (not in the module's command-line options)."""

from __future__ import annotations

import itertools

import pytest
import torch

from lit_align.algorithms.grpo import GRPO
from lit_align.algorithms.remax import ReMax
from lit_align.algorithms.rloo import RLOO
from lit_align.algorithms.rlvr import RLVR
from lit_align.hparams import accepted_options
from lit_align.models.loading import load_model
from lit_align.models.logprobs import token_logps
from tests.online_helpers import fixed_rollout, grads, length_reward, prompt_batch

MODULES = (GRPO, RLOO, ReMax, RLVR)
LEVELS = ("token", "sequence", "sequence_mean", "sequence_mean_token")
VARIANTS = list(itertools.product(("loss", "reward"), LEVELS))
BETA = 0.3


OFFERED = {  # the values of (kl_penalty, importance_ratio) each module allows
    GRPO: (("loss", "reward"), LEVELS),
    RLVR: (("loss", "reward"), LEVELS),
    RLOO: (("reward",), LEVELS),
    ReMax: (("reward",), LEVELS),
}


def allowed(cls, kl_penalty: str, ratio: str) -> bool:
    kl_penalties, ratios = OFFERED[cls]
    return kl_penalty in kl_penalties and ratio in ratios


def test_each_module_allows_at_least_two_combinations_and_offers_only_options_with_a_choice():
    for cls in MODULES:
        assert sum(allowed(cls, *v) for v in VARIANTS) >= 2, cls
        options = accepted_options(cls)
        kl_penalties, ratios = OFFERED[cls]
        assert ("kl_penalty" in options) == (len(kl_penalties) > 1), cls
        assert ("importance_ratio" in options) == (len(ratios) > 1), cls
        assert ("kl_importance_correction" in options) == ("loss" in kl_penalties), cls  # only with a KL in the loss
        assert "precompute_reference" not in options  # online: nothing exists to precompute


@pytest.mark.parametrize(("kl_penalty", "ratio"), VARIANTS)
@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_refused_combinations_fail_before_any_model_loads(monkeypatch, cls, kl_penalty, ratio):
    if allowed(cls, kl_penalty, ratio):
        pytest.skip("allowed: see test_allowed_variant_puts_the_kl_where_it_says")
    import lit_align.models.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(lit_align.models.loading, "load_model", no_loading)
    with pytest.raises(ValueError, match="kl_penalty|importance_ratio"):
        cls(policy="tiny-llama", beta=BETA, kl_penalty=kl_penalty, importance_ratio=ratio,
            rewards={"reward_funcs": [length_reward]})


@pytest.mark.parametrize(("kl_penalty", "ratio"), VARIANTS)
@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_allowed_variant_puts_the_kl_where_it_says(tmp_path, cls, kl_penalty, ratio):
    """One on-policy update (ratio 1) on a fixed rollout, policy != reference. By hand, with A the module's own
    advantages of the rewards it saw, m the completion mask, N its token count (token_mean):
        kl_penalty=reward: rewards = R - β Σ_t (log π − log π_ref)          loss has no KL term
        kl_penalty=loss:   rewards = R                                       loss gains + β ρ k3 per token
        loss = agg_it m (−A_i w_it + [β w_it k3_it]),  w the importance weight at the level, 1 in value:
        token w_it = exp(log π_it − sg),  sequence w_i = exp(Σ_t m (log π_it − sg)),  sequence_mean the same / |y_i|,
        sequence_mean_token w_it = exp(sg[sequence_mean's] + log π_it − sg);  agg the module's aggregation"""
    if not allowed(cls, kl_penalty, ratio):
        pytest.skip("refused: see test_refused_combinations_fail_before_any_model_loads")
    policy, tokenizer = load_model("tiny-llama")
    reference, _ = load_model("tiny-llama", seed=1)
    G = 1 if cls is ReMax else 4
    aggregation = {"loss_aggregation": "token_mean"} if ratio == "token" else {}  # a sequence ratio has none
    module = cls(policy=policy, reference_policy=reference, tokenizer=tokenizer, beta=BETA, kl_penalty=kl_penalty,
                 importance_ratio=ratio, num_generations=G, sampling={"max_new_tokens": 8},
                 rewards={"reward_funcs": [length_reward]}, max_grad_norm=None, learning_rate=1e-3,
                 **aggregation)  # fmt: skip
    batch = prompt_batch(tmp_path, tokenizer, n=2)
    rollout = fixed_rollout(batch, tokenizer, G, [2, 3, 4, 6, 1, 6, 5, 2][: 2 * G])
    module.generate_samples = lambda *args: rollout
    seen, recorded = {}, {}
    original = module.compute_advantages

    def probe(rewards, exp):
        advantages = original(rewards, exp)
        seen.update(rewards=rewards.clone(), advantages=advantages.clone())
        return advantages

    module.compute_advantages = probe
    module.step_manual = lambda: recorded.update(grads(module)) or {}
    out = module.update(batch)

    input_ids, attention_mask, labels = rollout.model_inputs()
    P = rollout.prompt_input_ids.shape[1]
    mask = rollout.completion_mask.float()
    with torch.no_grad():
        ref_logps = token_logps(reference, input_ids, attention_mask, labels).logps[:, P:]
    module.policy.zero_grad()
    fresh = load_model("tiny-llama")[0]  # the policy as it sampled: update() moved module.policy
    logps = token_logps(fresh, input_ids, attention_mask, labels).logps[:, P:]
    task = torch.tensor(length_reward(None, rollout.texts))
    if kl_penalty == "reward":
        expected_rewards = task - BETA * ((logps.detach() - ref_logps) * mask).sum(1)
    else:
        expected_rewards = task
    torch.testing.assert_close(seen["rewards"], expected_rewards, atol=1e-4, rtol=1e-4)
    advantages = seen["advantages"]
    log_ratio = logps - logps.detach()
    summed = (log_ratio * mask).sum(1, keepdim=True)
    log_w = {"token": log_ratio, "sequence": summed, "sequence_mean": summed / mask.sum(1, keepdim=True),
             "sequence_mean_token": log_ratio}[ratio]  # fmt: skip
    w = torch.exp(log_w)
    per_token = (-advantages.unsqueeze(1) * w).expand_as(mask)
    if kl_penalty == "loss":  # the default kl_importance_correction: k3 times the (differentiable) weight
        delta = ref_logps - logps
        per_token = per_token + BETA * w * (torch.exp(delta) - delta - 1)
    if module.loss_aggregation == "token_mean":
        loss = (per_token * mask).sum() / mask.sum()
    else:
        assert module.loss_aggregation == "sequence_mean"
        loss = ((per_token * mask).sum(1) / mask.sum(1)).mean()
    loss.backward()
    expected = {n: p.grad for n, p in fresh.named_parameters() if p.grad is not None}
    assert recorded.keys() == {f"policy.{n}" for n in expected}
    for name, grad in expected.items():
        torch.testing.assert_close(recorded[f"policy.{name}"], grad, atol=1e-6, rtol=1e-4)
    assert ("kl" in out) and out["kl"] != 0.0  # logged, and not vacuous (policy and reference differ)


def test_a_value_that_cannot_apply_is_refused_not_replaced(monkeypatch):
    """A sequence-level weight aggregated per token weighs each sequence by its length: warned (TRL warns too) and
    kept; a value that cannot apply is refused before any model loads; a fixed option given its own value is
    accepted."""
    import lit_align.models.loading

    monkeypatch.setattr(lit_align.models.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    rewards = {"reward_funcs": [length_reward]}
    with pytest.warns(UserWarning, match="importance_ratio=sequence with loss_aggregation=token_mean sums per-token"):
        with pytest.raises(pytest.fail.Exception, match="a model was loaded"):  # checked, then on to loading
            RLOO(policy="tiny-llama", loss_aggregation="token_mean", rewards=rewards)
    with pytest.raises(ValueError, match="kl_importance_correction=False: applies to kl_penalty=loss only"):
        GRPO(policy="tiny-llama", kl_penalty="reward", kl_importance_correction=False, rewards=rewards)
    with pytest.raises(ValueError, match="precompute_reference=True: GRPO fixes it to False"):
        GRPO(policy="tiny-llama", precompute_reference=True, rewards=rewards)


def test_loss_aggregation_defaults_follow_the_ratio():
    policy, tokenizer = load_model("tiny-llama")
    rewards = {"reward_funcs": [length_reward]}
    assert RLOO(policy=policy, tokenizer=tokenizer, rewards=rewards).loss_aggregation == "sequence_mean"
    assert RLOO(policy=policy, tokenizer=tokenizer, rewards=rewards, importance_ratio="token",
                kl_penalty="reward").loss_aggregation == "token_mean"  # fmt: skip
