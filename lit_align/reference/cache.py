"""Reference log-probs computed once before training and cached on disk (``--model.precompute_reference``).

:class:`ReferenceCache` (the ``cached`` source of :class:`~lit_align.reference.mixin.Reference`) runs the pass in
``setup`` (before a checkpoint is restored, so a copy of the policy is still the pretrained one) and frees the
reference afterwards; the rest needs no module: the fingerprint, the table of values, the file, the batches to
compute and the gather.

What is cached: the per-sequence values a module's ``reference_values(model, batch)`` returns, each keyed by
the batch's index columns that ``reference_value_keys()`` names for it. A value of one row (DPO's
``ref_chosen_logps``) is keyed by ``row_index``, which the preference and binary DataModules give every
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

import copy
import gc
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext as _nothing
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_align.errors import OptionError
from lit_align.models import shared_prefix
from lit_align.models.loading import _cache_dir, resolve_model
from lit_align.models.packing import is_enabled, set_padding_free

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
                    f"{name} by; the batches of lit-align's preference and binary DataModules carry it"
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
        raise OptionError(
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


_FREED = "<released nn.Module>"  # the plan's model once an nn.Module reference has served its pass


class ReferenceCache:
    """The ``cached`` reference source: values computed once per fingerprint, looked up by row.

    Args:
        reference_policy: the reference as given (``None``: the policy's own, a copy or its adapter-disabled self).
        described: the reference described without loading it (:func:`describe_model`) and its model kind.
    """

    def __init__(self, reference_policy: Any, described: dict[str, Any]) -> None:
        self.reference_policy, self.described = reference_policy, described
        self.table: ReferenceTable | None = None

    def lookup(self, batch: dict[str, Any], value_keys: dict[str, tuple[str, ...]], device: torch.device) -> dict:
        """The values of ``batch``: those it carries itself (e.g. ``ref_chosen_logps``), else the cached ones."""
        if all(name in batch for name in value_keys):
            return {name: batch[name] for name in value_keys}
        if self.table is None:
            raise RuntimeError(
                "--model.precompute_reference=True: the reference log-probs are computed in setup() of a Trainer run "
                "(trainer.fit / validate); this batch carries none and no reference is loaded"
            )
        return {name: value.to(device) for name, value in self.table.lookup(batch).items()}

    def setup(self, module: Any, stage: str) -> None:
        """The cached values of this stage's data (``module``'s DataModule), computed where missing."""
        trainer = module.trainer
        datamodule = trainer.datamodule
        if datamodule is None or "row_index" not in getattr(datamodule.train_dataset, "column_names", ()):
            raise OptionError(
                "--model.precompute_reference=True needs lit-align's preference or binary DataModule passed to the "
                "Trainer (trainer.fit(module, datamodule=...)): its rows are indexed to find their cached values again"
            )
        value_keys = module.reference_value_keys()
        # The pass runs in the Trainer's precision context, as the live reference would: part of the key.
        key = fingerprint({**self.described, "precision": str(trainer.precision)}, data_description(datamodule),
                          value_keys)  # fmt: skip
        path = cache_path(key)
        if self.table is None or self.table.path != path:
            self.table = ReferenceTable(value_keys, path)
        loaders = []
        if stage == "fit":
            train = datamodule.train_dataloader()
            by_pair = any(len(columns) > 1 for columns in value_keys.values())  # KTO's KL pairs change every epoch
            loaders.append((train, planned_epochs(trainer, len(train)) if by_pair else 1))
        val = datamodule.val_dataloader() if trainer.limit_val_batches != 0 else []
        if not isinstance(val, list):
            loaders.append((val, 1))
        todo = sum(self.table.missing(batch) for batch in epoch_batches(loaders))
        strategy = trainer.strategy
        if not strategy.reduce_boolean_decision(todo > 0, all=False):
            rank_zero_info(f"Reference log-probs: reused {path} (no reference loaded)")
            return
        if self.reference_policy is _FREED:
            raise RuntimeError(
                f"--model.precompute_reference=True: {path} lacks values this run needs and the reference_policy "
                "given as an nn.Module was released after the first pass; build the module again with it"
            )
        new = self._compute(module, loaders, todo)
        if isinstance(self.reference_policy, nn.Module):  # ours released: memory is the caller's to keep or free
            self.reference_policy = _FREED
        gather(strategy, self.table, new)
        if trainer.is_global_zero:
            self.table.save()
        strategy.barrier("reference_cache")
        rank_zero_info(f"Reference log-probs: computed, cached in {path}; the reference is freed")

    def _compute(self, module: Any, loaders: list, todo: int) -> dict:
        """Load the reference, compute this rank's missing batches, free it. Returns the new entries."""
        trainer, policy, table = module.trainer, module.policy, self.table
        device = trainer.strategy.root_device
        if self.reference_policy is not None:
            model = set_padding_free(resolve_model(self.reference_policy, module.POLICY_KIND, seed=1),
                                     is_enabled(policy))  # fmt: skip
            shared_prefix.set_shared_prefix(model, shared_prefix.is_enabled(policy), shared_prefix.kernel_of(policy))
        elif hasattr(policy, "disable_adapter") and hasattr(policy, "peft_config"):
            model = None  # the policy with its adapters disabled: nothing to load or free
        else:
            model = copy.deepcopy(policy)  # setup() runs before a checkpoint is restored: still pretrained
        runner = policy if model is None else model.requires_grad_(False)
        was_training = runner.training
        runner.to(device).eval()
        new: dict[str, list] = {name: [] for name in table.value_keys}
        precision = trainer.precision_plugin.forward_context()  # autocast under mixed precision, as live
        try:
            with progress(todo, trainer.is_global_zero) as bar, torch.no_grad(), precision:
                for batch in epoch_batches(loaders):
                    if not table.missing(batch):
                        continue
                    on_device = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    with policy.disable_adapter() if model is None else _nothing():
                        values = module.reference_values(runner, on_device)
                    for name in table.value_keys:
                        keys = table.batch_keys(batch, name)
                        table.add(name, keys, values[name])  # later batches of this pass skip what is known
                        new[name].append((keys, values[name]))
                    bar.update()
        finally:
            runner.train(was_training)
            del model, runner
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return new
