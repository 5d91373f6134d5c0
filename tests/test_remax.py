"""ReMax: smoke fit, and the advantage is the sample's reward minus the greedy completion's."""

from __future__ import annotations

import torch

from lit_align.algorithms.remax import ReMax
from lit_align.models.loading import load_model
from lit_align.rollouts.hf import HFGenerate
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.online_helpers import fixed_rollout, grads, length_reward, prompt_batch, prompt_datamodule, tiny_options


def tiny_remax(**kwargs) -> ReMax:
    policy, tokenizer = load_model("tiny-llama")
    return ReMax(policy=policy, **tiny_options(tokenizer, **{"num_generations": 2, **kwargs}))


def test_fit_smoke(tmp_path):
    module = tiny_remax()
    assert module.reference is None  # beta = 0 by default
    before = snapshot(module.policy)
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, prompt_datamodule(tmp_path, module.tokenizer))
    assert changed(before, module.policy)
    tags = event_tags(trainer.logger.log_dir)
    assert {"train/reward", "train/greedy_reward", "train/time/greedy_generation", "train/time/update"} <= tags


def test_advantage_is_reward_minus_greedy_reward(tmp_path):
    module = tiny_remax(num_generations=3)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    greedy = HFGenerate(module.tokenizer, max_new_tokens=8)(
        module.policy, batch["prompt_input_ids"], batch["prompt_attention_mask"], greedy=True
    )  # before the update: what the module's own greedy baseline will see
    rollout = fixed_rollout(batch, module.tokenizer, 3, [2, 5, 8, 1, 4, 8])
    module.generate_samples = lambda *args: rollout
    seen = {}
    original = module.compute_advantages

    def probe(rewards, exp):
        advantages = original(rewards, exp)
        seen.update(advantages=advantages, extra=exp.metrics)
        return advantages

    module.compute_advantages = probe
    module.update(batch)
    samples = torch.tensor(length_reward(None, rollout.texts))
    baseline = torch.tensor(length_reward(None, greedy.texts)).repeat_interleave(3)
    torch.testing.assert_close(seen["advantages"], samples - baseline)
    torch.testing.assert_close(seen["extra"]["greedy_reward"], baseline[::3])


def test_token_mean_gradient_is_the_reference_implementation_s(tmp_path):
    """The ReMax authors' code (github.com/liziniu/ReMax, step3_rlhf_finetuning/remax_trainer.py, ``compute_returns``
    and ``actor_loss_fn``), transcribed at kl_ctl = 0 and gamma = 1 (its default is 0.95), rewards inside its ±5 clip:

        returns_it = gamma^(T_i - t) clip(r_i - r_greedy_i, -5, 5) - kl_ctl k1_it
        loss       = Σ_it -returns_it log π_it m_it / Σ m

    is, on-policy, lit-align's ReMax with importance_ratio="token", loss_aggregation="token_mean" (the default
    importance_ratio="sequence" divides by the number of sequences instead of tokens: the same direction per batch)."""
    module = tiny_remax(num_generations=3, importance_ratio="token", loss_aggregation="token_mean", max_grad_norm=None)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 3, [2, 5, 8, 1, 4, 8])
    module.generate_samples = lambda *args: rollout
    seen, recorded = {}, {}
    original = module.compute_advantages
    module.compute_advantages = lambda rewards, exp: seen.setdefault("advantages", original(rewards, exp))
    module.step_manual = lambda: recorded.update(grads(module)) or {}
    module.update(batch)

    from lit_align.models.logprobs import token_logps

    policy = load_model("tiny-llama")[0]  # the policy as it sampled
    input_ids, attention_mask, labels = rollout.model_inputs()
    logps = token_logps(policy, input_ids, attention_mask, labels).logps[:, rollout.prompt_input_ids.shape[1]:]
    mask = rollout.completion_mask.float()
    returns = seen["advantages"].clamp(-5.0, 5.0).unsqueeze(1).expand_as(logps)  # gamma = 1, kl_ctl = 0
    assert seen["advantages"].abs().max() < 5.0 and seen["advantages"].abs().max() > 0.1
    (torch.sum(-returns * logps * mask) / mask.sum()).backward()
    for name, param in policy.named_parameters():
        torch.testing.assert_close(recorded[f"policy.{name}"], param.grad, atol=1e-6, rtol=1e-4)
