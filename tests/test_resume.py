"""A run SIGKILLed mid-epoch and resumed from its last checkpoint continues exactly as if never stopped.

``tests/resume_run.py`` runs each case in its own process: uninterrupted (8 steps), killed after step 5
(newest checkpoint: step 4, mid-epoch; GRPO's is in its second epoch), and resumed. The resumed steps
5-8 must see the same batches (token digests), the same loss (and for GRPO, with temperature-1 sampling,
the same reward: the same completions) and end at the same weights. Optimizer and scheduler state
(cosine with warmup) come back from the checkpoint; the data position from the resumable DataLoader;
the sampling RNG from its (seed, step, rank) key.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(out, algo, mode):
    return subprocess.run([sys.executable, str(REPO / "tests" / "resume_run.py"), str(out), algo, mode], cwd=out,
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip


def steps(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["dpo", "trdpo", "grpo", "grpo_env", "distill"])
def test_sigkill_and_resume_matches_uninterrupted(tmp_path, algo):
    full = run(tmp_path, algo, "full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run(tmp_path, algo, "kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run(tmp_path, algo, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr

    reference = {s["step"]: s for s in steps(tmp_path / f"{algo}_full.jsonl")}
    assert sorted(reference) == list(range(1, 9))
    assert [s["step"] for s in steps(tmp_path / f"{algo}_kill.jsonl")] == [1, 2, 3, 4, 5]
    after = steps(tmp_path / f"{algo}_resume.jsonl")
    assert [s["step"] for s in after] == [5, 6, 7, 8]  # continues at the checkpoint's step, loses none
    for s in after:
        expected = reference[s["step"]]
        assert s["batch"] == expected["batch"], s["step"]
        assert s["loss"] == pytest.approx(expected["loss"], rel=1e-6, abs=1e-7), s["step"]
        if not math.isnan(expected["reward"]):
            assert s["reward"] == pytest.approx(expected["reward"], abs=1e-7), s["step"]
    final, resumed_weights = (torch.load(tmp_path / f"{algo}_{m}.pt", weights_only=True) for m in ("full", "resume"))
    assert (algo == "trdpo") == any(k.startswith("reference.") for k in final)  # TR-DPO: the synced reference too
    if algo == "trdpo":  # and it did move: 4 syncs toward the trained policy
        from lit_align.models.loading import load_model

        initial = load_model("tiny-llama", seed=0)[0].state_dict()
        assert any(not torch.equal(final[f"reference.{k}"], v) for k, v in initial.items())
    for name, value in final.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_checkpoint_is_plain_data_without_the_reference(tmp_path):
    """Loadable with weights_only=True (what resume uses); only policy weights; optimizer, scheduler and the
    DataLoader position are in it."""
    assert run(tmp_path, "grpo", "full").returncode == 0
    ckpt = torch.load(tmp_path / "grpo_ckpt_full" / "epoch=1-step=4.ckpt", weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("policy.") for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"batches_in_epoch": 1, "batches_per_epoch": 3}]
    assert ckpt["hyper_parameters"]["rewards"]["reward_funcs"] == ["tests.online_helpers:length_reward"]
