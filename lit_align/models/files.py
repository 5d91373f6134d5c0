"""Model files checked against what their names claim before a loader reads them, so that a broken download names
the file and the format expected instead of surfacing as a loader's bare ``struct.error``, ``SafetensorError`` or
``JSONDecodeError``.

What is read: a ``.gguf`` file's header and tensor table (every tensor's bytes must lie inside the file; the
weights themselves are not read); a ``save_pretrained`` folder's ``*.json`` files (parsed), ``*.safetensors``
headers (every tensor's byte range inside the file) and the start of ``*.bin``/``*.pt`` files (a zip archive or a
pickle). A file passes or a ``ValueError`` names it, what was wrong and what was expected. Results are cached per
(path, size, modification time), so the tokenizer's load and the model's check a file once.
"""

from __future__ import annotations

import functools
import json
import mmap
import struct
import zipfile
from pathlib import Path

from lit_align.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
REDOWNLOAD = "download, convert or save the model again"
# GGUF metadata value types: struct format of the fixed-size ones; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit


class _Truncated(ValueError):
    """A read past the end of the file."""


class _Reader:
    """Little-endian reads from a memory map, refusing to run past its end."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise _Truncated(f"the file ends at byte {len(self.data)}, inside the header (byte {self.pos})")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def skip(self, size: int) -> None:
        if size < 0 or self.pos + size > len(self.data):
            raise _Truncated(f"a field of {size} bytes at byte {self.pos} runs past the end of the file")
        self.pos += size

    def string(self) -> bytes:
        (length,) = self.take("Q")
        start = self.pos
        self.skip(length)
        return bytes(self.data[start : self.pos])


def _gguf_value(reader: _Reader, kind: int) -> object:
    if kind in _GGUF_SCALARS:
        return reader.take(_GGUF_SCALARS[kind])[0]
    if kind == _GGUF_STRING:
        return reader.string()
    if kind == _GGUF_ARRAY:
        (element, count) = reader.take("IQ")
        if element in _GGUF_SCALARS:
            reader.skip(count * struct.calcsize("<" + _GGUF_SCALARS[element]))
        else:
            for _ in range(count):
                _gguf_value(reader, element)
        return None
    raise ValueError(f"an unknown metadata value type {kind} at byte {reader.pos - 4}")


def _gguf_tensor_bytes(kind: int, elements: int) -> int | None:
    """Bytes of a tensor of ``elements`` values of GGML type ``kind`` (None when the gguf package does not know it)."""
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    except (ImportError, ValueError, KeyError):
        return None
    return elements // block * size


def _gguf_problem(path: Path) -> str | None:
    with path.open("rb") as f:
        if path.stat().st_size == 0:
            return "the file is empty"
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        reader = _Reader(data)
        try:
            (magic,) = reader.take("4s")
            if magic != GGUF_MAGIC:
                return f"it starts with {magic!r}, a GGUF file with {GGUF_MAGIC!r}"
            (version,) = reader.take("I")
            if version not in (2, 3):
                return f"GGUF version {version}; transformers reads versions 2 and 3"
            tensors, entries = reader.take("QQ")
            alignment = 32
            for _ in range(entries):
                key = reader.string()
                (kind,) = reader.take("I")
                value = _gguf_value(reader, kind)
                if key == b"general.alignment" and isinstance(value, int) and value > 0:
                    alignment = value
            table = []
            for _ in range(tensors):
                name = reader.string()
                (dims,) = reader.take("I")
                shape = reader.take("Q" * dims)
                kind, offset = reader.take("IQ")
                table.append((name, shape, kind, offset))
        except (_Truncated, ValueError, struct.error) as err:
            return f"its header does not parse: {err}"
        start = -(-reader.pos // alignment) * alignment
        for name, shape, kind, offset in table:
            elements = 1
            for n in shape:
                elements *= n
            size = _gguf_tensor_bytes(kind, elements) or 0
            if start + offset + size > len(data):
                return (
                    f"tensor {name.decode(errors='replace')!r} ends at byte {start + offset + size}, past the end of "
                    f"the file ({len(data)} bytes): the file is cut short"
                )
        return None
    finally:
        data.close()


@functools.lru_cache(maxsize=64)
def _checked_gguf(path: Path, size: int, mtime: int) -> str | None:
    return _gguf_problem(path)


def check_gguf(path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is a whole GGUF file (header, metadata, tensor table)."""
    stat = path.stat()
    if problem := _checked_gguf(path.resolve(), stat.st_size, stat.st_mtime_ns):
        raise ModelFileError(f"{path}: not a GGUF file ({problem}); expected a GGUF model file: {REDOWNLOAD}")


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, fewer than the 8 of a safetensors header length"
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _SAFETENSORS_MAX_HEADER):
            return f"its header claims {length} bytes, and the file holds {size - 8} after the length"
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"its header is not JSON ({err})"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
               and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2), default=0)  # fmt: skip
    if 8 + length + end > size:
        return f"its tensors end at byte {8 + length + end}, past the end of the file ({size} bytes): it is cut short"
    return None


def _pickle_problem(path: Path) -> str | None:
    if zipfile.is_zipfile(path):
        return None
    with path.open("rb") as f:
        first = f.read(2)
    if first[:1] == b"\x80" and len(first) == 2 and 2 <= first[1] <= 5:  # a pickle's protocol marker
        return None
    return f"neither a zip archive (torch.save's format) nor a pickle: it starts with {first!r}"


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        return f"not UTF-8 text ({err.reason} at byte {err.start})"
    except json.JSONDecodeError as err:
        return f"{err.msg} at line {err.lineno} column {err.colno}"
    return None


FOLDER_CHECKS = {".json": ("JSON", _json_problem), ".safetensors": ("safetensors", _safetensors_problem),
                 ".bin": ("PyTorch weights", _pickle_problem), ".pt": ("PyTorch weights", _pickle_problem)}  # fmt: skip


@functools.lru_cache(maxsize=256)
def _checked_file(path: Path, size: int, mtime: int) -> str | None:
    what, problem = FOLDER_CHECKS[path.suffix]
    if reason := problem(path):
        return f"{path}: not a {what} file ({reason}); expected the {what} a save_pretrained folder holds: {REDOWNLOAD}"
    return None


def check_model_folder(folder: Path) -> None:
    """Raise ``ValueError`` naming the first file of a ``save_pretrained`` folder that is not what its name says
    (``*.json``, ``*.safetensors``, ``*.bin``, ``*.pt``; the folder's top level, where loaders read)."""
    for path in sorted(folder.iterdir()):
        if path.suffix in FOLDER_CHECKS and path.is_file():
            stat = path.stat()
            if problem := _checked_file(path.resolve(), stat.st_size, stat.st_mtime_ns):
                raise ModelFileError(problem)
