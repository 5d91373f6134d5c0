"""One measured run of bench/compare.py: one side (lit-align or TRL 1.16), one algorithm, in this process only.

    python bench/_runners.py SPEC.json     # compare.py writes the spec and reads the last line, ``RESULT {...}``

Every run is a fresh process, so its peak resident memory (``VmHWM`` from /proc/self/status, read after the last
step) is its own, model loading included. Step times are the intervals between the ends of consecutive optimizer
steps: the first (warm-up) step and everything before it (imports, model loading, tokenization, TRL's dataset
preparation) are outside them; what a training loop does between two steps (fetching and collating the next batch,
logging) is inside them, on both sides.

Tokens are counted from the batches each side actually builds: lit-align's in ``on_train_batch_start`` (Lightning
hands the collated batch to callbacks; GRPO's from the rollout), TRL's in ``compute_loss`` (after the trainer's own
collation; for GRPO after generation). Each step also gets a digest of its sequences (the non-padding token ids and
which of them are trained, sorted), which does not depend on the layout (TRL pads chosen and rejected into one block,
lit-align into two), so compare.py can check that both sides trained on the very same sequences.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
REWARD = "lit_align.rewards.verifiers:arithmetic_answer_reward"
IGNORE_INDEX = -100


# -- measuring ------------------------------------------------------------------------------------
def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (``VmHWM``: peak resident set; ``VmRSS``: current), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class Steps:
    """Step begin/end times and the tokens of each step's batch; optionally profiles step index 1 (the second)."""

    def __init__(self, profile: bool = False) -> None:
        self.begins: list[float] = []
        self.updates: list[float] = []  # when the step's update starts (gradients ready, before clipping)
        self.ends: list[float] = []
        self.batches: list[dict[str, Any]] = []
        self.losses: list[float] = []  # each step's training loss (one micro-batch per step)
        self.rss_at_start_mb: float | None = None
        self.profile = profile
        self._profiler = None
        self.profile_report: dict[str, Any] | None = None

    def begin(self) -> None:
        if self.rss_at_start_mb is None:
            self.rss_at_start_mb = proc_status_mb("VmRSS")
        if self.profile and len(self.begins) == 1:
            from torch.profiler import ProfilerActivity, profile

            self._profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True)
            self._profiler.__enter__()
        self.begins.append(time.perf_counter())

    def mark_update(self) -> None:
        """Forward and backward are done; clipping and the optimizer step follow (the first mark of a step counts)."""
        if len(self.updates) < len(self.begins):
            self.updates.append(time.perf_counter())

    def end(self) -> None:
        self.ends.append(time.perf_counter())
        n = len(self.ends)
        took = f"{self.ends[-1] - self.ends[-2]:.2f} s" if n > 1 else "warm-up, not timed"
        print(f"step {n}: {took}", flush=True)  # progress in the run's log
        if len(self.updates) < len(self.ends):  # no mark this step: count nothing as update
            self.updates.append(self.ends[-1])
        if self._profiler is not None and len(self.ends) == 2:
            self._profiler.__exit__(None, None, None)
            self.profile_report = profile_report(self._profiler, self.ends[1] - self.begins[1])
            self.profile_report["update_s"] = self.ends[1] - self.updates[1]
            self._profiler = None

    def record(self, trained: list[tuple], forward_only: list[tuple] = (), generated: int = 0) -> None:
        """One step's batch: ``trained`` sequences (policy forward + backward), ``forward_only`` extra sequences
        (KTO's mismatched KL pairs, scored by policy and reference without grad), ``generated`` sampled tokens
        (GRPO: ``trained`` holds the prompts, one per completion, and the completions are trained on too)."""
        self.batches.append(
            {
                "trained_tokens": sum(len(ids) for ids, _ in trained) + int(generated),
                "prompt_tokens": sum(len(ids) - sum(flags) for ids, flags in trained),  # not scored (prompts)
                "forward_only_tokens": sum(len(ids) for ids, _ in forward_only),
                "generated_tokens": int(generated),
                "sequences": len(trained),
                "digest": digest([("trained", *s) for s in trained] + [("forward_only", *s) for s in forward_only]),
            }
        )

    def result(self) -> dict[str, Any]:
        return {
            "step_s": [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)],
            "compute_s": [e - b for b, e in zip(self.begins[1:], self.ends[1:], strict=False)],
            "update_s": [e - u for u, e in zip(self.updates[1:], self.ends[1:], strict=False)],
            "batches": self.batches,
            "losses": self.losses,
            "rss_at_start_mb": self.rss_at_start_mb,
            "profile": self.profile_report,
        }


