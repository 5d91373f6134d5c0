"""A fit stopped by SIGTERM, Ctrl-C (SIGINT) or SIGUSR1 saves a checkpoint at the step it reached, says how to resume,
exits non-zero on every rank within seconds, and the resumed run equals the uninterrupted one
(:class:`lit_align.callbacks.preemption.StopOnSignal`).

Two ways of sending the signal. ``tests/resume_run.py`` sends it to its own process right after step 5 (or during
the validation after it), so the stopped step is known and the resumed steps 6-8 are compared with the uninterrupted
run's, batch by batch: losses, sampled rewards and final weights. The command-line cases signal a real ``lit-align
dpo fit`` from outside while it trains, as SLURM or a terminal would, then run the resume command it printed and
compare its export with an uninterrupted run's.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_resume import ENV, run, steps

CLI = str(Path(sys.executable).with_name("lit-align"))


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "mode"), [("dpo", "sigterm"), ("dpo", "sigint"), ("grpo", "sigterm"),
                                            ("grpo_env", "sigint"), ("dpo_val", "sigterm_val")])  # fmt: skip
def test_a_signal_saves_the_step_and_the_resumed_run_matches_the_uninterrupted_one(tmp_path, algo, mode):
    full = run(tmp_path, algo, "full")
    assert full.returncode == 0, full.stderr[-3000:]
    stopped = run(tmp_path, algo, mode)
    signum = signal.SIGINT if mode == "sigint" else signal.SIGTERM
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    name = signal.Signals(signum).name
    assert f"Received {name}: stopping after the current step" in stopped.stderr
    assert re.search(rf"Stopped by {name} at step 5: checkpoint \S+last\.ckpt", stopped.stderr), stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    checkpoint = torch.load(tmp_path / f"{algo}_ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 5  # the step reached, not the last periodic checkpoint's (4)

    resumed = run(tmp_path, algo, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = {s["step"]: s for s in steps(tmp_path / f"{algo}_full.jsonl")}
    assert [s["step"] for s in steps(tmp_path / f"{algo}_{mode}.jsonl")] == [1, 2, 3, 4, 5]
    after = steps(tmp_path / f"{algo}_resume.jsonl")
    assert [s["step"] for s in after] == [6, 7, 8]  # no step lost, none done twice
    for s in after:
        expected = reference[s["step"]]
        assert s["batch"] == expected["batch"], s["step"]
        assert s["loss"] == pytest.approx(expected["loss"], rel=1e-6, abs=1e-7), s["step"]
        if expected["reward"] == expected["reward"]:  # GRPO: the same completions were sampled
            assert s["reward"] == pytest.approx(expected["reward"], abs=1e-7), s["step"]
    final, resumed_weights = (torch.load(tmp_path / f"{algo}_{m}.pt", weights_only=True) for m in ("full", "resume"))
    for key, value in final.items():
        torch.testing.assert_close(resumed_weights[key], value, rtol=0, atol=1e-6, msg=key)


def fit_command(*extra: str) -> list[str]:
    return [CLI, "dpo", "fit", "--config", "tiny", "--trainer.max_steps", "240", "--trainer.val_check_interval", "80",
            *extra]  # fmt: skip


def signal_at(command: list[str], cwd: Path, signum: int, after_step: int) -> tuple[subprocess.Popen, str, float]:
    """Start ``command``, send ``signum`` once it printed ``step after_step/``; returns the process, its stderr and
    the seconds from the signal to its exit."""
    process = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    for line in process.stdout:
        if line.startswith(f"step {after_step}/"):
            break
    else:
        raise AssertionError(f"the run ended before step {after_step}: {process.stderr.read()[-3000:]}")
    process.send_signal(signum)  # to the launching process only (under DDP the other rank learns it at the step's end)
    sent = time.perf_counter()
    _, stderr = process.communicate(timeout=120)
    return process, stderr, time.perf_counter() - sent


def exported(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "hf_model" / "model.safetensors")


def resume(stderr: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the resume command the stopped run printed, as the user would copy it."""
    (command,) = re.findall(r"resume with: (.+)", stderr)
    args = shlex.split(command)
    assert args[:2] == ["lit-align", "dpo"] and args[-2] == "--ckpt_path", command
    return subprocess.run([CLI, *args[1:]], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_real_fit_signalled_from_outside_resumes_to_the_uninterrupted_weights(tmp_path, signum):
    (tmp_path / "full").mkdir()
    (tmp_path / "stopped").mkdir()
    full = subprocess.run(fit_command(), cwd=tmp_path / "full", env=ENV, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]

    process, stderr, seconds = signal_at(fit_command(), tmp_path / "stopped", signum, after_step=100)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert seconds < 20, seconds  # the step in progress ends, the checkpoint is written: seconds, not a minute
    stopped_at = int(re.search(r"Stopped by \w+ at step (\d+)", stderr).group(1))
    assert 100 <= stopped_at < 240
    run = tmp_path / "stopped" / "runs" / "dpo" / "version_0"
    assert not (run / "hf_model").exists()  # a stopped run exports nothing: a `fit && evaluate` chain stops too

    resumed = resume(stderr, tmp_path / "stopped")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (tmp_path / "stopped" / "runs" / "dpo" / "version_1").exists()  # resumed into its own version
    expected, got = exported(tmp_path / "full" / "runs" / "dpo" / "version_0"), exported(run)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_under_ddp_every_rank_stops_at_the_same_step_and_the_resumed_run_matches(tmp_path):
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    (tmp_path / "full").mkdir()
    (tmp_path / "stopped").mkdir()
    full = subprocess.run(fit_command(*ddp), cwd=tmp_path / "full", env=ENV, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]

    process, stderr, seconds = signal_at(fit_command(*ddp), tmp_path / "stopped", signal.SIGTERM, after_step=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert seconds < 30, seconds  # no rank left waiting on the other
    assert stderr.count("Stopped by SIGTERM at step") == 1  # said once, by rank 0
    time.sleep(2)
    assert not processes_in(tmp_path / "stopped")  # rank 1 exited too

    resumed = resume(stderr, tmp_path / "stopped")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = exported(tmp_path / "full" / "runs" / "dpo" / "version_0")
    got = exported(tmp_path / "stopped" / "runs" / "dpo" / "version_0")
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)


def processes_in(folder: Path) -> list[str]:
    """The processes whose working directory is ``folder`` (the ranks of a run started there)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cwd").resolve() == folder.resolve():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_sigusr1_under_slurm_saves_requeues_and_the_requeued_job_resumes(tmp_path):
    """The README's SLURM pattern: a fixed log version and ``--ckpt_path last``. The first start finds no checkpoint
    and starts fresh; SIGUSR1 saves and asks ``scontrol requeue``; the same command again resumes from the checkpoint
    and ends at the uninterrupted run's weights."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.args'}\n")
    (fake / "scontrol").chmod(0o755)
    env = {**ENV, "PATH": f"{fake}:{ENV['PATH']}", "SLURM_JOB_ID": "4242"}
    job = fit_command("--trainer.logger.init_args.version", "job_4242", "--ckpt_path", "last")
    (tmp_path / "job").mkdir()
    (tmp_path / "full").mkdir()
    process = subprocess.Popen(job, cwd=tmp_path / "job", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    for line in process.stdout:
        if line.startswith("step 50/"):
            break
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGUSR1, stderr[-3000:]
    assert "Stopped by SIGUSR1 at step" in stderr and "SLURM job 4242: requeued" in stderr
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    run = tmp_path / "job" / "runs" / "dpo" / "job_4242"
    assert (run / "checkpoints" / "last.ckpt").is_file()

    requeued = subprocess.run(job, cwd=tmp_path / "job", env=env, capture_output=True, text=True, timeout=600)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "Restored all states from the checkpoint" in requeued.stdout + requeued.stderr
    full = subprocess.run(fit_command(), cwd=tmp_path / "full", env=ENV, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    expected, got = exported(tmp_path / "full" / "runs" / "dpo" / "version_0"), exported(run)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)
