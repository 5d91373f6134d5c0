"""Preference pairs (prompt, chosen, rejected) -> the preference batch schema (``lit_align.batches``)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lit_align.batches import PreferenceBatch
from lit_align.datamodules.base import SAMPLES, PromptCompletionDataModule
from lit_align.datamodules.tokenize import (
    DataError,
    fit_to_length,
    is_conversational,
    preference_row,
    sequence_tensors,
    tokenize_prompt_completions,
)

DEMO_PREFERENCES = str(SAMPLES / "preference_demo.jsonl")


class PreferenceDataModule(PromptCompletionDataModule):
    """Rows ``{"prompt", "chosen", "rejected"}`` as plain text, chat message lists, or HH-RLHF style.

    An optional numeric ``margin`` field (the reward model's per-pair margin) is passed through as a
    float tensor ``margin`` (B,).

    HH-RLHF style rows have no prompt field: chosen and rejected both start with the prompt, which
    is split off as their common prefix. Truncation: the prompt is cut to ``max_prompt_length``
    (``truncation_mode`` says which end survives), then each completion is cut at its end so that
    prompt + completion fits ``max_length``. A row whose prompt alone leaves no room for a
    completion is an error unless ``drop_overlong=True``, when it is dropped and counted.

    The options are :class:`~lit_align.datamodules.base.PromptCompletionDataModule`'s and its base's.
    """

    FIELDS = ("chosen", "rejected")
    OPTIONAL_FIELDS = ("prompt", "margin")

    def __init__(self, *, data_path: str = DEMO_PREFERENCES, batch_size: int = 4, **kwargs: Any) -> None:
        super().__init__(data_path=data_path, batch_size=batch_size, **kwargs)

    def tokenize_row(self, row: dict[str, Any], loc: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        prompt, chosen, rejected = preference_row(row, loc)
        if is_conversational(prompt) and not is_conversational(chosen):
            raise DataError(f"{loc}, field 'chosen': expected a message list like the prompt, got text")
        prompt_ids, (chosen_ids, rejected_ids) = tokenize_prompt_completions(tokenizer, prompt, [chosen, rejected], loc)
        kept_prompt, (chosen_ids, rejected_ids), status = fit_to_length(
            prompt_ids, [chosen_ids, rejected_ids], self.max_length, self.max_prompt_length, self.truncation_mode,
            self.drop_overlong, loc,
        )  # fmt: skip
        out = {"prompt_ids": kept_prompt, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids, "_status": status}
        if "margin" in row:
            margin = row["margin"]
            if isinstance(margin, bool) or not isinstance(margin, (int, float)):
                raise DataError(f"{loc}, field 'margin': expected a number, got {type(margin).__name__} {margin!r:.40}")
            out["margin"] = float(margin)
        return out

    def collate(self, rows: list[dict[str, Any]]) -> PreferenceBatch:
        pad_id = self.tokenizer.pad_token_id
        prompts = [r["prompt_ids"] for r in rows]
        batch: dict[str, torch.Tensor] = {}
        for side in ("chosen", "rejected"):
            ids, mask, labels = sequence_tensors(
                prompts, [r[f"{side}_ids"] for r in rows], pad_id, self.pad_to_multiple_of
            )
            batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": mask, f"{side}_labels": labels})
        if "margin" in rows[0]:
            batch["margin"] = torch.tensor([r["margin"] for r in rows], dtype=torch.float)
        return batch