def digest(sequences: list[tuple]) -> str:
    return hashlib.sha1(repr(sorted(sequences)).encode()).hexdigest()[:16]


def sequences(ids: torch.Tensor, mask: torch.Tensor | None, trained: torch.Tensor | None, position_ids=None) -> list:
    """Per sequence: (non-padding token ids, trained flags) as tuples.

    ``mask`` is the attention mask; without one (a padding-free batch) every position is real and, when
    ``position_ids`` are given, rows are split where the positions restart at 0 (packed sequences).
    """
    ids = ids.detach().cpu()
    mask = torch.ones_like(ids) if mask is None else mask.detach().cpu()
    flags = torch.zeros_like(ids) if trained is None else trained.detach().cpu().long()
    out = []
    for row in range(ids.shape[0]):
        keep = mask[row].bool()
        row_ids, row_flags = ids[row][keep].tolist(), flags[row][keep].tolist()
        if position_ids is None:
            out.append((tuple(row_ids), tuple(row_flags)))
            continue
        starts = (position_ids[row].cpu()[keep] == 0).nonzero().flatten().tolist() + [len(row_ids)]
        for a, b in zip(starts, starts[1:], strict=False):
            out.append((tuple(row_ids[a:b]), tuple(row_flags[a:b])))
    return out


