"""DPO inside your own Lightning code: your model, your data, your Trainer.

lit-align's modules are ordinary LightningModules: give DPO a model object (any Hugging Face causal LM, or an
nn.Module that takes ``input_ids``/``attention_mask`` and returns ``.logits``) and feed it batches in the
preference schema (``lit_align.batches.PreferenceBatch``) from any DataModule — here a small one written for
this example on top of ``PreferenceDataModule``'s tokenization.

    python examples/dpo_in_your_trainer.py --tiny    # a tiny random model, seconds (what CI runs)
    python examples/dpo_in_your_trainer.py           # SmolLM2-135M-Instruct, 20 steps (minutes on a CPU)

Your Trainer gets lit-align's stop on SIGTERM/Ctrl-C (a checkpoint at the step, then exit 128 + signal) by holding
``StopOnSignal``; ``quiet()`` drops Lightning's advertisements and a deprecation its own code raises with this torch.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch.utils.data import DataLoader

from lit_align import DPO, load_model
from lit_align.callbacks.console import quiet
from lit_align.callbacks.preemption import StopOnSignal
from lit_align.datamodules import PreferenceDataModule

PAIRS = [
    {"prompt": f"What is {a} + {b}?", "chosen": f"{a} + {b} = {a + b}.", "rejected": f"{a} + {b} = {a + b + 1}."}
    for a in range(10)
    for b in range(3)
]


class MyPairs(L.LightningDataModule):
    """Your own DataModule: rows from anywhere, batches in lit-align's preference schema."""

    def __init__(self, tokenizer, batch_size: int = 4) -> None:
        super().__init__()
        self.tokenizer, self.batch_size = tokenizer, batch_size
        # Reuse lit-align's tokenization (TRL's conventions: EOS appended, prompt masked) for one row at a time.
        self.formatter = PreferenceDataModule(tokenizer=tokenizer, data_path="unused", max_length=128,
                                              max_prompt_length=64)  # fmt: skip
        self.formatter.tokenizer = tokenizer

    def setup(self, stage: str) -> None:
        self.rows = [self.formatter.tokenize_row(row, f"PAIRS[{i}]", self.tokenizer) for i, row in enumerate(PAIRS)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.rows, batch_size=self.batch_size, shuffle=True, collate_fn=self.formatter.collate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (seconds)")
    args = parser.parse_args()
    quiet()
    torch.manual_seed(0)
    model, tokenizer = load_model("tiny-llama" if args.tiny else "smollm2-135m-instruct")  # your model object
    module = DPO(policy=model, beta=0.1, learning_rate=1e-3 if args.tiny else 5e-6, warmup_ratio=0.0)
    trainer = L.Trainer(max_steps=3 if args.tiny else 20, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        callbacks=[StopOnSignal()])  # fmt: skip
    trainer.fit(module, MyPairs(tokenizer))
    metrics = trainer.callback_metrics
    print(f"after {trainer.global_step} steps: loss {float(metrics['train/loss']):.4f}, "
          f"reward margin {float(metrics['train/rewards/margins']):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
