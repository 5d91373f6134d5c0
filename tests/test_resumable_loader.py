"""The resumable training DataLoader: order from (seed, epoch), position saved and restored."""

from __future__ import annotations

import pytest

from lit_align.datamodules.resumable import EpochRandomSampler, ResumableDataLoader


def loader(n=10, batch_size=2, seed=3):
    data = list(range(n))
    return ResumableDataLoader(data, batch_size=batch_size, sampler=EpochRandomSampler(data, seed=seed))


def batches(dl):
    return [b.tolist() for b in dl]


def test_order_depends_on_seed_and_epoch_only():
    a, b = loader(), loader()
    assert batches(a) == batches(b) == batches(a)  # re-iterating the same epoch repeats it
    a.sampler.set_epoch(1)
    epoch1 = batches(a)
    assert epoch1 != batches(b) and sorted(sum(epoch1, [])) == list(range(10))
    assert batches(loader(seed=4)) != batches(b)


def test_resume_mid_epoch_skips_what_was_trained():
    dl = loader()
    dl.sampler.set_epoch(2)
    full = batches(dl)
    it = iter(dl)
    seen = [next(it).tolist(), next(it).tolist()]
    state = dl.state_dict()
    assert state == {"batches_in_epoch": 2, "batches_per_epoch": 5}
    fresh = loader()
    fresh.load_state_dict(state)
    rest = iter(fresh)
    fresh.sampler.set_epoch(2)  # Lightning restores the epoch AFTER calling iter(): the iterator must be lazy
    assert seen + [b.tolist() for b in rest] == full
    assert fresh.state_dict()["batches_in_epoch"] == 5
    assert batches(fresh) == full  # the skip applies once, to the resumed epoch only


def test_state_at_epoch_end_resumes_at_the_next_epoch_start():
    dl = loader()
    batches(dl)
    fresh = loader()
    fresh.load_state_dict(dl.state_dict())
    assert len(batches(fresh)) == 5


def test_changed_layout_is_refused():
    with pytest.raises(ValueError, match="checkpoint's epoch had 5 batches per rank, this run has 3"):
        loader(n=6).load_state_dict({"batches_in_epoch": 1, "batches_per_epoch": 5})