def profile_report(prof, step_s: float) -> dict[str, Any]:
    """Top ops by self CPU time, and self CPU time grouped by kind of work (GEMM, attention, softmax, ...)."""
    events = prof.key_averages()
    table = events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)
    groups: dict[str, float] = {}
    gemm_flops = 0.0
    for e in events:
        groups[op_group(e.key)] = groups.get(op_group(e.key), 0.0) + e.self_cpu_time_total
        if op_group(e.key) == "GEMM (mm/addmm/bmm)":
            gemm_flops += e.flops or 0
    total = sum(groups.values())
    return {
        "table": table,
        "step_s": step_s,
        "self_cpu_s": {k: v / 1e6 for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "total_self_cpu_s": total / 1e6,
        "gemm_flops": gemm_flops,
        "gemm_s": groups.get("GEMM (mm/addmm/bmm)", 0.0) / 1e6,
    }


def op_group(name: str) -> str:
    n = name.lower()
    if n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"):
        return "GEMM (mm/addmm/bmm)"
    if "scaled_dot_product" in n or "flash_attention" in n or "efficient_attention" in n:
        return "attention kernel (sdpa)"
    if "softmax" in n or "logsumexp" in n or "nll_loss" in n or "cross_entropy" in n or n == "aten::gather":
        return "softmax / log-softmax / gather"
    if any(k in n for k in ("copy_", "::to", "clone", "contiguous", "fill_", "zero_", "empty", "cat", "index")):
        return "copies, fills, indexing, allocation"
    if n.startswith("aten::"):
        return "other aten ops (elementwise, norms, activations, optimizer math)"
    return "framework / autograd bookkeeping"


def model_facts(policy: torch.nn.Module) -> dict[str, Any]:
    """What must be equal on both sides: dtype, attention kernel, parameter count, no activation checkpointing."""
    checkpointing = getattr(policy, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(policy, "is_gradient_checkpointing", None)
    return {
        "param_dtype": str(next(policy.parameters()).dtype),
        "attn_implementation": policy.config._attn_implementation,
        "params": sum(p.numel() for p in policy.parameters()),
        "checkpointing": checkpointing,
        "training_mode": policy.training,
    }


# -- lit-align ----------------------------------------------------------------------------------------
def init_options(cls: type) -> set[str]:
    """Every keyword ``cls(...)`` takes: its own ``__init__``'s and those its ``**kwargs`` forward along the MRO (the
    modules declare each shared option once, in a base class or mixin)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and klass is not object:
            names |= set(inspect.signature(vars(klass)["__init__"]).parameters)
    return names - {"self", "kwargs", "args"}


def supported(cls: type, options: dict[str, Any], notes: list[str], used: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` that ``cls.__init__`` accepts (added to ``used``); a note for each one it does not (yet)."""
    params = init_options(cls)
    kept = {k: v for k, v in options.items() if k in params}
    for name in sorted(options.keys() - kept.keys()):
        notes.append(f"{cls.__name__} has no `{name}` argument yet: lit-align runs without it")
    used.update(kept)
    return kept


def build_datamodule(spec: dict[str, Any], notes: list[str], used: dict[str, Any]):
    """lit-align's DataModule for ``spec`` (also used by bench/_data.py to read the training order)."""
    from lit_align.datamodules import BinaryFeedbackDataModule, PreferenceDataModule, PromptDataModule, SFTDataModule

    algo = spec["algo"]
    data = {"tokenizer": spec["model_dir"], "data_path": spec["rows"], "val_size": 0, "seed": spec["seed"]}
    data["batch_size"] = spec["batch_size"]
    lengths = {"max_length": spec["max_length"], "max_prompt_length": None}  # TRL 1.16 has no max_prompt_length
    if algo in ("dpo", "dpo_cached"):
        dm_cls, dm_kwargs = PreferenceDataModule, lengths
    elif algo == "kto":
        dm_cls, dm_kwargs = BinaryFeedbackDataModule, lengths
    elif algo == "sft":
        dm_cls = SFTDataModule
        dm_kwargs = {"format": "prompt_completion", "max_length": spec["max_length"], "completion_only_loss": True}
    elif algo == "grpo":
        dm_cls, dm_kwargs = PromptDataModule, {"max_prompt_length": None}
    else:
        raise ValueError(f"unknown algorithm {algo!r}")
    return dm_cls(**data, **dm_kwargs)


def run_ours(spec: dict[str, Any], steps: Steps, notes: list[str]) -> dict[str, Any]:
    import lightning as L

    from lit_align import DPO, GRPO, KTO, SFT

    algo = spec["algo"]
    train = {"learning_rate": spec["lr"], "warmup_ratio": 0.0, "scheduler": "constant", "max_grad_norm": 1.0}
    train["gradient_checkpointing"] = False
    if algo in ("dpo", "dpo_cached"):
        module_cls, module_kwargs = DPO, {"beta": spec["beta"]}
    elif algo == "kto":
        module_cls, module_kwargs = KTO, {"beta": spec["beta"]}
    elif algo == "sft":
        module_cls, module_kwargs = SFT, {}
    else:
        module_cls = GRPO
        module_kwargs = {
            "beta": 0.0, "num_generations": spec["num_generations"],
            "rewards": {"reward_funcs": (REWARD,), "log_completions_every_n_steps": 0},
            "sampling": {"max_new_tokens": spec["max_new_tokens"], "temperature": spec["temperature"],
                         "shared_prefill": bool(spec.get("shared_prefill", True))},
        }  # fmt: skip
    used: dict[str, Any] = {}
    dm = build_datamodule(spec, notes, used)
    wanted = {"precompute_reference": True} if algo == "dpo_cached" else {}
    wanted["padding_free"] = bool(spec["padding_free"])  # the modules' options (default on)
    wanted["fused_layers"] = bool(spec.get("fused_layers", True))
    wanted["release_host_memory"] = bool(spec.get("release_host_memory", True))
    wanted["shared_prefix"] = bool(spec.get("shared_prefix", True))
    module = module_cls(
        policy=spec["model_dir"], **train, **module_kwargs, **supported(module_cls, wanted, notes, used)
    )
    if algo == "grpo":
        _record_rollouts(module, steps, spec)
    else:
        compute_loss = module.compute_loss

        def recorded_loss(batch, *args, **kwargs):
            out = compute_loss(batch, *args, **kwargs)
            steps.losses.append(float(out[0].detach()))
            return out

        module.compute_loss = recorded_loss

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            steps.begin()
            if algo != "grpo":
                steps.record(*_our_sequences(algo, batch))

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            steps.mark_update()  # Lightning calls it after backward, before clipping

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            steps.end()

    trainer = L.Trainer(
        max_steps=spec["steps"], accelerator="cpu", devices=1, precision="32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=[Timing()],
    )  # fmt: skip
    trainer.fit(module, dm)
    return {**model_facts(module.policy), "steps_done": trainer.global_step, "options": used}


def _our_sequences(algo: str, batch: dict[str, Any]) -> tuple[list, list]:
    def side(prefix: str) -> list:
        labels = batch.get(f"{prefix}labels")
        trained = None if labels is None else labels != IGNORE_INDEX
        mask, positions = batch.get(f"{prefix}attention_mask"), batch.get(f"{prefix}position_ids")
        return sequences(batch[f"{prefix}input_ids"], mask, trained, positions)

    if algo in ("dpo", "dpo_cached") and "chosen_input_ids" in batch:  # else one joint (e.g. packed) block
        return side("chosen_") + side("rejected_"), []
    if algo == "kto" and "kl_input_ids" in batch:
        return side(""), side("kl_")
    return side(""), []


def _record_rollouts(module, steps: Steps, spec: dict[str, Any]) -> None:
    """Record each rollout's tokens (prompts, repeated G times, + completions); optionally fix the length.

    With ``fixed_length`` the policy's generation config gets ``min_new_tokens = max_new_tokens`` (Hugging Face
    ``generate`` fills what the rollout's own GenerationConfig leaves unset from the model's), so every completion
    is exactly ``max_new_tokens`` long, as on the TRL side, and both process the same number of tokens.
    """
    if spec["fixed_length"]:
        module.policy.generation_config.min_new_tokens = spec["max_new_tokens"]
    generate = module.generate_samples

    def recorded(prompt_input_ids, prompt_attention_mask, *args):
        rollout = generate(prompt_input_ids, prompt_attention_mask, *args)
        prompts = sequences(rollout.prompt_input_ids, rollout.prompt_attention_mask, None)
        steps.record(prompts, generated=int(rollout.completion_mask.sum()))
        return rollout

    module.generate_samples = recorded


# -- TRL --------------------------------------------------------------------------------------------------
def run_trl(spec: dict[str, Any], steps: Steps, notes: list[str]) -> dict[str, Any]:
    import datasets
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    algo, model = spec["algo"], spec["model_dir"]
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:  # as lit_align.models.loading does: padding is masked, so EOS is safe
        tokenizer.pad_token = tokenizer.eos_token
    rows = datasets.load_dataset("json", data_files=spec["rows"], split="train")
    batch = spec["batch_size"] * (spec["num_generations"] if algo == "grpo" else 1)
    common = {
        "output_dir": spec["output_dir"], "report_to": "none", "use_cpu": True, "bf16": False, "fp16": False,
        "gradient_checkpointing": False, "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1,
        "max_steps": spec["steps"], "learning_rate": spec["lr"], "lr_scheduler_type": "constant", "warmup_steps": 0,
        "weight_decay": 0.0, "optim": "adamw_torch_fused", "max_grad_norm": 1.0, "logging_steps": 10**6,
        "save_strategy": "no", "eval_strategy": "no", "disable_tqdm": True, "dataloader_num_workers": 0,
        "dataloader_pin_memory": False, "seed": spec["seed"], "train_sampling_strategy": "sequential",
    }  # fmt: skip
    kwargs: dict[str, Any] = {}
    if algo in ("dpo", "dpo_cached"):
        trainer_cls = trl.DPOTrainer
        config = trl.DPOConfig(**common, beta=spec["beta"], loss_type=["sigmoid"], max_length=spec["max_length"])
    elif algo == "kto":
        trainer_cls = trl.KTOTrainer
        config = trl.KTOConfig(**common, beta=spec["beta"], max_length=spec["max_length"])
    elif algo == "sft":
        trainer_cls = trl.SFTTrainer
        config = trl.SFTConfig(**common, max_length=spec["max_length"], completion_only_loss=True, packing=False)
    elif algo == "grpo":
        from lit_align.rewards.verifiers import arithmetic_answer_reward

        trainer_cls = trl.GRPOTrainer
        length = spec["max_new_tokens"]
        config = trl.GRPOConfig(
            **common, num_generations=spec["num_generations"], max_completion_length=length,
            temperature=spec["temperature"], top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", scale_rewards="group",
            num_iterations=1, epsilon=0.2, shuffle_dataset=False, log_completions=False,
            generation_kwargs={"min_new_tokens": length} if spec["fixed_length"] else None,
        )  # fmt: skip
        kwargs["reward_funcs"] = [arithmetic_answer_reward]
    else:
        raise ValueError(f"unknown algorithm {algo!r}")
    if spec["padding_free"]:
        notes.append("TRL side runs padded (TRL 1.16's DPO/KTO padding_free falls back to padding; SFT's needs flash)")
    if spec.get("fused_layers", True):
        notes.append("TRL side runs eager RMSNorm/SwiGLU (its use_liger_kernel needs Liger's Triton kernels: GPU only)")
    if spec.get("release_host_memory", True):
        notes.append("TRL side keeps freed heap resident between steps (lit-align calls malloc_trim after each step)")

    class Recording(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            steps.record(*_trl_sequences(algo, inputs))
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch=num_items_in_batch)
            steps.losses.append(float((out[0] if isinstance(out, tuple) else out).detach()))
            return out

        def _clip_grad_norm(self, model):  # transformers clips here, then steps: the update starts, as on our side
            steps.mark_update()
            return super()._clip_grad_norm(model)

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            steps.begin()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            steps.mark_update()  # only if _clip_grad_norm (private) was not reached first

        def on_step_end(self, args, state, control, **kw):
            steps.end()

    trainer = Recording(
        model=model, args=config, train_dataset=rows, processing_class=tokenizer, callbacks=[Timing()], **kwargs
    )
    if trainer.accelerator.mixed_precision != "no":
        raise RuntimeError(f"TRL runs under mixed precision {trainer.accelerator.mixed_precision!r}, expected fp32")
    trainer.train()
    return {**model_facts(trainer.model), "steps_done": trainer.state.global_step, "trl_version": trl.__version__}


def _trl_sequences(algo: str, inputs: dict[str, Any]) -> tuple[list, list, int]:
    if algo == "grpo":  # prompts (left-padded, one row per completion) + completions; only prompts are compared
        prompts = sequences(inputs["prompt_ids"], inputs["prompt_mask"], None)
        return prompts, [], int(inputs["completion_mask"].sum())
    if algo == "sft":
        trained = inputs["labels"] != IGNORE_INDEX
        return sequences(inputs["input_ids"], inputs.get("attention_mask"), trained, inputs.get("position_ids")), [], 0
    main = sequences(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
    if algo == "kto":
        return main, sequences(inputs["KL_input_ids"], inputs["KL_attention_mask"], inputs["KL_completion_mask"]), 0
    return main, [], 0


# -- entry point ------------------------------------------------------------------------------------------
def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    steps, notes = Steps(profile=spec.get("profile", False)), []
    start, load_start = time.perf_counter(), os.getloadavg()
    result: dict[str, Any] = {"side": spec["side"], "algo": spec["algo"], "ok": False}
    try:
        runner = run_ours if spec["side"] == "ours" else run_trl
        result.update(runner(spec, steps, notes))
        result["ok"] = True
    except Exception:
        result["error"] = traceback.format_exc()
        traceback.print_exc()
    result.update(steps.result())
    result.update(
        {
            "peak_rss_mb": proc_status_mb("VmHWM"),
            "startup_s": (steps.begins[0] - start) if steps.begins else None,
            "wall_s": time.perf_counter() - start,
            "threads": torch.get_num_threads(),
            "load": [round(x, 2) for x in (*load_start, *os.getloadavg())],  # 1/5/15 min at start, then at end
            "notes": notes,
        }
    )
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # this checkout's lit_align and datamodules, whatever else is installed
    main()
