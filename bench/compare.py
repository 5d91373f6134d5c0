"""lit-align against TRL 1.16, side by side: same model folder, rows, lengths, batch, optimizer, fp32.

    python bench/compare.py [--algos dpo,dpo_cached,kto,sft,grpo] [--steps 8] [--repeats 3] [--max-length 512]
                            [--batch-size 4] [--model smollm2-135m-instruct] [--quick] [--json PATH]
    python bench/compare.py --profile dpo      # torch.profiler summary of one lit-align step

Every measured run is a fresh subprocess (bench/_runners.py), so its peak RSS (VmHWM) is its own; runs alternate
lit-align / TRL (the side that goes first alternates too), ``--repeats`` times, and the table shows medians over
repeats. Step time is the interval between the ends of consecutive optimizer steps, so model loading, tokenization
and the first (warm-up) step are excluded: 8 steps give 7 timed intervals. tokens/s is real (non-padding) tokens
of the trained sequences of a step divided by its time, counted from the batches each side built; the run checks
that both sides processed the same tokens and the same sequences at every step (bench/_data.py explains how the
rows are lined up). Achieved FLOP/s uses the model-FLOPs convention, N = all parameters (the tied LM head once),
T = the step's real tokens, attention-score FLOPs left out:

    DPO  6NT (policy forward + backward) + 2NT (reference forward; 0 with cached reference log-probs)
    KTO  6NT + 2NT + 4N·T_KL (the mismatched KL pairs through policy and reference, no grad)
    SFT  6NT
    GRPO 2NT (generation: prompt prefill + one forward per sampled token, KV cache) + 6NT (update); beta = 0

and is shown as a fraction of the fp32 GEMM peak measured here (2048x2048 matmul, best repetition) at the start and
the end of the run. See bench/README.md for how to read the table and the results measured so far.
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "_runners.py"
ALGOS = ("dpo", "dpo_cached", "kto", "sft", "grpo")
MIB = 2**20
QUICK = {"steps": 3, "repeats": 1, "max_length": 128, "batch_size": 2, "num_generations": 2, "max_new_tokens": 8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default=",".join(ALGOS), help="comma-separated, from " + ", ".join(ALGOS))
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run; the first is warm-up, not timed")
    p.add_argument("--repeats", type=int, default=3, help="runs per side and algorithm (medians are reported)")
    p.add_argument("--max-length", type=int, default=512, help="prompt + completion tokens (both sides)")
    p.add_argument("--batch-size", type=int, default=4, help="pairs / examples per step; GRPO: prompts per step")
    p.add_argument("--model", default="smollm2-135m-instruct", help="lit-align preset or a Hugging Face folder")
    p.add_argument("--data", choices=("shared", "demo"), default="shared",
                   help="shared: real rows from ../shared/data (HH-RLHF harmless, its KTO split, dolly); "
                   "demo: the project's demo files")  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.1, help="DPO / KTO beta")
    p.add_argument("--num-generations", type=int, default=4, help="GRPO completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64, help="GRPO completion length")
    p.add_argument("--temperature", type=float, default=1.0, help="GRPO sampling temperature")
    p.add_argument(
        "--grpo-stop-at-eos",
        action="store_true",
        help="let GRPO completions end at EOS (default: exactly --max-new-tokens on both sides, so both process the "
        "same tokens; with EOS the lengths are random and differ between the sides)",
    )
    p.add_argument(
        "--no-padding-free",
        action="store_true",
        help="run lit-align's modules with padding_free=False (padded, like TRL on CPU) instead of their default",
    )
    p.add_argument(
        "--no-fused-layers",
        action="store_true",
        help="run lit-align's modules with fused_layers=False (eager RMSNorm/SwiGLU, like TRL on CPU)",
    )
    p.add_argument(
        "--no-release-host-memory",
        action="store_true",
        help="run lit-align's modules with release_host_memory=False (no malloc_trim after each step, like TRL)",
    )
    p.add_argument(
        "--no-shared-prefix",
        action="store_true",
        help="run lit-align's modules with shared_prefix=False (each pair's prompt computed twice, like TRL)",
    )
    p.add_argument(
        "--no-shared-prefill",
        action="store_true",
        help="GRPO: prefill each sample's prompt in generation (sampling.shared_prefill=False), like TRL",
    )
    p.add_argument(
        "--peer-check",
        action="store_true",
        help="also run bench/trl_plain.py (TRL's DPOTrainer as a plain script) on the DPO rows and compare its step "
        "time with the harness's TRL side",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads in every run (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny defaults to check the harness: " + str(QUICK))
    p.add_argument("--json", type=Path, help="also write every number (and every run) to this file")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (for bench/README.md)")
    p.add_argument("--profile", metavar="ALGO", choices=ALGOS, help="profile one step instead of comparing")
    p.add_argument("--profile-side", choices=("ours", "trl"), default="ours")
    p.add_argument("--workdir", type=Path, help="where rows, specs and run logs go (default: a new temp folder)")
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # quick changes the defaults; explicit flags win
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    args.algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = set(args.algos) - set(ALGOS)
    if unknown:
        p.error(f"unknown algorithms {sorted(unknown)}; choose from {ALGOS}")
    if args.steps < 2:
        p.error("--steps must be at least 2: the first step is warm-up and not timed")
    return args


# -- the machine ------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import torch

    def field(path: str, name: str) -> str | None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            return None
        return next((x.split(":", 1)[1].strip() for x in lines if x.startswith(name)), None)

    cpu = field("/proc/cpuinfo", "model name") or "unknown CPU"
    mem_kb = int((field("/proc/meminfo", "MemTotal") or "0 kB").split()[0])
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 2**20, 1), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "hostname": os.uname().nodename,
    }  # fmt: skip


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy_warning(load_avg: list[float], cores: int, own: int = 0) -> str | None:
    """A warning when other jobs add more than half the cores' worth of load (``own``: this benchmark's threads)."""
    if load_avg[0] <= own + cores / 2:
        return None
    return (
        f"WARNING: 1-min load {load_avg[0]} on {cores} cores: other jobs compete for the CPU, so step times and their "
        "ratios are unreliable (peak memory is not affected); take the numbers on a quiet machine"
    )


def gemm_peak(dtype_name: str, n: int = 2048, min_seconds: float = 1.0, min_reps: int = 3) -> dict[str, float]:
    """FLOP/s of an n x n x n matmul in this process: best of the repetitions after one warm-up."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    flops = 2 * n**3
    best, median = flops / min(times), flops / statistics.median(times)
    return {"n": n, "reps": len(times), "best_flops": best, "median_flops": median}


