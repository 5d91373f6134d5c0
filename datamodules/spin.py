"""SFT rows for SPIN: each iteration pairs every row's ground truth (chosen) with the opponent's response (rejected).

The rows are any :class:`~lit_align.datamodules.SFTDataModule` format (prompt/completion, messages, Alpaca). ``setup``
validates and tokenizes them once (the prompt as the policy will see it when answering: chat template with the
generation prompt, cut to ``max_prompt_length``). The pairs of an iteration come from the module
(:meth:`lit_align.algorithms.SPIN.self_play`), asked by ``train_dataloader()`` / ``val_dataloader()`` on every rank;
this DataModule turns each (prompt, ground truth, response) into token ids with ONE convention for both completions —
the decoded response goes through the chat template as an assistant turn (plain text: EOS appended), exactly like the
ground truth — so no token (an end-of-turn newline, say) tells them apart.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lit_align.batches import SelfPlayBatch
from lit_align.datamodules.preference import PreferenceDataModule
from lit_align.datamodules.resumable import ResumableDataLoader
from lit_align.datamodules.sft import SFTDataModule
from lit_align.datamodules.tokenize import fit_to_length, is_conversational, tokenize_prompt_completions


class SPINDataModule(SFTDataModule):
    """SFT data for :class:`~lit_align.algorithms.SPIN`; batches are :class:`~lit_align.batches.SelfPlayBatch`.

    Held-out rows (``val_size`` / ``val_split``) get the opponent's responses too: validation reports the SPIN loss
    and metrics on them, and the module's ``spin/heldout_margin``. Truncation is the preference data's: the prompt to
    ``max_prompt_length``, then each completion so that prompt + completion fits ``max_length``.

    The options are :class:`~lit_align.datamodules.SFTDataModule`'s and its bases'; SPIN changes the defaults of
    ``max_length`` (512) and ``max_prompt_length`` (256), and ``completion_only_loss`` must stay True (pairs are
    compared on their completions).
    """

    def __init__(self, *, max_length: int = 512, max_prompt_length: int | None = 256, **kwargs: Any) -> None:
        super().__init__(max_length=max_length, max_prompt_length=max_prompt_length, **kwargs)
        if not self.completion_only_loss:
            raise ValueError("--data.completion_only_loss=false has no meaning for SPIN: pairs compare completions")

    collate = PreferenceDataModule.collate  # the preference batch, built the same way (+ the opponent's log-probs)

    def tokenize_row(self, row: dict[str, Any], loc: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        prompt, completion = self.prompt_completion(row, loc, chat=bool(tokenizer.chat_template))
        prompt_ids, completions = tokenize_prompt_completions(tokenizer, prompt, [completion], loc)
        kept, _, status = fit_to_length(
            prompt_ids, completions, self.max_length, self.max_prompt_length, self.truncation_mode,
            self.drop_overlong, loc,
        )  # fmt: skip
        # Raw prompt and ground truth as JSON text: datasets columns cannot mix strings and message lists.
        raw = {"prompt": json.dumps(prompt), "completion": json.dumps(completion)}
        return {**raw, "prompt_ids": kept, "_status": status}

    # -- what the SPIN module asks ------------------------------------------------------------------
    def self_play_items(self) -> list[dict[str, Any]]:
        """Every prompt to answer, train rows first: ``id`` (``train/<i>``, ``val/<i>``), ``prompt_ids`` (as the
        policy sees it), ``prompt`` and ``chosen`` (the ground truth) as in the data."""
        if self._items is None:
            self._items = []
            for split, dataset in (("train", self.train_dataset), ("val", self.val_dataset)):
                for i, row in enumerate(dataset or []):
                    prompt, chosen = json.loads(row["prompt"]), json.loads(row["completion"])
                    self._items.append({"id": f"{split}/{i}", "prompt_ids": row["prompt_ids"], "prompt": prompt,
                                        "chosen": chosen})  # fmt: skip
        return self._items

    _items: list[dict[str, Any]] | None = None

    def pair_row(self, line: dict[str, Any]) -> dict[str, Any]:
        """Token ids of a (prompt, chosen, rejected) line; ``rejected`` is the decoded response text."""
        prompt, chosen, text = line["prompt"], line["chosen"], line["rejected"]
        rejected = [{"role": "assistant", "content": text}] if is_conversational(prompt) else text
        loc = f"SPIN pair {line['id']}"
        prompt_ids, completions = tokenize_prompt_completions(self.tokenizer, prompt, [chosen, rejected], loc)
        kept, (chosen_ids, rejected_ids), _ = fit_to_length(
            prompt_ids, completions, self.max_length, self.max_prompt_length, self.truncation_mode,
            self.drop_overlong, loc,
        )  # fmt: skip
        return {"prompt_ids": kept, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}

    def batches_per_epoch(self) -> int:
        """Batches per epoch on this rank (one pair per training row), counted without generating anything."""
        return len(self._loader(self.train_dataset))

    # -- DataLoaders --------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return self._loader([row for row in self._iteration_rows() if row["id"].startswith("train/")])

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return []
        rows = [row for row in self._iteration_rows() if row["id"].startswith("val/")]
        return DataLoader(rows, batch_size=self.eval_batch_size, collate_fn=self.collate_pairs,
                          num_workers=self.num_workers)  # fmt: skip

    def collate_pairs(self, rows: list[dict[str, Any]]) -> SelfPlayBatch:
        batch = self.collate(rows)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.float32)
        return batch

    def _loader(self, rows: Any) -> ResumableDataLoader:
        return ResumableDataLoader(rows, batch_size=self.batch_size, sampler=self._train_sampler(rows),
                                   collate_fn=self.collate_pairs, num_workers=self.num_workers)  # fmt: skip

    def _iteration_rows(self) -> list[dict[str, Any]]:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if not hasattr(module, "self_play"):
            raise TypeError(f"SPINDataModule's pairs come from the SPIN module, got {type(module).__name__}")
        return module.self_play(self.trainer.current_epoch, self)
