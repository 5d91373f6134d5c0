"""Train SPIN (2 iterations x 4 steps) on the tiny preset; optionally SIGKILL mid-run, or resume from a checkpoint.

    python tests/spin_resume_run.py OUT_DIR full|kill
    python tests/spin_resume_run.py OUT_DIR resume STEP

``full`` trains 8 steps uninterrupted (run dir ``OUT_DIR/full``). ``kill`` trains the same run (``OUT_DIR/kill``),
checkpointing every 2 steps, and SIGKILLs its own process right after step 7 (newest checkpoint: step 6, inside
iteration 1). ``resume STEP`` continues the killed run from its step-STEP checkpoint (``weights_only=True``) in a new
directory; the checkpoint names the killed run's SPIN directory, where the pairs of each iteration are. Every step
appends ``{"step", "iteration", "loss", "batch"}`` to ``OUT_DIR/<mode>[_STEP].jsonl``; the final weights go to
``OUT_DIR/<mode>[_STEP].pt``. ``tests/test_spin.py`` compares them with the uninterrupted run.
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

from lit_align.algorithms import SPIN
from lit_align.datamodules import SPINDataModule
from lit_align.models.loading import load_model
from tests.conftest import write_jsonl

KILL_AFTER, EVERY = 7, 2


class StepLog(L.Callback):
    def __init__(self, path: Path, kill_after: int | None) -> None:
        self.path, self.kill_after = path, kill_after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ids = torch.cat([batch["chosen_input_ids"].flatten(), batch["rejected_input_ids"].flatten()])
        record = {
            "step": trainer.global_step,
            "iteration": pl_module.iteration,
            "loss": float(trainer.callback_metrics["train/loss"]),
            "batch": hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()[:16],
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.kill_after is not None and trainer.global_step >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint: a real crash


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    name = mode if mode != "resume" else f"resume_{sys.argv[3]}"
    L.seed_everything(42)
    policy, tokenizer = load_model("tiny-llama", seed=0)
    # real sampling (temperature 1): a run that generated again with another policy would see other pairs
    module = SPIN(policy=policy, tokenizer=tokenizer, learning_rate=1e-3, warmup_ratio=0.25, scheduler="cosine",
                  sampling={"max_new_tokens": 8}, generation_batch_size=3, iterations=2)  # fmt: skip
    rows = [{"prompt": f"Say {i} twice:", "completion": f" {i} {i}."} for i in range(8)]
    dm = SPINDataModule(tokenizer=tokenizer, data_path=str(write_jsonl(out / "sft.jsonl", rows)), val_size=0,
                        batch_size=2, max_length=64, max_prompt_length=32)  # fmt: skip
    run_dir = out / name
    callbacks = [StepLog(out / f"{name}.jsonl", KILL_AFTER if mode == "kill" else None)]
    if mode == "kill":
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "ckpt", every_n_train_steps=EVERY, save_top_k=-1))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(run_dir),
        enable_checkpointing=mode == "kill",
    )  # fmt: skip
    if mode == "resume":
        (ckpt,) = (out / "kill" / "ckpt").glob(f"*-step={sys.argv[3]}.ckpt")
        trainer.fit(module, dm, ckpt_path=str(ckpt), weights_only=True)
    else:
        trainer.fit(module, dm)
    torch.save({k: v.detach().clone() for k, v in module.policy.state_dict().items()}, out / f"{name}.pt")


if __name__ == "__main__":
    main()
