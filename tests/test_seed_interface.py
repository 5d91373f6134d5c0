"""The seed interface of every online module: ``samples, log_probs = module.generate_samples(ids, mask)`` and
``module.update({"input_ids", "rewards", "old_log_probs"})``; and ``update()`` after ``Trainer.fit`` continues the
fit's optimizer and schedule."""

from __future__ import annotations

import pytest
import torch

from lit_align.algorithms import GRPO, RLOO, ReMax
from lit_align.models.loading import load_model
from lit_align.models.logprobs import token_logps
from tests.helpers import tiny_trainer
from tests.online_helpers import grads, length_reward, prompt_batch, prompt_datamodule

MODULES = {GRPO: 4, RLOO: 4, ReMax: 2}


def tiny(cls, **kwargs):
    policy, tokenizer = load_model("tiny-llama")
    return cls(policy=policy, tokenizer=tokenizer, num_generations=MODULES[cls],
               sampling={"max_new_tokens": 6, "temperature": 0.8}, rewards={"reward_funcs": [length_reward]},
               learning_rate=1e-3, max_grad_norm=None,
               **kwargs)  # fmt: skip


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda c: c.__name__)
def test_generate_samples_unpacks_into_sequences_and_sampling_log_probs(tmp_path, cls):
    module = tiny(cls)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    samples, log_probs = module.generate_samples(batch["prompt_input_ids"], batch["prompt_attention_mask"])
    rollout = module.generate_samples(batch["prompt_input_ids"], batch["prompt_attention_mask"], with_logps=False)
    B, P = 2 * MODULES[cls], batch["prompt_input_ids"].shape[1]
    assert samples.shape[0] == log_probs.shape[0] == B and samples.shape[1] == P + log_probs.shape[1]
    assert torch.equal(samples[:, :P], batch["prompt_input_ids"].repeat_interleave(MODULES[cls], 0))
    with pytest.raises(ValueError, match="carries no log-probs"):
        _ = list(rollout)
    # the log-probs are the policy's at the sampling temperature, 0 on padding
    full = module.generate_samples(batch["prompt_input_ids"], batch["prompt_attention_mask"])
    with torch.no_grad():
        expected = token_logps(module.policy, *full.model_inputs(), temperature=0.8).logps[:, P:]
    torch.testing.assert_close(full.logps, expected * full.completion_mask, atol=1e-6, rtol=0)
    assert (full.logps[full.completion_mask == 0] == 0).all() and (full.logps[full.completion_mask == 1] < 0).all()


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda c: c.__name__)
def test_update_with_a_rollout_batch_equals_update_with_its_prompts(tmp_path, cls):
    """The seed loop (sample, score outside, update) gives the gradient of the module's own step on the same
    completions and rewards."""
    kwargs = {"num_iterations": 2}  # off-policy second pass: the given old log-probs are used
    sampler = tiny(cls, **kwargs)
    batch = prompt_batch(tmp_path, sampler.tokenizer, n=2)
    rollout = sampler.generate_samples(batch["prompt_input_ids"], batch["prompt_attention_mask"])
    samples, log_probs = rollout
    rewards = torch.tensor(length_reward(None, rollout.texts))

    recorded = {}
    for name in ("own", "given"):
        module = tiny(cls, **kwargs)
        module.step_manual = lambda module=module, name=name: recorded.setdefault(name, []).append(
            grads(module)) or {}  # fmt: skip
        if name == "own":
            module.generate_samples = lambda *args: rollout
            module.update(batch)
        else:
            given = {"input_ids": samples, "rewards": rewards, "old_log_probs": log_probs}
            if cls is ReMax:  # its greedy baseline is scored by the module's reward functions
                given["prompt"] = batch["prompt"]
            out = module.update(given)
            assert out["reward"] == pytest.approx(rewards.mean().item(), abs=1e-6)
    assert len(recorded["own"]) == len(recorded["given"]) == 2
    for own, given in zip(recorded["own"], recorded["given"], strict=True):
        assert own.keys() == given.keys()
        for key in own:
            torch.testing.assert_close(given[key], own[key], atol=1e-6, rtol=1e-4)


def test_a_rollout_batch_with_a_wrong_shape_says_what_is_expected(tmp_path):
    module = tiny(GRPO)
    with pytest.raises(ValueError, match=r"expects input_ids \(B, P \+ L\), old_log_probs \(B, L\) and rewards"):
        module.update({"input_ids": torch.zeros(3, 8, dtype=torch.long), "rewards": torch.zeros(3),
                       "old_log_probs": torch.zeros(3, 4)})  # fmt: skip


def test_update_after_fit_continues_the_fit_optimizer_and_schedule(tmp_path):
    module = tiny(GRPO, warmup_ratio=0.5, scheduler="linear")
    trainer = tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0)
    trainer.fit(module, prompt_datamodule(tmp_path, module.tokenizer))
    optimizer = trainer.optimizers[0]
    lr_after_fit = optimizer.param_groups[0]["lr"]
    assert any("exp_avg" in state for state in optimizer.state.values())  # trained moments exist
    out = module.update(prompt_batch(tmp_path, module.tokenizer, n=2))
    assert module._standalone[0] is optimizer  # not a fresh AdamW
    assert out["learning_rate"] == pytest.approx(lr_after_fit)  # where fit left the schedule, not lr/101
