"""Prompt-only rows -> the prompt-only batch schema of the online algorithms (see DESIGN.md).

A row is ``{"prompt": ...}`` plus any other columns (e.g. ``answer``). The prompt is plain text or
a chat message list; a message list goes through the chat template WITH the generation prompt, so
the policy continues as the assistant. Batches carry LEFT-padded ``prompt_input_ids`` /
``prompt_attention_mask`` (generation appends on the right) and, untouched, the raw ``prompt`` and
every other column as Python lists, for the reward functions (TRL's convention: columns arrive at
the reward function as keyword lists).

Deliberately left out: ``pad_to_multiple_of`` (prompts are left-padded to the batch's longest only)
and multimodal prompts.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from datamodules.base import SAMPLES, TokenizedDataModule
from datamodules.tokenize import DataError, TruncationMode, _ids, check_text_or_messages, is_conversational, left_pad
from datamodules.tokenize import truncate_prompt as cut_prompt

DEMO_PROMPTS = str(SAMPLES / "arithmetic_prompts.jsonl")
TOKENIZED_KEYS = ("prompt_ids", "_status")
RESERVED = (*TOKENIZED_KEYS, "prompt_input_ids", "prompt_attention_mask")


class PromptDataModule(TokenizedDataModule):
    """Rows ``{"prompt", ...}`` for online RL; every column besides the prompt is passed through.

    Truncation: a prompt longer than ``max_prompt_length`` tokens is cut (``keep_end`` keeps its end,
    where the question and the generation prompt are) and counted as ``prompt_truncated``.

    Args:
        tokenizer: a tokenizer, or the name of the policy whose tokenizer to load (recipes link it).
        data_path: local .json/.jsonl/.parquet/.csv file, folder, or ``datasets`` hub name. Defaults
            to the project's arithmetic word problems (``datamodules/samples/arithmetic_prompts.jsonl``,
            rows ``{"prompt": [messages], "answer": "42"}``).
        split: the split to train on.
        val_split: a split to validate on; when ``None``, ``val_size`` rows are carved off ``split``.
        val_size: fraction (float) or count (int) of prompts held out for validation; 0 disables it.
        columns: field mapping, canonical name -> column name, e.g. ``{"prompt": "question"}``.
        max_samples: use only the first N rows (before the validation split).
        max_prompt_length: longest prompt, in tokens (``None``: no limit).
        truncation_mode: ``keep_end`` keeps the end of a long prompt, ``keep_start`` its beginning.
        batch_size: prompts per training batch (per device); the module samples several
            completions for each.
        eval_batch_size: prompts per validation batch (default: ``batch_size``).
        num_workers: DataLoader workers.
        seed: seed of the validation split and of the training order (a function of seed and epoch only).
        config_name: ``datasets`` configuration name for hub datasets.
    """

    FIELDS = ("prompt",)
    TOKENIZATION_SETTINGS = ("max_prompt_length", "truncation_mode")

    def __init__(
        self,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        data_path: str = DEMO_PROMPTS,
        split: str = "train",
        val_split: str | None = None,
        val_size: float | int = 0.05,
        columns: dict[str, str] | None = None,
        max_samples: int | None = None,
        max_prompt_length: int | None = 256,
        truncation_mode: TruncationMode = "keep_end",
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        config_name: str | None = None,
    ) -> None:
        super().__init__(
            tokenizer, data_path, split, val_split, val_size, columns, max_samples, batch_size,
            eval_batch_size, num_workers, None, seed, config_name,
        )  # fmt: skip
        if max_prompt_length is not None and max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be positive or None, got {max_prompt_length}")
        self.max_prompt_length = max_prompt_length
        self.truncation_mode = truncation_mode

    def tokenize_row(self, row: dict[str, Any], loc: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        prompt = row["prompt"]
        check_text_or_messages(prompt, f"{loc}, field 'prompt'")
        if is_conversational(prompt) and not tokenizer.chat_template:
            raise DataError(
                f"{loc}, field 'prompt': a chat message list, but the tokenizer has no chat template; "
                "use a chat model's tokenizer or give prompts as text"
            )
        ids = _ids(tokenizer, prompt, generation_prompt=is_conversational(prompt))
        kept = cut_prompt(ids, self.max_prompt_length, self.truncation_mode)
        return {**row, "prompt_ids": kept, "_status": "ok" if len(kept) == len(ids) else "prompt_truncated"}

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [r["prompt_ids"] for r in rows]
        batch: dict[str, Any] = {
            "prompt_input_ids": left_pad(prompts, self.tokenizer.pad_token_id),
            "prompt_attention_mask": left_pad([[1] * len(p) for p in prompts], 0),
        }
        for key in rows[0]:
            if key not in TOKENIZED_KEYS:
                batch[key] = [r[key] for r in rows]
        return batch

    # -- helpers --------------------------------------------------------------------------------
    def _canonical(self, row: dict[str, Any], loc: str) -> dict[str, Any]:
        """The prompt under its canonical name, plus every other column under its own name."""
        out = super()._canonical(row, loc)
        consumed = {self.columns.get(f, f) for f in self.FIELDS}
        clash = [k for k in row if k in RESERVED and k not in consumed]
        if clash:
            raise DataError(f"{loc}: column {clash[0]!r} is a name the DataModule uses itself; rename it")
        out.update({k: v for k, v in row.items() if k not in consumed})
        return out
