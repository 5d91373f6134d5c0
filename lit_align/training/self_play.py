"""SPIN's generation phase, as plain functions: the opponent answers every prompt and scores every pair, the work
spread over ranks in fixed global batches, the results gathered to every rank (:meth:`lit_align.algorithms.SPIN.answer`
and :meth:`~lit_align.algorithms.SPIN.opponent_logps`; :class:`~lit_align.datamodules.SPINDataModule` keeps them in one
JSON-lines file per iteration).

Layout independence: rows are cut into global batches of ``batch_size`` in a fixed order and batch j goes to rank
j mod N, seeded by its own key. A batch's content, padding and seed are then the same on 1 process or N, so a run
generates and scores the same pairs in every layout. Under FSDP2 each forward is a collective, so every rank makes
the same number of calls: a rank with fewer real batches repeats its last one and discards the result.

"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lit_align.datamodules.tokenize import left_pad
from lit_align.metrics import table_cell
from lit_align.models.logprobs import preference_logps
from lit_align.rollouts.sampling import Sampler


def rank_batches(
    num_rows: int, batch_size: int, rank: int, world: int, padded: bool
) -> Iterator[tuple[int, range, bool]]:
    """This rank's global batches ``(j, rows, real)``: batch j = rows [j·size, (j+1)·size) for j ≡ rank (mod world).

    ``padded``: every rank yields the same number of batches (FSDP2), a rank short of real ones repeating its last
    (or the first batch) with ``real=False``.
    """
    batches = [range(start, min(start + batch_size, num_rows)) for start in range(0, num_rows, batch_size)]
    rounds = math.ceil(len(batches) / world) if padded else None
    mine = list(range(rank, len(batches), world))
    for j in mine:
        yield j, batches[j], True
    if padded and batches:
        filler = mine[-1] if mine else 0
        for _ in range(rounds - len(mine)):
            yield filler, batches[filler], False


def generate_responses(
    sampler: Sampler,
    model: nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    batch_size: int,
    pad_id: int,
    key: str,
    rank: int,
    world: int,
    padded: bool,
) -> dict[int, dict[str, Any]]:
    """One sampled response per prompt for this rank's batches: ``{row: {"text", "truncated", "tokens"}}``.

    Batch j is seeded by ``f"{key}/{j}"``, so its samples do not depend on the number of ranks.
    """
    device = next(model.parameters()).device
    out: dict[int, dict[str, Any]] = {}
    for j, rows, real in rank_batches(len(prompts), batch_size, rank, world, padded):
        ids = [prompts[i] for i in rows]
        input_ids = left_pad(ids, pad_id).to(device)
        attention_mask = left_pad([[1] * len(p) for p in ids], 0).to(device)
        rollout = sampler.sample(model, input_ids, attention_mask, tokenizer, 1, key=f"{key}/{j}")
        if real:
            for i, text, truncated, tokens in zip(
                rows, rollout.texts, rollout.is_truncated.tolist(), rollout.lengths.tolist(), strict=True
            ):
                out[i] = {"text": text, "truncated": bool(truncated), "tokens": int(tokens)}
    return out


@torch.no_grad()
def pair_logps(
    model: nn.Module,
    rows: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    pad_id: int,
    rank: int,
    world: int,
    padded: bool,
) -> dict[int, dict[str, float]]:
    """The model's summed log-probs of each tokenized pair (eval mode, no grad) for this rank's batches:
    ``{row: {"ref_chosen_logps", "ref_rejected_logps", "chosen_tokens", "rejected_tokens"}}``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # the opponent as a reference model is: dropout off
    out: dict[int, dict[str, float]] = {}
    try:
        for _, rows_j, real in rank_batches(len(rows), batch_size, rank, world, padded):
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in rows_j]).items() if torch.is_tensor(v)}
            chosen, rejected = preference_logps(model, batch, pad_id)
            if real:
                for n, i in enumerate(rows_j):
                    out[i] = {
                        "ref_chosen_logps": float(chosen.sum[n]),
                        "ref_rejected_logps": float(rejected.sum[n]),
                        "chosen_tokens": int(chosen.num_tokens[n]),
                        "rejected_tokens": int(rejected.num_tokens[n]),
                    }
    finally:
        model.train(was_training)
    return out


def pairs_table(lines: list[dict[str, Any]], rows: int) -> str:
    """A markdown table of (prompt, ground truth, generated) for TensorBoard's text tab."""
    table = ["| prompt | ground truth (chosen) | generated (rejected) |", "| --- | --- | --- |"]
    for line in lines[:rows]:
        cells = (table_cell(line[key]) for key in ("prompt", "chosen", "rejected"))
        table.append("| " + " | ".join(cells) + " |")
    return "\n".join(table)
