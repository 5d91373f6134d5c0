"""Reward model on a few hundred real HH-RLHF harmless pairs with SmolLM2-135M-Instruct, one pass on CPU.

Trains on ``--train`` pairs and prints held-out accuracy (fraction of pairs where the chosen answer
gets the higher reward), margin and loss before and after, on ``--val`` other pairs of the same
file. Before training the score head is freshly initialised, so accuracy is near chance.

``--train-layers K`` trains only the top K decoder layers, the final norm and the score head (the
rest frozen; default 4), which cuts the backward pass so that a one-pass run fits a shared 2-core CPU;
``--train-layers 0`` trains everything.

    nice -n 10 python bench/reward_model_hh.py [--train 400] [--val 200] [--train-layers 4] [--lr 2e-5]

Measured (2026-11-27, 2-core CPU): ``--train 480 --val 160 --train-layers 6 --epochs 2 --max-length 128
--max-prompt-length 96 --lr 5e-5`` gives held-out accuracy 0.444 -> 0.581 (93/160), loss 0.780 -> 0.679,
479 s fit. See docs/measurements.md for the other settings tried.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch

from lit_align.algorithms.reward_model import RewardModel
from lit_align.datamodules.preference import PreferenceDataModule

DATA = Path(__file__).resolve().parents[2] / "shared/data/hh_rlhf_harmless_base_test"
FILE = DATA / "harmless_base_test_prompt_chosen_rejected.jsonl"


def freeze_below_top_layers(model: torch.nn.Module, k: int) -> None:
    """Freeze embeddings and all but the top ``k`` decoder layers; the final norm and score head stay trainable."""
    backbone = getattr(model, model.base_model_prefix)
    model.requires_grad_(False)
    for module in (*backbone.layers[-k:], backbone.norm, model.score):
        module.requires_grad_(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=400, help="training pairs")
    parser.add_argument("--val", type=int, default=200, help="held-out pairs (same file, disjoint rows)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-prompt-length", type=int, default=40)
    parser.add_argument("--train-layers", type=int, default=4, help="train only the top K layers (0: all)")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    if not FILE.is_file():
        raise SystemExit(f"HH-RLHF file not found: {FILE}")
    L.seed_everything(0)
    dm = PreferenceDataModule(
        tokenizer="smollm2-135m-instruct", data_path=str(FILE), max_samples=args.train + args.val,
        val_size=args.val, batch_size=args.batch_size, max_length=args.max_length,
        max_prompt_length=args.max_prompt_length,
    )  # fmt: skip
    dm.setup("fit")
    print(f"train pairs {len(dm.train_dataset)}, val pairs {len(dm.val_dataset)}, truncation {dict(dm.stats)}")
    module = RewardModel(policy="smollm2-135m-instruct", learning_rate=args.lr, warmup_ratio=0.1)
    if args.train_layers:
        freeze_below_top_layers(module.policy, args.train_layers)
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False, log_every_n_steps=5,
        num_sanity_val_steps=0, limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    evaluator = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    start = time.time()
    before = evaluator.validate(module, dm, verbose=False)[0]
    val_s = time.time() - start
    module.train()  # validate() leaves the module in eval mode and Lightning keeps modes through fit
    start = time.time()
    trainer.fit(module, dm)
    fit_s = time.time() - start
    after = evaluator.validate(module, dm, verbose=False)[0]
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    print(f"trainable parameters: {trainable / 1e6:.1f}M")
    print(f"fit: {fit_s:.0f} s for {trainer.global_step} steps ({fit_s / max(1, trainer.global_step):.1f} s/step); "
          f"one validation pass: {val_s:.0f} s")  # fmt: skip
    for key in ("val/accuracy", "val/margin", "val/loss", "val/mean_reward"):
        print(f"{key}: before {before[key]:.4f}  after {after[key]:.4f}")


if __name__ == "__main__":
    main()
