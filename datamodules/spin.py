"""SFT rows for SPIN: each iteration pairs every row's ground truth (chosen) with the opponent's response (rejected).

The rows are any :class:`~lit_align.datamodules.SFTDataModule` format (prompt/completion, messages, Alpaca). ``setup``
validates and tokenizes them once (the prompt as the policy will see it when answering: chat template with the
generation prompt, cut to ``max_prompt_length``).

Each iteration's pairs are made here, when ``train_dataloader()`` / ``val_dataloader()`` is first asked for them (on
every rank; Lightning asks before each epoch): the module, the iteration's opponent, answers every prompt
(:meth:`~lit_align.algorithms.SPIN.answer`), each (prompt, ground truth, response) is tokenized with ONE convention for
both completions — the decoded response goes through the chat template as an assistant turn (plain text: EOS
appended), exactly like the ground truth — so no token (an end-of-turn newline, say) tells them apart, and the module
scores the pairs (:meth:`~lit_align.algorithms.SPIN.opponent_logps`). The pairs are kept in
``<run dir>/spin/iteration_<t>.jsonl``: a resumed run reads the iteration's file instead. The file has one line per
prompt: ``id``, ``prompt``, ``chosen`` (the ground truth), ``rejected`` (the opponent's response, decoded),
``truncated`` (no EOS within ``max_new_tokens``), ``tokens`` (the response's generated tokens), ``ref_chosen_logps``,
``ref_rejected_logps`` (the opponent's summed log-probs of the tokenized pair), ``chosen_tokens``,
``rejected_tokens``; written by rank 0 to a temporary name and renamed, so a kill never leaves half a file. The
calls go one way: this DataModule asks the module; the module never calls it back.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lit_align.batches import SelfPlayBatch
from lit_align.datamodules.preference import PreferenceDataModule
from lit_align.datamodules.resumable import ResumableDataLoader
from lit_align.datamodules.sft import SFTDataModule
from lit_align.datamodules.tokenize import fit_to_length, is_conversational, tokenize_prompt_completions
from lit_align.errors import DataError, OptionError, PathExists, PathNotFound


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
            raise OptionError("--data.completion_only_loss=false has no meaning for SPIN: pairs compare completions")
        self._items: list[dict[str, Any]] | None = None
        self._pairs: tuple[int, list[dict[str, Any]]] | None = None  # (iteration, its tokenized pairs)

    def setup(self, stage: str | None = None) -> None:
        """The rows (once); in a Trainer, new loaders every epoch (an iteration's first brings its pairs) and no more
        epochs than the module's iterations have."""
        super().setup(stage)
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        if module is None:
            return
        if not hasattr(module, "begin_iteration"):
            raise TypeError(f"SPINDataModule's pairs come from the SPIN module, got {type(module).__name__}")
        trainer.reload_dataloaders_every_n_epochs = 1
        loop, total = trainer.fit_loop, module.iterations * module.epochs_per_iteration
        if loop.max_epochs is None or loop.max_epochs < 0 or loop.max_epochs > total:
            loop.max_epochs = total

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

    # -- the pairs of an iteration --------------------------------------------------------------------
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
        """The tokenized pairs of the current epoch's iteration (train and held-out rows, each with ``id`` and the
        opponent's log-probs), on every rank; the first call of an iteration makes or reads them."""
        trainer = self.trainer
        module = trainer.lightning_module
        iteration = module.iteration_of(trainer.current_epoch)
        if self._pairs is not None and self._pairs[0] == iteration:
            return self._pairs[1]
        fresh = module.begin_iteration(iteration)  # True: the policy is the iteration's opponent
        items = self.self_play_items()
        path = module.spin_dir / f"iteration_{iteration}.jsonl"
        exists = trainer.strategy.broadcast(path.exists())
        if exists and fresh and iteration == 0:
            raise PathExists(
                f"{path} exists from an earlier run; a new run starts its own iterations: use a new log dir (logger "
                "version) or move the old spin/ folder away"
            )
        seconds = None
        if exists:  # resume (or the same boundary crossed again): these pairs were made by this iteration's opponent
            lines = read_lines(path, [item["id"] for item in items])
            rows = [{**self.pair_row(line), **_opponent(line), "id": line["id"]} for line in lines]
        elif fresh:
            start = time.perf_counter()
            lines, rows = self._make_pairs(module, iteration, items)
            seconds = time.perf_counter() - start
            if trainer.is_global_zero:
                write_lines(path, lines)
            trainer.strategy.barrier("spin_pairs_written")
        else:
            raise PathNotFound(
                f"{path} is missing: it is written when iteration {iteration} begins, and this resumed run's policy "
                "is no longer that iteration's opponent, so it cannot make it again"
            )
        module.log_iteration(iteration, lines, seconds)
        self._pairs = (iteration, rows)
        return rows

    def _make_pairs(self, module: Any, iteration: int, items: list[dict[str, Any]]) -> tuple[list, list]:
        """The opponent answers every prompt of ``items`` and scores every pair (seeded by ``iteration``): the file's
        lines and the tokenized rows."""
        pad_id = self.tokenizer.pad_token_id
        responses = module.answer([item["prompt_ids"] for item in items], key=f"spin/{iteration}", pad_id=pad_id)
        lines = [
            {"id": item["id"], "prompt": item["prompt"], "chosen": item["chosen"], "rejected": responses[i]["text"],
             "truncated": responses[i]["truncated"], "tokens": responses[i]["tokens"]}
            for i, item in enumerate(items)
        ]  # fmt: skip
        rows = [self.pair_row(line) for line in lines]
        scores = module.opponent_logps(rows, self.collate, pad_id)
        for i, (line, row) in enumerate(zip(lines, rows, strict=True)):
            line.update(scores[i])
            row.update(_opponent(line), id=line["id"])
        return lines, rows


def _opponent(line: dict[str, Any]) -> dict[str, float]:
    return {"ref_chosen_logps": line["ref_chosen_logps"], "ref_rejected_logps": line["ref_rejected_logps"]}


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    os.replace(tmp, path)  # atomic: a kill leaves the old state or the whole file


def read_lines(path: Path, ids: list[str]) -> list[dict[str, Any]]:
    """The file's lines in ``ids`` order; an error naming the file when it holds other prompts."""
    lines = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines() if text.strip()]
    found = [line.get("id") for line in lines]
    if found != ids:
        raise DataError(
            f"{path} holds the pairs of other prompts ({len(found)} lines, expected {len(ids)} with ids "
            f"{ids[:2]}...): it was written by a run on other data or settings; move it away or use another run dir"
        )
    return lines
