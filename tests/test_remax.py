"""ReMax: smoke fit, and the advantage is the sample's reward minus the greedy completion's."""

from __future__ import annotations

import torch

from lit_align.algorithms.remax import ReMax
from lit_align.models import load_model
from lit_align.rollout import HFGenerate
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.online_helpers import fixed_rollout, length_reward, prompt_batch, prompt_datamodule


def tiny_remax(**kwargs) -> ReMax:
    policy, tokenizer = load_model("tiny-llama")
    kwargs = {"num_generations": 2, "max_new_tokens": 8, "learning_rate": 1e-3, "reward_funcs": [length_reward],
              "tokenizer": tokenizer, **kwargs}  # fmt: skip
    return ReMax(policy=policy, **kwargs)


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
