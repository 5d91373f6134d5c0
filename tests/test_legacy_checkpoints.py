"""Checkpoints written before the options groups (main at 9c97569, ``tests/fixtures/main_9c97569``) still load and
resume: ``load_from_checkpoint`` nests their flat sampling and reward options, the evaluate / generate loader reads
their policy, and ``fit --ckpt_path`` continues their runs with today's recipes (optimizer, schedule, data position
and PPO's β restored)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lit_align import DPO, GRPO, PPO
from lit_align.models.runs import load_trained
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "main_9c97569"
CASES = {"dpo": (DPO, 2), "grpo": (GRPO, 2), "ppo": (PPO, 8)}  # class, the checkpoint's global step
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def checkpoint(algo: str) -> dict:
    return torch.load(FIXTURES / f"{algo}.ckpt", map_location="cpu", weights_only=True)


def test_the_fixtures_are_of_the_flat_layout():
    """What the upgrade has to handle: flat sampling/reward keys, and options no longer offered where they have a
    single legal value (GRPO's importance_ratio and precompute_reference, PPO's kl_penalty)."""
    grpo, ppo = checkpoint("grpo")["hyper_parameters"], checkpoint("ppo")["hyper_parameters"]
    assert grpo["max_new_tokens"] == 16 and grpo["sampling_seed"] == 0 and "sampling" not in grpo
    assert grpo["reward_funcs"] == ["lit_align.rewards.verifiers:arithmetic_answer_reward"]
    assert grpo["importance_ratio"] == "token" and grpo["precompute_reference"] is False
    assert ppo["kl_penalty"] == "reward" and ppo["reward_funcs"] == ["tests.online_helpers:length_reward"]


@pytest.mark.parametrize("algo", CASES)
def test_load_from_checkpoint_rebuilds_the_module_with_its_weights(algo):
    cls, _ = CASES[algo]
    saved = checkpoint(algo)
    module = cls.load_from_checkpoint(FIXTURES / f"{algo}.ckpt", weights_only=True)
    state = module.state_dict()
    for name, value in saved["state_dict"].items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
    if algo == "grpo":
        assert module.sampler.options.max_new_tokens == 16 and module.sampler.options.seed == 0
        assert module.rewards.names == ["arithmetic_answer_reward"]
        assert module.hparams["sampling"]["max_new_tokens"] == 16 and "max_new_tokens" not in module.hparams
    if algo == "ppo":
        assert module.sampler.options.max_new_tokens == 32 and module.rewards.names == ["length_reward"]
        assert module.beta == pytest.approx(saved["kl_coef"])


@pytest.mark.parametrize("algo", CASES)
def test_the_evaluate_and_generate_loader_reads_the_policy(algo):
    trained = load_trained(FIXTURES / f"{algo}.ckpt")
    assert trained.starting_policy == "tiny-llama"
    state = checkpoint(algo)["state_dict"]
    for name, value in trained.model.state_dict().items():
        torch.testing.assert_close(value, state[f"policy.{name}"], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("algo", CASES)
def test_a_recipe_resumes_the_run(tmp_path, algo):
    """``fit --ckpt_path <old checkpoint>`` with today's recipe and config runs one more step (PPO: one more rollout):
    AdamW's moments continue (its step counter goes on from the checkpoint's, not from 1), so does the data
    position, and PPO's β comes back."""
    _, step = CASES[algo]
    more = step + (8 if algo == "ppo" else 1)
    extra = ["--model.value_model", "policy", "--model.rewards.reward_funcs", "[tests.online_helpers:length_reward]"]
    cmd = [sys.executable, str(REPO / "recipes" / f"{algo}.py"), "fit", "--config",
           str(REPO / "recipes/configs/tiny.yaml"), "--trainer.max_steps", str(more),
           "--trainer.val_check_interval", "1000", "--trainer.limit_val_batches", "0",
           "--ckpt_path", str(FIXTURES / f"{algo}.ckpt"), *(extra if algo == "ppo" else [])]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (last,) = (tmp_path / "runs" / algo).rglob("last.ckpt")
    resumed, saved = torch.load(last, weights_only=True), checkpoint(algo)
    assert resumed["global_step"] == more
    adam_steps = {float(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()}
    assert adam_steps == {float(more)}  # one AdamW: every parameter stepped `more` times in all
    before = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_in_epoch"]
    after = resumed["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_in_epoch"]
    assert after == before + 1  # the next batch of the same epoch
    if algo == "ppo":
        assert resumed["kl_coef"] == pytest.approx(saved["kl_coef"])
