"""The shared-prefix attention kernels (``lit_align.models.shared_prefix``): flex attention against SDPA with a block
mask, the unshared padding-free pass and the padded one; which kernel ``auto`` picks.

torch 2.13 runs flex attention's forward on CPU but refuses its backward there (``_validate_device``). The gradient
comparisons lift that check (``flex_backward_on_cpu``): the eager flex path then differentiates its dense reference
implementation, which tests what is ours (the layout's mask, the scale, GQA); the fused CUDA kernels that ``auto``
picks on a GPU are torch's and are not run here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention.flex_attention as flex_module
from transformers import AttentionInterface

from lit_align.algorithms import DPO
from lit_align.models import shared_prefix
from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama
from lit_align.models.logprobs import completion_scores
from lit_align.models.shared_prefix import SHARED, SHARED_FLEX, Layout, Segment
from tests.test_shared_prefix import ATOL, _loss_values_grads, first_batch, pair_batch

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    original = flex_module._validate_device

    def validate(query, key, value):
        if query.device.type != "cpu":
            original(query, key, value)

    monkeypatch.setattr(flex_module, "_validate_device", validate)


@pytest.fixture
def kernel_calls(monkeypatch) -> dict[str, int]:
    """How many layer calls each shared-prefix kernel received with a layout, and how many BlockMasks were built."""
    calls = {SHARED: 0, SHARED_FLEX: 0, "block_masks": 0}
    wrapped = {SHARED: shared_prefix.shared_prefix_attention_forward,
               SHARED_FLEX: shared_prefix.flex_shared_prefix_attention_forward}  # fmt: skip
    original_register = shared_prefix._register

    def spy(name):
        def forward(module, query, key, value, attention_mask, *args, **kwargs):
            calls[name] += kwargs.get(shared_prefix.SEGMENTS) is not None
            return wrapped[name](module, query, key, value, attention_mask, *args, **kwargs)

        return forward

    def register():
        original_register()
        for name in wrapped:
            monkeypatch.setitem(AttentionInterface._global_mapping, name, spy(name))

    make = Layout._make_block_mask

    def make_block_mask(self, *args):
        calls["block_masks"] += 1
        return make(self, *args)

    monkeypatch.setattr(shared_prefix, "_register", register)
    monkeypatch.setattr(Layout, "_make_block_mask", make_block_mask)
    return calls


def _scores_and_grads(model, batch, groups, *, shared: bool, kernel="auto", padding_free: bool = True):
    shared_prefix.set_shared_prefix(model, shared, kernel)
    model.zero_grad()
    scores = completion_scores(model, **batch, with_entropy=True, with_accuracy=True, temperature=0.7,
                               padding_free=padding_free, groups=groups)  # fmt: skip
    weights = torch.randn(batch["labels"].shape, generator=torch.Generator().manual_seed(1))
    (scores.logps * weights).sum().backward()
    return scores, {n: p.grad.clone() for n, p in model.named_parameters()}


# -- the model's pass ---------------------------------------------------------------------------------------------
def test_flex_scores_and_gradients_equal_sdpa_unshared_and_padded(flex_backward_on_cpu, kernel_calls):
    """pair_batch: matching prompts, prompts cut differently (nothing shared), completions that begin alike, an empty
    completion, left padding; the tiny Llama has 4 query heads over 2 KV heads (GQA)."""
    model = build_tiny_llama(build_byte_tokenizer(), seed=0)
    assert model.config.num_attention_heads != model.config.num_key_value_heads
    batch, groups = pair_batch()
    flex, flex_grads = _scores_and_grads(model, batch, groups, shared=True, kernel="flex")
    layers = model.config.num_hidden_layers
    assert kernel_calls == {SHARED: 0, SHARED_FLEX: layers, "block_masks": 1}  # one BlockMask for every layer
    assert model.config._attn_implementation == "sdpa"  # restored
    others = ({"shared": True, "kernel": "sdpa"}, {"shared": False}, {"shared": False, "padding_free": False})
    for other in others:
        ref, ref_grads = _scores_and_grads(model, batch, groups, **other)
        assert torch.equal(ref.mask, flex.mask)
        for name in ("logps", "mean_logits", "entropy"):
            torch.testing.assert_close(getattr(flex, name), getattr(ref, name), rtol=0, atol=ATOL, msg=name)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(flex_grads[name], grad, rtol=0, atol=ATOL, msg=f"{other}: {name}")
    assert kernel_calls[SHARED] == layers and kernel_calls[SHARED_FLEX] == layers


def test_the_module_option_reaches_policy_and_reference_and_checkpointing_recomputes_with_flex(
    flex_backward_on_cpu, kernel_calls
):
    """``shared_prefix_kernel`` of DPO: the policy and its reference run flex; a checkpointed layer recomputes with
    flex and the forward's BlockMask; loss and gradients equal the SDPA kernel's."""
    batch = first_batch()
    results = {}
    for kernel in ("sdpa", "flex"):
        module = DPO(policy="tiny-llama", shared_prefix_kernel=kernel, gradient_checkpointing=True)
        assert shared_prefix.kernel_of(module.policy) == shared_prefix.kernel_of(module.reference) == kernel
        results[kernel] = _loss_values_grads(module, batch)
    layers = module.policy.config.num_hidden_layers
    assert kernel_calls == {SHARED: 3 * layers, SHARED_FLEX: 3 * layers, "block_masks": 2}  # policy, reference
    (loss0, values0, grads0), (loss1, values1, grads1) = results["sdpa"], results["flex"]
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=ATOL)
    for name, value in values0.items():
        torch.testing.assert_close(values1[name].float(), value.float(), rtol=1e-5, atol=ATOL, msg=name)
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=0, atol=ATOL, msg=name)


# -- the attention op ---------------------------------------------------------------------------------------------
LAYOUT = Layout((
    Segment(0, 7, ((7, 5), (12, 3), (15, 1))),  # a prompt and three completions
    Segment(16, 0, ((16, 4), (20, 6))),  # a group that shares nothing
    Segment(26, 5, ()),  # a row that is its group's whole prefix (empty completions)
    Segment(31, 0, ((31, 2),)),  # a row in no group
))  # fmt: skip


class _Attention(torch.nn.Module):
    pass


@pytest.mark.parametrize("heads", [(4, 4), (9, 3)], ids=["mha", "gqa_9_over_3"])
def test_flex_kernel_equals_the_sdpa_kernel_on_the_op(heads, flex_backward_on_cpu):
    gen = torch.Generator().manual_seed(0)
    n, d = 33, 16
    q, k, v = (torch.randn(1, h, n, d, generator=gen, requires_grad=True) for h in (heads[0], heads[1], heads[1]))
    module, grad_out = _Attention(), torch.randn(1, n, heads[0], d, generator=gen)
    outs = {}
    for name, forward in ((SHARED, shared_prefix.shared_prefix_attention_forward),
                          (SHARED_FLEX, shared_prefix.flex_shared_prefix_attention_forward)):  # fmt: skip
        out, _ = forward(module, q, k, v, None, scaling=0.3, **{shared_prefix.SEGMENTS: Layout(LAYOUT)})
        outs[name] = out, torch.autograd.grad(out, (q, k, v), grad_out)
    torch.testing.assert_close(outs[SHARED_FLEX][0], outs[SHARED][0], rtol=0, atol=ATOL)
    for a, b in zip(outs[SHARED_FLEX][1], outs[SHARED][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_flex_refuses_what_it_cannot_run():
    q = torch.randn(1, 4, 33, 8, requires_grad=True)
    module, layout = _Attention(), {shared_prefix.SEGMENTS: LAYOUT}
    with pytest.raises(ValueError, match="does not support backward on CPU.*Use 'auto' or 'sdpa'"):  # torch 2.13
        shared_prefix.flex_shared_prefix_attention_forward(module, q, q, q, None, **layout)
    shared_prefix.flex_shared_prefix_attention_forward(module, *[q.detach()] * 3, None, **layout)  # no grad: runs
    module.train()
    with pytest.raises(ValueError, match="no attention dropout"):
        shared_prefix.flex_shared_prefix_attention_forward(module, q, q, q, None, dropout=0.1, **layout)
    for forward in (shared_prefix.shared_prefix_attention_forward, shared_prefix.flex_shared_prefix_attention_forward):
        with pytest.raises(ValueError, match="softcap"):
            forward(module, q.detach(), q.detach(), q.detach(), None, softcap=30.0, **layout)
    with pytest.raises(ValueError, match="covers 33 tokens, the row has 34"):
        LAYOUT.block_mask(34, torch.device("cpu"))


# -- which kernel runs where --------------------------------------------------------------------------------------
def test_auto_runs_sdpa_on_cpu_and_flex_where_it_runs_compiled(monkeypatch):
    model = build_tiny_llama(build_byte_tokenizer(), seed=0)
    assert not shared_prefix.flex_available(torch.device("cpu"))
    assert shared_prefix.attention_name(shared_prefix.set_shared_prefix(model)) == SHARED  # auto on CPU
    assert shared_prefix.attention_name(shared_prefix.set_shared_prefix(model, kernel="flex")) == SHARED_FLEX
    assert shared_prefix.attention_name(shared_prefix.set_shared_prefix(model, kernel="sdpa")) == SHARED
    monkeypatch.setattr(shared_prefix, "flex_available", lambda device: True)  # as on CUDA with triton
    assert shared_prefix.attention_name(shared_prefix.set_shared_prefix(model)) == SHARED_FLEX
    model.config.attention_dropout = 0.1
    assert shared_prefix.attention_name(model.train()) == SHARED  # flex has no dropout
    assert shared_prefix.attention_name(model.eval()) == SHARED_FLEX
    with pytest.raises(ValueError, match="shared_prefix_kernel='flash'"):
        shared_prefix.set_shared_prefix(model, kernel="flash")
