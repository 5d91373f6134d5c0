"""``--data.group_by_length``: batches of similar lengths, the same global batches on 1 and 2 ranks, exact resume."""

from __future__ import annotations

import torch

from lit_align.datamodules import PreferenceDataModule
from lit_align.datamodules.base import row_lengths
from lit_align.datamodules.resumable import (
    DistributedLengthGroupedSampler,
    LengthGroupedSampler,
    length_grouped,
)

LENGTHS = [int(x) for x in torch.randint(1, 200, (103,), generator=torch.Generator().manual_seed(0))]


def test_every_row_once_and_the_batches_sorted_within_a_group():
    order = length_grouped(list(range(103)), LENGTHS, 4, torch.Generator().manual_seed(1))
    assert sorted(order) == list(range(103))
    batches = [order[i : i + 4] for i in range(0, 100, 4)]
    assert batches[0] == sorted(range(103), key=lambda i: -LENGTHS[i])[:4]  # the longest rows come first
    spans = [max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches]
    assert sum(spans) < 0.1 * sum(max(LENGTHS) - min(LENGTHS) for _ in batches)  # similar lengths in each batch
    assert order[100:] == sorted(order[100:], key=lambda i: -LENGTHS[i])  # the short batch is last


def test_the_order_is_a_function_of_seed_and_epoch():
    data = list(range(103))
    a, b = LengthGroupedSampler(data, LENGTHS, 4, seed=3), LengthGroupedSampler(data, LENGTHS, 4, seed=3)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b) and sorted(b) == data


def test_two_ranks_train_on_the_single_process_global_batches():
    data = list(range(103))
    single = list(LengthGroupedSampler(data, LENGTHS, 4, seed=5))
    ranks = [list(DistributedLengthGroupedSampler(data, LENGTHS, 2, num_replicas=2, rank=r, seed=5)) for r in (0, 1)]
    for step in range(25):  # the complete global batches (103 rows: the 26th is short and padded on 2 ranks)
        global_batch = set(ranks[0][2 * step : 2 * step + 2] + ranks[1][2 * step : 2 * step + 2])
        assert global_batch == set(single[4 * step : 4 * step + 4]), step


def test_datamodule_batches_carry_less_padding_and_resume_where_they_left(tmp_path):
    def padding(dm) -> tuple[int, list]:
        pad, seen = 0, []
        for batch in dm.train_dataloader():
            for side in ("chosen", "rejected"):
                mask = batch[f"{side}_attention_mask"]
                pad += int((mask == 0).sum())
            seen.append(batch["chosen_input_ids"][:, :4].tolist())
        return pad, seen

    common = {"tokenizer": "tiny-llama", "batch_size": 4, "val_size": 0, "seed": 1}
    plain, grouped = PreferenceDataModule(**common), PreferenceDataModule(**common, group_by_length=True)
    plain.setup("fit")
    grouped.setup("fit")
    lengths = row_lengths(grouped.train_dataset)
    assert len(lengths) == len(grouped.train_dataset) and min(lengths) > 0
    plain_pad, _ = padding(plain)
    grouped_pad, batches = padding(grouped)
    assert grouped_pad < 0.5 * plain_pad, (grouped_pad, plain_pad)
    loader = grouped.train_dataloader()
    loader.load_state_dict({"batches_in_epoch": 3, "batches_per_epoch": len(loader)})
    resumed = [b["chosen_input_ids"][:, :4].tolist() for b in loader]
    assert resumed == batches[3:]
