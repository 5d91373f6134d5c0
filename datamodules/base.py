"""What every lit-align DataModule shares: load rows, validate and tokenize once, split, batch.

A subclass names its fields (``FIELDS``), turns one validated row into token ids
(``tokenize_row``) and turns a list of tokenized rows into the batch schema (``collate``, typed by
:mod:`lit_align.batches`).

Options are declared once: the shared ones here (keyword-only, documented in the class's ``Args:``),
the prompt + completion truncation ones in :class:`PromptCompletionDataModule`; a DataModule's own
``__init__`` names only its own options and the defaults it changes (always ``data_path``, its demo
data) and forwards the rest with ``**kwargs``.
Tokenization runs in ``setup`` through ``datasets.map``, whose on-disk cache makes later runs and
other ranks reuse it. Every row that truncation shortens, that is dropped, or that is accepted with a
remark (an empty completion, a chat completion whose repeated prompt turns were removed) is counted in
``stats`` and reported once. Options are checked in ``__init__`` and the data in ``setup``, so a recipe
(which sets the data up before it builds the model, see :class:`lit_align.commands.cli.AlignCLI`) fails before any
weights load; messages name the option by its command-line name (``--data.batch_size``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

import datasets
import lightning as L
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from transformers import PreTrainedTokenizerBase

from lit_align import hparams
from lit_align.datamodules.remarks import DROPPED, count_remarks, remarks_text
from lit_align.datamodules.resumable import (
    DistributedLengthGroupedSampler,
    EpochRandomSampler,
    LengthGroupedSampler,
    ResumableDataLoader,
)
from lit_align.datamodules.sources import PROGRESS_BAR_ROWS, load_rows, progress_bars
from lit_align.datamodules.tokenize import DataError, TruncationMode, repeats_prompt, visible_text, where
from lit_align.errors import OptionError
from lit_align.hparams import ChecksKeywords, save_plain_hyperparameters

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).parent / "samples"
PromptEchoes = Literal["keep", "drop", "error"]


def code_fingerprint(*classes: type) -> str:
    """A hash of the DataModules' code (this package's modules and the files that define ``classes``): part of
    the tokenization cache's fingerprint, so that a lit-align upgrade (or an edited DataModule) that tokenizes
    differently never reads rows the old code cached."""
    files = {*Path(__file__).parent.glob("*.py")}
    for cls in classes:
        for klass in cls.__mro__:
            source = inspect.getsourcefile(klass) if klass.__module__ != "builtins" else None
            if source is not None and source.endswith(".py"):
                files.add(Path(source))
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


check_option = functools.partial(hparams.check_option, group="data")  # a data option, named --data.<name>


def resolve_tokenizer(tokenizer: str | PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
    if tokenizer is None:
        raise OptionError("The DataModule needs a tokenizer: pass one, or the policy's name (the recipes link it)")
    if isinstance(tokenizer, str):
        from lit_align.models.loading import load_tokenizer

        return load_tokenizer(tokenizer)
    return tokenizer


class TokenizedDataModule(L.LightningDataModule, metaclass=ChecksKeywords):
    """Base of every DataModule: what they share.

    Args:
        tokenizer: a tokenizer, or the name of the policy whose tokenizer to load (recipes link it).
        data_path: local .json/.jsonl/.parquet/.csv file, folder, or ``datasets`` hub name (default: the
            project's own demo data for this DataModule, in ``datamodules/samples/``).
        split: the split to train on.
        val_split: a split to validate on; when ``None``, ``val_size`` rows are carved off ``split``.
        val_size: rows held out for validation: a count (``2``: two rows) or a fraction below 1 (``0.1``); 0
            disables it. Must leave at least one training row.
        columns: field mapping, canonical name -> column name, e.g. ``{"chosen": "good"}``; each field reads
            its own column.
        max_samples: use only the first N rows (before the validation split); at least 1.
        max_prompt_length: longest prompt, in tokens (``None``: no separate prompt limit).
        truncation_mode: which end of a long prompt survives: ``keep_end`` (next to the answer) or
            ``keep_start``.
        batch_size: rows per training batch (per device).
        eval_batch_size: rows per validation batch (default: ``batch_size``).
        num_workers: DataLoader workers.
        pad_to_multiple_of: pad the sequence length of each batch to a multiple of this.
        group_by_length: draw each training batch from rows of similar length: the epoch's random order is cut
            into groups of 50 batches, each group sorted by row length and cut into batches, which are shuffled
            (the longest first). Less padding where the modules' padding-free passes do not apply (reward models,
            custom policies); the order stays a function of (seed, epoch), so resuming is exact.
        seed: seed of the validation split and of the training order (a function of seed and epoch only).
        config_name: ``datasets`` configuration name for hub datasets.
        prompt_bos: whether a plain-text prompt starts with the tokenizer's BOS token: ``None`` leaves it to the
            tokenizer (what ``tokenizer(text)`` does; TRL's DPO, KTO, SFT and reward trainers), ``true`` prepends
            it when missing (TRL's CPO/SimPO and ORPO trainers), ``false`` removes it. Chat rows keep what their
            chat template renders.
    """

    FIELDS: ClassVar[tuple[str, ...]] = ()
    OPTIONAL_FIELDS: ClassVar[tuple[str, ...]] = ()
    # Whether batches carry each row's ``row_index`` (training rows 0..N-1, validation rows N..N+M-1), by which values
    # computed per row before training (cached reference log-probs) are found again.
    INDEX_ROWS: ClassVar[bool] = False
    # Whether the tokenized rows keep ``_row``, their row number in the data (what messages name): the prompt
    # DataModule's do, so that checks of the reward functions' columns can name the row.
    KEEP_ROW_NUMBERS: ClassVar[bool] = False
    # Attributes that change the tokenized rows (they key the datasets cache with data + tokenizer).
    TOKENIZATION_SETTINGS: ClassVar[tuple[str, ...]] = ("max_prompt_length", "truncation_mode", "prompt_bos")

    def __init__(
        self,
        *,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        data_path: str,
        split: str = "train",
        val_split: str | None = None,
        val_size: int | float = 0.1,
        columns: dict[str, str] | None = None,
        max_samples: int | None = None,
        max_prompt_length: int | None = 256,
        truncation_mode: TruncationMode = "keep_end",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
        group_by_length: bool = False,
        seed: int = 42,
        config_name: str | None = None,
        prompt_bos: bool | None = None,
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(self)  # a tokenizer object is left out
        self._log_hyperparams = False  # AlignmentModule.on_fit_start logs them with the model's, as data/<option>
        check_option(batch_size >= 1, "batch_size", batch_size, "rows per batch must be at least 1")
        check_option(eval_batch_size is None or eval_batch_size >= 1, "eval_batch_size", eval_batch_size,
                     "rows per validation batch must be at least 1 (null: --data.batch_size)")  # fmt: skip
        check_option(max_samples is None or max_samples >= 1, "max_samples", max_samples,
                     "use at least 1 row (null: every row)")  # fmt: skip
        check_option(max_prompt_length is None or max_prompt_length >= 1, "max_prompt_length", max_prompt_length,
                     "a prompt limit is at least 1 token (null: no separate limit)")  # fmt: skip
        check_option(num_workers >= 0, "num_workers", num_workers, "DataLoader workers: 0 or more")
        check_option(pad_to_multiple_of is None or pad_to_multiple_of >= 1, "pad_to_multiple_of", pad_to_multiple_of,
                     "a positive multiple, or null")  # fmt: skip
        check_option(truncation_mode in ("keep_end", "keep_start"), "truncation_mode", truncation_mode,
                     "keep_end or keep_start")  # fmt: skip
        check_option(prompt_bos in (None, True, False), "prompt_bos", prompt_bos, "true, false or null")
        self.tokenizer_source = tokenizer
        self.data_path = data_path
        self.split = split
        self.val_split = val_split
        self.val_size = validation_size(val_size)
        self.columns = dict(columns or {})
        self.max_samples = max_samples
        self.max_prompt_length = max_prompt_length
        self.truncation_mode = truncation_mode
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pad_to_multiple_of = pad_to_multiple_of
        self.group_by_length = group_by_length
        self.seed = seed
        self.config_name = config_name
        self.prompt_bos = prompt_bos
        self.check_columns()
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

    def examples(self, rows: datasets.Dataset) -> datasets.Dataset:
        """A split's tokenized rows as the examples its batches are drawn from (default: the rows themselves; the
        binary DataModule turns an unpaired preference row into its two examples)."""
        return rows

    def column_fields(self) -> tuple[str, ...] | None:
        """The fields ``columns`` may map (``None``: any name, as the prompt DataModule's pass-through columns)."""
        return self.FIELDS + self.OPTIONAL_FIELDS

    def check_columns(self) -> None:
        """Refuse a ``columns`` mapping with an unknown field or two fields read from one column."""
        fields = self.column_fields()
        for field, column in self.columns.items():
            check_option(isinstance(column, str) and column != "", "columns", self.columns,
                         f"field {field!r} must map to a column name")  # fmt: skip
            if fields is not None and field not in fields:
                raise OptionError(
                    f"--data.columns={self.columns!r}: {field!r} is not a field of {type(self).__name__}; the fields "
                    f'are {", ".join(fields)} (map FIELD to the column that holds it: {{"FIELD": "column"}})'
                )
        readers: dict[str, list[str]] = {}
        for field in {*self.FIELDS, *self.OPTIONAL_FIELDS, *self.columns}:
            readers.setdefault(self.columns.get(field, field), []).append(field)
        for column, names in readers.items():
            if len(names) > 1 and any(n in self.columns for n in names):
                raise OptionError(
                    f"--data.columns={self.columns!r}: {' and '.join(map(repr, sorted(names)))} would both be read "
                    f"from the column {column!r}; each field needs its own column"
                )

    def missing_field_hint(self, field: str, row: dict[str, Any]) -> str:
        """What to do about a row without ``field`` (a subclass may know better, e.g. ``--data.unpair``)."""
        return f'; map the column that holds it with --data.columns \'{{"{field}": "<column>"}}\''

    # -- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Rank 0 only: fills the datasets cache so other ranks' setup() reads it (done already when set up here).
        if self.train_dataset is not None:
            return
        self._tokenized(self.split, resolve_tokenizer(self.tokenizer_source), report=False)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self.check_batch_size()
        self.tokenizer = resolve_tokenizer(self.tokenizer_source)
        if self.prompt_bos and self.tokenizer.bos_token_id is None:
            raise OptionError(
                "--data.prompt_bos=True: the tokenizer has no BOS token to start prompts with; leave it null "
                "(what the tokenizer does) or set tokenizer.bos_token"
            )
        train = self._tokenized(self.split, self.tokenizer)
        if self.val_split is not None:
            self.val_dataset = self._tokenized(self.val_split, self.tokenizer)
            self.train_dataset = train
        elif self.val_size and len(train) > 0:  # no rows at all: the error below says so
            if len(train) < 2 or (isinstance(self.val_size, int) and self.val_size >= len(train)):
                raise DataError(
                    f"{self.data_path}: --data.val_size={self.val_size!r} leaves no training rows: the data has "
                    f"{len(train)} usable rows (after --data.max_samples and drops); hold out fewer rows, a fraction "
                    "below 1, or 0 for no validation"
                )
            parts = train.train_test_split(test_size=self.val_size, seed=self.seed)
            self.train_dataset, self.val_dataset = parts["train"], parts["test"]
        else:
            self.train_dataset = train
        if len(self.train_dataset) == 0:
            raise DataError(f"{self.data_path}: no training rows are left after truncation and splitting")
        self.train_dataset = self.examples(self.train_dataset)
        if self.val_dataset is not None:
            self.val_dataset = self.examples(self.val_dataset)
        if self.INDEX_ROWS:
            n = len(self.train_dataset)
            with progress_bars(n >= PROGRESS_BAR_ROWS):  # after the split, add_column flattens the indices
                self.train_dataset = self.train_dataset.add_column("row_index", list(range(n)))
                if self.val_dataset is not None:
                    rows = list(range(n, n + len(self.val_dataset)))
                    self.val_dataset = self.val_dataset.add_column("row_index", rows)

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
        distributed = kwargs.get("num_replicas", 1) > 1
        if self.group_by_length:
            lengths = row_lengths(dataset)
            if distributed:
                return DistributedLengthGroupedSampler(dataset, lengths, self.batch_size, seed=self.seed, **kwargs)
            return LengthGroupedSampler(dataset, lengths, self.batch_size, seed=self.seed)
        if distributed:
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
                advice = self.missing_field_hint(field, row)
                raise DataError(f"{loc}: missing field {field!r}{hint}; the row has: {available}{advice}")
        return out

    def _tokenized(self, split: str, tokenizer: PreTrainedTokenizerBase, report: bool = True) -> datasets.Dataset:
        raw = load_rows(self.data_path, split, self.config_name)
        if self.max_samples is not None:
            raw = raw.select(range(min(self.max_samples, len(raw))))
        source = f"{self.data_path} [{split}]"

        def fn(row: dict[str, Any], index: int) -> dict[str, Any]:
            loc = where(source, index)
            return {"_notes": "", "_row": index, **self.tokenize_row(self._canonical(row, loc), loc, tokenizer)}

        # An explicit fingerprint (data, tokenizer, tokenization settings, the code) keeps the datasets cache
        # valid across runs and ranks; hashing the closure would drag the whole DataModule in.
        settings = [(k, getattr(self, k)) for k in ("columns", *self.TOKENIZATION_SETTINGS)]
        fingerprint = Hasher.hash([raw._fingerprint, type(self).__name__, settings, tokenizer,
                                   code_fingerprint(type(self))])  # fmt: skip
        with progress_bars(len(raw) >= PROGRESS_BAR_ROWS):  # a bar for a few hundred rows is noise
            tokenized = raw.map(
                fn,
                with_indices=True,
                remove_columns=raw.column_names,
                new_fingerprint=fingerprint,
                desc=f"Tokenizing {split}",
            )
            counts, rows = count_remarks(tokenized["_status"], tokenized["_notes"], tokenized["_row"])
            kept = tokenized.filter(lambda status: status not in DROPPED, input_columns="_status")
        if report:
            self.stats.update({f"{split}/{k.removesuffix(' (dropped)')}": v for k, v in counts.items()})
            if said := remarks_text(counts, rows):
                log.warning("%s: %d rows; %s", source, len(raw), said)
        return kept.remove_columns(["_notes"] if self.KEEP_ROW_NUMBERS else ["_notes", "_row"])


def validation_size(value: int | float) -> int | float:
    """``--data.val_size`` as the split takes it: a count (an int, or a whole float such as ``2.0``) or a fraction."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise OptionError(f"--data.val_size={value!r}: a count of rows (2) or a fraction below 1 (0.1); 0 disables it")
    if isinstance(value, float) and value >= 1:
        if not value.is_integer():
            raise OptionError(f"--data.val_size={value!r}: a fraction must be below 1, a count a whole number")
        return int(value)
    return value


class PromptCompletionDataModule(TokenizedDataModule):
    """Base of the DataModules whose rows are a prompt and one or more completions (preference, binary, SFT).

    Args:
        max_length: longest prompt + completion, in tokens: the prompt is cut to ``max_prompt_length``
            first, then each completion at its end so that prompt + completion fits.
        drop_overlong: drop (and count) rows left with no room for a completion instead of failing.
        prompt_echoes: a completion trained TOWARD (preference: chosen; binary: a desirable one; SFT: every one)
            whose text is the prompt's again (:func:`~lit_align.datamodules.tokenize.repeats_prompt`) teaches the
            model to echo the user: ``keep`` trains on it and counts it as ``completion_repeats_prompt`` (warned,
            with the first rows), ``drop`` leaves the row out (counted), ``error`` stops at the row.
    """

    TOKENIZATION_SETTINGS = (*TokenizedDataModule.TOKENIZATION_SETTINGS, "max_length", "drop_overlong",
                             "prompt_echoes")  # fmt: skip

    def __init__(
        self, *, max_length: int = 512, drop_overlong: bool = False, prompt_echoes: PromptEchoes = "keep",
        **kwargs: Any,
    ) -> None:  # fmt: skip
        check_option(max_length >= 2, "max_length", max_length, "prompt + completion needs at least 2 tokens")
        check_option(prompt_echoes in ("keep", "drop", "error"), "prompt_echoes", prompt_echoes, "keep, drop or error")
        super().__init__(**kwargs)
        if self.max_prompt_length is not None and self.max_prompt_length >= max_length:
            raise OptionError(
                f"--data.max_prompt_length={self.max_prompt_length} must be below --data.max_length={max_length} "
                "(room is left for the completion)"
            )
        self.max_length = max_length
        self.drop_overlong = drop_overlong
        self.prompt_echoes: PromptEchoes = prompt_echoes

    def check_prompt_echo(self, prompt: Any, completion: Any, loc: str, status: str, notes: list[str]) -> str:
        """The row's status once its completion trained toward is checked for repeating the prompt: with
        ``prompt_echoes: keep`` the remark ``completion_repeats_prompt`` is added to ``notes``, with ``drop`` it
        becomes the status (unless the row is dropped already), with ``error`` the row is refused."""
        if status in DROPPED or not repeats_prompt(prompt, completion):
            return status
        if self.prompt_echoes == "error":
            raise DataError(
                f"{loc}: the completion trained toward repeats the prompt ({visible_text(completion)[:60]!r}): the "
                "model would learn to echo the user; fix the row, or keep such rows with --data.prompt_echoes keep "
                "(counted) or drop them with --data.prompt_echoes drop"
            )
        if self.prompt_echoes == "keep":
            notes.append("completion_repeats_prompt")
            return status
        return status if status in DROPPED else "completion_repeats_prompt"


def row_lengths(dataset: datasets.Dataset) -> list[int]:
    """Tokens per row: the sum of its token id lists (``prompt_ids``, ``chosen_ids``, ...), what its padding follows."""
    columns = [c for c in dataset.column_names if c.endswith("_ids")]
    if not columns:
        raise OptionError(f"--data.group_by_length: the rows have no token id columns (*_ids): {dataset.column_names}")
    table = dataset.select_columns(columns).to_dict()
    return [sum(len(table[c][i]) for c in columns) for i in range(len(dataset))]
