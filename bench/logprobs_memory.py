"""Peak memory and time of ``lit_align.logprobs.sequence_logps`` vs the naive log-softmax, forward + backward.

Naive: ``log_softmax(model(...).logits.float()).gather(targets)`` over the whole (B, T, V) block.
Ours: ``sequence_logps`` (logits only from the first completion position, chunked logsumexp, fp32 upcast
recomputed in backward for half-precision logits).

Shape: SmolLM2-135M's vocabulary (49152) and width, batch 8 x 512 tokens, the first half of every row
the prompt. The model is SmolLM2-135M-Instruct cut to its first ``--layers`` decoder layers when the
preset loads (real embeddings/tied LM head), else a random Llama of the same dimensions: the point is
the (B, T, V) logits, not the backbone.

Each (dtype, variant) runs in a fresh subprocess. Memory is the peak above the baseline just before
the first step: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``; falls back to ``ru_maxrss``). Time is the median
of ``--repeats`` steps after one warm-up step.

    nice -n 10 python bench/logprobs_memory.py            # CPU
    python bench/logprobs_memory.py --device cuda         # GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

SMOLLM2_DIMS = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3}
VOCAB = 49152


def build_model(source: str, layers: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if source in ("auto", "smollm2"):
        try:
            from lit_align.models import load_model

            model, _ = load_model("smollm2-135m-instruct")
            model.model.layers = model.model.layers[:layers]
            model.config.num_hidden_layers = layers
            return model, f"SmolLM2-135M-Instruct, first {layers} layers"
        except (ImportError, OSError, ValueError) as err:
            if source == "smollm2":
                raise
            print(f"# smollm2-135m-instruct unavailable ({type(err).__name__}): random Llama", file=sys.stderr)
    config = LlamaConfig(vocab_size=VOCAB, num_hidden_layers=layers, tie_word_embeddings=True, **SMOLLM2_DIMS)
    torch.manual_seed(0)
    return LlamaForCausalLM(config), f"random Llama, SmolLM2 dims, {layers} layers"


def naive_sequence_logps(model, input_ids, attention_mask, labels):
    """Sum / count of completion log-probs the naive way: the full (B, T, V) fp32 log-softmax."""
    import torch

    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logps = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    token = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    return token.sum(-1) / mask.sum(-1).clamp(min=1)


def _cpu_peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _cpu_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(args) -> None:
    import torch

    from lit_align.logprobs import sequence_logps

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model, description = build_model(args.model, args.layers)
    model = model.to(device=device, dtype=dtype).train()
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (args.batch, args.seq), generator=g).to(device)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    labels[:, : args.seq // 2] = -100

    def step() -> float:
        if args.variant == "naive":
            mean = naive_sequence_logps(model, input_ids, attention_mask, labels)
        else:
            mean = sequence_logps(model, input_ids, attention_mask, labels).mean
        loss = -mean.mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
        method = "torch.cuda.max_memory_allocated"
    elif _cpu_peak_reset():
        baseline = _cpu_status_mb("VmRSS")
        method = "VmHWM after clear_refs"
    else:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        method = "ru_maxrss"
    times, loss = [], 0.0
    for i in range(args.repeats + 1):
        sync()
        start = time.perf_counter()
        loss = step()
        sync()
        if i:  # the first step is the warm-up
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    elif method.startswith("VmHWM"):
        peak = _cpu_status_mb("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "peak_mb": peak - baseline,
                "time_s": statistics.median(times),
                "loss": loss,
                "model": description,
                "method": method,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=("auto", "smollm2", "random"), default="auto")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--variant", choices=("naive", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    shape = f"B x T = {args.batch} x {args.seq} (prompt {args.seq // 2}), V = {VOCAB}, device {args.device}"
    print(f"# sequence_logps vs naive log_softmax(logits.float()).gather, forward + backward; {shape}")
    for dtype in args.dtypes.split(","):
        results = {}
        for variant in ("naive", "ours"):
            cmd = [sys.executable, __file__, "--variant", variant, "--dtype", dtype]
            for name in ("device", "model", "layers", "batch", "seq", "repeats"):
                cmd += [f"--{name}", str(getattr(args, name))]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[variant]
            print(
                f"{dtype:5s} {variant:6s} peak {r['peak_mb']:9.1f} MiB  time {r['time_s']:7.3f} s  "
                f"loss {r['loss']:.5f}  [{r['model']}; {r['method']}]"
            )
        naive, ours = results["naive"], results["ours"]
        print(
            f"{dtype:5s} ratio naive/ours: memory {naive['peak_mb'] / ours['peak_mb']:.2f}x, "
            f"time {naive['time_s'] / ours['time_s']:.2f}x, |loss diff| {abs(naive['loss'] - ours['loss']):.2e}"
        )


if __name__ == "__main__":
    main()
