"""DPO under fp32, bf16-mixed and bf16-true on this machine: step time, peak memory and how far the losses drift.

    python bench/precision.py [--steps 4] [--pairs 4] [--max-length 512] [--repeats 1] [--threads 2]
                              [--precisions 32-true,bf16-mixed,bf16-true] [--checkpointing]

SmolLM2-135M-Instruct, real HH-RLHF harmless pairs (``../shared/data``; the demo pairs when absent), the same rows in
the same order for every precision (the DataModule's seeded sampler). Each run is a fresh process (``--worker``), so
its peak RSS (VmHWM) is its own; precisions alternate over ``--repeats``. Step time is the median interval between
the ends of consecutive optimizer steps (the first step, a warm-up, is not timed). Loss agreement: every step's
loss, and the chosen/rejected rewards, against the fp32 run's at the same step (the weights drift apart as training
goes on, so step 1 is the pure precision error of one forward).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def vm_hwm_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    import lightning as L
    import torch

    from bench import _data
    from lit_align import DPO
    from lit_align.datamodules import PreferenceDataModule

    torch.set_num_threads(args.threads)
    source = _data.source_file("dpo", "shared" if _data.SHARED.is_dir() else "demo")
    dm = PreferenceDataModule(tokenizer="smollm2-135m-instruct", data_path=str(source), batch_size=args.pairs,
                              val_size=0, max_length=args.max_length, max_prompt_length=None,
                              max_samples=args.pairs * args.steps, seed=0)  # fmt: skip
    module = DPO(policy="smollm2-135m-instruct", learning_rate=1e-6, warmup_ratio=0.0, scheduler="constant",
                 gradient_checkpointing=args.checkpointing)  # fmt: skip
    record: dict = {"precision": args.precision, "losses": [], "chosen": [], "rejected": [], "ends": []}

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            m = trainer.callback_metrics
            record["losses"].append(float(m["train/loss"]))
            record["chosen"].append(float(m["train/rewards/chosen"]))
            record["rejected"].append(float(m["train/rewards/rejected"]))
            record["ends"].append(time.perf_counter())

    trainer = L.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, precision=args.precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[Record()],
    )  # fmt: skip
    trainer.fit(module, dm)
    ends = record.pop("ends")
    record["step_s"] = statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))
    record["peak_gb"] = vm_hwm_gb()
    record["load"] = os.getloadavg()
    print("RESULT " + json.dumps(record), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", default="32-true,bf16-mixed,bf16-true")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on (all runs)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="32-true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    precisions = args.precisions.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in precisions}
    start = f"{time.strftime('%Y-%m-%d %H:%M')}  load at start {os.getloadavg()[0]:.2f}, {args.threads} threads"
    print(start, flush=True)
    for r in range(args.repeats):
        for precision in precisions if r % 2 == 0 else list(reversed(precisions)):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--precision",
                precision,
                "--steps",
                str(args.steps),
                "--pairs",
                str(args.pairs),
                "--max-length",
                str(args.max_length),
                "--threads",
                str(args.threads),
            ]
            cmd += ["--checkpointing"] if args.checkpointing else []  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                raise SystemExit(f"{precision} failed:\n{out.stderr[-3000:]}")
            result = json.loads(lines[-1].removeprefix("RESULT "))
            runs[precision].append(result)
            print(f"  {precision:11s} {result['step_s']:6.2f} s/step  {result['peak_gb']:5.2f} GB  "
                  f"losses {', '.join(f'{x:.5f}' for x in result['losses'])}  load {result['load'][0]:.2f}",
                  flush=True)  # fmt: skip
    base = runs[precisions[0]][0]
    base_time = statistics.median(r["step_s"] for r in runs[precisions[0]])
    print(f"\n| precision | s/step | speed vs {precisions[0]} | peak GB | |Δ loss| step 1 | max |Δ loss| | "
          "max |Δ reward| |\n| --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    summary = {}
    for precision, results in runs.items():
        step = statistics.median(r["step_s"] for r in results)
        first = results[0]
        dloss = [abs(a - b) for a, b in zip(first["losses"], base["losses"], strict=True)]
        drew = [abs(a - b) for k in ("chosen", "rejected") for a, b in zip(first[k], base[k], strict=True)]
        peak = statistics.median(r["peak_gb"] for r in results)
        summary[precision] = {"step_s": step, "speed": base_time / step, "peak_gb": peak, "dloss": dloss,
                              "dreward_max": max(drew)}  # fmt: skip
        print(f"| {precision} | {step:.2f} | {base_time / step:.2f}x | {peak:.2f} | {dloss[0]:.2e} | {max(dloss):.2e} "
              f"| {max(drew):.2e} |")  # fmt: skip
    print(f"load at end {os.getloadavg()[0]:.2f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
