"""Padding-free forwards (``lit_align.models.packing``) against padded ones: values, gradients, losses, fallbacks.

Every comparison runs the same model and batch twice, ``padding_free`` on and off, and compares outputs and every
trainable parameter's gradient (≤1e-5). Spies prove the packed path really ran (a silent fallback to padding would
make the comparison trivially true): the per-sequence attention is called with the batch's cumulative lengths.
Batches mix right-padded rows (offline data), left-padded prompts followed by right-padded completions (rollouts)
and, for the helpers, an empty row. Module level: DPO, IPO, SimPO, ORPO, KTO and SFT through their DataModules, GRPO
on a fixed rollout. DDP/FSDP2 with packed rows (the default): ``tests/test_scaling.py``, whose runs also fail on a
fallback to padding.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from lit_align.algorithms import DPO, GRPO, IPO, KTO, ORPO, SFT, SimPO
from lit_align.datamodules import BinaryFeedbackDataModule, PreferenceDataModule, SFTDataModule
from lit_align.models import packing
from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama, load_model
from lit_align.models.logprobs import IGNORE_INDEX, completion_scores
from tests.online_helpers import fixed_rollout, grads, length_reward, prompt_batch

ATOL = 1e-5


@pytest.fixture
def varlen_calls(monkeypatch) -> list[list[int]]:
    """The cumulative lengths of every per-sequence attention call."""
    calls, original = [], packing.varlen_attention_forward

    def spy(module, query, key, value, attention_mask, *args, **kwargs):
        if kwargs.get("cu_seq_lens_q") is not None:
            calls.append(kwargs["cu_seq_lens_q"].tolist())
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    monkeypatch.setattr(packing, "varlen_attention_forward", spy)
    monkeypatch.setattr(packing, "_logged", set())
    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, packing.VARLEN, spy)
    return calls


def mixed_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded rows of several lengths, one row with no completion, one left-padded prompt + completion."""
    g = torch.Generator().manual_seed(seed)
    B, T = 5, 21
    input_ids = torch.randint(3, 250, (B, T), generator=g)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX)
    for b, (length, prompt) in enumerate([(21, 6), (9, 3), (15, 15), (4, 1)]):
        attention_mask[b, :length] = 1
        labels[b, prompt:length] = input_ids[b, prompt:length]
    attention_mask[4, 7:18] = 1  # left-padded prompt (7..11) + completion (12..17) + right padding
    labels[4, 12:18] = input_ids[4, 12:18]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# -- pack / unpack ---------------------------------------------------------------------------------
def test_pack_keeps_real_tokens_with_their_own_positions_and_unpacks_back():
    batch = mixed_batch()
    row = packing.pack(batch["input_ids"], batch["attention_mask"])
    keep = batch["attention_mask"].bool()
    assert row.input_ids.shape == (1, int(keep.sum()))
    assert torch.equal(row.input_ids[0], batch["input_ids"][keep])
    lengths = [21, 9, 15, 4, 11]
    assert row.cu_seqlens.tolist() == [0, 21, 30, 45, 49, 60] and row.max_length == 21
    expected_positions = torch.cat([torch.arange(n) for n in lengths])
    assert torch.equal(row.position_ids[0], expected_positions)
    values = torch.randn(1, row.input_ids.shape[1], 3)
    back = row.unpack(values, fill=-1.0)
    assert back.shape == (5, 21, 3)
    assert torch.equal(back[keep], values[0]) and bool((back[~keep] == -1).all())
    assert torch.equal(row.select(batch["input_ids"]), row.input_ids)


def test_empty_rows_are_left_out_of_the_boundaries():
    input_ids = torch.arange(12).view(3, 4)
    attention_mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]])
    row = packing.pack(input_ids, attention_mask)
    assert row.cu_seqlens.tolist() == [0, 2, 5]
    assert row.input_ids.tolist() == [[0, 1, 9, 10, 11]] and row.position_ids.tolist() == [[0, 1, 0, 1, 2]]


