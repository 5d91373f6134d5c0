"""Host memory handed back after each step (``lit_align.models.host_memory``): it really lowers resident memory, and the
modules call it once per training step and after validation, on CPU, unless switched off."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lit_align.algorithms import DPO
from lit_align.datamodules import PreferenceDataModule
from lit_align.models import host_memory
from tests.helpers import tiny_trainer

RETAINED = textwrap.dedent(
    """
    import torch
    from lit_align.models.host_memory import release_host_memory

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    # 300 tensors of 1 MiB from the heap (the mmap threshold is raised by the environment), the last one kept
    # alive above the others so that glibc's automatic trim of the heap top cannot return them
    chunks = [torch.ones(256 * 1024) for _ in range(300)]
    keep = torch.ones(16)
    del chunks
    before = rss_mb()
    released = release_host_memory()
    print(released, before, rss_mb())
    """
)


@pytest.mark.skipif(host_memory._malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)")
def test_freed_heap_memory_leaves_the_resident_set():
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 << 20), MALLOC_TRIM_THRESHOLD_=str(1 << 40))
    out = subprocess.run([sys.executable, "-c", RETAINED], env=env, capture_output=True, text=True, check=True)
    released, before, after = out.stdout.split()
    assert released == "True"
    assert float(before) - float(after) > 200  # of the 300 MiB freed but still resident


@pytest.mark.parametrize("enabled", [True, False])
def test_modules_release_after_every_step_and_validation(tmp_path, monkeypatch, enabled):
    calls = []
    monkeypatch.setattr("lit_align.training.base.release_host_memory", lambda: calls.append(1))
    dm = PreferenceDataModule(tokenizer="tiny-llama", batch_size=2, max_samples=12, val_size=4)
    module = DPO(policy="tiny-llama", release_host_memory=enabled)
    trainer = tiny_trainer(tmp_path, max_steps=3, limit_val_batches=1, val_check_interval=3)
    trainer.fit(module, datamodule=dm)
    validations = 2  # the sanity check and the one after step 3
    assert len(calls) == (3 + validations if enabled else 0)
