"""GRPO and the shared online loop: smoke fits, accumulation invariance, what runs when, unscorable rows, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from lit_align.algorithms.grpo import GRPO
from lit_align.models.loading import load_model
from lit_align.rewards.scoring import fill_unscorable, nanstd, score_completions, weighted_rewards
from tests.conftest import REPO
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.online_helpers import fixed_rollout, grads, prompt_batch, prompt_datamodule, tiny_options

ROLLOUT_METRICS = (
    "reward", "reward_std", "frac_reward_zero_std", "rewards/length_reward/mean", "completions/mean_length",
    "completions/clipped_ratio", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "entropy",
    "time/generation", "time/update",
)  # fmt: skip


def tiny_grpo(**kwargs) -> GRPO:
    policy, tokenizer = load_model("tiny-llama")
    return GRPO(policy=policy, **tiny_options(tokenizer, **kwargs))


def test_fit_smoke_beta_zero_has_no_reference(tmp_path):
    module = tiny_grpo(rewards={"log_completions_every_n_steps": 2})
    assert module.reference is None and module.reference_source == "none"
    module.reference_forward = None  # any reference pass would now fail loudly
    dm = prompt_datamodule(tmp_path, module.tokenizer, val_size=2)
    before = snapshot(module.policy)
    trainer = tiny_trainer(tmp_path, max_steps=3, val_check_interval=3, check_val_every_n_epoch=None)
    trainer.fit(module, dm)
    assert changed(before, module.policy)
    tags = event_tags(trainer.logger.log_dir)
    assert {f"train/{m}" for m in ROLLOUT_METRICS} <= tags and "train/loss" in tags and "train/kl" not in tags
    assert {"val/reward", "val/rewards/length_reward/mean", "val/completions/mean_length"} <= tags
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list(__import__("pathlib").Path(trainer.logger.log_dir).glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert "completions/text_summary" in acc.Tags()["tensors"]  # rollouts 0 and 2 wrote the sample table
    text = acc.Tensors("completions/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| prompt | completion | length_reward |" in text and "Count to" in text


def test_beta_loads_reference_and_global_step_counts_optimizer_steps(tmp_path):
    """num_iterations=2 x num_minibatches=2: one rollout is 4 optimizer steps, so max_steps=4 is ONE rollout."""
    module = tiny_grpo(beta=0.1, num_iterations=2, num_minibatches=2)
    assert module.reference is not None and module.reference_source == "copy"
    calls = []
    original = module._no_grad_logps
    module._no_grad_logps = lambda rollout, model: calls.append(model) or original(rollout, model)
    trainer = tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0)
    trainer.fit(module, prompt_datamodule(tmp_path, module.tokenizer))
    assert trainer.global_step == 4 and module._rollouts == 1
    assert calls == [module.policy, module.reference]  # old log-probs once per rollout, reference once
    assert "train/kl" in event_tags(trainer.logger.log_dir)
    assert trainer.callback_metrics["train/kl"] > 0  # the policy moved away from its reference copy


def test_on_policy_without_beta_runs_no_extra_pass(tmp_path):
    module = tiny_grpo()
    module._no_grad_logps = None  # num_iterations=1, beta=0: neither old nor reference log-probs are needed
    out = module.update(prompt_batch(tmp_path, module.tokenizer, n=2))
    assert math.isfinite(out["loss"]) and out["clip_ratio/region_mean"] == 0.0  # ratio exactly 1


@pytest.mark.parametrize(
    ("aggregation", "mask_truncated"),
    [("token_mean", False), ("token_mean", True), ("constant", False), ("sequence_mean", True)],
)
def test_gradient_accumulation_invariance(tmp_path, aggregation, mask_truncated, monkeypatch):
    """The same rollout (8 rows of lengths 1..7, two truncated) gives the same gradient in one pass as in 3
    unequal micro-batches (3, 3, 2 rows), because the normalizer is counted over the whole minibatch. With
    each micro-batch normalized by its own count (the bug) the token_mean gradient differs."""
    batch = prompt_batch(tmp_path, load_model("tiny-llama")[1], n=2)
    recorded = {}
    for accumulation in (1, 3, "local") if aggregation == "token_mean" else (1, 3):
        module = tiny_grpo(loss_aggregation=aggregation, mask_truncated_completions=mask_truncated,
                           sampling={"max_new_tokens": 7},
                           gradient_accumulation_steps=3 if accumulation == "local" else accumulation,
                           max_grad_norm=None)  # fmt: skip
        rollout = fixed_rollout(batch, module.tokenizer, 4, [1, 3, 7, 7, 2, 5, 7, 4])
        module.generate_samples = lambda *args, rollout=rollout: rollout
        module.step_manual = lambda module=module, key=accumulation: recorded.__setitem__(key, grads(module)) or {}
        if accumulation == "local":
            # aggregate_loss's local default per micro-batch
            monkeypatch.setattr("lit_align.training.online.loss_normalizer", lambda *args: None)
        module.update(batch)
    assert recorded[1].keys() == recorded[3].keys() and len(recorded[1]) > 0
    for name, grad in recorded[1].items():
        torch.testing.assert_close(recorded[3][name], grad, atol=1e-6, rtol=1e-4)
    if aggregation == "token_mean":
        assert any(not torch.allclose(recorded["local"][n], g, atol=1e-6, rtol=1e-4) for n, g in recorded[1].items())


def test_unscorable_completions_are_excluded(tmp_path):
    """A reward function returning None for prompt 0: its completions get advantage 0 and leave the reward mean."""

    def only_second_prompt(prompts, completions, answer, **kwargs):
        return [None if a == "0" else len(c[0]["content"]) / 10 for c, a in zip(completions, answer, strict=True)]

    module = tiny_grpo(rewards={"reward_funcs": [only_second_prompt]})
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 4, [2, 3, 4, 5, 1, 3, 6, 8])
    module.generate_samples = lambda *args: rollout
    seen = {}
    original = module.compute_advantages

    def probe(rewards, exp):
        advantages = original(rewards, exp)
        seen.update(rewards=rewards, advantages=advantages)
        return advantages

    module.compute_advantages = probe
    out = module.update(batch)
    assert math.isfinite(out["loss"]) and not seen["rewards"].isnan().any()
    expected = torch.tensor([len(t) / 10 for t in rollout.texts[4:]])
    assert out["reward"] == pytest.approx(expected.mean().item(), abs=1e-6)  # prompt 0's rows excluded
    torch.testing.assert_close(seen["advantages"][4:], (expected - expected.mean()) / (expected.std() + 1e-4))


def test_score_fill_and_nanstd_by_hand():
    calls = {}

    def f(prompts, completions, answer, completion_ids, **kwargs):
        calls.update(prompts=prompts, completions=completions, answer=answer, ids=completion_ids)
        return [1.0, None, 3.0, 5.0]

    chat = [{"role": "user", "content": "q"}]
    out = score_completions(
        [f], [chat, "text q"], ["a", "b", "c", "d"], {"answer": ["1", "2"]}, [[1], [2], [3], [4]], 2
    )
    assert calls["prompts"] == [chat, chat, "text q", "text q"] and calls["answer"] == ["1", "1", "2", "2"]
    assert calls["completions"] == [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}],
                                    "c", "d"]  # fmt: skip
    assert out[:, 0].isnan().tolist() == [False, True, False, False]
    # Group means over scorable rows fill the gaps; an all-NaN group becomes 0.
    filled = fill_unscorable(torch.tensor([1.0, math.nan, 3.0, 5.0, math.nan, math.nan]), 2)
    assert filled.tolist() == [1.0, 1.0, 3.0, 5.0, 0.0, 0.0]
    # Weighted sum over functions: a None counts 0 unless every function returned None (then NaN, unscorable).
    per_func = torch.tensor([[1.0, 2.0], [math.nan, 4.0], [math.nan, math.nan]])
    weighted = weighted_rewards(per_func, torch.tensor([0.5, 2.0]))
    assert weighted[:2].tolist() == [4.5, 8.0] and weighted[2].isnan()
    std = nanstd(torch.tensor([[1.0, 3.0, math.nan], [2.0, math.nan, math.nan]]))
    assert std[0].item() == pytest.approx(math.sqrt(2.0)) and std[1].isnan()
    with pytest.raises(ValueError, match="returned 1 rewards for 2 completions"):
        score_completions([lambda **kw: [0.0]], ["p"], ["a", "b"], {}, [[1], [2]], 2)


DDP_SCRIPT = r"""
import hashlib, json, os, sys
import lightning as L
import torch
from lit_align.algorithms.grpo import GRPO
from lit_align.models.loading import load_model
from tests.online_helpers import length_reward, prompt_datamodule, tiny_options

