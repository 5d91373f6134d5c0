"""Rollouts: completion masks up to the first EOS, prompt-major order, truncation flags, train mode restored."""

from __future__ import annotations

import pytest
import torch

from lit_align.models.loading import load_model
from lit_align.rollouts.hf import HFGenerate
from lit_align.rollouts.record import completion_mask_until_eos


def test_mask_until_first_eos_by_hand():
    """EOS = 9. Row 0 stops at its first EOS (index 1; the later 9 is padding), row 1 at index 3 (the
    last position), row 2 never: truncated, every token counts."""
    ids = torch.tensor([[5, 9, 9, 9], [5, 6, 7, 9], [5, 6, 7, 8]])
    mask, truncated = completion_mask_until_eos(ids, [9])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]
    mask, truncated = completion_mask_until_eos(ids, [8, 9])  # several EOS ids
    assert truncated.tolist() == [False, False, False]


@pytest.fixture
def tiny():
    model, tokenizer = load_model("tiny-llama")
    left = [tokenizer("ab")["input_ids"], tokenizer("hello there")["input_ids"]]
    width = max(map(len, left))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in left])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in left])
    return model, tokenizer, ids, mask


def test_sampling_shapes_order_and_modes(tiny):
    model, tokenizer, ids, mask = tiny
    model.train()
    torch.manual_seed(0)
    out = HFGenerate(tokenizer, max_new_tokens=6, temperature=1.0)(model, ids, mask, num_generations=3)
    assert out.completion_ids.shape[0] == 6 and out.completion_ids.shape[1] <= 6
    assert len(out) == 6 and len(out.texts) == 6 and out.num_generations == 3
    # Prompt-major: rows 0-2 are prompt 0's samples, rows 3-5 prompt 1's.
    assert torch.equal(out.prompt_input_ids, ids.repeat_interleave(3, 0))
    assert model.training  # restored
    assert not out.completion_ids.requires_grad
    assert torch.equal(out.lengths, out.completion_mask.sum(1))
    # A random tiny model rarely says EOS: truncated rows have every position in their mask.
    for row in range(6):
        if out.is_truncated[row]:
            assert out.completion_mask[row].all() and out.lengths[row] == 6
        n = int(out.lengths[row])
        assert out.texts[row] == tokenizer.decode(out.completion_ids[row, :n], skip_special_tokens=True)
        assert (out.completion_ids[row, n:] == tokenizer.pad_token_id).all()
    input_ids, attention_mask, labels = out.model_inputs(torch.tensor([4]))
    assert input_ids.shape == (1, ids.shape[1] + out.completion_ids.shape[1])
    assert (labels[0, : ids.shape[1]] == -100).all()
    assert torch.equal(labels[0, ids.shape[1] :] != -100, out.completion_mask[4].bool())


def test_greedy_is_prompt_major_and_deterministic(tiny):
    model, tokenizer, ids, mask = tiny
    model.eval()
    out = HFGenerate(tokenizer, max_new_tokens=5)(model, ids, mask, num_generations=2, greedy=True)
    assert not model.training  # eval stays eval
    assert torch.equal(out.completion_ids[0], out.completion_ids[1])
    assert torch.equal(out.completion_ids[2], out.completion_ids[3])
    # The left-padded prompt 0 decodes as if alone (attention mask + position ids respected).
    alone = HFGenerate(tokenizer, max_new_tokens=5)(model, ids[:1, -2:], mask[:1, -2:], greedy=True)
    assert torch.equal(alone.completion_ids[0], out.completion_ids[0])


def test_eos_stops_generation(tiny):
    """With the EOS logit made dominant every completion is just EOS: length 1, not truncated, empty text."""
    model, tokenizer, ids, mask = tiny
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()[tokenizer.eos_token_id] = 100.0
    model.lm_head = head
    out = HFGenerate(tokenizer, max_new_tokens=8)(model, ids, mask, num_generations=2)
    assert out.lengths.tolist() == [1, 1, 1, 1] and not out.is_truncated.any()
    assert out.texts == ["", "", "", ""] and out.completion_ids.shape[1] == 1


def test_temperature_must_be_positive(tiny_tokenizer):
    with pytest.raises(ValueError, match="greedy=True"):
        HFGenerate(tiny_tokenizer, temperature=0.0)


def test_static_and_dynamic_kv_caches_draw_the_same_completions(tiny, monkeypatch):
    """The static cache (the CPU default under ``auto``) is a memory layout, not a different sampler: greedy and seeded
    sampled completions equal the dynamic cache's. ``auto`` picks static on CPU; the cache really is static."""
    model, tokenizer, ids, mask = tiny
    assert HFGenerate(tokenizer).cache_options(model) == {"cache_implementation": "static", "disable_compile": True}
    assert HFGenerate(tokenizer, kv_cache="dynamic").cache_options(model) == {}
    seen = []
    original = model.generate

    def spy(*args, generation_config, **kwargs):
        seen.append(generation_config.cache_implementation)
        return original(*args, generation_config=generation_config, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    outs = {}
    for cache in ("static", "dynamic"):
        backend = HFGenerate(tokenizer, max_new_tokens=7, kv_cache=cache)
        greedy = backend(model, ids, mask, greedy=True)
        torch.manual_seed(0)
        sampled = backend(model, ids, mask, num_generations=2)
        outs[cache] = greedy.completion_ids, sampled.completion_ids
    assert seen == ["static", "static", None, None]
    assert torch.equal(outs["static"][0], outs["dynamic"][0])
    assert torch.equal(outs["static"][1], outs["dynamic"][1])
    with pytest.raises(ValueError, match="kv_cache"):
        HFGenerate(tokenizer, kv_cache="paged")
