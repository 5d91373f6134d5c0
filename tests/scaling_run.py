"""A few optimizer steps of DPO, KTO, SFT, GRPO (also with a reward model), SPIN, PPO and Distill on tiny models, one
layout.

    python tests/scaling_run.py OUT_DIR single|ddp|fsdp2 [ALGO ...]

``dpo_cached`` and ``kto_cached`` are DPO and KTO with ``precompute_reference=True`` (the cache under
``OUT_DIR/cache/<layout>``, so each layout computes its own, each rank its share).

``single`` is one process with the whole global batch; ``ddp`` and ``fsdp2`` are 2 CPU processes
(gloo) with half of it each (FSDP2 through ``ModelParallelStrategy(data_parallel_size=2)``, which
makes the modules shard their policy and reference in ``configure_model``). The training order is
the same permutation in every layout (the DataModule draws it from its seed + epoch and, on 2 ranks,
gives each every other index), so the global batches match step for step.

Rank 0 writes ``OUT_DIR/<algo>_<layout>.pt``: every step's synced train metrics, the full final
policy weights (PPO: and the critic's, prefixed ``critic.``) and the warnings of any log-prob
computation that left the chunked LM head for the plain path or ran padded instead of padding-free (none
expected: the layouts must agree THROUGH the chunked head over packed rows, the modules' default).
``tests/test_scaling.py`` compares the layouts.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_align.models.loading import load_model
from tests.conftest import write_jsonl
from tests.online_helpers import (
    GeneratingScript,
    ScriptedBackend,
    game_rows,
    guessing_script,
    length_reward,
    prompt_rows,
)

GLOBAL_BATCH = 4  # rows per optimizer step (GRPO: prompts x 1, see below)
STEPS = 3
MAX_STEPS = {"ppo": 6}  # PPO: 2 optimizer steps per rollout, so 3 rollouts


class Recorder(L.Callback):
    """Every step's logged (rank-synced) train metrics."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


