"""Preference pairs (prompt, chosen, rejected) -> the preference batch schema (see DESIGN.md)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from datamodules.base import SAMPLES, TokenizedDataModule
from datamodules.tokenize import (
    DataError,
    TruncationMode,
    check_text_or_messages,
    extract_implicit_prompt,
    fit_to_length,
    is_conversational,
    sequence_tensors,
    tokenize_prompt_completions,
)

DEMO_PREFERENCES = str(SAMPLES / "preference_demo.jsonl")


class PreferenceDataModule(TokenizedDataModule):
    """Rows ``{"prompt", "chosen", "rejected"}`` as plain text, chat message lists, or HH-RLHF style.

    An optional numeric ``margin`` field (the reward model's per-pair margin) is passed through as a
    float tensor ``margin`` (B,).

    HH-RLHF style rows have no prompt field: chosen and rejected both start with the prompt, which
    is split off as their common prefix. Truncation: the prompt is cut to ``max_prompt_length``
    (``truncation_mode`` says which end survives), then each completion is cut at its end so that
    prompt + completion fits ``max_length``. A row whose prompt alone leaves no room for a
    completion is an error unless ``drop_overlong=True``, when it is dropped and counted.

    Args:
        tokenizer: a tokenizer, or the name of the policy whose tokenizer to load (recipes link it).
        data_path: local .json/.jsonl/.parquet/.csv file, folder, or ``datasets`` hub name. Defaults
            to the project's own demo pairs (``datamodules/samples/preference_demo.jsonl``).
        split: the split to train on.
        val_split: a split to validate on; when ``None``, ``val_size`` rows are carved off ``split``.
        val_size: fraction (float) or count (int) of rows held out for validation; 0 disables it.
        columns: field mapping, canonical name -> column name, e.g. ``{"chosen": "good"}``.
        max_samples: use only the first N rows (before the validation split).
        max_length: longest prompt + completion, in tokens.
        max_prompt_length: longest prompt, in tokens (``None``: only ``max_length`` applies).
        truncation_mode: ``keep_end`` keeps the end of a long prompt (next to the answer),
            ``keep_start`` its beginning.
        drop_overlong: drop (and count) rows whose prompt fills ``max_length`` instead of failing.
        batch_size: pairs per training batch (per device).
        eval_batch_size: pairs per validation batch (default: ``batch_size``).
        num_workers: DataLoader workers.
        pad_to_multiple_of: pad sequence length to a multiple of this.
        seed: seed of the validation split and of the training order (a function of seed and epoch only).
        config_name: ``datasets`` configuration name for hub datasets.
    """

    FIELDS = ("chosen", "rejected")
    OPTIONAL_FIELDS = ("prompt", "margin")
    TOKENIZATION_SETTINGS = ("max_length", "max_prompt_length", "truncation_mode", "drop_overlong")

    def __init__(
        self,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        data_path: str = DEMO_PREFERENCES,
        split: str = "train",
        val_split: str | None = None,
        val_size: float | int = 0.1,
        columns: dict[str, str] | None = None,
        max_samples: int | None = None,
        max_length: int = 512,
        max_prompt_length: int | None = 256,
        truncation_mode: TruncationMode = "keep_end",
        drop_overlong: bool = False,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
        seed: int = 42,
        config_name: str | None = None,
    ) -> None:
        super().__init__(
            tokenizer, data_path, split, val_split, val_size, columns, max_samples, batch_size,
            eval_batch_size, num_workers, pad_to_multiple_of, seed, config_name,
        )  # fmt: skip
        if max_prompt_length is not None and max_prompt_length >= max_length:
            raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length})")
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.truncation_mode = truncation_mode
        self.drop_overlong = drop_overlong

    def tokenize_row(self, row: dict[str, Any], loc: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        chosen, rejected = row["chosen"], row["rejected"]
        check_text_or_messages(chosen, f"{loc}, field 'chosen'")
        check_text_or_messages(rejected, f"{loc}, field 'rejected'")
        prompt = row.get("prompt")
        if prompt is None:
            prompt, chosen, rejected = extract_implicit_prompt(chosen, rejected)
            if not prompt or not chosen or not rejected:
                raise DataError(
                    f"{loc}: no 'prompt' field, and chosen/rejected share no prompt prefix to split off "
                    "(expected HH-RLHF style rows, or add a prompt column)"
                )
        else:
            check_text_or_messages(prompt, f"{loc}, field 'prompt'")
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

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        prompts = [r["prompt_ids"] for r in rows]
        batch = {}
        for side in ("chosen", "rejected"):
            ids, mask, labels = sequence_tensors(
                prompts, [r[f"{side}_ids"] for r in rows], pad_id, self.pad_to_multiple_of
            )
            batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": mask, f"{side}_labels": labels})
        if "margin" in rows[0]:
            batch["margin"] = torch.tensor([r["margin"] for r in rows], dtype=torch.float)
        return batch
