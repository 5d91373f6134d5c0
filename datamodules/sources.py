"""Reading the user's rows: local files and folders, else a ``datasets`` hub name, with messages that say what to fix.

``datasets`` reports a malformed file with a generic error ("An error occurred while generating the dataset")
whose real cause sits deep in the exception chain, sometimes behind a pandas fallback's unrelated error. So a
local file gets one cheap pass of its own first (JSON lines line by line, a JSON array element by element, a
CSV row by row) that names the file, the line or row and the problem: not UTF-8, not JSON, duplicate keys,
a number too large for a 64-bit float, nesting too deep, a JSON array in a ``.jsonl`` file, ragged CSV rows,
an empty file. What ``datasets`` still refuses is re-raised with its root cause on the first line.

What the pass costs: reading the file once more (Python's ``json``/``csv``), before ``datasets`` caches it.
Hub names are only looked up when the hub can be reached: with ``HF_HUB_OFFLINE=1`` only the local cache is
tried, and without a network the lookup is refused at once instead of retrying for a minute.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets

from lit_align import shipped
from lit_align.errors import DataError, PathNotFound, row_label
from lit_align.models.loading import hub_offline_flag, hub_unreachable

PROGRESS_BAR_ROWS = 5000  # datasets' progress bars only for data at least this large
PROGRESS_BAR_BYTES = 10_000_000


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Run the block with ``datasets``' progress bars on or off, restoring their previous state after."""
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
# Whole-file compression of the text formats, as ``datasets`` reads it (Parquet compresses inside the file).
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
KINDS = (".jsonl (one JSON object per line), .json (an array of objects), .csv (each may be compressed: .gz, .bz2, "
         ".xz) or .parquet")  # fmt: skip
GENERIC_ERRORS = ("DatasetGenerationError",)  # wrappers whose message hides the cause


class _Bad(ValueError):
    """What is wrong with one JSON value (raised by the parsing hooks)."""


class _TooLarge:
    """A number that overflows a 64-bit float, kept as text until the object holding it names its field."""

    def __init__(self, text: str) -> None:
        self.text = text


def _too_large(value: object) -> _TooLarge | None:
    if isinstance(value, _TooLarge):
        return value
    if isinstance(value, list):
        return next((found for item in value if (found := _too_large(item)) is not None), None)
    return None