class PlainPathWarnings(logging.Handler):
    """Messages of ``lit_align.models.logprobs`` / ``lit_align.models.packing`` saying a model's log-probs fell back to
    full logits or to padded rows."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        logging.getLogger("lit_align.models.logprobs").addHandler(self)
        logging.getLogger("lit_align.models.packing").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def rows(algo: str) -> list[dict]:
    if algo == "dpo":
        return [{"prompt": f"What is {i} + {i}?", "chosen": f" {2 * i}.", "rejected": f" {2 * i + 1}, I think."}
                for i in range(16)]  # fmt: skip
    if algo == "kto":  # one prompt: KTO's mismatched KL pairs then cover the same completions in every layout
        return [{"prompt": "Say a number.", "completion": f" {i * 7} is my number" + "!" * (i % 4), "label": i % 3 != 0}
                for i in range(16)]  # fmt: skip
    if algo == "sft":  # unequal completion lengths: the token-mean normalization differs from a row mean
        return [{"prompt": f"Repeat {i}:", "completion": f" {str(i) * (1 + i % 5)}"} for i in range(16)]
    if algo == "spin":  # 8 rows: 2 steps per iteration, so step 3 trains on pairs generated at a boundary
        return [{"prompt": f"Say {i} twice:", "completion": f" {i} {i}."} for i in range(8)]
    if algo == "grpo_env":  # the guessing game, each row's number fixed: the same conversations in every layout
        return game_rows(8, secret=True, uneven=True)  # a rank's games may end turns before the other's
    if algo == "distill":  # two teachers, each prompt naming its own
        return [{**row, "teacher_id": "even" if i % 2 == 0 else "odd"} for i, row in enumerate(prompt_rows(8))]
    return prompt_rows(8)  # grpo, grpo_rm, ppo, reinforce_pp, distill_opd


def reward_model(out: Path) -> Path:
    """A tiny random sequence-classification model saved like RewardModel's export (same on every rank)."""
    from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama

    path = out / "reward_model"
    if not (path / "config.json").exists():
        tokenizer = build_byte_tokenizer()
        model = build_tiny_llama(tokenizer, seed=3, kind="sequence_classification")
        # A random head scores every completion about the same (reward std ~0.005), and group normalization
        # divides by that std: float noise between layouts (scoring batches of 16 vs 8 rows) would be amplified
        # ~200x. A larger head gives rewards with a real spread, so the comparison below is well-conditioned.
        with torch.no_grad():
            model.score.weight.mul_(100.0)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def build(algo: str, out: Path, per_rank: int):
    from lit_align.algorithms import DPO, GRPO, KTO, SFT, SPIN
    from lit_align.datamodules import BinaryFeedbackDataModule, PreferenceDataModule, SFTDataModule, SPINDataModule
    from lit_align.datamodules.prompt import PromptDataModule

    cached = algo.endswith("_cached")  # dpo_cached, kto_cached: precompute_reference=True
    sync = algo == "dpo_trdpo"  # TR-DPO: the reference mixed toward the policy after every step (sharded alike)
    algo = algo.removesuffix("_cached").removesuffix("_trdpo")
    seeds = (1, 0) if algo == "kto" else (0, 1)  # KTO: a pair whose mismatched-pair KL is > 0, so z is not clamped
    policy, tokenizer = load_model("tiny-llama", seed=seeds[0])
    reference, _ = load_model("tiny-llama", seed=seeds[1])
    data = str(write_jsonl(out / f"{algo}.jsonl", rows(algo)))
    common = {"data_path": data, "val_size": 0, "batch_size": per_rank}
    if algo == "dpo":
        module = DPO(policy=policy, reference_policy=reference, learning_rate=1e-3, warmup_ratio=0.0,
                     precompute_reference=cached, sync_ref_model=sync, ref_model_sync_steps=1,
                     ref_model_mixup_alpha=0.5)  # fmt: skip
        dm = PreferenceDataModule(tokenizer=tokenizer, max_length=64, max_prompt_length=32, **common)
    elif algo == "kto":
        module = KTO(policy=policy, reference_policy=reference, learning_rate=1e-3, warmup_ratio=0.0,
                     precompute_reference=cached)
        dm = BinaryFeedbackDataModule(tokenizer=tokenizer, max_length=64, max_prompt_length=32, **common)
    elif algo == "sft":
        module = SFT(policy=policy, learning_rate=1e-3)
        dm = SFTDataModule(tokenizer=tokenizer, max_length=64, **common)
    elif algo == "spin":  # real sampling, 3 generation batches spread over the ranks (FSDP2: one padding call)
        module = SPIN(policy=policy, learning_rate=1e-3, warmup_ratio=0.0, sampling={"max_new_tokens": 8},
                      generation_batch_size=3,
                      tokenizer=tokenizer)  # fmt: skip
        dm = SPINDataModule(tokenizer=tokenizer, max_length=64, max_prompt_length=32, **common)
    elif algo == "ppo":  # per_rank // 2 prompts x 2 completions per rank; 2 epochs x 1 minibatch of 2 micro-batches
        # (one minibatch: which rows share a step must not depend on the layout). The critic starts from the reward
        # model and is sharded like the policy; rewards and advantages are whitened over both ranks; β adapts.
        from lit_align.algorithms import PPO

        module = PPO(policy=policy, reference_policy=reference,
                     rewards={"reward_funcs": [f"model:{reward_model(out)}"], "log_completions_every_n_steps": 0},
                     value_model="reward_model", beta=0.05, kl_target=0.5, kl_horizon=40, whiten_rewards=True,
                     missing_eos_penalty=1.0, num_generations=2, num_iterations=2, gradient_accumulation_steps=2,
                     sampling={"max_new_tokens": 8}, learning_rate=1e-3, tokenizer=tokenizer)
        module.sampler.backend = ScriptedBackend(tokenizer, max_new_tokens=8)
        common["batch_size"] = per_rank // 2
        dm = PromptDataModule(tokenizer=tokenizer, **common)
    elif algo.startswith("distill"):  # the student's samples scripted; the teachers sharded like a reference
        # distill: the generalized JSD (full vocabulary) against two teachers, rows split between them, per_rank
        # prompts x 1 sample in 2 micro-batches; distill_opd: the sampled reverse KL plus a length reward, GRPO-style.
        from lit_align.algorithms import Distill

        teachers = {"even": load_model("tiny-llama", seed=1)[0], "odd": load_model("tiny-llama", seed=2)[0]}
        opd = algo == "distill_opd"
        options = ({"loss_type": "opd", "num_generations": 2, "reward_coef": 0.5, "teacher": teachers["even"],
                    "rewards": {"reward_funcs": [length_reward], "log_completions_every_n_steps": 0}} if opd
                   else {"teachers": teachers, "beta": 0.5})  # fmt: skip
        module = Distill(policy=policy, sampling={"max_new_tokens": 8, "temperature": 0.9},
                         gradient_accumulation_steps=2, learning_rate=1e-3, tokenizer=tokenizer, **options)
        module.sampler.backend = ScriptedBackend(tokenizer, max_new_tokens=8)
        common["batch_size"] = per_rank // 2 if opd else per_rank
        dm = PromptDataModule(tokenizer=tokenizer, **common)
    else:  # GRPO (grpo_rm: scored by a reward model, sharded too under FSDP2): per_rank // 2 prompts x 4
        # completions per rank, one optimizer step per rollout in 2 micro-batches (num_minibatches > 1 splits
        # each RANK's rollout, so which rows share a step would depend on the layout)
        # reinforce_pp: REINFORCE++-baseline, its per-token advantages normalized over every rank's tokens.
        from lit_align.algorithms import ReinforcePP

        # grpo_env: multi-turn conversations with the GuessTheNumber environment (its reward and a length reward),
        # played by a scripted bisection: conversations of unequal lengths with tool tokens masked out.
        rewards = [f"model:{reward_model(out)}"] if algo == "grpo_rm" else [length_reward]
        cls = ReinforcePP if algo == "reinforce_pp" else GRPO
        env = algo == "grpo_env"
        tools = {"environment": "lit_align.tools.games:GuessTheNumber", "max_turns": 6} if env else {}
        max_new_tokens = 400 if env else 8
        module = cls(policy=policy, reference_policy=reference, beta=0.04, num_generations=4,
                      rewards={"reward_funcs": rewards, "log_completions_every_n_steps": 0}, tools=tools,
                      sampling={"max_new_tokens": max_new_tokens}, gradient_accumulation_steps=2,
                      loss_aggregation="token_mean", learning_rate=1e-3, tokenizer=tokenizer)  # fmt: skip
        # GeneratingScript runs the model's generate each turn: under FSDP2 the ranks, whose games last different
        # numbers of turns, must keep step
        module.sampler.backend = (GeneratingScript(tokenizer, guessing_script, max_new_tokens) if env
                                  else ScriptedBackend(tokenizer, max_new_tokens=8))  # fmt: skip
        common["batch_size"] = per_rank // 2
        dm = PromptDataModule(tokenizer=tokenizer, **common)
    return module, dm