def test_a_row_with_holes_in_its_attention_mask_is_refused_by_number():
    input_ids = torch.zeros(2, 5, dtype=torch.long)
    attention_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 1, 0]])
    with pytest.raises(ValueError, match="row 1's attention mask has holes"):
        packing.pack(input_ids, attention_mask)


# -- log-probs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked_head", "plain_head"])
def test_packed_scores_and_gradients_equal_the_padded_ones(chunked, varlen_calls):
    model = build_tiny_llama(build_byte_tokenizer(), seed=0)
    batch = mixed_batch()
    weights = torch.randn(batch["labels"].shape, generator=torch.Generator().manual_seed(1))
    results = {}
    for padding_free in (False, True):
        model.zero_grad()
        scores = completion_scores(model, **batch, with_entropy=True, with_accuracy=True, temperature=0.7,
                                   chunked=chunked, padding_free=padding_free)  # fmt: skip
        (scores.logps * weights).sum().backward()
        results[padding_free] = scores, {n: p.grad.clone() for n, p in model.named_parameters()}
    (padded, padded_grads), (packed, packed_grads) = results[False], results[True]
    assert varlen_calls and all(c == [0, 21, 30, 45, 49, 60] for c in varlen_calls)
    assert len(varlen_calls) == model.config.num_hidden_layers  # one packed forward, every layer per sequence
    assert torch.equal(padded.mask, packed.mask) and torch.equal(padded.correct, packed.correct)
    for name in ("logps", "mean_logits", "entropy"):
        torch.testing.assert_close(getattr(packed, name), getattr(padded, name), rtol=0, atol=ATOL, msg=name)
    assert bool((packed.logps[~padded.mask] == 0).all())
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=0, atol=ATOL, msg=name)
    assert model.config._attn_implementation == "sdpa"  # restored after the packed forward


def test_sequences_in_one_packed_row_do_not_see_each_other(varlen_calls):
    model = build_tiny_llama(build_byte_tokenizer(), seed=0)
    batch = mixed_batch()
    first = completion_scores(model, **batch, padding_free=True).logps
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][1:] = (changed["input_ids"][1:] + 7) % 250  # every other sequence's tokens
    second = completion_scores(model, **changed, padding_free=True).logps
    assert torch.equal(first[0], second[0])  # row 0 comes first in the packed row: bit for bit
    assert not torch.equal(first[1], second[1])


def test_a_model_marked_padding_free_runs_packed_and_its_mark_survives_a_deep_copy(varlen_calls):
    import copy

    model = packing.set_padding_free(build_tiny_llama(build_byte_tokenizer(), seed=0))
    completion_scores(model, **mixed_batch())
    assert len(varlen_calls) == 2
    assert packing.is_enabled(copy.deepcopy(model)) and not packing.is_enabled(build_tiny_llama(build_byte_tokenizer()))


