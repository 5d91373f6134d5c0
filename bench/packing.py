"""Padded against padding-free log-prob passes (forward + backward), and which boundary-respecting attention is faster.

    python bench/packing.py [--pairs 4] [--max-length 512] [--repeats 3] [--threads 2] [--model smollm2-135m-instruct]

One DPO batch of real HH-RLHF harmless pairs (``../shared/data``; the project's demo pairs when absent), chosen and
rejected stacked as the module stacks them, through :func:`lit_align.models.logprobs.completion_scores` with a backward
of the summed log-probs, in three modes, alternating, ``--repeats`` times after one warm-up each:

- ``padded``: every row padded to the longest (what TRL runs on CPU);
- ``packed, block mask``: one row of the real tokens, transformers' own packed mode (``sdpa`` with the block-diagonal
  causal mask it builds from the reset ``position_ids``: N² attention per layer);
- ``packed, per sequence``: one row, :data:`lit_align.models.packing.VARLEN` attention (SDPA per sequence: Σ Lᵢ²), the
  library's choice.

Prints the medians, the ratios to padded, the real and padded token counts, and the largest difference of the
packed log-probs from the padded ones. Peak memory: ``bench/compare.py`` (fresh processes, VmHWM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def batch_of_pairs(tokenizer, pairs: int, max_length: int) -> dict[str, torch.Tensor]:
    from bench import _data
    from lit_align.datamodules import PreferenceDataModule

    source = _data.source_file("dpo", "shared" if _data.SHARED.is_dir() else "demo")
    dm = PreferenceDataModule(tokenizer=tokenizer, data_path=str(source), batch_size=pairs, val_size=0,
                              max_length=max_length, max_prompt_length=None, max_samples=pairs, seed=0)  # fmt: skip
    dm.setup("fit")
    return next(iter(dm.train_dataloader())), source


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="smollm2-135m-instruct")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lit_align.models import packing
    from lit_align.models.loading import load_model
    from lit_align.models.logprobs import completion_scores, concatenate_pair

    model, tokenizer = load_model(args.model)
    model.train()
    pairs, source = batch_of_pairs(tokenizer, args.pairs, args.max_length)
    joint = concatenate_pair(pairs, tokenizer.pad_token_id or 0)
    real = int(joint["attention_mask"].sum())
    padded_tokens = joint["input_ids"].numel()
    lengths = joint["attention_mask"].sum(1).tolist()

    @contextlib.contextmanager
    def block_mask(_model):  # transformers' own packed mode: no per-sequence attention swapped in
        yield

    def run(mode: str) -> tuple[float, torch.Tensor]:
        swap = contextlib.nullcontext()
        if mode == "packed, block mask":
            swap = _patched(packing, "boundary_attention", block_mask)
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with swap:
            scores = completion_scores(model, **joint, padding_free=mode != "padded")
            scores.logps.sum().backward()
        return time.perf_counter() - start, scores.logps.detach()

    modes = ("padded", "packed, block mask", "packed, per sequence")
    times: dict[str, list[float]] = {m: [] for m in modes}
    logps: dict[str, torch.Tensor] = {}
    for mode in modes:
        run(mode)  # warm-up
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else reversed(modes):
            seconds, logps[mode] = run(mode)
            times[mode].append(seconds)
    load = os.getloadavg()
    print(
        f"model {args.model}, {args.pairs} pairs from {source}, {torch.get_num_threads()} threads, load {load[0]:.2f}"
    )
    print(f"sequences {len(lengths)}, lengths {lengths}; real tokens {real}, padded {padded_tokens} "
          f"({padded_tokens / real:.2f}x)")  # fmt: skip
    base = statistics.median(times["padded"])
    summary = {}
    for mode in modes:
        median = statistics.median(times[mode])
        diff = float((logps[mode] - logps["padded"]).abs().max())
        summary[mode] = {"median_s": round(median, 3), "times": [round(t, 3) for t in times[mode]],
                         "speedup": round(base / median, 3), "max_abs_logp_diff": diff}  # fmt: skip
        print(f"{mode:22s} median {median:7.3f} s  ({base / median:4.2f}x padded)  "
              f"runs {', '.join(f'{t:.2f}' for t in times[mode])}  max |Δ logp| {diff:.2e}")  # fmt: skip
    print(json.dumps({"real_tokens": real, "padded_tokens": padded_tokens, "load": load, **summary}))


@contextlib.contextmanager
def _patched(obj, name, value):
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


if __name__ == "__main__":
    main()
