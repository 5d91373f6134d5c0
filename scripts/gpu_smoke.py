"""GPU smoke test (issue 6): a few optimizer steps of DPO, GRPO and Distill in bf16-mixed under each strategy.

One verdict line per case, e.g. ``PASS dpo bf16-mixed ddp: 3 steps, loss 0.693->0.651, 0.21 s/step ...``
or ``FAIL dpo bf16-mixed fsdp: <exception, one line>``; exit status 1 if any case failed.

Cases (``--cases``, comma-separated; default all):
    dpo-single, dpo-ddp        DPO + PreferenceDataModule, one device / DDP over every visible GPU
    dpo-fsdp                   DPO under Lightning's FSDPStrategy (FSDP1, decoder layers wrapped)
    dpo-fsdp2, grpo-fsdp2      under ModelParallelStrategy: the modules' own ``configure_model`` shards the
                               policy and the reference (each block, then the root)
    grpo-single, grpo-ddp      GRPO + PromptDataModule (manual optimization, generation with the KV cache)
                               (FSDP1 is known not to work with manual optimization; see LIGHTNING_NOTES.md)
    distill-single, -fsdp2     Distill (the generalized JSD through the chunked head, bf16 hidden states) against a
                               teacher of another seed, sharded like a reference under FSDP2

The policy is a random Llama built in code (8 layers, hidden 512, tied embeddings, SmolLM2's 49152-token
vocabulary) with the ``tiny-llama`` byte tokenizer padded by plain added tokens to the same 49152 ids, so
sampled ids always decode. Data: the project's demo files. Runs offline. Each case runs in its own
process: Lightning's DDP launcher re-runs that command for the other ranks, and a hung collective is
killed by the per-case timeout. Without CUDA it prints ``SKIP: no CUDA`` (exit 0) unless ``--cpu``, which
runs the cases that CPUs allow on a tiny model (to check the script itself).

    python scripts/gpu_smoke.py [--cases dpo-single,grpo-ddp] [--steps 3] [--log PATH] [--cpu]
    scripts/gpu_smoke.sh ...    # the same, offline, first installing carried wheels when ``datasets`` is missing
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = ("dpo-single", "grpo-single", "dpo-ddp", "grpo-ddp", "dpo-fsdp", "dpo-fsdp2", "grpo-fsdp2", "distill-single",
         "distill-fsdp2")
NEEDS_CUDA = ("dpo-fsdp",)  # Lightning's FSDPStrategy refuses CPU
VOCAB = 49152  # SmolLM2's vocabulary size
PRECISION = "bf16-mixed"
GPU_SIZE = {"layers": 8, "hidden": 512, "intermediate": 1536, "heads": 8, "kv_heads": 4}
CPU_SIZE = {"layers": 2, "hidden": 64, "intermediate": 128, "heads": 4, "kv_heads": 2}
VERDICT = "VERDICT "  # prefix of the child's verdict line on stdout


# -- the child: one case in this process (and, under DDP, in the ranks Lightning launches) ---------------
def digit_reward(prompts, completions, **kwargs):
    """Fraction of digit characters in each completion: a random policy's rewards have spread."""
    from lit_align.rewards.verifiers import completion_text

    texts = [completion_text(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def build_tokenizer():
    """The tiny-llama byte tokenizer (ChatML template) padded with plain added tokens to ``VOCAB`` ids."""
    from lit_align.models.loading import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    tokenizer.add_tokens([f"<x{i}>" for i in range(VOCAB - len(tokenizer))])
    return tokenizer


def build_policy(tokenizer, size: dict[str, int], seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size["hidden"],
        intermediate_size=size["intermediate"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["kv_heads"],
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,  # as SmolLM2: a shared parameter is what FSDP wrapping trips over
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def make_case(case: str, cpu: bool):
    """(module, datamodule, strategy, devices) of one case."""
    import torch
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    algo, kind = case.split("-", 1)
    devices = 1 if cpu else max(1, torch.cuda.device_count())
    tokenizer = build_tokenizer()
    policy = build_policy(tokenizer, CPU_SIZE if cpu else GPU_SIZE)
    if algo == "dpo":
        from lit_align.algorithms.dpo import DPO
        from lit_align.datamodules.preference import PreferenceDataModule

        module = DPO(policy=policy, beta=0.1, learning_rate=5e-5, warmup_ratio=0.0, scheduler="constant")
        data = PreferenceDataModule(tokenizer=tokenizer, val_size=0, batch_size=4 if cpu else 16)
    elif algo == "distill":
        from lit_align.algorithms.distill import Distill
        from lit_align.datamodules.prompt import PromptDataModule

        teacher = build_policy(tokenizer, CPU_SIZE if cpu else GPU_SIZE, seed=1)
        module = Distill(policy=policy, teacher=teacher, beta=0.5, sampling={"max_new_tokens": 8 if cpu else 64},
                         tokenizer=tokenizer, learning_rate=1e-5)  # fmt: skip
        data = PromptDataModule(tokenizer=tokenizer, val_size=0, batch_size=2 if cpu else 8)
    else:
        from lit_align.algorithms.grpo import GRPO
        from lit_align.datamodules.prompt import PromptDataModule

        module = GRPO(
            policy=policy, beta=0.04, rewards={"reward_funcs": [digit_reward], "log_completions_every_n_steps": 0},
            num_generations=2 if cpu else 8, sampling={"max_new_tokens": 8 if cpu else 64}, tokenizer=tokenizer,
            learning_rate=1e-5,
        )  # fmt: skip
        data = PromptDataModule(tokenizer=tokenizer, val_size=0, batch_size=2 if cpu else 4)
    if kind == "single":
        strategy, devices = "auto", 1
    elif kind == "ddp":
        strategy = "ddp"
    elif kind.startswith("fsdp2"):
        strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
    else:
        strategy = FSDPStrategy(auto_wrap_policy={LlamaDecoderLayer})
    return module, data, strategy, devices


def step_stats_callback():
    import lightning as L
    import torch

    class StepStats(L.Callback):
        """Wall time (synchronized), loss and, for online algorithms, mean reward of each training batch."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list[float] = []
            self.rewards: list[float] = []
            self._start = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._start)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss))
            reward = trainer.callback_metrics.get("train/reward")
            if reward is not None:
                self.rewards.append(float(reward))

    return StepStats()


def run_case(case: str, steps: int, cpu: bool, root_dir: str) -> tuple[bool, str]:
    """Fit one case for ``steps`` optimizer steps; (is rank 0, verdict line)."""
    import lightning as L

    algo, kind = case.split("-", 1)
    label = f"{algo} {PRECISION} {kind}"
    rank_zero = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
    try:
        if cpu and case in NEEDS_CUDA:
            return rank_zero, f"SKIP {label}: Lightning's FSDPStrategy needs CUDA"
        L.seed_everything(0, verbose=False)
        module, data, strategy, devices = make_case(case, cpu)
        stats = step_stats_callback()
        trainer = L.Trainer(
            accelerator="cpu" if cpu else "gpu", devices=devices, strategy=strategy, precision=PRECISION,
            max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[stats],
            default_root_dir=root_dir,
        )  # fmt: skip
        trainer.fit(module, datamodule=data)
        rank_zero = trainer.is_global_zero
        if trainer.global_step < steps or not stats.losses:
            raise RuntimeError(f"stopped after {trainer.global_step} of {steps} optimizer steps")
        return rank_zero, f"PASS {label}: " + summary(stats, trainer.global_step, trainer.world_size, cpu)
    except Exception as err:  # one line per case; the traceback goes to the log
        import traceback

        traceback.print_exc()
        message = " ".join(f"{type(err).__name__}: {err}".split())
        return rank_zero, f"FAIL {label}: {message[:300]}"


def summary(stats, global_step: int, world_size: int, cpu: bool) -> str:
    import torch

    later = stats.times[1:] or stats.times
    parts = [
        f"{global_step} steps",
        f"loss {stats.losses[0]:.4g}->{stats.losses[-1]:.4g}",
        f"{sum(later) / len(later):.3f} s/step (first {stats.times[0]:.2f} s)",
    ]
    if stats.rewards:
        parts.append(f"reward {stats.rewards[0]:.3f}->{stats.rewards[-1]:.3f}")
    if not cpu:
        parts.append(f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    parts.append(f"{world_size} {'process' if cpu else 'GPU'}{'es' if cpu and world_size > 1 else ''}")
    return ", ".join(parts)


def child_main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as root_dir:
        rank_zero, line = run_case(args.case, args.steps, args.cpu, root_dir)
    if rank_zero:
        print(VERDICT + line, flush=True)
    return 1 if line.startswith("FAIL") else 0


# -- the parent: every case in its own process ---------------------------------------------------------
def run_child(case: str, args: argparse.Namespace, timeout: float, log) -> str:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", case, "--steps", str(args.steps)]
    command += ["--cpu"] if args.cpu else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    log.write(f"\n===== {case}: {' '.join(command)}\n")
    log.flush()
    start = time.perf_counter()
    # A new session: on a timeout the whole group (the DDP ranks Lightning launched too) is killed.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=REPO, start_new_session=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        output += f"\n[killed after {timeout:.0f} s]\n"
    log.write(output)
    log.write(f"===== {case}: exit {proc.returncode}, {time.perf_counter() - start:.1f} s\n")
    log.flush()
    verdicts = [line[len(VERDICT) :] for line in output.splitlines() if line.startswith(VERDICT)]
    if verdicts:
        return verdicts[-1]
    algo, kind = case.split("-", 1)
    if proc.returncode == -signal.SIGKILL and output.endswith(" s]\n"):
        return f"FAIL {algo} {PRECISION} {kind}: timed out after {timeout:.0f} s (hung?)"
    last = [line for line in output.splitlines() if line.strip()][-1:] or ["no output"]
    return f"FAIL {algo} {PRECISION} {kind}: exit {proc.returncode}, {last[0].strip()[:300]}"


def parent_main(args: argparse.Namespace) -> int:
    import torch

    cases = args.cases.split(",") if args.cases else list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    if not args.cpu and not torch.cuda.is_available():
        print("SKIP: no CUDA")
        return 0
    print(environment(args.cpu), flush=True)
    log_path = Path(args.log or Path(os.environ.get("OUT", tempfile.gettempdir())) / "gpu_smoke.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.total_timeout
    verdicts = []
    with log_path.open("w") as log:
        for case in cases:
            left = deadline - time.perf_counter()
            if left < 10:
                verdict = f"FAIL {case}: not run, the --total-timeout of {args.total_timeout:.0f} s was spent"
            else:
                verdict = run_child(case, args, min(args.case_timeout, left), log)
            verdicts.append(verdict)
            print(verdict, flush=True)
    failed = [v for v in verdicts if v.startswith("FAIL")]
    if failed:
        print(f"\n--- tracebacks: {log_path} ---")
        print(tracebacks(log_path.read_text()))
    counts = {word: sum(v.startswith(word) for v in verdicts) for word in ("PASS", "SKIP", "FAIL")}
    print("\ngpu_smoke: " + ", ".join(f"{n} {word.lower()}" for word, n in counts.items()))
    print("\n".join(verdicts))
    return 1 if failed else 0


def tracebacks(log_text: str, keep: int = 8) -> str:
    """The last ``keep`` lines of each traceback in the log (where it was raised, and the exception)."""
    out, block = [], None
    for line in log_text.splitlines():
        if line.startswith("Traceback"):
            block = [line]
        elif block is not None:
            block.append(line)
            if line and not line[0].isspace():  # the exception line ends the traceback
                out += ["...", *block[-keep:]]
                block = None
    return "\n".join(out) if out else "(no traceback in the log)"


def environment(cpu: bool) -> str:
    import importlib.metadata as md

    import torch

    versions = []
    for name in ("torch", "lightning", "transformers", "datasets", "tokenizers", "torchmetrics"):
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            versions.append(f"{name} missing")
    device = "CPU" if cpu else f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"gpu_smoke on {device}; {', '.join(versions)}; python {sys.version.split()[0]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="", help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per case")
    parser.add_argument("--cpu", action="store_true", help="run on CPU with a tiny model (no FSDP1 cases)")
    parser.add_argument("--log", default="", help="full output of every case (default $OUT or /tmp/gpu_smoke.log)")
    parser.add_argument("--case-timeout", type=float, default=90.0, help="seconds before a case is killed")
    parser.add_argument("--total-timeout", type=float, default=250.0, help="seconds for all cases together")
    parser.add_argument("--case", default="", help=argparse.SUPPRESS)  # internal: run one case here
    args = parser.parse_args()
    if args.case:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
