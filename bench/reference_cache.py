"""DPO step time and peak memory with and without cached reference log-probs (``precompute_reference``).

Each run is a fresh process (its own VmHWM): SmolLM2-135M-Instruct, fp32, HH-RLHF harmless pairs from
``../shared/data``, the same rows and order in every run. Runs alternate (live reference, cached, live, cached, ...);
a first cached run fills the cache (its setup time, the reference pass, is printed) and is not counted. The first
step of every run is warm-up, not timed. Prints per mode: the median s/step and VmHWM over its runs.

    python bench/reference_cache.py [--repeats 2] [--steps 4] [--batch-size 2] [--max-length 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared/data/hh_rlhf_harmless_base_test"
FILE = DATA / "harmless_base_test_prompt_chosen_rejected.jsonl"


def run(args: argparse.Namespace, cached: bool) -> dict:
    import lightning as L
    import torch

    from lit_align import DPO
    from lit_align.datamodules import PreferenceDataModule

    torch.set_num_threads(args.threads)
    L.seed_everything(0)
    times: list[float] = []

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            times.append(time.perf_counter() - self.start)

    dm = PreferenceDataModule(tokenizer="smollm2-135m-instruct", data_path=str(FILE), max_samples=args.steps *
                              args.batch_size, val_size=0, batch_size=args.batch_size, max_length=args.max_length,
                              max_prompt_length=args.max_length // 2)  # fmt: skip
    module = DPO(policy="smollm2-135m-instruct", learning_rate=1e-6, warmup_ratio=0.0, precompute_reference=cached)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[Timing()])  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, dm)
    total = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    hwm_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    return {"cached": cached, "step_s": times, "fit_s": total, "setup_s": total - sum(times), "vmhwm_gb": hwm_kb / 1e6,
            "reference_held": module.reference is not None, "load": os.getloadavg()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run; the first is not timed")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", choices=("live", "cached"), help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run(args, args.one == "cached")))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "LIT_ALIGN_CACHE": os.environ.get(
        "LIT_ALIGN_CACHE", tempfile.mkdtemp(prefix="refcache-bench-"))}  # fmt: skip
    # The smollm2 preset's converted folder lives in the default cache: point the reference cache elsewhere only.
    smollm2 = Path.home() / ".cache" / "lit_align" / "smollm2-135m-instruct"
    if smollm2.is_dir() and not (Path(env["LIT_ALIGN_CACHE"]) / smollm2.name).exists():
        (Path(env["LIT_ALIGN_CACHE"]) / smollm2.name).symlink_to(smollm2)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "one"]
    print(f"load average at start: {os.getloadavg()}; settings {flags}", flush=True)
    results: dict[str, list[dict]] = {"live": [], "cached": []}
    order = ["cached"] + ["live", "cached"] * args.repeats  # the first cached run fills the cache
    for i, mode in enumerate(order):
        out = subprocess.run([sys.executable, __file__, *flags, f"--one={mode}"], env=env, capture_output=True,
                             text=True, check=True)  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        steps = ", ".join(f"{s:.2f}" for s in result["step_s"])
        print(f"{mode:6s} steps [{steps}] s, setup {result['setup_s']:.1f} s, VmHWM {result['vmhwm_gb']:.2f} GB, "
              f"reference held {result['reference_held']}, load {result['load'][0]:.2f}"
              + (" (fills the cache, not counted)" if i == 0 else ""), flush=True)  # fmt: skip
        if i > 0:
            results[mode].append(result)
    for mode, runs in results.items():
        timed = [s for r in runs for s in r["step_s"][1:]]
        print(f"{mode:6s} median {statistics.median(timed):.2f} s/step over {len(timed)} steps, "
              f"VmHWM median {statistics.median(r['vmhwm_gb'] for r in runs):.2f} GB")  # fmt: skip
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
