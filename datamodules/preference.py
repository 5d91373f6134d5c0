"""Preference pairs (prompt, chosen, rejected) -> the preference batch schema (``lit_align.batches``)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from lit_align.batches import PreferenceBatch
from lit_align.datamodules.base import SAMPLES, PromptCompletionDataModule, check_option
from lit_align.datamodules.tokenize import (
    DataError,
    ImplicitPrompt,
    completion_turns,
    fit_to_length,
    is_blank,
    is_conversational,
    preference_row,
    sequence_tensors,
    tokenize_prompt_completions,
)

DEMO_PREFERENCES = str(SAMPLES / "preference_demo.jsonl")
IdenticalPairs = Literal["drop", "error"]
AS_TOKENS = " as tokens (the texts differ only in what tokenizes alike, e.g. a written EOS)"


class PairOptions:
    """The options of a DataModule that reads preference pairs, and the reading itself (validation, the implicit
    prompt split, assistant-only chat completions, identical pairs). Mixed in before the DataModule base.

    Args:
        identical_pairs: a pair whose chosen equals its rejected (as written, or once truncated) has no preference
            to learn (zero gradient; usually an upstream merge bug): ``drop`` counts it as
            ``chosen_equals_rejected`` and warns, ``error`` stops at the row.
        implicit_prompt: how a row WITHOUT a prompt field is split into prompt and completions: ``turn_marker``
            just after the last turn marker chosen and rejected share (``\\n\\nAssistant:``, ChatML's assistant
            header, ...; an error without one), ``common_prefix`` at their longest common prefix (TRL's
            ``extract_prompt``). Chat message lists split at their common leading messages either way.
    """

    TOKENIZATION_SETTINGS = ("identical_pairs", "implicit_prompt")

    def __init__(
        self, *, identical_pairs: IdenticalPairs = "drop", implicit_prompt: ImplicitPrompt = "turn_marker", **kwargs
    ) -> None:
        check_option(identical_pairs in ("drop", "error"), "identical_pairs", identical_pairs, "drop or error")
        check_option(implicit_prompt in ("turn_marker", "common_prefix"), "implicit_prompt", implicit_prompt,
                     "turn_marker or common_prefix")  # fmt: skip
        super().__init__(**kwargs)
        self.identical_pairs: IdenticalPairs = identical_pairs
        self.implicit_prompt: ImplicitPrompt = implicit_prompt

    def read_pair(self, row: dict[str, Any], loc: str) -> tuple[Any, Any, Any, list[str]]:
        """(prompt, chosen, rejected, notes): validated, the prompt split off when implicit, chat completions cut to
        the assistant's turns. ``notes`` name what was accepted with a remark (counted in ``stats``)."""
        prompt, chosen, rejected = preference_row(row, loc, self.implicit_prompt)
        notes = []
        for field, value in (("chosen", chosen), ("rejected", rejected)):
            if is_conversational(prompt) and not is_conversational(value):
                raise DataError(f"{loc}, field {field!r}: expected a message list like the prompt, got text")
            value, removed = completion_turns(prompt, value, f"{loc}, field {field!r}")
            notes += ["prompt_turns_removed"] * removed + ["empty_completions"] * is_blank(value)
            chosen, rejected = (value, rejected) if field == "chosen" else (chosen, value)
        return prompt, chosen, rejected, notes

    def identical_pair(self, loc: str, when: str = "") -> str:
        """The status of a pair whose completions are the same (``when``: e.g. after truncation), or the error."""
        if self.identical_pairs == "error":
            raise DataError(
                f"{loc}: chosen and rejected are identical{when}: the pair has no preference to learn (a zero "
                "gradient), usually an upstream merge bug; fix the row, or drop such pairs with "
                "--data.identical_pairs drop"
            )
        return "chosen_equals_rejected"


class PreferenceDataModule(PairOptions, PromptCompletionDataModule):
    """Rows ``{"prompt", "chosen", "rejected"}`` as plain text, chat message lists, or HH-RLHF style.

    An optional numeric ``margin`` field (the reward model's per-pair margin) is passed through as a
    float tensor ``margin`` (B,).

    HH-RLHF style rows have no prompt field: chosen and rejected both start with the prompt, which is
    split off at a turn marker (``implicit_prompt``). An empty chosen or rejected is valid (a model that said
    nothing): it is the EOS token alone, counted in ``stats`` as ``empty_completions``. A chat completion holds
    the assistant's turns only: one that repeats the prompt's turns has them removed (``prompt_turns_removed``).
    Truncation: the prompt is cut to ``max_prompt_length`` (``truncation_mode`` says which end survives), then
    each completion is cut at its end so that prompt + completion fits ``max_length``. A row whose prompt alone
    leaves no room for a completion is an error unless ``drop_overlong=True``, when it is dropped and counted.

    The options are :class:`PairOptions`', :class:`~lit_align.datamodules.base.PromptCompletionDataModule`'s and its
    base's.
    """

    INDEX_ROWS = True  # cached reference values are found by row
    FIELDS = ("chosen", "rejected")
    OPTIONAL_FIELDS = ("prompt", "margin")
    TOKENIZATION_SETTINGS = (*PromptCompletionDataModule.TOKENIZATION_SETTINGS, *PairOptions.TOKENIZATION_SETTINGS)

    def __init__(self, *, data_path: str = DEMO_PREFERENCES, batch_size: int = 4, **kwargs: Any) -> None:
        super().__init__(data_path=data_path, batch_size=batch_size, **kwargs)

    def tokenize_row(self, row: dict[str, Any], loc: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "margin" in row:
            margin = row["margin"]
            if isinstance(margin, bool) or not isinstance(margin, int | float):
                raise DataError(f"{loc}, field 'margin': expected a number, got {type(margin).__name__} {margin!r:.40}")
            out["margin"] = float(margin)
        prompt, chosen, rejected, notes = self.read_pair(row, loc)
        pair = [chosen, rejected]
        prompt_ids, completions = tokenize_prompt_completions(tokenizer, prompt, pair, loc, self.prompt_bos)
        kept_prompt, (chosen_ids, rejected_ids), status = fit_to_length(
            prompt_ids, completions, self.max_length, self.max_prompt_length, self.truncation_mode,
            self.drop_overlong, loc,
        )  # fmt: skip
        if chosen == rejected:
            status = self.identical_pair(loc)
        elif completions[0] == completions[1]:
            status = self.identical_pair(loc, AS_TOKENS)
        elif status != "dropped" and chosen_ids == rejected_ids:
            status = self.identical_pair(loc, f" once truncated to --data.max_length={self.max_length} tokens")
        status = self.check_prompt_echo(prompt, chosen, loc, status, notes)
        return {**out, "prompt_ids": kept_prompt, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
                "_status": status, "_notes": ",".join(notes)}  # fmt: skip

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
        if "row_index" in rows[0]:  # indexed rows (INDEX_ROWS): cached reference values are found by it
            batch["row_index"] = torch.tensor([r["row_index"] for r in rows], dtype=torch.long)
        return batch
