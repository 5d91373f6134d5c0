"""Peak memory and time of completion log-probs, forward + backward: naive vs plain vs chunked LM head.

Variants, each ``-mean(sequence mean log-prob)`` backpropagated through the model:
    naive    ``log_softmax(model(...).logits.float()).gather(targets)`` over the whole (B, T, V) block.
    plain    ``sequence_logps(..., chunked=False)``: logits only from the first completion position
             (``logits_to_keep``), chunked logsumexp, fp32 upcast recomputed in backward for half precision.
    chunked  ``sequence_logps(...)`` (the default): the LM head + log-softmax applied chunk by chunk to the
             scored positions' hidden states in forward and backward (``lit_align.models.lm_head``); no (tokens x V)
             logits at any point.

Models: ``smollm2`` is SmolLM2-135M-Instruct (``load_model("smollm2-135m-instruct")``, vocabulary 49,152,
tied embeddings), by default cut to its first ``--layers`` decoder layers (``--layers 0`` keeps all 30): the
point is the (B, T, V) logits, not the backbone, and 30 layers of 4k tokens take minutes on 2 CPU cores.
``tiny-llama`` is the 2-layer test model (vocabulary 259): there the logits are small and the chunked head
only costs its recomputation.

Each (model, dtype, variant) runs in a fresh subprocess. Memory is the peak above the baseline just before
the first step: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set
(``VmHWM`` from ``/proc/self/status``, reset through ``/proc/self/clear_refs``; else ``ru_maxrss``). Time is
the median of ``--repeats`` steps after one warm-up step.

    nice -n 10 python bench/logprobs_memory.py                  # CPU, both models, fp32 and bf16
    python bench/logprobs_memory.py --device cuda --layers 0    # GPU, the whole SmolLM2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("naive", "plain", "chunked")
MEMORY_METHOD = ("VmHWM above the pre-step RSS", "torch.cuda.max_memory_allocated above the pre-step allocation")


def build_model(name: str, layers: int):
    from lit_align.models.loading import load_model

    if name == "tiny-llama":
        model, _ = load_model("tiny-llama", seed=0)
        return model, "tiny-llama (2 layers)"
    model, _ = load_model("smollm2-135m-instruct")
    if layers:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    kept = layers or model.config.num_hidden_layers
    return model, f"SmolLM2-135M-Instruct, {kept}/30 layers"


def naive_sequence_logps(model, input_ids, attention_mask, labels):
    """Mean completion log-prob per sequence the naive way: the full (B, T, V) fp32 log-softmax."""
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

    from lit_align.models.logprobs import sequence_logps

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model, description = build_model(args.model, args.layers)
    model = model.to(device=device, dtype=dtype).train()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(device)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    labels[:, : args.seq // 2] = -100

    def step() -> float:
        if args.variant == "naive":
            mean = naive_sequence_logps(model, input_ids, attention_mask, labels)
        else:
            mean = sequence_logps(model, input_ids, attention_mask, labels, chunked=args.variant == "chunked").mean
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
    result = {"peak_mb": peak - baseline, "time_s": statistics.median(times), "loss": loss}
    print(json.dumps(result | {"model": description, "vocab": vocab, "method": method}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="smollm2,tiny-llama")
    parser.add_argument("--layers", type=int, default=2, help="SmolLM2 decoder layers kept (0: all 30)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    shape = f"B x T = {args.batch} x {args.seq} (prompt {args.seq // 2}), device {args.device}, {args.threads} threads"
    print(f"# completion log-probs, forward + backward; {shape}; peak = {MEMORY_METHOD[args.device != 'cpu']}")
    print(f"# {'model':44s} {'dtype':5s} {'variant':8s} {'peak MiB':>9s} {'time s':>8s} {'loss':>10s}")
    for model in args.models.split(","):
        for dtype in args.dtypes.split(","):
            results = {}
            for variant in args.variants.split(","):
                cmd = [sys.executable, __file__, "--variant", variant, "--model", model, "--dtype", dtype]
                for name in ("device", "layers", "batch", "seq", "repeats", "threads"):
                    cmd += [f"--{name}", str(getattr(args, name))]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True)
                r = results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
                label = f"{r['model']} (V={r['vocab']})"
                print(
                    f"  {label:44s} {dtype:5s} {variant:8s} {r['peak_mb']:9.1f} {r['time_s']:8.3f} {r['loss']:10.6f}",
                    flush=True,
                )
            if "plain" in results and "chunked" in results:
                plain, chunked = results["plain"], results["chunked"]
                memory = plain["peak_mb"] / max(chunked["peak_mb"], 1e-9)
                speed = plain["time_s"] / chunked["time_s"]
                diff = abs(plain["loss"] - chunked["loss"])
                print(f"  -> plain/chunked: memory {memory:.2f}x, time {speed:.2f}x, |loss diff| {diff:.1e}")


if __name__ == "__main__":
    main()
