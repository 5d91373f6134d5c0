"""DDP and FSDP2 on 2 CPU processes (gloo) give the single-process run over the same global batches.

``tests/scaling_run.py`` trains DPO, KTO, SFT, GRPO, SPIN, REINFORCE++-baseline and Distill (two teachers sharded
like a reference, each prompt's own; and its sampled reverse KL with a reward) for 3 steps (PPO: 3 rollouts) per
layout; here every
step's synced train metrics (loss included) and the final weights are compared. Per-rank by design,
and so excluded: ``train/reward_std`` (each rank's std) and the ``time/*`` metrics. GRPO's rollouts are
scripted (``ScriptedBackend``): sampling is per-rank random, everything after it must match.
``grpo_rm`` scores them with a reward model, which FSDP2 shards like the reference. SPIN samples for real: its
generation phase spreads fixed global batches over the ranks, so every layout generates the same pairs (step 3 trains
on iteration 1's, made at the boundary by the trained policy). Every log-prob
goes through the chunked LM head (``lit_align.models.lm_head``, swapped into the sharded root's forward):
no layout may have fallen back to full logits.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

ALGOS = ("dpo", "kto", "sft", "grpo", "grpo_rm", "spin", "reinforce_pp", "dpo_trdpo", "grpo_env", "distill",
         "distill_opd")
PER_RANK_BY_DESIGN = ("train/reward_std", "train/time/")
TIE = 1e-5  # a |rewards/margins| below this is a tie


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for layout in ("single", "ddp", "fsdp2"):
        result = subprocess.run([sys.executable, str(REPO / "tests" / "scaling_run.py"), str(out), layout],
                                cwd=out, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, f"{layout}:\n{result.stderr[-4000:]}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ddp", "fsdp2"])
@pytest.mark.parametrize("algo", ALGOS)
def test_two_processes_match_one(runs, algo, layout):
    single = torch.load(runs / f"{algo}_single.pt", weights_only=True)
    other = torch.load(runs / f"{algo}_{layout}.pt", weights_only=True)
    assert len(single["steps"]) == len(other["steps"]) == 3
    assert single["plain_path"] == other["plain_path"] == [], (single["plain_path"], other["plain_path"])
    for step, (a, b) in enumerate(zip(single["steps"], other["steps"], strict=True), start=1):
        names = [k for k in a if not k.startswith(PER_RANK_BY_DESIGN)]
        assert "train/loss" in names and set(names) <= set(b), (step, sorted(set(names) - set(b)))
        for name in names:
            if name == "train/rewards/accuracies" and abs(a["train/rewards/margins"]) < TIE:
                continue  # which side of a tie wins is float noise (SPIN's iteration start: policy = opponent)
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-5), (step, name)
    from lit_align.models.loading import load_model

    initial = dict(load_model("tiny-llama", seed=1 if algo == "kto" else 0)[0].named_parameters())
    assert any(not torch.equal(initial[k], v) for k, v in single["weights"].items())  # training moved the weights
    assert single["weights"].keys() == other["weights"].keys()
    # REINFORCE++ divides every advantage by the std of all the rollout's tokens, gathered over the ranks in another
    # summation order: its gradients agree to 2e-7 relative (grad_norm above), and AdamW's per-entry normalization
    # turns that into up to 2e-5 on entries whose gradient is near 0 (measured 1.9e-5 after 3 steps at lr 1e-3).
    # grpo_env (conversations of up to 400 tokens packed as 2 rows per rank or 4 in one process): grad norms agree to
    # 1.1e-6 relative, the same AdamW effect gives up to 4.4e-5 (measured, layer 0's o_proj) after 3 steps.
    # distill / distill_opd: every logged metric (grad norm included) agrees to 1e-5 relative; after 3 AdamW steps the
    # weights differ by up to 8.5e-6 / 2.2e-5 (measured), the same effect on entries whose gradient is near 0.
    atol = {"reinforce_pp": 5e-5, "grpo_env": 1e-4, "distill": 2e-5, "distill_opd": 5e-5}.get(algo, 1e-5)
    for name, value in single["weights"].items():
        torch.testing.assert_close(other["weights"][name], value, rtol=0, atol=atol, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ddp", "fsdp2"])
def test_ppo_two_processes_match_one(runs, layout):
    """PPO, 3 rollouts x 2 epochs: the critic (copied from the reward model, sharded like the policy under FSDP2),
    the rewards and advantages whitened over both ranks and the adaptive β agree with one process: every step's
    metrics and the final policy AND critic weights."""
    single = torch.load(runs / "ppo_single.pt", weights_only=True)
    other = torch.load(runs / f"ppo_{layout}.pt", weights_only=True)
    assert len(single["steps"]) == len(other["steps"]) == 3  # one record per rollout
    assert single["plain_path"] == other["plain_path"] == []
    for step, (a, b) in enumerate(zip(single["steps"], other["steps"], strict=True), start=1):
        names = [k for k in a if not k.startswith(PER_RANK_BY_DESIGN)]
        assert {"train/loss/value_avg", "train/objective/kl", "train/val/clipfrac_avg"} <= set(names) <= set(b)
        for name in names:
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-5), (step, name)
    betas = [s["train/objective/kl_coef"] for s in single["steps"]]
    assert betas[0] == pytest.approx(0.05) and len(set(betas)) == 3  # β moved after each rollout
    from lit_align.models.loading import load_model

    initial = dict(load_model("tiny-llama")[0].named_parameters())
    assert any(not torch.equal(initial[k], v) for k, v in single["weights"].items() if k in initial)
    assert single["weights"].keys() == other["weights"].keys()
    assert any(k.startswith("critic.score") for k in single["weights"])
    for name, value in single["weights"].items():
        torch.testing.assert_close(other["weights"][name], value, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_kto_reference_point_is_active(runs):
    """The KTO comparison covers the cross-rank KL estimate: z > 0 at some step (not clamped to 0)."""
    steps = torch.load(runs / "kto_single.pt", weights_only=True)["steps"]
    assert any(s["train/kl"] > 1e-4 for s in steps)


@pytest.mark.slow
@pytest.mark.parametrize("lora_r", [0, 4])
def test_fsdp2_recipe_from_the_command_line_exports_and_resumes(tmp_path, lora_r):
    """The README's FSDP2 invocation on 2 CPU processes: trains, writes a sharded (DCP) checkpoint, exports a
    plain Hugging Face model (LoRA merged), and resumes from the sharded checkpoint at its step."""
    from transformers import AutoModelForCausalLM

    from lit_align.models.loading import load_model

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    fsdp2 = ["--trainer.devices", "2", "--trainer.strategy", "ModelParallelStrategy",
             "--trainer.strategy.data_parallel_size", "2", "--trainer.strategy.tensor_parallel_size", "1"]  # fmt: skip
    base = [sys.executable, str(REPO / "recipes/dpo.py"), "fit", "--config", str(REPO / "recipes/configs/tiny.yaml"),
            *fsdp2, "--model.lora_r", str(lora_r)]  # fmt: skip
    first = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "dpo" / "version_0"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert (ckpt / ".metadata").exists()  # a DCP directory, one shard per rank
    assert torch.load(ckpt / "meta.pt", weights_only=True)["global_step"] == 3
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "hf_model")
    assert exported.config.architectures == ["LlamaForCausalLM"]
    initial = load_model("tiny-llama")[0].state_dict()
    state = exported.state_dict()
    assert state.keys() == initial.keys() and any(not torch.equal(state[k], initial[k]) for k in state)
    resumed = subprocess.run([*base, "--ckpt_path", str(ckpt), "--trainer.max_steps", "5"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (tmp_path / "runs" / "dpo" / "version_1").exists()  # the resumed run continues its own version
    assert torch.load(ckpt / "meta.pt", weights_only=True)["global_step"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ipo", "simpo", "orpo", "reward_model", "kto", "sft", "rloo", "remax"])
def test_every_other_recipe_runs_under_fsdp2(tmp_path, algo):
    """The remaining algorithms, unchanged, on 2 CPU processes under FSDP2 (their own configure_model): they
    train, checkpoint and export a plain Hugging Face model."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(REPO / f"recipes/{algo}.py"), "fit", "--config", str(REPO / "recipes/configs/tiny.yaml"),
           "--trainer.devices", "2", "--trainer.strategy", "ModelParallelStrategy",
           "--trainer.strategy.data_parallel_size", "2", "--trainer.strategy.tensor_parallel_size", "1"]  # fmt: skip
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / algo / "version_0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt" / "meta.pt", weights_only=True)["global_step"] == 3
    assert (run_dir / "hf_model" / "model.safetensors").exists()


@pytest.mark.slow
def test_distill_recipe_under_fsdp2_on_one_process(tmp_path):
    """FSDP2 on ONE process still frees a frozen teacher's gathered weights after its forward: the teacher's head is
    kept (cloned) for the student's pass all the same (a 1-rank mesh once read freed storage there)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(REPO / "recipes/distill.py"), "fit", "--config", str(REPO / "recipes/configs/tiny.yaml"),
           "--model.teacher", "tiny-llama", "--model.teacher_system_prompt", "null", "--trainer.devices", "1",
           "--trainer.strategy", "ModelParallelStrategy", "--trainer.strategy.data_parallel_size", "1",
           "--trainer.strategy.tensor_parallel_size", "1", "--trainer.precision", "bf16-mixed"]  # fmt: skip
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs" / "distill" / "version_0" / "hf_model" / "model.safetensors").exists()
