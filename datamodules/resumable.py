"""A training DataLoader that resumes mid-epoch at the batch where a checkpoint left it.

Lightning saves ``state_dict()`` of every train DataLoader that has one into the checkpoint (the
fit loop's ``combined_loader`` entry) and calls ``load_state_dict`` on resume, before the first
``iter()``. Two things make the resumed batches the ones an uninterrupted run would have seen:

- the order of an epoch depends only on ``(seed, epoch)``: :class:`EpochRandomSampler` draws its
  permutation from a generator seeded with both (Lightning calls ``set_epoch``); under DDP/FSDP the
  DataModule uses a ``DistributedSampler`` with the same seed, which draws the same permutation and
  gives each rank every N-th index of it;
- :class:`ResumableDataLoader` counts the batches it has yielded this epoch and, after a resume,
  skips that many at the start of the epoch (the skipped batches are collated and dropped: our rows
  are already tokenized in memory, so this costs milliseconds, not model time).

Lightning does not prefetch from a DataLoader with a length, so "yielded" equals "trained on". On
resume Lightning calls ``iter()`` before ``set_epoch``, so the iterator starts lazily, at the first batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from lit_align.errors import OptionError

GROUP_BATCHES = 50  # length grouping: global batches per group sorted by length (Hugging Face's megabatch size)


class EpochRandomSampler(RandomSampler):
    """Random order that is a function of ``(seed, epoch)`` only, not of the global RNG state."""

    def __init__(self, data_source: Any, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


def length_grouped(order: list[int], lengths: list[int], unit: int, generator: torch.Generator) -> list[int]:
    """``order`` cut into groups of :data:`GROUP_BATCHES` global batches of ``unit`` rows; in each group the rows are
    sorted longest first and cut into batches, which are shuffled (the longest batch stays first: an out-of-memory
    error comes at a group's first step, not late). The rows of a batch then have similar lengths: less padding."""
    out: list[int] = []
    group = unit * GROUP_BATCHES
    for start in range(0, len(order), group):
        rows = sorted(order[start : start + group], key=lambda i: -lengths[i])
        batches = [rows[i : i + unit] for i in range(0, len(rows), unit)]
        partial = batches.pop() if len(batches[-1]) < unit else []  # only the last group can end short: last
        if batches:
            rest = [batches[i] for i in (torch.randperm(len(batches) - 1, generator=generator) + 1).tolist()]
            out += batches[0] + [i for batch in rest for i in batch]
        out += partial
    return out


class LengthGroupedSampler(EpochRandomSampler):
    """:class:`EpochRandomSampler`'s order of ``(seed, epoch)``, length grouped (:func:`length_grouped`)."""

    def __init__(self, data_source: Any, lengths: list[int], batch_size: int, seed: int = 0) -> None:
        super().__init__(data_source, seed)
        self.lengths, self.batch_size = lengths, batch_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.data_source), generator=generator).tolist()
        yield from length_grouped(order, self.lengths, self.batch_size, generator)


class DistributedLengthGroupedSampler(DistributedSampler):
    """The same global batches on N ranks as on one: the whole order is grouped with a unit of ``batch_size x N`` rows
    (one global batch), padded to a multiple of N after, then each rank takes every N-th index, as
    ``DistributedSampler`` does."""

    def __init__(self, dataset: Any, lengths: list[int], batch_size: int, **kwargs: Any) -> None:
        super().__init__(dataset, shuffle=True, **kwargs)
        self.lengths, self.batch_size = lengths, batch_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        grouped = length_grouped(order, self.lengths, self.batch_size * self.num_replicas, generator)
        if not self.drop_last:  # pad to a multiple of the ranks with rows from the start, as DistributedSampler does
            grouped += (grouped * (self.total_size // max(1, len(grouped)) + 1))[: self.total_size - len(grouped)]
        yield from grouped[self.rank : self.total_size : self.num_replicas]


class ResumableDataLoader(DataLoader):
    """A DataLoader with Lightning's ``state_dict``/``load_state_dict``: its position in the epoch."""

    _position = 0  # batches yielded in the current epoch
    _resume_at = 0  # batches to skip at the start of the next epoch (set by load_state_dict)

    def __iter__(self) -> Iterator[Any]:
        return self._resumed()

    def _resumed(self) -> Iterator[Any]:
        # A generator: nothing runs until the first batch is requested. Lightning calls iter() on resume
        # BEFORE it restores the sampler's epoch with set_epoch; the permutation must be drawn after.
        iterator = super().__iter__()
        skip, self._resume_at = self._resume_at, 0
        for _ in range(skip):
            next(iterator)
        self._position = skip
        for batch in iterator:
            self._position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_in_epoch": self._position, "batches_per_epoch": len(self)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        position, length = state["batches_in_epoch"], state["batches_per_epoch"]
        if length != len(self):
            raise OptionError(
                f"cannot resume mid-epoch: the checkpoint's epoch had {length} batches per rank, this run has "
                f"{len(self)} (different data, batch size or number of devices)"
            )
        self._resume_at = 0 if position >= length else position  # a finished epoch resumes at the next one
