"""AdamW's step on SmolLM2-135M-Instruct's parameters: torch's per-parameter loop (the CPU default), ``foreach`` and
``fused`` (what ``AlignmentModule`` uses where it can), alternating, median seconds per step and the ratios.

    python bench/optimizer_step.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lit_align.models.loading import load_model

VARIANTS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model("smollm2-135m-instruct")
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, kwargs in VARIANTS.items():  # alternating: the machine's load hits every variant alike
            optimizer = torch.optim.AdamW(params, lr=1e-6, **kwargs)
            optimizer.step()  # state initialized outside the timing
            start = time.perf_counter()
            for _ in range(3):
                optimizer.step()
            times[name].append((time.perf_counter() - start) / 3)
            del optimizer
    loop = statistics.median(times["loop"])
    print(f"{sum(p.numel() for p in params) / 1e6:.0f}M parameters, fp32, {args.threads} threads, "
          f"{args.repeats} alternating repeats")  # fmt: skip
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:8s} median {median:.3f} s/step   loop/{name} = {loop / median:.2f}x")


if __name__ == "__main__":
    main()
