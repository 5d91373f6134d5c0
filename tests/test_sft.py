"""SFT: parity with TRL 1.16's SFTTrainer, gradient-accumulation invariance, smoke fit, update()."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_align.algorithms.sft import SFT
from lit_align.datamodules.sft import SFTDataModule
from lit_align.datamodules.tokenize import IGNORE_INDEX
from lit_align.models.loading import load_model
from tests.conftest import write_jsonl

DEMO = Path(__file__).resolve().parents[1] / "datamodules" / "samples" / "sft_demo.jsonl"
TEXT_ROWS = [
    {"prompt": "Question: what is 12 + 30?\nAnswer:", "completion": " 42"},
    {"prompt": "Translate 'chat' to English:", "completion": " cat"},
    {"prompt": "Spell 'dog' backwards:", "completion": " god, which is also a word."},
    {"prompt": "Is 7 prime?", "completion": " Yes."},
]


def _demo_rows(n: int) -> list[dict]:
    with DEMO.open(encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def _datamodule(tmp_path, rows, tokenizer, name="rows", **kwargs) -> SFTDataModule:
    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    dm = SFTDataModule(tokenizer=tokenizer, data_path=str(path), val_size=0, **kwargs)
    dm.setup()
    return dm


def _trl_trainer(tmp_path, rows, model, tokenizer, max_length):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "trl"),
        report_to="none",
        use_cpu=True,
        per_device_train_batch_size=len(rows),
        completion_only_loss=True,
        max_length=max_length,
        shuffle_dataset=False,
        gradient_checkpointing=False,
    )
    dataset = datasets.Dataset.from_list(rows)
    return trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


@pytest.mark.slow  # a TRL trainer
@pytest.mark.parametrize("kind", ["conversational", "text"])
def test_tokenization_and_loss_match_trl(tmp_path, kind):
    """Same rows, same tiny-llama weights: identical tokens/masks, and TRL's loss to 1e-5 (fp32).

    ``max_length=64`` truncates 2 of the 6 conversational rows, so TRL's keep_start truncation is covered.
    """
    rows = _demo_rows(6) if kind == "conversational" else TEXT_ROWS
    ours_model, tokenizer = load_model("tiny-llama")
    dm = _datamodule(tmp_path, rows, tokenizer, max_length=64, batch_size=len(rows))
    batch = dm.collate([dm.train_dataset[i] for i in range(len(rows))])
    module = SFT(policy=ours_model, learning_rate=1e-2, max_grad_norm=None)
    for _ in range(8):  # a few steps, so the top-1 accuracy is not trivially 0
        module.update(batch)
    trl_model, _ = load_model("tiny-llama")  # TRL patches its model's forward: give it a twin
    trl_model.load_state_dict(ours_model.state_dict())
    trainer = _trl_trainer(tmp_path, rows, trl_model, tokenizer, max_length=64)
    assert len(trainer.train_dataset) == len(dm.train_dataset) == len(rows)
    for i, trl_row in enumerate(trainer.train_dataset):
        ours = dm.train_dataset[i]
        assert ours["prompt_ids"] + ours["completion_ids"] == trl_row["input_ids"], i
        completion_mask = [label != IGNORE_INDEX for label in trl_row["labels"]]
        assert completion_mask == [False] * len(ours["prompt_ids"]) + [True] * len(ours["completion_ids"]), i
    if kind == "conversational":
        assert dm.stats["train/truncated"] == 2

    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], trl_batch[key]), key

    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, dict(trl_batch))
    trl_accuracy = trainer._metrics["train"]["mean_token_accuracy"][-1]
    module.train()
    loss, values = module.compute_loss(batch)
    assert abs(loss.item() - trl_loss.item()) < 1e-5, (loss.item(), trl_loss.item())
    accuracy, weights = values["mean_token_accuracy"]
    assert trl_accuracy > 0.1
    assert abs(float((accuracy * weights).sum() / weights.sum()) - trl_accuracy) < 1e-6


class _GradCapture(SFT):
    """Records the gradient Lightning is about to clip, i.e. after on_before_optimizer_step."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        self.captured = {n: p.grad.clone() for n, p in self.policy.named_parameters() if p.grad is not None}


def _fit_one_step(batches: list[dict[str, torch.Tensor]], accumulate: int) -> dict[str, torch.Tensor]:
    model, _ = load_model("tiny-llama")
    module = _GradCapture(policy=model, max_grad_norm=None)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return module.captured


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """Micro-batches of 2 and 4 rows (very different token counts) accumulated over k=2 give the
    gradient of one 6-row batch to 1e-6; a per-micro-batch token mean (the naive way) does not."""
    _, tokenizer = load_model("tiny-llama")
    rows = [*TEXT_ROWS[:2], *_demo_rows(4)]
    dm = _datamodule(tmp_path, rows[2:], tokenizer, name="chat")
    conversational = [dm.train_dataset[i] for i in range(4)]
    text_dm = _datamodule(tmp_path, rows[:2], tokenizer, name="text")
    text = [text_dm.train_dataset[i] for i in range(2)]
    small, large = dm.collate(text), dm.collate(conversational)
    assert (small["labels"] != IGNORE_INDEX).sum() * 4 < (large["labels"] != IGNORE_INDEX).sum()

    big = _fit_one_step([dm.collate(text + conversational)], accumulate=1)
    accumulated = _fit_one_step([small, large], accumulate=2)
    assert big.keys() == accumulated.keys() and len(big) > 0
    for name, grad in big.items():
        torch.testing.assert_close(accumulated[name], grad, atol=1e-6, rtol=0, msg=name)

    # The naive normalization: mean over each micro-batch's tokens, averaged over micro-batches.
    model, _ = load_model("tiny-llama")
    naive = SFT(policy=model)
    ((naive.compute_loss(small)[0] + naive.compute_loss(large)[0]) / 2).backward()
    naive_grads = {n: p.grad for n, p in naive.policy.named_parameters()}
    worst = max((naive_grads[n] - g).abs().max().item() for n, g in big.items())
    assert worst > 1e-3


def test_smoke_fit_changes_parameters_and_logs_metrics(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    module = SFT(policy=model, learning_rate=1e-3)
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    dm = SFTDataModule(tokenizer=tokenizer, max_samples=16, val_size=4, batch_size=2, max_length=96)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, limit_val_batches=2, val_check_interval=3, log_every_n_steps=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    changed = [n for n, p in module.policy.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/mean_token_accuracy", "train/num_tokens", "val/loss", "val/perplexity"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert math.isclose(metrics["val/perplexity"].item(), math.exp(metrics["val/loss"].item()), rel_tol=1e-5)
    assert metrics["train/num_tokens"].item() > 3 * 2 * 20  # cumulative non-pad tokens of 3 steps


def test_update_returns_metrics_and_steps(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    module = SFT(policy=model, learning_rate=1e-3)
    dm = _datamodule(tmp_path, TEXT_ROWS, tokenizer)
    batch = dm.collate([dm.train_dataset[i] for i in range(len(TEXT_ROWS))])
    first = module.update(batch)
    assert set(first) == {"loss", "mean_token_accuracy"}
    assert 0.0 <= first["mean_token_accuracy"] <= 1.0
    with torch.no_grad():
        after = module.compute_loss(batch)[0].item()
    assert after < first["loss"]
