"""Reference log-probs computed once before training and cached on disk (``--model.precompute_reference``).

:class:`~lit_align.reference.ReferenceMixin` runs the pass in ``setup`` (before a checkpoint is restored, so a
copy of the policy is still the pretrained one) and frees the reference afterwards; this file holds the parts
that need no module: the fingerprint, the table of values, the file, the batches to compute and the gather.

What is cached: the per-sequence values a module's ``reference_values(model, batch)`` returns, each keyed by
the batch's index columns that ``reference_value_keys()`` names for it. A value of one row (DPO's
``ref_chosen_logps``) is keyed by ``row_index``, which :meth:`TokenizedDataModule.index_rows` gives every
training row (0..N-1) and validation row (N..N+M-1). KTO's KL value depends on the batch's composition (prompt
i meets the completion of the previous row of the same per-device batch), so it is keyed by the pair
(``row_index``, ``kl_row_index``) and computed for every pair the run will meet: the batches of every epoch it
plans (the order is a function of seed and epoch, see ``datamodules/resumable.py``). Entries only ever add up,
so a run that meets new pairs (more epochs, another batch size or device count) computes just those.

The file is ``<$LIT_ALIGN_CACHE or ~/.cache/lit_align>/reference/<fingerprint>.pt``. The fingerprint covers:
the reference as given, WITHOUT loading it (a preset or hub id by name, the ``tiny-llama`` preset with its seed;
a local directory or file by path, size and modification time of every file; an ``nn.Module`` by a hash of its
weights; a LoRA policy's reference is its base), the model kind, the Trainer's precision (the pass runs in its
forward context, as the live reference does); the data (the DataModule class, the ``datasets``
fingerprints of its tokenized training and validation rows, which cover the raw data, the tokenizer, the split
and every setting in ``TOKENIZATION_SETTINGS``, and those settings again); the names of the cached values and
:data:`CACHE_FORMAT`. Not the algorithm: DPO and IPO cache the same values (summed chosen and rejected log-probs)
and share a file. Not detected: a new upload under the same hub id (pass a local directory, or delete the
file). Log-probs are computed in the batches of the run, with its padding; a later run with another batch size
reuses values whose padding differed (identical up to float rounding, ~1e-7).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_align.models import _cache_dir

CACHE_FORMAT = 1  # bump when the log-prob computation or the file layout changes
INDEX_COLUMNS = ("row_index", "kl_row_index")  # the batch columns that key cached values


def weights_hash(model: nn.Module, skip: Callable[[str], bool] = lambda name: False) -> str:
    """A hash of a module's state (names, dtypes, shapes, bytes); ``skip`` leaves entries out (LoRA's adapters)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if skip(name):
            continue
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def describe_model(model: Any, seed: int) -> Any:
    """What identifies a model option without loading it (see the module docstring)."""
    if isinstance(model, nn.Module):
        return {"weights": weights_hash(model, skip=lambda name: "lora_" in name)}
    path = Path(model).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return {"path": str(path.resolve()),
                "files": [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size,
                           p.stat().st_mtime_ns) for p in files]}  # fmt: skip
    return {"name": model, "seed": seed} if model == "tiny-llama" else {"name": model}


def data_description(datamodule: Any) -> dict[str, Any]:
    """The DataModule's rows as tokenized (``datasets`` fingerprints) and its tokenization settings."""
    val = datamodule.val_dataset
    settings = {k: getattr(datamodule, k) for k in ("columns", *datamodule.TOKENIZATION_SETTINGS)}
    return {
        "class": type(datamodule).__name__,
        "train": [datamodule.train_dataset._fingerprint, len(datamodule.train_dataset)],
        "val": [val._fingerprint, len(val)] if val is not None else None,
        "settings": settings,
    }


