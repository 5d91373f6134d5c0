"""Binary feedback (prompt, completion, label) -> the binary-feedback batch schema (``lit_align.batches``).

Batch (B examples, right-padded, labels -100 on prompt and padding):
    ``input_ids``, ``attention_mask``, ``labels``   (B, T)   prompt_i + completion_i
    ``is_desirable``                                (B,)     bool
    ``kl_input_ids``, ``kl_attention_mask``, ``kl_labels``  (B, T')  prompt_i + completion_{(i-1) mod B}

The mismatched KL pairs are built in ``collate``, inside each per-device batch, exactly as TRL 1.16's
``KTOTrainer`` builds them (``KL_completion_ids = [c[-1]] + c[:-1]``: every prompt takes the previous
example's completion, the first takes the last one's). TRL precomputes them on the dataset in
``per_device_train_batch_size`` chunks, which is why it needs sequential sampling; building them at
collation keeps the same pairing for whatever batch the sampler draws, so training data can be shuffled.

Truncation is done once, in ``collate``, as TRL's collator does it: the dataset keeps each completion UNCUT,
and every sequence (an example's own, and a KL pair's) is cut so that its prompt + completion fits
``max_length``. A completion cut to fit its own long prompt and then paired with a shorter prompt is cut
again from the whole completion, so the KL sequence is as long as TRL's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from transformers import PreTrainedTokenizerBase

from lit_align.batches import BinaryBatch
from lit_align.datamodules.base import (
    PROGRESS_BAR_ROWS,
    SAMPLES,
    PromptCompletionDataModule,
    check_option,
    progress_bars,
)
from lit_align.datamodules.preference import AS_TOKENS, PairOptions
from lit_align.datamodules.tokenize import (
    DataError,
    check_text_or_messages,
    completion_turns,
    fit_to_length,
    is_blank,
    is_conversational,
    sequence_tensors,
    tokenize_prompt_completions,
)

DEMO_BINARY = str(SAMPLES / "binary_demo.jsonl")
TRUE_WORDS = {"good": True, "true": True, "bad": False, "false": False}


def coerce_label(value: Any, loc: str) -> bool:
    """``True``/``False``, 0/1, or (any case) ``"good"``/``"bad"``/``"true"``/``"false"`` -> bool; else DataError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS:
        return TRUE_WORDS[value.strip().lower()]
    raise DataError(
        f"{loc}: expected a binary label (true/false, 1/0, 'good'/'bad', 'true'/'false'), got "
        f"{type(value).__name__} {value!r:.80}"
    )


def _flatten(rows: dict[str, list]) -> dict[str, list]:
    """One tokenized row holds one example (binary data) or two (an unpaired preference pair): flatten."""
    out = {"prompt_ids": [], "completion_ids": [], "label": []}
    for key in out:
        for values in rows[key]:
            out[key].extend(values)
    return out


