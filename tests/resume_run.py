"""Train DPO or GRPO on tiny models, optionally SIGKILL or signal the process mid-epoch, or resume from the last
checkpoint.

    python tests/resume_run.py OUT_DIR dpo|trdpo|grpo|grpo_env|distill|dpo_val \
        full|kill|sigterm|sigint|sigterm_val|resume

``trdpo`` is DPO with TR-DPO's reference syncing every 2 steps (α = 0.5): the newest checkpoint (step 4) falls on a
sync, which the resumed run must make before its step 5, and the reference's weights are compared too. ``grpo_env`` is
GRPO playing the GuessTheNumber environment (numbers drawn by the environment: the resumed run must rebuild the same
environments from the seed, step and rank), its turns written by a scripted bisecting player. ``distill`` is Distill
with two teachers (each prompt's own) and ``lmbda`` 0.5 (each step draws the student's samples or the data's
completions).

``full`` trains 8 steps uninterrupted. ``kill`` trains the same run and SIGKILLs its own process right
after step 5 (checkpoints are written every 2 steps, so the newest is step 4, mid-epoch). ``sigterm`` and ``sigint``
send that signal instead (:class:`~lit_align.callbacks.preemption.StopOnSignal` then writes ``last.ckpt`` at step 5 and
exits with 128 + the signal); ``sigterm_val`` sends SIGTERM during the validation after step 5 (``dpo_val``: DPO with a
validation split, validated every 5 steps), which is finished before the checkpoint. ``resume``
continues the stopped run from its ``last.ckpt`` (loaded with ``weights_only=True``) to step 8.
Every step appends ``{"step", "loss", "batch", "reward"}`` (a digest of the batch's token ids) to
``OUT_DIR/<algo>_<mode>.jsonl`` as it happens; rank 0 writes the final weights to ``<algo>_<mode>.pt``.
``tests/test_resume.py`` compares the resumed curve and weights with the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_align.callbacks.preemption import StopOnSignal
from lit_align.models.loading import load_model
from tests.conftest import write_jsonl
from tests.online_helpers import ScriptedTurns, game_rows, guessing_script, length_reward, prompt_rows

MAX_STEPS, KILL_AFTER, EVERY = 8, 5, 2


STOPS = {"kill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}


class StepLog(L.Callback):
    def __init__(self, path: Path, mode: str) -> None:
        self.path, self.mode = path, mode

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.mode == "sigterm_val" and trainer.global_step == KILL_AFTER and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)  # mid-validation: it finishes, then the checkpoint

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ids = batch.get("chosen_input_ids", batch.get("prompt_input_ids"))
        record = {
            "step": trainer.global_step,
            "loss": float(trainer.callback_metrics["train/loss"]),
            "batch": hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()[:16],
            "reward": float(trainer.callback_metrics.get("train/reward", float("nan"))),  # GRPO: what was sampled
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.mode in STOPS and trainer.global_step == KILL_AFTER:
            os.kill(os.getpid(), STOPS[self.mode])  # SIGKILL: no cleanup, no final checkpoint, a real crash


def build(algo: str, out: Path):
    policy, tokenizer = load_model("tiny-llama", seed=0)
    if algo in ("dpo", "trdpo", "dpo_val"):
        from lit_align.algorithms import DPO
        from lit_align.datamodules import PreferenceDataModule

        rows = [{"prompt": f"What is {i} + {i}?", "chosen": f" {2 * i}.", "rejected": f" {2 * i + 1}, I think."}
                for i in range(12)]  # fmt: skip  # 6 batches of 2: step 4 is mid-epoch, step 8 is in epoch 2
        sync = {"sync_ref_model": algo == "trdpo", "ref_model_sync_steps": 2, "ref_model_mixup_alpha": 0.5}
        module = DPO(policy=policy, learning_rate=1e-3, warmup_ratio=0.25, scheduler="cosine", **sync)
        path = write_jsonl(out / f"{algo}.jsonl", rows)
        dm = PreferenceDataModule(tokenizer=tokenizer, data_path=str(path), val_size=2 if algo == "dpo_val" else 0,
                                  batch_size=2, max_length=64, max_prompt_length=32)  # fmt: skip
    elif algo == "grpo_env":
        from lit_align.algorithms import GRPO
        from lit_align.datamodules.prompt import PromptDataModule

        module = GRPO(policy=policy, beta=0.04, rewards={"reward_funcs": [length_reward],
                      "log_completions_every_n_steps": 0}, num_generations=4, sampling={"max_new_tokens": 400},
                      tools={"environment": "lit_align.tools.games:GuessTheNumber", "max_turns": 6},
                      learning_rate=1e-3, warmup_ratio=0.25, scheduler="cosine", tokenizer=tokenizer)  # fmt: skip
        module.sampler.backend = ScriptedTurns(tokenizer, guessing_script, 400)
        dm = PromptDataModule(tokenizer=tokenizer, data_path=str(write_jsonl(out / "games.jsonl", game_rows(6))),
                              val_size=0, batch_size=2)  # fmt: skip
    elif algo == "distill":  # two teachers by row; lmbda 0.5: which rollouts are the student's, which the data's,
        # is drawn per step (the resumed run must draw the same) and the student's samples are real (temperature 1)
        from lit_align.algorithms import Distill
        from lit_align.datamodules.prompt import PromptDataModule

        teachers = {"a": load_model("tiny-llama", seed=1)[0], "b": load_model("tiny-llama", seed=2)[0]}
        module = Distill(policy=policy, teachers=teachers, lmbda=0.5, sampling={"max_new_tokens": 8},
                         learning_rate=1e-3, warmup_ratio=0.25, scheduler="cosine", tokenizer=tokenizer)  # fmt: skip
        rows = [{**row, "completion": f" {i} {i + 1}", "teacher_id": "ab"[i % 2]}
                for i, row in enumerate(prompt_rows(6))]  # fmt: skip
        dm = PromptDataModule(tokenizer=tokenizer, data_path=str(write_jsonl(out / "distill.jsonl", rows)),
                              val_size=0, batch_size=2)  # fmt: skip
    else:  # real sampling (temperature 1): the resumed run must draw the same completions
        from lit_align.algorithms import GRPO
        from lit_align.datamodules.prompt import PromptDataModule

        module = GRPO(policy=policy, beta=0.04, rewards={"reward_funcs": [length_reward],
                      "log_completions_every_n_steps": 0}, num_generations=4, sampling={"max_new_tokens": 8},
                      learning_rate=1e-3, warmup_ratio=0.25, scheduler="cosine", tokenizer=tokenizer)  # fmt: skip
        dm = PromptDataModule(tokenizer=tokenizer, data_path=str(write_jsonl(out / "prompts.jsonl", prompt_rows(6))),
                              val_size=0, batch_size=2)  # fmt: skip  # 3 batches: step 4 is mid-epoch 2
    return module, dm


def main() -> None:
    out, algo, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    L.seed_everything(42)
    module, dm = build(algo, out)
    ckpt_dir = out / f"{algo}_ckpt" if mode != "full" else out / f"{algo}_ckpt_full"  # resume reads the kill's
    checkpoints = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=EVERY, save_top_k=-1,
                                  save_last=True)  # fmt: skip
    log = StepLog(out / f"{algo}_{mode}.jsonl", mode)
    validation = {"val_check_interval": 5, "limit_val_batches": 1} if algo == "dpo_val" else {"limit_val_batches": 0}
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=MAX_STEPS, logger=False, callbacks=[checkpoints, log, StopOnSignal()],
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(out),
        **validation,
    )  # fmt: skip
    if mode == "resume":
        trainer.fit(module, dm, ckpt_path=str(ckpt_dir / "last.ckpt"), weights_only=True)
    else:
        trainer.fit(module, dm)
    weights = {k: v.detach().clone() for k, v in module.policy.state_dict().items()}
    if module.reference is not None and getattr(module, "sync_ref_model", False):
        weights.update({f"reference.{k}": v.detach().clone() for k, v in module.reference.state_dict().items()})
    torch.save(weights, out / f"{algo}_{mode}.pt")


if __name__ == "__main__":
    main()