def resolve_model(name: str, workdir: Path) -> str:
    """A Hugging Face folder both sides load: a preset's folder (SmolLM2: the converted cache), or a local one."""
    if Path(name).is_dir():
        return str(Path(name).resolve())
    if name == "tiny-llama":  # built in code; saved so TRL can load it by path too
        from lit_align.models.loading import load_model

        model, tokenizer = load_model("tiny-llama")
        folder = workdir / "tiny-llama"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return str(folder)
    from lit_align.models.loading import load_tokenizer

    folder = Path(load_tokenizer(name).name_or_path)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--model {name!r} does not resolve to a local Hugging Face folder (got {folder})")
    return str(folder)


def dropout_note(model_dir: str) -> str:
    """TRL disables dropout, lit-align leaves the model as it is: say whether that matters for this model."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    rates = {k: v for k, v in config.items() if "dropout" in k and isinstance(v, int | float) and v > 0}
    if not rates:
        return "the model has no dropout"
    return f"the model has dropout {rates}: TRL disables it, lit-align keeps it, so the runs differ in that"


# -- runs -------------------------------------------------------------------------------------------------
def spec_for(args: argparse.Namespace, algo: str, side: str, model_dir: str, rows: dict[str, Any], workdir: Path):
    return {
        "side": side, "algo": algo, "model_dir": model_dir, "rows": rows["ours" if side == "ours" else "trl"],
        "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr,
        "beta": args.beta, "num_generations": args.num_generations, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "fixed_length": not args.grpo_stop_at_eos,
        "padding_free": not args.no_padding_free, "fused_layers": not args.no_fused_layers,
        "release_host_memory": not args.no_release_host_memory, "shared_prefix": not args.no_shared_prefix,
        "shared_prefill": not args.no_shared_prefill,
        "threads": args.threads, "seed": args.seed,
        "output_dir": str(workdir / f"trl_out_{algo}"), "profile": False,
    }  # fmt: skip


def peer_check(args, model_dir: str, rows: dict[str, Any], workdir: Path, harness: list[dict[str, Any]]) -> str:
    """TRL's DPOTrainer as a plain script (bench/trl_plain.py) on the harness's TRL rows: its step time against the
    harness's TRL side, so the published ratio is against TRL as its users run it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, str(Path(__file__).resolve().parent / "trl_plain.py"), model_dir, rows["trl"],
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
               "--lr", str(args.lr), "--beta", str(args.beta),
               "--output-dir", str(workdir / "trl_plain_out")]  # fmt: skip
    log_path = workdir / "dpo_trl_plain.log"
    with log_path.open("w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    lines = log_path.read_text(errors="replace").splitlines()
    plain = next((json.loads(x[7:]) for x in reversed(lines) if x.startswith("RESULT ")), None)
    ok = [r for r in harness if r.get("ok")]
    if plain is None or not ok:
        return f"peer check: no result (see {log_path})"
    ours = statistics.median(statistics.median(r["step_s"]) for r in ok)
    ratio = ours / plain["step_s"]
    verdict = "the harness runs TRL as fast as a plain script" if ratio <= 1.15 else "WARNING: the harness is slower"
    peak = plain["peak_rss_mb"] * MIB / 1e9
    return (f"peer check (dpo): TRL as a plain script {plain['step_s']:.2f} s/step, {peak:.2f} GB ({plain['optim']}); "
            f"the harness's TRL side {ours:.2f} s/step: {ratio:.2f}x, {verdict}")  # fmt: skip


def run_child(spec: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    spec_path = workdir / f"{label}.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    log_path = workdir / f"{label}.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    with log_path.open("w") as log:
        proc = subprocess.run([sys.executable, str(RUNNER), str(spec_path)], stdout=log, stderr=subprocess.STDOUT,
                              cwd=REPO, env=env)  # fmt: skip
    lines = log_path.read_text(errors="replace").splitlines()
    result = next((json.loads(x[7:]) for x in reversed(lines) if x.startswith("RESULT ")), None)
    if result is None:
        result = {"ok": False, "error": f"exit code {proc.returncode}, no result line"}
    result["log"] = str(log_path)
    if not result.get("ok"):
        print(f"    FAILED ({log_path}):\n      " + "\n      ".join(lines[-15:]), flush=True)
    return result


def step_flops(algo: str, side: str, batch: dict[str, Any], params: int, cached_reference: bool) -> float:
    """Model FLOPs of one step (see the module docstring)."""
    n, t, t_kl = params, batch["trained_tokens"], batch["forward_only_tokens"]
    if algo == "sft":
        return 6 * n * t
    if algo == "grpo":
        return 2 * n * t + 6 * n * t
    reference = 0 if (side == "ours" and cached_reference) else 2 * n * t
    return 6 * n * t + reference + 4 * n * t_kl


def run_summary(algo: str, side: str, run: dict[str, Any], peak_flops: float) -> dict[str, float]:
    """One run: median step time, median tokens/s and FLOP/s over the timed steps, peak RSS."""
    times, batches = run["step_s"], run["batches"][1:]  # batch i+1 is the step that interval i times
    if len(batches) != len(times) or not times:
        raise ValueError(f"{algo} {side}: {len(times)} timed steps but {len(batches)} recorded batches")
    cached = bool(run.get("options", {}).get("precompute_reference"))
    flops = [step_flops(algo, side, b, run["params"], cached) / s for b, s in zip(batches, times, strict=True)]
    return {
        "step_s": statistics.median(times),
        "update_s": statistics.median(run["update_s"]),
        "tokens_per_step": statistics.mean(b["trained_tokens"] for b in batches),
        "tokens_per_s": statistics.median(b["trained_tokens"] / s for b, s in zip(batches, times, strict=True)),
        "flops": statistics.median(flops),
        "peak_fraction": statistics.median(flops) / peak_flops,
        "peak_rss_gb": run["peak_rss_mb"] * MIB / 1e9,  # decimal GB, as the targets are stated
        "startup_s": run["startup_s"],
    }


def check_batches(algo: str, ours: dict[str, Any], trl: dict[str, Any]) -> tuple[bool, str]:
    """Whether both sides processed the same real tokens (and the same sequences) at every step, warm-up included."""
    a, b = ours["batches"], trl["batches"]
    tokens_a, tokens_b = [x["trained_tokens"] for x in a], [x["trained_tokens"] for x in b]
    extra_a, extra_b = [x["forward_only_tokens"] for x in a], [x["forward_only_tokens"] for x in b]
    same_tokens = tokens_a == tokens_b and extra_a == extra_b
    same_sequences = [x["digest"] for x in a] == [x["digest"] for x in b]
    what = "prompts" if algo == "grpo" else "sequences"
    if same_tokens and same_sequences:
        timed = f"{statistics.mean(tokens_a[1:]):.1f}/timed step" if len(tokens_a) > 1 else ""
        return True, f"same real tokens at all {len(a)} steps ({timed}) and the same {what}"
    detail = f"tokens/step ours {tokens_a} vs TRL {tokens_b}"
    if extra_a != extra_b:
        detail += f"; KL-pair tokens ours {extra_a} vs TRL {extra_b}"
    if not same_sequences:
        differ = [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x["digest"] != y["digest"]]
        detail += f"; {what} differ at steps {differ}"
    return False, "MISMATCH: " + detail


def prompt_share(run: dict[str, Any]) -> str:
    """How much of the trained tokens are prompt tokens (each row's prompt counted once per sequence it is in)."""
    prompt = sum(b.get("prompt_tokens", 0) for b in run["batches"])
    total = sum(b["trained_tokens"] for b in run["batches"])
    return f"prompt tokens are {prompt / max(total, 1):.1%} of the {total} trained tokens (every step)"


def loss_agreement(ours: dict[str, Any], trl: dict[str, Any]) -> str:
    """Each side's per-step loss over the same batches (same initial weights, rows and order) and the largest
    relative difference."""
    a, b = ours.get("losses", []), trl.get("losses", [])
    if not a or len(a) != len(b):
        return f"per-step losses not comparable (ours {len(a)} steps, TRL {len(b)})"
    worst = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True))
    shown = ", ".join(f"{x:.6f}/{y:.6f}" for x, y in zip(a, b, strict=True))
    return f"loss per step ours/TRL {shown}; largest relative difference {worst:.2e}"


