"""Online generation on CPU: Hugging Face ``generate`` with its dynamic KV cache, a static cache, and a static cache
with ``torch.compile`` (what transformers compiles on GPU by itself; on CPU only when asked); ``+shared`` modes
prefill each prompt once and repeat its KV cache for the G samples (lit-align's default, ``HFGenerate.prompt_cache``).

    python bench/generation.py [--prompts 4] [--generations 4] [--max-new-tokens 64] [--repeats 3] [--threads 2]
    python bench/generation.py --gsm8k --prompts 2 --generations 8 --modes static,static+shared

The rollout of a GRPO step on the project's arithmetic prompts (chat template, left-padded) with SmolLM2-135M-Instruct
in fp32: ``prompts x generations`` sequences sampled to exactly ``--max-new-tokens`` tokens (EOS suppressed, so every
mode decodes the same number of steps). Modes alternate, ``--repeats`` times after one warm-up each; the compiled
mode's warm-up (the compilation) is reported apart. Prints the medians, tokens/s and the ratio to the dynamic cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default="dynamic,static,static+compile")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--gsm8k", action="store_true", help="GSM8K questions (../shared/data/gsm8k) as chat user turns")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import CompileConfig

    from lit_align.datamodules import PromptDataModule
    from lit_align.models.loading import load_model

    model, tokenizer = load_model(args.model)
    model.eval()
    data = {}
    if args.gsm8k:
        import tempfile

        source = REPO.parent / "shared" / "data" / "gsm8k" / "train_normalized.jsonl"
        rows = [json.loads(line) for line in source.read_text().splitlines()[: args.prompts]]
        path = Path(tempfile.mkdtemp()) / "gsm8k.jsonl"
        path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": r["question"]}],
                                            "answer": r["final_answer"]}) + "\n" for r in rows))  # fmt: skip
        data["data_path"] = str(path)
    dm = PromptDataModule(tokenizer=tokenizer, val_size=0, batch_size=args.prompts, max_samples=args.prompts, seed=0,
                          **data)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    input_ids = batch["prompt_input_ids"].repeat_interleave(args.generations, 0)
    attention_mask = batch["prompt_attention_mask"].repeat_interleave(args.generations, 0)
    n = args.max_new_tokens
    common = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": True, "temperature": 1.0, "top_k": 0,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}  # fmt: skip
    compile_config = CompileConfig(mode="default")  # "reduce-overhead" means CUDA graphs
    compile_config._compile_all_devices = True  # transformers compiles on CPU only when told to
    configs = {
        "dynamic": GenerationConfig(**common),
        "static": GenerationConfig(**common, cache_implementation="static", disable_compile=True),
        "static+compile": GenerationConfig(**common, cache_implementation="static", compile_config=compile_config),
    }
    modes = [m for m in args.modes.split(",") if m]
    from lit_align.rollouts.hf import HFGenerate

    def run(mode: str) -> float:
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            extra, config = {}, configs[mode.removesuffix("+shared")]
            if mode.endswith("+shared"):  # one prefill per prompt, its cache repeated for the G samples
                kv = "static" if config.cache_implementation == "static" else "dynamic"
                backend = HFGenerate(tokenizer, max_new_tokens=n, kv_cache=kv)
                extra["cache"] = backend.prompt_cache(model, batch["prompt_input_ids"], batch["prompt_attention_mask"],
                                                      args.generations)  # fmt: skip
                config = GenerationConfig(**{**config.to_dict(), "cache_implementation": None})
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **extra)
        assert out.shape[1] == input_ids.shape[1] + n, out.shape
        return time.perf_counter() - start

    warmup = {mode: run(mode) for mode in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else list(reversed(modes)):
            times[mode].append(run(mode))
    load = os.getloadavg()
    rows = len(input_ids)
    print(f"model {args.model}, {rows} sequences x {n} new tokens (prompt width {input_ids.shape[1]}), "
          f"{torch.get_num_threads()} threads, load {load[0]:.2f}")  # fmt: skip
    base = statistics.median(times[modes[0]])
    summary = {}
    for mode in modes:
        median = statistics.median(times[mode])
        summary[mode] = {"median_s": round(median, 3), "tokens_per_s": round(rows * n / median, 1),
                         "vs_first": round(base / median, 3), "warmup_s": round(warmup[mode], 1),
                         "times": [round(t, 2) for t in times[mode]]}  # fmt: skip
        print(f"{mode:15s} median {median:7.2f} s  {rows * n / median:7.1f} tok/s  ({base / median:4.2f}x {modes[0]})"
              f"  warm-up {warmup[mode]:6.1f} s  runs {', '.join(f'{t:.2f}' for t in times[mode])}")  # fmt: skip
    print(json.dumps({"load": load, **summary}))


if __name__ == "__main__":
    main()