def _object(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refused with the reason when a key repeats or a field's number overflows a float."""
    keys = [k for k, _ in pairs]
    for i, (key, value) in enumerate(pairs):
        if key in keys[:i]:
            raise _Bad(f"duplicate key {key!r} in one object (keep one of them)")
        if (number := _too_large(value)) is not None:
            raise _Bad(f"field {key!r}: the number {number.text[:40]} is too large for a 64-bit float")
    return dict(pairs)


def _finite_float(text: str) -> float | _TooLarge:
    value = float(text)
    return _TooLarge(text) if math.isinf(value) else value


def _not_a_constant(text: str) -> float:
    raise _Bad(f"{text} is not a JSON value (write null or a number)")


def parse_json(text: str) -> object:
    """``json.loads`` with the checks ``datasets``' Arrow reader applies, raising :class:`_Bad` with the reason."""
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_float=_finite_float, parse_constant=_not_a_constant)
    except json.JSONDecodeError as err:
        raise _Bad(f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise _Bad("nested deeper than a JSON reader allows (Python's recursion limit): flatten the row") from None
    if (number := _too_large(value)) is not None:
        raise _Bad(f"the number {number.text[:40]} is too large for a 64-bit float")
    return value


def data_suffixes(path: Path) -> tuple[str, str | None]:
    """The data format and the compression a file's name gives: ``(".jsonl", ".gz")`` for ``rows.jsonl.gz``,
    ``(".jsonl", None)`` for ``rows.jsonl``."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        return (suffixes[0] if len(suffixes) == 2 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), None


def open_data(path: Path) -> io.BufferedIOBase:
    """``path`` opened for reading bytes, decompressed when its name ends with a compression suffix."""
    return COMPRESSIONS.get(data_suffixes(path)[1] or "", open)(path, "rb")


def read_data(path: Path) -> bytes:
    with open_data(path) as f:
        return f.read()


def first_bad_json_line(path: Path) -> str | None:
    """What is wrong with a JSON-lines file, naming its first bad line (``None`` when every line is fine)."""
    rows = 0
    with open_data(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                return f"{path}, line {number}: not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})"
            if not line.strip():
                continue
            if rows == 0 and line.lstrip().startswith("["):
                return (
                    f"{path}: a JSON array, not JSON lines (one object per line): rename the file to .json, "
                    "or write one object per line"
                )
            try:
                value = parse_json(line)
            except _Bad as err:
                return f"{path}, line {number}: {str(err).replace(' at line 1 column', ' at column')}"
            if not isinstance(value, dict):
                return f"{path}, line {number}: expected a JSON object, got {type(value).__name__}"
            if not value:
                return f"{path}, line {number}: an empty JSON object; expected the row's fields"
            rows += 1
    return None if rows else f"{path}: the file has no rows"


def first_bad_json_element(path: Path) -> str | None:
    """What is wrong with a ``.json`` file: an array of objects, else (as ``datasets`` allows) JSON lines."""
    data = read_data(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return f"{path}, line {line}: not UTF-8 text (byte {data[err.start]:#04x})"
    if not text.strip():
        return f"{path}: the file has no rows (it is empty)"
    if not text.lstrip().startswith("["):
        if text.lstrip().startswith("{"):
            return first_bad_json_line(path)
        return f"{path}: not JSON: expected an array of objects ('[') or one object per line ('{{'), got {text[:20]!r}"
    try:
        value = parse_json(text)
    except _Bad as err:
        return f"{path}: {err}"
    for i, element in enumerate(value):
        if not isinstance(element, dict):
            return f"{path}, {row_label(i)}: expected a JSON object, got {type(element).__name__}"
    return None if value else f"{path}: the file has no rows (an empty array)"


def first_bad_csv_line(path: Path) -> str | None:
    """What is wrong with a CSV file (encoding, a header, rows with another number of fields than the header)."""
    data = read_data(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        return (
            f"{path}, line {line}: not UTF-8 text (byte {data[err.start]:#04x} at column {column}); "
            "save the file as UTF-8"
        )
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            return f"{path}: the file has no rows (it is empty)"
        rows = 0
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                return (
                    f"{path}, line {reader.line_num}: {len(row)} fields, but the header has {len(header)} "
                    f"({', '.join(header)}); quote fields that contain commas"
                )
            rows += 1
    except csv.Error as err:
        return f"{path}, line {reader.line_num}: not valid CSV ({err})"
    return None if rows else f"{path}: the file has a header but no rows"


def first_bad_parquet(path: Path) -> str | None:
    """What is wrong with a Parquet file: not Parquet (its footer does not parse), or no rows. Reads the footer only;
    the columns, whatever their compression (snappy, gzip, zstd, brotli, lz4), are ``datasets``' to read."""
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError or others for a file that is not Parquet
        return f"{path}: not a Parquet file ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return None if rows else f"{path}: the file has no rows"


CHECKS = {".jsonl": first_bad_json_line, ".json": first_bad_json_element, ".csv": first_bad_csv_line,
          ".parquet": first_bad_parquet}  # fmt: skip
COMPRESSION_NAMES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}


def first_bad_data_file(path: Path) -> str | None:
    """What is wrong with a local data file (its format told by its name), or ``None``; a compressed file is read
    through its decompressor, so its errors name the same lines and rows as the uncompressed file's would."""
    kind, compression = data_suffixes(path)
    if compression is not None and kind == ".parquet":
        return f"{path}: a compressed Parquet file; Parquet compresses inside the file: give the .parquet file itself"
    try:
        return CHECKS[kind](path)
    except (OSError, EOFError, lzma.LZMAError) as err:
        if compression is None:
            raise
        return (
            f"{path}: not readable as {COMPRESSION_NAMES[compression]}-compressed {kind} data "
            f"({type(err).__name__}: {err}); compress the file again, or give it uncompressed"
        )