class Probe(GRPO):
    def rl_step(self, batch):
        loss, values, exp = super().rl_step(batch)
        self.local_rewards.append(float(values["reward"][0].mean()))
        return loss, values, exp

if __name__ == "__main__":
    out = sys.argv[1]
    policy, tokenizer = load_model("tiny-llama")
    module = Probe(policy=policy, **tiny_options(tokenizer, loss_aggregation="token_mean",
                                                 gradient_accumulation_steps=2))
    module.local_rewards = []
    dm = prompt_datamodule(__import__("pathlib").Path(out), tokenizer, n=8)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=out, limit_val_batches=0)
    trainer.fit(module, dm)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in module.policy.parameters())).hexdigest()
    before = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in load_model("tiny-llama")[0].parameters()))
    logged = {k: v.item() for k, v in trainer.callback_metrics.items()}
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump({"digest": digest, "initial": before.hexdigest(), "local": module.local_rewards,
                   "logged": logged}, f)
"""


@pytest.mark.slow
def test_ddp_ranks_stay_identical_and_metrics_sync(tmp_path):
    """2 CPU processes (gloo), different prompts and samples per rank: after 2 optimizer steps the parameters are
    bit-identical on both ranks (and changed), and train/reward is the mean of the two ranks' local rewards."""
    script = tmp_path / "ddp_grpo.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"] != ranks[0]["initial"]
    local = [r["local"][-1] for r in ranks]
    assert local[0] != local[1]  # the ranks saw different completions
    for r in ranks:  # equal-size rank batches: the synced mean is the mean of the local means
        assert r["logged"]["train/reward"] == pytest.approx(sum(local) / 2, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "rloo", "remax"])
