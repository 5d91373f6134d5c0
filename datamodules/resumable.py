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
from torch.utils.data import DataLoader, RandomSampler


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
            raise ValueError(
                f"cannot resume mid-epoch: the checkpoint's epoch had {length} batches per rank, this run has "
                f"{len(self)} (different data, batch size or number of devices)"
            )
        self._resume_at = 0 if position >= length else position  # a finished epoch resumes at the next one