def main() -> None:
    out, layout = Path(sys.argv[1]), sys.argv[2]
    algos = sys.argv[3:] or ["dpo", "kto", "sft", "grpo", "grpo_rm", "spin", "ppo", "reinforce_pp", "dpo_trdpo",
                             "grpo_env", "distill", "distill_opd"]
    devices = 1 if layout == "single" else 2
    strategy = {"single": "auto", "ddp": "ddp"}.get(layout)
    plain_path = PlainPathWarnings()
    os.environ["LIT_ALIGN_CACHE"] = str(out / "cache" / layout)  # cached reference log-probs (every rank the same)
    for algo in algos:
        L.seed_everything(0)  # any seed: the training order comes from the DataModule's seed in every layout
        if layout == "fsdp2":
            strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        module, dm = build(algo, out, GLOBAL_BATCH // devices)
        recorder = Recorder()
        # default_root_dir per layout: SPIN writes each iteration's pairs under it, and a new run refuses another's
        trainer = L.Trainer(
            accelerator="cpu", devices=devices, strategy=strategy, max_steps=MAX_STEPS.get(algo, STEPS), logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[recorder], default_root_dir=str(out / layout), limit_val_batches=0, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(module, dm)
        weights = {}
        trained = {"policy": module.policy, "critic": getattr(module, "critic", None),  # PPO trains a critic too
                   "reference": module.reference if getattr(module, "sync_ref_model", False) else None}  # TR-DPO
        for prefix, model in trained.items():
            for name, param in model.named_parameters() if model is not None else ():  # full_tensor(): a collective
                full = param.full_tensor() if hasattr(param, "full_tensor") else param
                weights[name if prefix == "policy" else f"{prefix}.{name}"] = full.detach().cpu().clone()
        if trainer.is_global_zero:
            record = {"steps": recorder.steps, "weights": weights, "plain_path": plain_path.messages}
            cache = getattr(module, "_reference", None) and module._reference.cache  # precompute_reference
            table = cache.table if cache else None  # its entries, gathered from both ranks
            if table is not None:
                record["cached"] = {name: len(entries) for name, entries in table.entries.items()}
                record["reference_held"] = module.reference is not None
            torch.save(record, out / f"{algo}_{layout}.pt")


if __name__ == "__main__":
    main()
