"""How validation metrics aggregate (docs/data.md, "Metrics"): every ``val/*`` value is a ROW-weighted mean over the
whole validation set, the loss included (as Hugging Face's ``eval_loss``: per-batch losses repeated by batch size,
then averaged). TRL logs its other ``eval_*`` metrics as the mean of per-batch means, which differs when the last
batch is smaller; this test pins ours and shows the difference is real on a 3-row set in batches of 2."""

from __future__ import annotations

import pytest
import torch

from lit_align.algorithms.dpo import DPO
from lit_align.datamodules.preference import PreferenceDataModule
from lit_align.models.loading import load_model
from tests.conftest import write_jsonl
from tests.helpers import tiny_trainer
from tests.parity import weighted_means


def test_validation_metrics_are_row_weighted(tmp_path):
    policy, tokenizer = load_model("tiny-llama", seed=0)
    reference, _ = load_model("tiny-llama", seed=1)
    rows = [{"prompt": f"Q{i}: " + "why? " * i, "chosen": " yes" * (i + 1), "rejected": " no"} for i in range(6)]
    dm = PreferenceDataModule(tokenizer=tokenizer, data_path=str(write_jsonl(tmp_path / "d.jsonl", rows)), val_size=3,
                              batch_size=2)  # fmt: skip
    dm.setup("fit")
    module = DPO(policy=policy, reference_policy=reference, beta=0.2)
    per_row = []  # each validation row alone: its loss and metric values
    for i in range(len(dm.val_dataset)):
        with torch.no_grad():
            loss, values = module.compute_loss(dm.collate([dm.val_dataset[i]]))
        per_row.append({"loss": float(loss), **weighted_means(values)})
    # inference_mode=False: under torch.inference_mode (Trainer.validate's default) the chunked LM head's
    # ScoringHead reads out._version, which inference tensors do not have (lit_align/lm_head.py; reported).
    trainer = tiny_trainer(tmp_path, limit_val_batches=None, inference_mode=False)
    logged = trainer.validate(module, datamodule=dm, verbose=False)[0]
    for name in ("loss", "rewards/chosen", "rewards/margins", "logps/rejected"):
        row_weighted = sum(r[name] for r in per_row) / 3
        mean_of_batch_means = ((per_row[0][name] + per_row[1][name]) / 2 + per_row[2][name]) / 2
        assert logged[f"val/{name}"] == pytest.approx(row_weighted, abs=1e-5), name
        assert abs(row_weighted - mean_of_batch_means) > 1e-4, name  # the two conventions really differ here