class Wrapped(nn.Module):
    """A custom policy: the Hugging Face call, but not an in-library transformers model."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_tiny_llama(build_byte_tokenizer(), seed=0)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_a_model_that_cannot_run_packed_runs_padded_and_says_why(varlen_calls, caplog):
    model = packing.set_padding_free(Wrapped())
    batch = mixed_batch()
    with caplog.at_level(logging.WARNING, logger="lit_align.models.packing"):
        packed = completion_scores(model, **batch)
    assert not varlen_calls
    assert "run padded: Wrapped is not an in-library transformers model" in caplog.text
    padded = completion_scores(model.inner, **batch, padding_free=False)
    assert torch.equal(packed.logps, padded.logps)
    eager = build_tiny_llama(build_byte_tokenizer(), seed=0)
    eager.config._attn_implementation = "some_custom_kernel"
    assert "some_custom_kernel" in packing.unsupported_reason(eager)


# -- modules -----------------------------------------------------------------------------------------
def _loss_and_grads(module, batch) -> tuple[torch.Tensor, dict, dict]:
    module.policy.zero_grad()
    loss, values = module.compute_loss(batch)
    loss.backward()
    flat = {k: v[0] if isinstance(v, tuple) else v for k, v in values.items()}
    return loss.detach(), {k: v.detach() for k, v in flat.items()}, grads(module)


def first_batch(cls: type) -> dict:
    """The first training batch (4 rows of the demo data) of the DataModule that feeds ``cls``."""
    if cls is KTO:
        dm = BinaryFeedbackDataModule(tokenizer="tiny-llama", batch_size=4, max_samples=16, val_size=0)
    elif cls is SFT:
        dm = SFTDataModule(tokenizer="tiny-llama", batch_size=4, max_samples=16, val_size=0)
    else:
        dm = PreferenceDataModule(tokenizer="tiny-llama", batch_size=4, max_samples=16, val_size=0)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("cls", [DPO, IPO, SimPO, ORPO, KTO, SFT], ids=lambda c: c.__name__)
def test_module_losses_metrics_and_gradients_are_the_same_packed(cls, varlen_calls):
    batch = first_batch(cls)
    results = {}
    for padding_free in (False, True):
        module = cls(policy="tiny-llama", padding_free=padding_free, shared_prefix=False)  # shared: test_shared_prefix
        results[padding_free] = _loss_and_grads(module, batch)
        assert bool(varlen_calls) == padding_free
    (loss0, values0, grads0), (loss1, values1, grads1) = results[False], results[True]
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=ATOL)
    assert values0.keys() == values1.keys()
    for name, value in values0.items():
        torch.testing.assert_close(values1[name].float(), value.float(), rtol=1e-5, atol=ATOL, msg=name)
    assert grads0.keys() == grads1.keys() and grads0
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=0, atol=ATOL, msg=name)


def test_grpo_update_is_the_same_packed(tmp_path, varlen_calls):
    """GRPO with β > 0 (reference pass) on a fixed rollout: rewards, advantages and the update's gradients."""
    tokenizer = build_byte_tokenizer()
    batch = prompt_batch(tmp_path, tokenizer, n=2)
    rollout = fixed_rollout(batch, tokenizer, 4, [2, 3, 4, 6, 1, 6, 5, 2])
    results = {}
    for padding_free in (False, True):
        policy, _ = load_model("tiny-llama")
        reference, _ = load_model("tiny-llama", seed=1)
        module = GRPO(policy=policy, reference_policy=reference, tokenizer=tokenizer, beta=0.1, num_generations=4,
                      sampling={"max_new_tokens": 8}, rewards={"reward_funcs": [length_reward]}, max_grad_norm=None,
                      learning_rate=1e-3,
                      padding_free=padding_free, shared_prefix=False)  # fmt: skip
        module.generate_samples = lambda *args, m=module: _with_logps(m, rollout)
        recorded = {}
        module.step_manual = lambda m=module, r=recorded: r.update(grads(m)) or {}
        out = module.update(batch)
        results[padding_free] = out, recorded
        assert bool(varlen_calls) == padding_free
    (out0, grads0), (out1, grads1) = results[False], results[True]
    assert out0.keys() == out1.keys()
    for name, value in out0.items():
        if not name.startswith("time/"):
            assert out1[name] == pytest.approx(value, rel=1e-5, abs=ATOL), name
    assert grads0.keys() == grads1.keys() and grads0
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=0, atol=ATOL, msg=name)


def _with_logps(module, rollout):
    """The fixed rollout with its sampling log-probs taken by the module (packed or padded, as configured)."""
    import copy

    rollout = copy.copy(rollout)
    rollout.logps = module._no_grad_logps(rollout, module.policy) * rollout.completion_mask
    return rollout


@pytest.mark.parametrize("cls", [DPO, SFT], ids=lambda c: c.__name__)
def test_gradient_checkpointing_recomputes_packed_rows_with_their_own_attention(cls, varlen_calls):
    """Found with the shared-prefix work: the packed pass switched the attention back before backward, so the
    checkpointed layers were recomputed with sdpa over the packed row (a CheckpointError)."""
    batch = first_batch(cls)
    results = {}
    for padding_free in (False, True):
        module = cls(policy="tiny-llama", padding_free=padding_free, shared_prefix=False, gradient_checkpointing=True)
        results[padding_free] = _loss_and_grads(module, batch)
    (loss0, _, grads0), (loss1, _, grads1) = results[False], results[True]
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=ATOL)
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=0, atol=ATOL, msg=name)
