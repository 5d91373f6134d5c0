"""What every lit-align DataModule shares: load rows, validate and tokenize once, split, batch.

A subclass names its fields (``FIELDS``), turns one validated row into token ids
(``tokenize_row``) and turns a list of tokenized rows into the batch schema (``collate``, typed by
:mod:`lit_align.batches`).

Options are declared once: the shared ones here (keyword-only, documented in the class's ``Args:``),
the prompt + completion truncation ones in :class:`PromptCompletionDataModule`; a DataModule's own
``__init__`` names only its own options and the defaults it changes (always ``data_path``, its demo
data) and forwards the rest with ``**kwargs``.
Tokenization runs in ``setup`` through ``datasets.map``, whose on-disk cache makes later runs and
other ranks reuse it. Rows that truncation shortens or drops are counted and reported once.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import datasets
import lightning as L
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from transformers import PreTrainedTokenizerBase

from lit_align.datamodules.resumable import EpochRandomSampler, ResumableDataLoader
from lit_align.datamodules.tokenize import DataError, TruncationMode, where

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).parent / "samples"
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def resolve_tokenizer(tokenizer: str | PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
    if tokenizer is None:
        raise ValueError("The DataModule needs a tokenizer: pass one, or the policy's name (the recipes link it)")
    if isinstance(tokenizer, str):
        from lit_align.models import load_tokenizer

        return load_tokenizer(tokenizer)
    return tokenizer


def _first_bad_json_line(path: Path) -> str | None:
    """What is wrong with a JSON-lines file, naming its first bad line (``None`` when every line is fine)."""
    rows = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"{path}, line {number}: not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})"
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                return f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno})"
            if not isinstance(value, dict):
                return f"{path}, line {number}: expected a JSON object, got {type(value).__name__}"
            if not value:
                return f"{path}, line {number}: an empty JSON object; expected the row's fields"
            rows += 1
    return None if rows else f"{path}: the file has no rows"


def load_rows(path: str, split: str, config_name: str | None = None) -> datasets.Dataset:
    """A local json/jsonl/parquet/csv file (or a folder of them), else a ``datasets`` hub name."""
    local = Path(path)
    builder = LOCAL_BUILDERS.get(local.suffix.lower())
    if builder is not None:
        if not local.is_file():
            raise FileNotFoundError(f"Data file not found: {local.resolve()}")
        jsonl = builder == "json" and local.suffix.lower() == ".jsonl"
        if jsonl and (bad := _first_bad_json_line(local)):  # one cheap pass: a precise message, not a traceback
            raise DataError(bad)
        try:
            return datasets.load_dataset(builder, data_files={split: str(local)}, split=split)
        except Exception as err:
            raise DataError(f"{local}: could not be read as {builder}: {type(err).__name__}: {err}") from err
    if local.is_dir():
        return datasets.load_dataset(str(local), config_name, split=split)
    if local.suffix or path.startswith((".", "/")):
        raise FileNotFoundError(
            f"Data file not found or of an unknown type: {path!r} (expected .json, .jsonl, .parquet or .csv)"
        )
    return datasets.load_dataset(path, config_name, split=split)


class TokenizedDataModule(L.LightningDataModule):
    """Base of every DataModule: what they share.

    Args:
        tokenizer: a tokenizer, or the name of the policy whose tokenizer to load (recipes link it).
        data_path: local .json/.jsonl/.parquet/.csv file, folder, or ``datasets`` hub name (default: the
            project's own demo data for this DataModule, in ``datamodules/samples/``).
        split: the split to train on.
        val_split: a split to validate on; when ``None``, ``val_size`` rows are carved off ``split``.
        val_size: fraction (float) or count (int) of rows held out for validation; 0 disables it.
        columns: field mapping, canonical name -> column name, e.g. ``{"chosen": "good"}``.
        max_samples: use only the first N rows (before the validation split).
        max_prompt_length: longest prompt, in tokens (``None``: no separate prompt limit).
        truncation_mode: which end of a long prompt survives: ``keep_end`` (next to the answer) or
            ``keep_start``.
        batch_size: rows per training batch (per device).
        eval_batch_size: rows per validation batch (default: ``batch_size``).
        num_workers: DataLoader workers.
        pad_to_multiple_of: pad the sequence length of each batch to a multiple of this.
        seed: seed of the validation split and of the training order (a function of seed and epoch only).
        config_name: ``datasets`` configuration name for hub datasets.
    """

    FIELDS: ClassVar[tuple[str, ...]] = ()
    OPTIONAL_FIELDS: ClassVar[tuple[str, ...]] = ()
    # Attributes that change the tokenized rows (they key the datasets cache with data + tokenizer).
    TOKENIZATION_SETTINGS: ClassVar[tuple[str, ...]] = ("max_prompt_length", "truncation_mode")

    def __init__(
        self,
        *,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        data_path: str,
        split: str = "train",
        val_split: str | None = None,
        val_size: float | int = 0.1,
        columns: dict[str, str] | None = None,
        max_samples: int | None = None,
        max_prompt_length: int | None = 256,
        truncation_mode: TruncationMode = "keep_end",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
        seed: int = 42,
        config_name: str | None = None,
    ) -> None:
        super().__init__()
        if max_prompt_length is not None and max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be positive or None, got {max_prompt_length}")
        self.tokenizer_source = tokenizer
        self.data_path = data_path
        self.split = split
        self.val_split = val_split
        self.val_size = val_size
        self.columns = dict(columns or {})
        self.max_samples = max_samples
        self.max_prompt_length = max_prompt_length
        self.truncation_mode = truncation_mode
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pad_to_multiple_of = pad_to_multiple_of
        self.seed = seed
        self.config_name = config_name
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.stats: Counter[str] = Counter()
        self.train_dataset: datasets.Dataset | None = None
        self.val_dataset: datasets.Dataset | None = None

    # -- subclass interface -------------------------------------------------------------------
    def tokenize_row(self, row: dict[str, Any], loc: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        """Row (canonical field names) -> token id lists, plus ``_status`` (``ok``, ``dropped``, ...)."""
        raise NotImplementedError  # abstract

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError  # abstract

    def check_batch_size(self) -> None:
        """Subclasses refuse batch sizes their batches cannot be built from."""

    # -- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Rank 0 only: fills the datasets cache so other ranks' setup() reads it.
        self._tokenized(self.split, resolve_tokenizer(self.tokenizer_source), report=False)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self.check_batch_size()
        self.tokenizer = resolve_tokenizer(self.tokenizer_source)
        train = self._tokenized(self.split, self.tokenizer)
        if self.val_split is not None:
            self.val_dataset = self._tokenized(self.val_split, self.tokenizer)
            self.train_dataset = train
        elif self.val_size:
            parts = train.train_test_split(test_size=self.val_size, seed=self.seed)
            self.train_dataset, self.val_dataset = parts["train"], parts["test"]
        else:
            self.train_dataset = train
        if len(self.train_dataset) == 0:
            raise DataError(f"{self.data_path}: no training rows are left after truncation and splitting")

    def train_dataloader(self) -> DataLoader:
        # Resumable mid-epoch, in an order that depends only on (seed, epoch): see datamodules/resumable.py.
        return ResumableDataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=self._train_sampler(),
            collate_fn=self.collate,
            num_workers=self.num_workers,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return []
        return DataLoader(
            self.val_dataset,
            batch_size=self.eval_batch_size,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    # -- helpers --------------------------------------------------------------------------------
    def _train_sampler(self, dataset: Any = None) -> Sampler:
        """One permutation of (seed, epoch) in every layout: whole on one process, every N-th row on N ranks.

        Under DDP/FSDP the DistributedSampler is made here (with this DataModule's seed) rather than left to
        Lightning, whose sampler would take ``seed_everything``'s seed instead: 1 process with batch 4 and 2
        processes with batch 2 then train on the same global batches. ``dataset``: another training set than
        ``train_dataset`` (SPIN's pairs of an iteration).
        """
        dataset = self.train_dataset if dataset is None else dataset
        strategy = self.trainer.strategy if self.trainer is not None else None
        kwargs = getattr(strategy, "distributed_sampler_kwargs", None) or {}
        if kwargs.get("num_replicas", 1) > 1:
            return DistributedSampler(dataset, shuffle=True, seed=self.seed, **kwargs)
        return EpochRandomSampler(dataset, seed=self.seed)

    def _canonical(self, row: dict[str, Any], loc: str) -> dict[str, Any]:
        out = {}
        for field in self.FIELDS + self.OPTIONAL_FIELDS:
            source = self.columns.get(field, field)
            if source in row:
                out[field] = row[source]
            elif field in self.FIELDS:
                available = ", ".join(sorted(row))
                hint = f" (mapped from {source!r})" if source != field else ""
                raise DataError(f"{loc}: missing field {field!r}{hint}; the row has: {available}")
        return out

    def _tokenized(self, split: str, tokenizer: PreTrainedTokenizerBase, report: bool = True) -> datasets.Dataset:
        raw = load_rows(self.data_path, split, self.config_name)
        if self.max_samples is not None:
            raw = raw.select(range(min(self.max_samples, len(raw))))
        source = f"{self.data_path} [{split}]"

        def fn(row: dict[str, Any], index: int) -> dict[str, Any]:
            loc = where(source, index)
            return self.tokenize_row(self._canonical(row, loc), loc, tokenizer)

        # An explicit fingerprint (data, tokenizer, tokenization settings) keeps the datasets cache
        # valid across runs and ranks; hashing the closure would drag the whole DataModule in.
        settings = [(k, getattr(self, k)) for k in ("columns", *self.TOKENIZATION_SETTINGS)]
        fingerprint = Hasher.hash([raw._fingerprint, type(self).__name__, settings, tokenizer])
        tokenized = raw.map(
            fn,
            with_indices=True,
            remove_columns=raw.column_names,
            new_fingerprint=fingerprint,
            desc=f"Tokenizing {split}",
        )
        statuses = Counter(tokenized["_status"])
        kept = tokenized.filter(lambda status: status != "dropped", input_columns="_status")
        if report:
            self.stats.update({f"{split}/{k}": v for k, v in statuses.items()})
            changed = {k: v for k, v in statuses.items() if k != "ok"}
            if changed:
                log.warning("%s: %d rows; %s", source, len(raw), ", ".join(f"{v} {k}" for k, v in changed.items()))
        return kept


class PromptCompletionDataModule(TokenizedDataModule):
    """Base of the DataModules whose rows are a prompt and one or more completions (preference, binary, SFT).

    Args:
        max_length: longest prompt + completion, in tokens: the prompt is cut to ``max_prompt_length``
            first, then each completion at its end so that prompt + completion fits.
        drop_overlong: drop (and count) rows left with no room for a completion instead of failing.
    """

    TOKENIZATION_SETTINGS = (*TokenizedDataModule.TOKENIZATION_SETTINGS, "max_length", "drop_overlong")

    def __init__(self, *, max_length: int = 512, drop_overlong: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.max_prompt_length is not None and self.max_prompt_length >= max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({max_length})")
        self.max_length = max_length
        self.drop_overlong = drop_overlong