def runs_of(summary: dict[str, Any]) -> list[str]:
    """The algorithms that have rows to run (not skipped)."""
    return [algo for algo, s in summary.items() if "rows" in s]


def median_of(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


# -- output ------------------------------------------------------------------------------------------------
COLUMNS = (
    ("algo", "{}"), ("tokens/step", "{:.1f}"), ("ours s/step", "{:.2f}"), ("TRL s/step", "{:.2f}"),
    ("ours tok/s", "{:.1f}"), ("TRL tok/s", "{:.1f}"), ("speed", "{:.2f}x"), ("ours GB", "{:.2f}"),
    ("TRL GB", "{:.2f}"), ("memory", "{:.2f}x"), ("ours %peak", "{:.1%}"), ("TRL %peak", "{:.1%}"),
    ("same batches", "{}"),
)  # fmt: skip


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for algo, s in summary.items():
        if "ours" not in s or "trl" not in s:
            rows.append([algo] + ["-"] * (len(COLUMNS) - 2) + [s.get("skipped", "failed")])
            continue
        o, t = s["ours"], s["trl"]
        values = [algo, o["tokens_per_step"], o["step_s"], t["step_s"], o["tokens_per_s"], t["tokens_per_s"],
                  o["tokens_per_s"] / t["tokens_per_s"], o["peak_rss_gb"], t["peak_rss_gb"],
                  o["peak_rss_gb"] / t["peak_rss_gb"], o["peak_fraction"], t["peak_fraction"],
                  "yes" if s["same_batches"] else "NO"]  # fmt: skip
        row = [fmt.format(v) for (_, fmt), v in zip(COLUMNS, values, strict=True)]
        if round(o["tokens_per_step"], 1) != round(t["tokens_per_step"], 1):  # ours/TRL when they differ
            row[1] = f"{o['tokens_per_step']:.1f}/{t['tokens_per_step']:.1f}"
        rows.append(row)
    return rows


def print_table(summary: dict[str, Any], markdown: bool) -> None:
    rows = table_rows(summary)
    widths = [max(len(name), *(len(r[i]) for r in rows)) for i, (name, _) in enumerate(COLUMNS)]
    for row in [[name for name, _ in COLUMNS], *rows]:
        print(
            "  ".join(
                c.ljust(w) if i in (0, len(row) - 1) else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    if markdown:
        print("\n| " + " | ".join(name for name, _ in COLUMNS) + " |")
        print("|" + " --- |" * len(COLUMNS))
        for row in table_rows(summary):
            print("| " + " | ".join(cell.strip() for cell in row) + " |")


def print_profile(result: dict[str, Any], peak: dict[str, Any], label: str) -> None:
    report = result.get("profile")
    if not report:
        print(f"no profile recorded ({result.get('error', 'see ' + result.get('log', ''))})")
        return
    print(f"\n# torch.profiler, {label}: step 2 (after the warm-up step), top ops by self CPU time")
    print(report["table"])
    step, total = report["step_s"], report["total_self_cpu_s"]
    print(f"step wall time under the profiler {step:.2f} s; self CPU time of all ops {total:.2f} s (an op's time is "
          f"its wall time on the calling thread, its intra-op threads included)")  # fmt: skip
    print("self CPU time by kind of work:")
    for group, seconds in report["self_cpu_s"].items():
        print(f"  {seconds:8.3f} s  {seconds / total:6.1%}  {group}")
    update = report["update_s"]
    print(f"phases (wall): up to the gradients (generation, forward, backward) {step - update:.3f} s; gradient "
          f"clipping + optimizer step + end-of-step hooks {update:.3f} s")  # fmt: skip
    if report["gemm_s"] > 0:
        inside = report["gemm_flops"] / report["gemm_s"]
        fp32 = peak["fp32"]["best_flops"]
        print(f"GEMM ops ran at {inside / 1e9:.1f} GFLOP/s of their own time = {inside / fp32:.0%} of the measured "
              f"fp32 peak ({fp32 / 1e9:.1f} GFLOP/s); GEMM FLOPs of the step {report['gemm_flops'] / 1e9:.1f} G, "
              f"{report['gemm_flops'] / step / fp32:.0%} of peak over the step's wall time")  # fmt: skip


def header(args, info: dict[str, Any], model_dir: str, peak: dict[str, Any]) -> None:
    print(f"# lit-align vs TRL 1.16 — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {info['memory_gib']} GiB, "
          f"torch {info['torch']} with {info['torch_threads']} threads")  # fmt: skip
    print(f"load average (1/5/15 min) at start: {info['load_start']}")
    if warning := busy_warning(info["load_start"], info["usable_cores"]):
        print(warning)
    print(f"model: {model_dir} (fp32, no gradient checkpointing; {info['dropout']})")
    print(f"settings: {args.steps} steps per run (first = warm-up, not timed), {args.repeats} repeats per side "
          f"(medians), batch {args.batch_size}, max_length {args.max_length} (no separate prompt limit: TRL 1.16 has "
          f"none), AdamW lr {args.lr} constant, no warmup, grad clip 1.0, seed {args.seed}")  # fmt: skip
    if "grpo" in args.algos:
        length = "stop at EOS" if args.grpo_stop_at_eos else "exactly that many (EOS suppressed on both sides)"
        print(f"GRPO: {args.batch_size} prompts x {args.num_generations} completions, {args.max_new_tokens} new "
              f"tokens, {length}, temperature {args.temperature}, beta 0, HF generate on both sides")  # fmt: skip
    for name, p in peak.items():
        print(f"GEMM peak {name}: {p['best_flops'] / 1e9:.1f} GFLOP/s ({p['n']}^3 matmul, best of {p['reps']})")


# -- main ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # here and in every run (inherited)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    sys.path.insert(0, str(REPO))
    from bench import _data, _runners  # noqa: I001  (after the path is set)
    from lit_align import DPO
    from lit_align.models.loading import load_tokenizer

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lit-align-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    info["load_start"] = load()
    model_dir = resolve_model(args.model, workdir)
    info["dropout"] = dropout_note(model_dir)
    gemm_n = 1024 if args.quick else 2048
    peak_start = {name: gemm_peak(name, gemm_n) for name in ("fp32", "bf16")}
    header(args, info, model_dir, peak_start)
    if args.data == "shared" and not _data.SHARED.is_dir():
        print(f"note: {_data.SHARED} is absent: using the project's demo rows (--data demo)")
        args.data = "demo"

    tokenizer = load_tokenizer(model_dir)
    algos = [args.profile] if args.profile else args.algos
    steps_rows = 2 if args.profile else args.steps
    notes: list[str] = []
    summary: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for algo in algos:
        if algo == "dpo_cached" and "precompute_reference" not in _runners.init_options(DPO):
            summary[algo] = {"skipped": "skipped"}
            notes.append("dpo_cached skipped: lit-align's DPO has no `precompute_reference` argument yet")
            continue
        fam = _data.family(algo)
        if fam not in data:
            count = steps_rows * args.batch_size
            settings = spec_for(args, algo, "ours", model_dir, {"ours": None}, workdir)
            data[fam] = _data.prepare(algo, args.data, workdir, tokenizer, count, settings)
            print(f"{fam} rows: {count} from {data[fam]['source']}")
        summary[algo] = {"rows": data[fam]}
    print(f"run logs: {workdir}", flush=True)

    if args.profile:
        if args.profile not in runs_of(summary):
            print("\n".join(notes))
            return {"profile": None}
        spec = spec_for(args, args.profile, args.profile_side, model_dir, data[_data.family(args.profile)], workdir)
        spec.update(steps=2, profile=True)
        result = run_child(spec, workdir, f"profile_{args.profile}_{args.profile_side}")
        print_profile(result, peak_start, f"{'lit-align' if args.profile_side == 'ours' else 'TRL'} {args.profile}")
        print(f"load average at end: {load()}")
        return {"profile": result}

    runs: dict[str, dict[str, list]] = {a: {"ours": [], "trl": []} for a in runs_of(summary)}
    total = len(runs) * 2 * args.repeats
    done = 0
    for repeat in range(args.repeats):
        for algo in runs:
            order = ("ours", "trl") if repeat % 2 == 0 else ("trl", "ours")  # neither side always goes first
            for side in order:
                done += 1
                label = f"{algo}_{side}_{repeat}"
                spec = spec_for(args, algo, side, model_dir, summary[algo]["rows"], workdir)
                result = run_child(spec, workdir, label)
                runs[algo][side].append(result)
                if result.get("ok"):
                    print(f"[{done}/{total}] {label}: {statistics.median(result['step_s']):.2f} s/step, peak "
                          f"{result['peak_rss_mb'] * MIB / 1e9:.2f} GB, startup {result['startup_s']:.0f} s, "
                          f"load {load()}", flush=True)  # fmt: skip
                for note in result.get("notes", []):
                    if note not in notes:
                        notes.append(note)
    if args.peer_check and "dpo" in runs:
        peer = peer_check(args, model_dir, summary["dpo"]["rows"], workdir, runs["dpo"]["trl"])
        notes.append(peer)
        print(peer, flush=True)
    peak_end = {name: gemm_peak(name, gemm_n) for name in ("fp32", "bf16")}
    peak = {name: max(peak_start[name], peak_end[name], key=lambda p: p["best_flops"]) for name in peak_start}

    checks = []
    for algo, sides in runs.items():
        ok = {side: [r for r in results if r.get("ok")] for side, results in sides.items()}
        if not ok["ours"] or not ok["trl"]:
            summary[algo]["skipped"] = "failed"
            continue
        try:
            for side in ("ours", "trl"):
                per_run = [run_summary(algo, side, r, peak["fp32"]["best_flops"]) for r in ok[side]]
                summary[algo][side] = {k: median_of(per_run, k) for k in per_run[0]} | {"runs": per_run}
        except ValueError as err:  # a run that stopped early
            summary[algo] = {"skipped": "failed", "rows": summary[algo]["rows"]}
            notes.append(str(err))
            continue
        # Every run of either side against lit-align's first: same tokens and sequences at every step.
        verdicts = [check_batches(algo, ok["ours"][0], r) for r in ok["ours"][1:] + ok["trl"]]
        summary[algo]["same_batches"] = all(same for same, _ in verdicts)
        failed = [detail for same, detail in verdicts if not same]
        checks.append(f"{algo}: " + (failed[0] if failed else verdicts[-1][1] + f" ({len(verdicts) + 1} runs)"))
        checks.append(f"{algo}: " + prompt_share(ok["ours"][0]))
        if algo in ("dpo", "dpo_cached"):
            checks.append(f"{algo}: " + loss_agreement(ok["ours"][0], ok["trl"][0]))
        for side in ("ours", "trl"):
            r = ok[side][0]
            facts = {"param_dtype": r["param_dtype"], "attn": r["attn_implementation"], "params": r["params"]}
            summary[algo][side].update(facts, checkpointing=r["checkpointing"])
    info["load_end"] = load()

    print("\nspeed = ours tokens/s / TRL tokens/s (>1: lit-align faster); memory = ours peak RSS / TRL peak RSS "
          "(<1: lit-align leaner); %peak = achieved model FLOP/s / measured fp32 GEMM peak "
          f"({peak['fp32']['best_flops'] / 1e9:.1f} GFLOP/s)")  # fmt: skip
    print_table(summary, args.markdown)
    print("\nchecks:")
    for line in checks:
        print(f"  {line}")
    for algo, s in summary.items():
        if "ours" in s and "trl" in s:
            o, t = s["ours"], s["trl"]
            for name, x in (("ours", o), ("TRL", t)):
                facts = f"{x['param_dtype']}, {x['attn']} attention, {x['params']:,} parameters"
                phases = f"{x['step_s']:.2f} s/step, of which {x['update_s']:.2f} s clipping + optimizer step"
                extra = f"activation checkpointing {x['checkpointing']}; startup (not timed) {x['startup_s']:.0f} s"
                print(f"  {algo} {name}: {facts}; {phases}; {extra}")
    if notes:
        print("notes:")
        for note in notes:
            print(f"  {note}")
    print("GEMM peak at end: " + ", ".join(f"{k} {v['best_flops'] / 1e9:.1f} GFLOP/s" for k, v in peak_end.items()))
    print(f"load average (1/5/15 min) at end: {info['load_end']} (at start: {info['load_start']})")
    busiest = max((r["load"][3] for sides in runs.values() for rs in sides.values() for r in rs if "load" in r),
                  default=info["load_end"][0])  # fmt: skip
    if warning := busy_warning([max(busiest, info["load_end"][0])], info["usable_cores"], info["torch_threads"]):
        print(warning)
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": info, "model": model_dir,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "gemm_peak": {"start": peak_start, "end": peak_end}, "summary": summary, "checks": checks, "notes": notes,
        "runs": runs,
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
