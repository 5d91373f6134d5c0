"""KTO on real binary feedback (LLaMA-Factory's kto_en_demo, 150 good / 150 bad) with SmolLM2-135M-Instruct on CPU.

Evaluates before and after training, on the held-out rows (``val``) and on a fixed subset of the training rows
(``train[:N]``, to tell fitting the seen data apart from generalizing to new data):

- ``separation``: mean desirable implicit reward − mean undesirable one (``val/rewards/margins``), where the
  reward is β·(log π(y|x) − log π_ref(y|x)) summed over completion tokens; exactly 0 before training;
- ``AUC``: the fraction of (desirable, undesirable) pairs whose rewards are ordered correctly (ties count ½);
- ``token-mean separation`` / ``token-mean AUC``: the same on the per-token mean log-ratio (no β), a diagnostic
  that long completions do not dominate when every log-prob falls;
- ``loss`` and ``kl`` (the reference point z) as the module's validation step computes them.

    nice -n 10 python bench/kto_real_run.py [--rows 300] [--val 60] [--batch-size 8] [--lr 5e-6] [--epochs 2]
    nice -n 10 python bench/kto_real_run.py --data $HH/harmless_base_test_prompt_chosen_rejected.jsonl --unpair \\
        --rows 560 --val 60 --max-length 128 --epochs 1      # HH=../shared/data/hh_rlhf_harmless_base_test

With ``--unpair`` the file holds preference pairs (each becomes a desirable and an undesirable example) and
``--rows``/``--val`` count pairs; the validation split is carved by pairs, so no prompt is on both sides of it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from lit_align.algorithms.kto import KTO
from lit_align.datamodules.binary import BinaryFeedbackDataModule

FILE = Path(__file__).resolve().parents[2] / "shared/data/llamafactory_kto_en_demo/kto_en_demo_conversational.jsonl"


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a positive > score of a negative) over all (positive, negative) pairs, ties counting ½."""
    good, bad = scores[positive].unsqueeze(1), scores[~positive].unsqueeze(0)
    return float(((good > bad).float() + 0.5 * (good == bad).float()).mean())


@torch.no_grad()
def evaluate(module: KTO, loader: DataLoader) -> dict[str, float]:
    """The module's own KTO loss, z and implicit rewards on every batch of ``loader``, summarized."""
    module.eval()
    losses, kls, rewards, token_ratios, labels = [], [], [], [], []
    for batch in loader:
        loss, values = module.compute_loss(batch)
        reward = values["rewards/chosen"][0]  # β·(log π − log π_ref) of every example (both sides)
        num_tokens = (batch["labels"][:, 1:] != -100).sum(1).clamp(min=1)  # scored completion tokens
        losses.append(loss.expand(len(reward)))
        kls.append(values["kl"].expand(len(reward)))
        rewards.append(reward)
        token_ratios.append(reward / module.beta / num_tokens)
        labels.append(batch["is_desirable"])
    loss, kl, reward, token_ratio, label = (torch.cat(t) for t in (losses, kls, rewards, token_ratios, labels))
    return {
        "separation": float(reward[label].mean() - reward[~label].mean()),
        "AUC": auc(reward, label),
        "rewards/chosen": float(reward[label].mean()),
        "rewards/rejected": float(reward[~label].mean()),
        "token-mean separation": float(token_ratio[label].mean() - token_ratio[~label].mean()),
        "token-mean AUC": auc(token_ratio, label),
        "kl": float(kl.mean()),
        "loss": float(loss.mean()),
    }


