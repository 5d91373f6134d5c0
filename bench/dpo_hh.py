"""DPO on a few hundred real HH-RLHF harmless pairs with SmolLM2-135M-Instruct, one pass on CPU.

Prints validation metrics before and after training on held-out pairs from the same file:
``val/rewards/accuracies`` (implicit-reward accuracy; 0 before training because policy = reference
makes every reward 0, a tie) and the policy's own preference accuracy — the fraction of held-out
pairs where the token-mean log-prob of the chosen answer beats the rejected one — which is
meaningful before training too.

    python bench/dpo_hh.py [--pairs 400] [--val 100] [--batch-size 8] [--lr 5e-6]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch

from lit_align import DPO
from lit_align.datamodules import PreferenceDataModule
from lit_align.models.logprobs import preference_logps

DATA = Path(__file__).resolve().parents[2] / "shared/data/hh_rlhf_harmless_base_test"
FILE = DATA / "harmless_base_test_prompt_chosen_rejected.jsonl"


@torch.no_grad()
def preference_accuracy(module: DPO, dm: PreferenceDataModule) -> float:
    module.eval()
    wins = total = 0
    for batch in dm.val_dataloader():
        chosen, rejected = preference_logps(module.policy, batch, module.pad_token_id)
        wins += int((chosen.mean > rejected.mean).sum())
        total += len(chosen.mean)
    return wins / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=400, help="rows read from the file (train + val)")
    parser.add_argument("--val", type=int, default=100, help="held-out pairs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    L.seed_everything(0)
    dm = PreferenceDataModule(
        tokenizer="smollm2-135m-instruct", data_path=str(FILE), max_samples=args.pairs, val_size=args.val,
        batch_size=args.batch_size, max_length=args.max_length, max_prompt_length=args.max_length // 2,
    )  # fmt: skip
    dm.setup("fit")
    print(f"train pairs {len(dm.train_dataset)}, val pairs {len(dm.val_dataset)}, truncation {dict(dm.stats)}")
    module = DPO(policy="smollm2-135m-instruct", beta=args.beta, learning_rate=args.lr, warmup_ratio=0.1)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, log_every_n_steps=5,
        num_sanity_val_steps=0, enable_progress_bar=False,
    )  # fmt: skip
    before = trainer.validate(module, dm, verbose=False)[0]
    acc_before = preference_accuracy(module, dm)
    module.train()  # validate() leaves the module in eval mode and Lightning keeps modes through fit
    start = time.time()
    trainer.fit(module, dm)
    fit_s = time.time() - start
    after = trainer.validate(module, dm, verbose=False)[0]
    acc_after = preference_accuracy(module, dm)
    print(f"fit wall time: {fit_s:.0f} s for {trainer.global_step} steps")
    for key in ("val/rewards/accuracies", "val/rewards/margins", "val/loss"):
        print(f"{key}: before {before[key]:.4f}  after {after[key]:.4f}")
    print(f"policy log-prob preference accuracy (token-mean): before {acc_before:.4f}  after {acc_after:.4f}")


if __name__ == "__main__":
    main()