def root_cause(err: BaseException) -> BaseException:
    """The most telling exception of a chain: the first that is not a generic ``datasets`` wrapper."""
    seen = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ not in GENERIC_ERRORS:
            return current
        current = current.__cause__ or current.__context__
    return err


def unreadable(source: Path | str, what: str, err: BaseException) -> DataError:
    cause = root_cause(err)
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return DataError(f"{source}: could not be read as {what}: {type(cause).__name__}: {first_line}")


def load_rows(path: str, split: str, config_name: str | None = None) -> datasets.Dataset:
    """A local json/jsonl/parquet/csv file (or a folder of them), else a ``datasets`` hub name; ``samples/<file>``
    not found here is the package's demo file (:func:`lit_align.shipped.data_path`)."""
    local = Path(shipped.data_path(path)).expanduser()
    if local.is_dir():
        return _load_folder(local, split)
    builder = LOCAL_BUILDERS.get(data_suffixes(local)[0])
    if builder is not None:
        if not local.is_file():
            raise PathNotFound(f"{path}: data file not found (resolved to {local.resolve()})")
        if bad := first_bad_data_file(local):
            raise DataError(bad)
        try:
            with progress_bars(local.stat().st_size >= PROGRESS_BAR_BYTES):
                return datasets.load_dataset(builder, data_files={split: str(local)}, split=split)
        except Exception as err:
            raise unreadable(local, builder, err) from err
    if local.is_file():
        raise DataError(
            f"{path}: a local file without a known extension ({local.suffix or 'none'}); the data types are "
            f"told by the extension: rename it to {KINDS}"
        )
    if local.suffix or path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path:
        raise PathNotFound(
            f"Data file or folder not found: {path!r} (resolved to {local.resolve()}); expected a {KINDS} file, "
            "a folder of them, or a datasets hub name"
        )
    return _load_hub(path, split, config_name)


def _load_folder(folder: Path, split: str) -> datasets.Dataset:
    """A folder written by ``Dataset.save_to_disk``, or one holding data files (splits named as ``datasets`` does)."""
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        try:
            saved = datasets.load_from_disk(str(folder))
        except Exception as err:
            raise unreadable(folder, "a saved dataset (save_to_disk)", err) from err
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise DataError(f"{folder}: no split {split!r} in the saved dataset; it has: {', '.join(saved)}")
            return saved[split]
        return saved
    files = sorted(p for p in folder.rglob("*") if p.is_file() and data_suffixes(p)[0] in LOCAL_BUILDERS)
    if not files:
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
        raise DataError(f"{folder}: a folder without data files ({KINDS}); it holds: {present}")
    for file in files:
        if bad := first_bad_data_file(file):
            raise DataError(bad)
    try:
        return datasets.load_dataset(str(folder), split=split)
    except Exception as err:
        raise unreadable(folder, f"a folder of data files (split {split!r})", err) from err


def _load_hub(name: str, split: str, config_name: str | None) -> datasets.Dataset:
    offline = hub_offline_flag()
    if offline is None and (reason := hub_unreachable()) is not None:
        raise DataError(
            f"{name!r}: no such local file or folder, and the hub cannot be reached ({reason}), so no download is "
            f"attempted. Give a local {KINDS} file or folder; for a dataset in your hub cache, set HF_HUB_OFFLINE=1"
        )
    try:
        return datasets.load_dataset(name, config_name, split=split)
    except Exception as err:
        if offline is not None:
            raise DataError(
                f"{name!r}: no such local file or folder, and not in the local hub cache; {offline} is set, so no "
                f"download was attempted. Give a local {KINDS} file or folder"
            ) from None
        raise unreadable(name, "a datasets hub dataset", err) from err