def fingerprint(reference: Any, data: dict[str, Any], value_keys: dict[str, tuple[str, ...]]) -> str:
    text = json.dumps([CACHE_FORMAT, reference, data, sorted(value_keys.items())], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path(key: str) -> Path:
    return _cache_dir() / "reference" / f"{key}.pt"


class ReferenceTable:
    """Cached values: for each name, ``{key tuple: value}`` (Python floats hold float32 values exactly, in a
    fraction of a tensor's memory); saved as tensors (``weights_only`` loads)."""

    def __init__(self, value_keys: dict[str, tuple[str, ...]], path: Path) -> None:
        self.value_keys = dict(value_keys)
        self.path = path
        self.entries: dict[str, dict[tuple[int, ...], float]] = {name: {} for name in value_keys}
        if path.is_file():
            stored = torch.load(path, weights_only=True)
            for name, (keys, values) in stored.items():
                if name in self.entries:
                    self.entries[name] = dict(zip(map(tuple, keys.tolist()), values.tolist(), strict=True))

    def batch_keys(self, batch: dict[str, Any], name: str) -> list[tuple[int, ...]]:
        columns = []
        for column in self.value_keys[name]:
            if column not in batch:
                raise KeyError(
                    f"--model.precompute_reference: the batch has no {column!r} column to find its cached "
                    f"{name} by; batches of a lit-align DataModule carry it once the rows are indexed (index_rows)"
                )
            columns.append(batch[column].tolist())
        return list(zip(*columns, strict=True))

    def missing(self, batch: dict[str, Any]) -> bool:
        return any(k not in self.entries[n] for n in self.value_keys for k in self.batch_keys(batch, n))

    def add(self, name: str, keys: list[tuple[int, ...]], values: torch.Tensor) -> None:
        """Record values; a key already known keeps its value (the first batch that met it, as training does)."""
        table = self.entries[name]
        for key, value in zip(keys, values.detach().float().cpu().tolist(), strict=True):
            table.setdefault(key, value)

    def lookup(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.value_keys:
            keys = self.batch_keys(batch, name)
            absent = [k for k in keys if k not in self.entries[name]]
            if absent:
                raise KeyError(
                    f"--model.precompute_reference: no cached {name} for {self.value_keys[name]}={absent[0]} in "
                    f"{self.path}: this batch was not among those computed before training (data or batches "
                    "changed during the run?)"
                )
            out[name] = torch.tensor([self.entries[name][k] for k in keys], dtype=torch.float32)
        return out

    def save(self) -> None:
        stored = {}
        for name, table in self.entries.items():
            keys = torch.tensor(list(table), dtype=torch.long).reshape(len(table), len(self.value_keys[name]))
            values = torch.tensor(list(table.values()), dtype=torch.float32)
            stored[name] = (keys, values)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.partial")
        torch.save(stored, partial)
        os.replace(partial, self.path)  # atomic: a reader never sees half a file


def planned_epochs(trainer: Any, batches_per_epoch: int) -> int:
    """How many epochs of training batches ``trainer.fit`` will draw (from max_steps, max_epochs, the limits)."""
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches_per_epoch = min(batches_per_epoch, limit)
    elif limit is not None:
        batches_per_epoch = int(batches_per_epoch * limit)
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    if trainer.max_steps not in (None, -1):
        needed = math.ceil(trainer.max_steps * trainer.accumulate_grad_batches / max(batches_per_epoch, 1))
        epochs = needed if epochs is None else min(epochs, needed)
    if epochs is None:
        raise ValueError(
            "--model.precompute_reference: the KL pairs of each epoch are computed before training, which needs a "
            "finite --trainer.max_epochs or --trainer.max_steps"
        )
    return max(epochs, 1)


def epoch_batches(loaders: list[tuple[Any, int]]) -> Iterator[dict[str, Any]]:
    """Every batch of each (loader, epochs): epoch e drawn after ``sampler.set_epoch(e)``, as training draws it."""
    for loader, epochs in loaders:
        for epoch in range(epochs):
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            yield from loader


def progress(total: int, enabled: bool) -> Any:
    """A bar over the batches to compute, only on a terminal (a log file gets no carriage-return noise)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Reference log-probs", disable=not (enabled and sys.stdout.isatty()))


def gather(strategy: Any, table: ReferenceTable, new: dict[str, list[tuple[list[tuple[int, ...]], torch.Tensor]]]):
    """Every rank's newly computed entries into every rank's ``table`` (Lightning's all_gather, padded)."""
    for name, parts in new.items():
        width = len(table.value_keys[name])
        keys = torch.tensor([k for ks, _ in parts for k in ks], dtype=torch.long).reshape(-1, width)
        values = torch.cat([v.detach().float().cpu() for _, v in parts]) if parts else torch.zeros(0)
        if strategy.world_size > 1:
            device = strategy.root_device
            count = torch.tensor([len(keys)], device=device)
            counts = strategy.all_gather(count).reshape(-1).tolist()
            size = max(counts)
            padded_keys = torch.zeros(size, width, dtype=torch.long, device=device)
            padded_values = torch.zeros(size, device=device)
            padded_keys[: len(keys)], padded_values[: len(keys)] = keys.to(device), values.to(device)
            all_keys = strategy.all_gather(padded_keys).cpu()
            all_values = strategy.all_gather(padded_values).cpu()
            keys = torch.cat([all_keys[r, :n] for r, n in enumerate(counts)])
            values = torch.cat([all_values[r, :n] for r, n in enumerate(counts)])
        table.add(name, [tuple(k) for k in keys.tolist()], values)