def test_recipe_runs_end_to_end_on_tiny(tmp_path, algo):
    cmd = [sys.executable, str(REPO / f"recipes/{algo}.py"), "fit", "--config", str(REPO / "recipes/configs/tiny.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / algo / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]  # plain data
    assert (run_dir / "hf_model" / "model.safetensors").exists()
    assert {"train/reward", "val/reward", "train/time/generation"} <= event_tags(run_dir)


def test_kl_importance_correction_changes_the_gradient_not_the_value(tmp_path):
    """On-policy, β = 0.3, a reference different from the policy, token_mean over N tokens. The KL term is ρ_t·k3_t
    with ρ_t = π/π.detach() (value 1) when corrected, k3_t when not: the losses are equal and the gradients differ
    by exactly ∇[β Σ_t m_t k3_t (ρ_t − 1) / N] = β Σ_t m_t k3_t ∇log π_t / N, written out here."""
    reference, _ = load_model("tiny-llama", seed=1)
    batch = prompt_batch(tmp_path, load_model("tiny-llama")[1], n=2)
    recorded, losses = {}, {}
    for correction in (True, False):
        module = tiny_grpo(beta=0.3, reference_policy=reference, kl_importance_correction=correction,
                           max_grad_norm=None, sampling={"temperature": 0.7})  # fmt: skip
        rollout = fixed_rollout(batch, module.tokenizer, 4, [2, 3, 4, 6, 1, 6, 5, 8])
        module.generate_samples = lambda *args, rollout=rollout: rollout
        module.step_manual = lambda module=module, key=correction: recorded.__setitem__(key, grads(module)) or {}
        losses[correction] = module.update(batch)["loss"]
    assert losses[True] == pytest.approx(losses[False], abs=1e-6)

    from lit_align.models.logprobs import token_logps

    policy = load_model("tiny-llama")[0]
    input_ids, attention_mask, labels = rollout.model_inputs()
    P, mask = rollout.prompt_input_ids.shape[1], rollout.completion_mask.float()
    with torch.no_grad():
        ref_logps = token_logps(reference, input_ids, attention_mask, labels, temperature=0.7).logps[:, P:]
    logps = token_logps(policy, input_ids, attention_mask, labels, temperature=0.7).logps[:, P:]
    delta = ref_logps - logps.detach()
    k3 = torch.exp(delta) - delta - 1
    (0.3 * (mask * k3 * logps).sum() / mask.sum()).backward()
    difference = {f"policy.{n}": p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert max(float(g.abs().max()) for g in difference.values()) > 1e-4  # not vacuous
    for name, grad in difference.items():
        torch.testing.assert_close(recorded[True][name] - recorded[False][name], grad, atol=1e-6, rtol=1e-4)