class BinaryFeedbackDataModule(PairOptions, PromptCompletionDataModule):
    """Rows ``{"prompt", "completion", "label"}`` as plain text or chat message lists (KTO's data).

    With ``unpair=True`` it reads preference rows ``{"prompt", "chosen", "rejected"}`` instead (or
    HH-RLHF style rows without a prompt) and turns each pair into a desirable (chosen) and an
    undesirable (rejected) example; the validation split is carved by pairs, so a prompt never sits
    on both sides of it. Truncation is the preference DataModule's: the prompt is cut to
    ``max_prompt_length``, then the completion so that prompt + completion fits ``max_length``; KL
    pairs are cut the same way, from the uncut completion. An empty completion is valid (EOS only) and
    counted. The desirable/undesirable counts of each split are logged once and kept in ``self.stats``
    (``train/desirable``, ``train/undesirable``, ``val/...``).

    A per-device batch of 1 is refused: its only KL pair would be the matched (prompt, completion),
    making KTO's reference point equal the example's own reward. The last batch of an epoch can still
    hold a single example (as in TRL); its KL pair is then the matched one.

    The other options are :class:`~lit_align.datamodules.preference.PairOptions`' (with ``unpair``),
    :class:`~lit_align.datamodules.base.PromptCompletionDataModule`'s and its base's; ``batch_size`` and
    ``eval_batch_size`` must be at least 2 (KL pairs).

    Args:
        unpair: read paired preference rows (chosen -> desirable, rejected -> undesirable); ``max_samples``
            then counts pairs.
        allow_single_class: train on data whose training split holds only desirable or only undesirable
            examples. Refused by default: KTO has no contrast to learn from (its reference point comes from
            mismatched pairs, and every example pulls one way), usually a label column read wrong.
    """

    INDEX_ROWS = True  # cached reference values are found by row
    FIELDS = ("prompt", "completion", "label")
    OPTIONAL_FIELDS = ()
    TOKENIZATION_SETTINGS = (
        *PromptCompletionDataModule.TOKENIZATION_SETTINGS, *PairOptions.TOKENIZATION_SETTINGS, "unpair"
    )  # fmt: skip

    def __init__(
        self, *, data_path: str = DEMO_BINARY, unpair: bool = False, allow_single_class: bool = False, **kwargs: Any
    ) -> None:
        self.unpair, self.allow_single_class = unpair, allow_single_class
        if unpair:  # set before the base checks the column mapping against them
            self.FIELDS, self.OPTIONAL_FIELDS = ("chosen", "rejected"), ("prompt",)
        super().__init__(data_path=data_path, **kwargs)
        self.check_batch_size()

    def check_batch_size(self) -> None:
        for name, size in (("batch_size", self.batch_size), ("eval_batch_size", self.eval_batch_size)):
            check_option(size >= 2, name, size,
                f"BinaryFeedbackDataModule needs {name} >= 2 per device: KTO estimates its KL reference point from "
                "each prompt paired with ANOTHER example's completion in the same per-device batch, and a batch of "
                "1 has no other example. Raise it (use gradient accumulation rather than a batch of 1 to save "
                "memory)."
            )  # fmt: skip

    def missing_field_hint(self, field: str, row: dict[str, Any]) -> str:
        if not self.unpair and "chosen" in row and "rejected" in row:
            return (
                "; the row is a preference pair (chosen, rejected): read pairs with --data.unpair true "
                "(chosen -> desirable, rejected -> undesirable)"
            )
        if self.unpair and "completion" in row and "label" in row:
            return "; the row is binary feedback (completion, label), not a pair: leave --data.unpair false"
        return super().missing_field_hint(field, row)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        super().setup(stage)
        counts = {
            name: Counter(dataset["label"])
            for name, dataset in (("train", self.train_dataset), ("val", self.val_dataset))
            if dataset is not None
        }
        for name, count in counts.items():
            self.stats[f"{name}/desirable"] = count[True]
            self.stats[f"{name}/undesirable"] = count[False]
        summary = "; ".join(f"{name}: {c[True]} desirable, {c[False]} undesirable" for name, c in counts.items())
        rank_zero_info(f"{self.data_path}: {summary}")
        train = counts["train"]
        if min(train[True], train[False]) == 0:
            only = "desirable" if train[True] else "undesirable"
            what = (
                f"{self.data_path}: the training split holds only {only} examples ({summary}): binary feedback "
                "needs both labels, or every example pulls the same way and KTO has no contrast to learn from"
            )
            if not self.allow_single_class:
                column = self.columns.get("label", "label")
                raise DataError(
                    f"{what}. Check that the {column!r} column holds the labels (true/false, 1/0, good/bad; map "
                    "another column with --data.columns); to train on one class anyway, set "
                    "--data.allow_single_class true"
                )
            rank_zero_warn(f"{what}; trained anyway (--data.allow_single_class true)")

    # -- tokenization ---------------------------------------------------------------------------
    def tokenize_row(self, row: dict[str, Any], loc: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        if self.unpair:
            prompt, chosen, rejected, notes = self.read_pair(row, loc)
            completions, labels = [chosen, rejected], [True, False]
        else:
            prompt, completion = row["prompt"], row["completion"]
            check_text_or_messages(prompt, f"{loc}, field 'prompt'")
            check_text_or_messages(completion, f"{loc}, field 'completion'", allow_empty=True)
            if is_conversational(prompt) != is_conversational(completion):
                mixed = "prompt and completion must both be text or both message lists"
                raise DataError(f"{loc}, field 'completion': {mixed}")
            completion, removed = completion_turns(prompt, completion, f"{loc}, field 'completion'")
            notes = ["prompt_turns_removed"] * removed + ["empty_completions"] * is_blank(completion)
            completions, labels = [completion], [coerce_label(row["label"], f"{loc}, field 'label'")]
        prompts, full, cut, statuses = [], [], [], []
        for completion in completions:
            # One tokenization per (prompt, completion), as TRL does after unpairing.
            prompt_ids, (completion_ids,) = tokenize_prompt_completions(tokenizer, prompt, [completion], loc,
                                                                        self.prompt_bos)  # fmt: skip
            args = self.max_length, self.max_prompt_length, self.truncation_mode, self.drop_overlong, loc
            kept_prompt, (kept,), status = fit_to_length(prompt_ids, [completion_ids], *args)
            prompts.append(kept_prompt)
            full.append(completion_ids)  # uncut: collate cuts it for whichever prompt it meets
            cut.append(kept)
            statuses.append(status)
        status = "dropped" if "dropped" in statuses else next((s for s in statuses if s != "ok"), "ok")
        if self.unpair and status != "dropped" and (completions[0] == completions[1] or full[0] == full[1]):
            when = "" if completions[0] == completions[1] else AS_TOKENS
            status = self.identical_pair(loc, when)
        elif self.unpair and status != "dropped" and cut[0] == cut[1]:
            status = self.identical_pair(loc, f" once truncated to --data.max_length={self.max_length}")
        for completion, label in zip(completions, labels, strict=True):
            if label:  # a desirable completion is trained toward
                status = self.check_prompt_echo(prompt, completion, loc, status, notes)
        return {"prompt_ids": prompts, "completion_ids": full, "label": labels, "_status": status,
                "_notes": ",".join(notes)}  # fmt: skip

    def examples(self, rows: datasets.Dataset) -> datasets.Dataset:
        with progress_bars(len(rows) >= PROGRESS_BAR_ROWS):
            return rows.map(_flatten, batched=True, remove_columns=rows.column_names, desc="Flattening examples")

    # -- batching -------------------------------------------------------------------------------
    def collate(self, rows: list[dict[str, Any]]) -> BinaryBatch:
        pad_id = self.tokenizer.pad_token_id
        prompts = [r["prompt_ids"] for r in rows]
        uncut = [r["completion_ids"] for r in rows]
        # TRL's rotation: prompt i takes completion i-1 (prompt 0 the last one); every sequence is cut ONCE, from
        # the uncut completion, so that prompt + completion fits max_length (TRL's collator).
        completions = [c[: self.max_length - len(p)] for p, c in zip(prompts, uncut, strict=True)]
        shifted = uncut[-1:] + uncut[:-1]
        kl_completions = [c[: max(self.max_length - len(p), 0)] for p, c in zip(prompts, shifted, strict=True)]
        input_ids, attention_mask, labels = sequence_tensors(prompts, completions, pad_id, self.pad_to_multiple_of)
        kl_ids, kl_mask, kl_labels = sequence_tensors(prompts, kl_completions, pad_id, self.pad_to_multiple_of)
        batch: BinaryBatch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "is_desirable": torch.tensor([bool(r["label"]) for r in rows], dtype=torch.bool),
            "kl_input_ids": kl_ids,
            "kl_attention_mask": kl_mask,
            "kl_labels": kl_labels,
        }
        if "row_index" in rows[0]:  # indexed rows (INDEX_ROWS): the row of each example and of its KL completion
            index = [r["row_index"] for r in rows]
            batch["row_index"] = torch.tensor(index, dtype=torch.long)
            batch["kl_row_index"] = torch.tensor(index[-1:] + index[:-1], dtype=torch.long)
        return batch