class Progress(L.Callback):
    """Prints the training loss, z and reward separation every 5 steps, and per epoch the mean step separation.

    Each step's separation is measured before the optimizer has stepped on that batch, so over the first epoch
    (every row seen for the first time) its mean is a progressive, held-out-like estimate from many more rows.
    """

    def __init__(self) -> None:
        self.margins: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        logged = trainer.callback_metrics
        metrics = {k: float(logged.get(f"train/{k}", torch.nan)) for k in ("loss", "kl", "rewards/margins")}
        self.margins.append(metrics["rewards/margins"])
        if trainer.global_step % 5 == 0:
            print(f"step {trainer.global_step}: " + ", ".join(f"{k} {v:+.4f}" for k, v in metrics.items()), flush=True)

    def on_train_epoch_end(self, trainer: L.Trainer, *_) -> None:
        margins = torch.tensor(self.margins)
        margins = margins[~margins.isnan()]
        positive = int((margins > 0).sum())
        print(
            f"epoch {trainer.current_epoch}: mean step rewards/margins {float(margins.mean()):+.4f} "
            f"(sd {float(margins.std()):.4f}, {positive}/{len(margins)} steps > 0)",
            flush=True,
        )
        self.margins = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300, help="rows (pairs with --unpair) read: train + val")
    parser.add_argument("--val", type=int, default=60, help="held-out rows (pairs with --unpair)")
    parser.add_argument("--train-eval", type=int, default=60, help="training examples evaluated before/after")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=None, help="step limit (default 30, none with --epochs)")
    parser.add_argument("--epochs", type=int, default=None, help="passes over the training split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-before", action="store_true", help="skip the pre-training evaluation (policy = reference, so its "
        "rewards, separations and z are exactly 0, the AUCs 0.5 and the loss 0.5 with unit weights)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--data", default=str(FILE), help="binary-feedback jsonl (default: kto_en_demo)")
    parser.add_argument("--unpair", action="store_true", help="--data holds preference pairs (prompt/chosen/...)")
    args = parser.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]), f"(seed {args.seed})", flush=True)
    if not Path(args.data).exists():
        raise SystemExit(f"data file not found: {args.data}")
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(args.seed)
    dm = BinaryFeedbackDataModule(
        tokenizer="smollm2-135m-instruct", data_path=args.data, unpair=args.unpair, max_samples=args.rows,
        val_size=args.val, batch_size=args.batch_size, max_length=args.max_length,
        max_prompt_length=args.max_length * 3 // 4,
    )  # fmt: skip
    dm.setup("fit")
    print(f"train {len(dm.train_dataset)}, val {len(dm.val_dataset)} examples; {dict(dm.stats)}", flush=True)
    subset = dm.train_dataset.select(range(min(args.train_eval, len(dm.train_dataset))))
    loaders = {
        "val": dm.val_dataloader(),
        f"train[:{len(subset)}]": DataLoader(subset, batch_size=dm.eval_batch_size, collate_fn=dm.collate),
    }
    module = KTO(policy="smollm2-135m-instruct", beta=args.beta, learning_rate=args.lr, warmup_ratio=0.1)
    max_steps = args.max_steps if args.max_steps is not None else (-1 if args.epochs else 30)
    trainer = L.Trainer(
        max_steps=max_steps, max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        log_every_n_steps=5, num_sanity_val_steps=0, limit_val_batches=0, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Progress()],
    )  # fmt: skip
    start = time.time()
    before = {name: None if args.skip_before else evaluate(module, loader) for name, loader in loaders.items()}
    eval_s = time.time() - start
    module.train()  # evaluate() leaves it in eval mode, and Lightning 2.6 keeps a module's mode when fit starts
    start = time.time()
    trainer.fit(module, dm)
    fit_s = time.time() - start
    after = {name: evaluate(module, loader) for name, loader in loaders.items()}
    steps = trainer.global_step
    print(
        f"fit wall time: {fit_s:.0f} s for {steps} steps ({fit_s / max(steps, 1):.1f} s/step, "
        f"{trainer.current_epoch} epochs); evaluation before training {eval_s:.0f} s"
    )
    for name in loaders:
        for key, value in after[name].items():
            old = "not measured" if before[name] is None else f"{before[name][key]:+.4f}"
            print(f"{name} {key}: before {old}  after {value:+.4f}")


if __name__ == "__main__":
    main()
