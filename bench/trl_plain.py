"""TRL 1.16's DPOTrainer as its users run it: a plain script, TRL's defaults except CPU fp32 without checkpointing.

    python bench/trl_plain.py MODEL_DIR ROWS.jsonl [--steps 5] [--batch-size 4] [--max-length 512] [--lr 1e-6]

bench/compare.py runs it on the rows of its TRL side (``--peer-check``) and prints its step time beside the
harness's, so a ratio is published only when the harness runs TRL as fast as TRL runs on its own. Step time: the
median interval between the ends of consecutive optimizer steps (the first step is warm-up); the last line is
``RESULT {json}`` with it and the peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("rows")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--output-dir", default="trl_plain_out")
    args = p.parse_args()

    import datasets
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    rows = datasets.load_dataset("json", data_files=args.rows, split="train")
    config = trl.DPOConfig(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        max_length=args.max_length, learning_rate=args.lr, beta=args.beta, bf16=False, gradient_checkpointing=False,
        use_cpu=True, report_to="none", save_strategy="no",
    )  # fmt: skip
    ends: list[float] = []

    class Ends(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    trainer = trl.DPOTrainer(
        model=args.model_dir, args=config, train_dataset=rows, processing_class=tokenizer, callbacks=[Ends()]
    )
    trainer.train()
    with open("/proc/self/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    steps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    result = {"step_s": statistics.median(steps), "steps": steps, "peak_rss_mb": peak_kb / 1024, "optim": config.optim}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
