"""RLOO: smoke fit, the REINFORCE gradient of the sequence-level ratio, and the k1 KL penalty in the reward."""

from __future__ import annotations

import torch

from lit_align.algorithms.rloo import RLOO
from lit_align.losses.policy_gradient import leave_one_out_advantages
from lit_align.models.loading import load_model
from lit_align.models.logprobs import sequence_logps
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.online_helpers import fixed_rollout, grads, length_reward, prompt_batch, prompt_datamodule, tiny_options


def tiny_rloo(reference=None, **kwargs) -> RLOO:
    policy, tokenizer = load_model("tiny-llama")
    return RLOO(policy=policy, reference_policy=reference, **tiny_options(tokenizer, **kwargs))


def test_fit_smoke_with_kl_penalty(tmp_path):
    module = tiny_rloo(beta=0.05)
    assert module.reference is not None
    before = snapshot(module.policy)
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, prompt_datamodule(tmp_path, module.tokenizer))
    assert changed(before, module.policy)
    tags = event_tags(trainer.logger.log_dir)
    assert {"train/reward", "train/kl", "train/rewards/length_reward/mean", "train/clip_ratio/region_mean"} <= tags
    assert tiny_rloo(beta=0.0).reference is None


def test_on_policy_gradient_is_reinforce_with_leave_one_out_baseline(tmp_path):
    """num_iterations=1: the gradient is -1/B sum_i A_i grad sum_t log pi(y_it), A = leave-one-out advantages."""
    module = tiny_rloo(beta=0.0, max_grad_norm=None)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 4, [2, 3, 4, 6, 1, 6, 5, 2])
    module.generate_samples = lambda *args: rollout
    recorded = {}
    module.step_manual = lambda: recorded.update(grads(module)) or {}
    module.update(batch)

    rewards = torch.tensor(length_reward(None, rollout.texts))
    advantages = leave_one_out_advantages(rewards, 4)
    module.policy.zero_grad()
    logps = sequence_logps(module.policy, *rollout.model_inputs()).sum
    (-(advantages * logps).sum() / len(rollout)).backward()
    for name, param in module.named_parameters():
        torch.testing.assert_close(recorded[name], param.grad, atol=1e-6, rtol=1e-4)


def test_kl_penalty_enters_the_reward(tmp_path):
    """r_i = R_i - beta * sum_t (log pi_old - log pi_ref): the rewards reaching the advantage function."""
    reference, _ = load_model("tiny-llama", seed=1)  # a different model: the KL is far from 0
    module = tiny_rloo(reference, beta=0.5)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 4, [2, 3, 4, 6, 1, 6, 5, 2])
    module.generate_samples = lambda *args: rollout
    seen = {}
    original = module.compute_advantages

    def probe(rewards, exp):
        seen["rewards"] = rewards
        return original(rewards, exp)

    module.compute_advantages = probe
    out = module.update(batch)
    fresh = tiny_rloo(reference, beta=0.5)  # the policy as it was when it sampled (update() moved the other one)
    with torch.no_grad():
        seq_kl = (sequence_logps(fresh.policy, *rollout.model_inputs()).sum
                  - sequence_logps(reference, *rollout.model_inputs()).sum)  # fmt: skip
    expected = torch.tensor(length_reward(None, rollout.texts)) - 0.5 * seq_kl
    torch.testing.assert_close(seen["rewards"], expected, atol=1e-4, rtol=1e-4)
    assert seq_kl.abs().max() > 0.1 and out["kl"] != 0.0  # the penalty is not vacuous
