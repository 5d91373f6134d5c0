"""Shared pieces of the TRL parity tests: demo rows, tokenizers with a BOS token built in code, metric means.

The tiny byte tokenizer has no BOS token, so a parity test on it cannot see how a trainer treats BOS (TRL's
CPO/ORPO prepend it to plain-text prompts, its DPO/KTO leave it to the tokenizer). :func:`bos_tokenizer`
gives the same byte tokenizer with a BOS token, either one it never adds itself (SmolLM2's case: its BOS is
``<|im_start|>``) or one its post-processor adds (Llama's case).
"""

from __future__ import annotations

import json

import torch
from tokenizers import processors

from lit_align.datamodules.preference import DEMO_PREFERENCES
from lit_align.models.loading import build_byte_tokenizer
from tests.conftest import REPO

DEMO_BINARY = REPO / "datamodules" / "samples" / "binary_demo.jsonl"
TOL = 1e-5


def jsonl_rows(path, n: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def demo_preference_rows(n: int) -> list[dict]:
    """The first ``n`` demo pairs (chat message lists)."""
    return jsonl_rows(DEMO_PREFERENCES, n)


def plain_preference_rows(n: int) -> list[dict]:
    """The first ``n`` demo pairs as plain text (the user's message; the answers with a leading space)."""
    return [
        {"prompt": r["prompt"][-1]["content"], "chosen": " " + r["chosen"][0]["content"],
         "rejected": " " + r["rejected"][0]["content"]}
        for r in demo_preference_rows(n)
    ]  # fmt: skip


def demo_binary_rows(n: int) -> list[dict]:
    return jsonl_rows(DEMO_BINARY, n)


def plain_binary_rows(n: int) -> list[dict]:
    """The demo feedback rows as plain text (prompt and completion strings)."""
    return [
        {"prompt": r["prompt"][0]["content"], "completion": " " + r["completion"][0]["content"], "label": r["label"]}
        for r in demo_binary_rows(n)
    ]


def bos_tokenizer(adds_bos: bool = False):
    """The byte tokenizer with a BOS token: ``<|im_start|>``, never added by the tokenizer itself (as SmolLM2's), or,
    with ``adds_bos``, a new ``<s>`` its post-processor puts before every text (as Llama's)."""
    tokenizer = build_byte_tokenizer()
    if not adds_bos:
        tokenizer.bos_token = "<|im_start|>"
        return tokenizer
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return tokenizer


def weighted_means(values: dict) -> dict[str, float]:
    """One float per metric from ``compute_loss``'s values (a tensor, or ``(values, weights)``)."""
    out = {}
    for name, value in values.items():
        data, weight = value if isinstance(value, tuple) else (value, torch.ones_like(value))
        if weight.sum() > 0:
            out[name] = float((data.detach().float() * weight).sum() / weight.sum())
    return out


def our_loss_and_metrics(module, batch) -> tuple[float, dict[str, float]]:
    with torch.no_grad():
        loss, values = module.compute_loss(batch)
    return float(loss), weighted_means(values)


def unpadded(batch: dict[str, torch.Tensor], side: str, i: int) -> tuple[list[int], list[int]]:
    """Row ``i``'s ``{side}_input_ids`` and ``{side}_labels`` without padding."""
    mask = batch[f"{side}_attention_mask"][i].bool()
    return batch[f"{side}_input_ids"][i][mask].tolist(), batch[f"{side}_labels"][i][mask].tolist()


def assert_tokens_differ_only_by_trl_eos(trainer, ours: dict[str, torch.Tensor], eos_id: int, rows: int) -> None:
    """Chat rows: TRL's CPO/ORPO ids and labels are ours plus one trailing EOS (a completion token), row by row.

    They append EOS after the chat template's closing ``<|im_end|>\\n`` (``add_eos_token_if_needed`` sees ``\\n``
    last); we do not (the template already closes the turn; TRL's DPOTrainer does not either)."""
    for i in range(rows):
        row = trainer.train_dataset[i]
        for side in ("chosen", "rejected"):
            ids, labels = unpadded(ours, side, i)
            assert row[f"{side}_input_ids"] == [*ids, eos_id], (i, side)
            assert row[f"{side}_labels"] == [*labels, eos_id], (i, side)
