"""HFExport: the trained policy loads with plain transformers (full, LoRA merged, LoRA adapter-only)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_align.algorithms import DPO
from lit_align.callbacks.export import HFExport
from lit_align.datamodules import PreferenceDataModule
from tests.helpers import tiny_trainer


def fit_and_export(tmp_path, module, **export):
    callback = HFExport(**export)
    data = PreferenceDataModule(tokenizer="tiny-llama", batch_size=2, max_samples=8, val_size=0)
    tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[callback]).fit(module, data)
    return callback.path


def test_full_export_loads_with_transformers_and_matches(tmp_path):
    module = DPO(policy="tiny-llama", learning_rate=1e-2)
    path = fit_and_export(tmp_path, module)
    assert (path / "model.safetensors").exists() and (path / "tokenizer_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert torch.equal(loaded.lm_head.weight, module.policy.lm_head.weight)


def test_lora_export_merged_by_default_and_adapter_on_request(tmp_path):
    pytest.importorskip("peft")
    module = DPO(policy="tiny-llama", lora_r=4, lora_target_modules=["q_proj", "v_proj"], learning_rate=1e-2)
    merged = fit_and_export(tmp_path / "m", module)
    loaded = AutoModelForCausalLM.from_pretrained(merged)  # plain transformers, no peft needed
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, module.policy(input_ids=ids).logits, atol=1e-5)
    adapter = fit_and_export(tmp_path / "a", module, lora="adapter")
    assert (adapter / "adapter_config.json").exists() and not (adapter / "model.safetensors").exists()
