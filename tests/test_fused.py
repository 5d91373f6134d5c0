"""Fused RMSNorm / SwiGLU layers (``lit_align.models.fused``): exact gradients, the saved-activation saving, the guard.

- The three autograd functions pass ``gradcheck`` in float64 (their hand-written backward against finite
  differences).
- A model with fused layers gives the eager model's outputs and every parameter's gradient (≤1e-5), padded and
  packed, plain and with LoRA (whose wrapped ``down_proj`` takes the product-saving fallback), and the
  modules' losses and gradients with ``fused_layers`` on and off agree.
- What autograd keeps for backward shrinks by exactly ``2·hidden + 2·intermediate`` floats per token and layer:
  counted with ``saved_tensors_hooks``, so the claim in the module docstring is measured, not assumed.
- Look-alikes with other semantics (Gemma's ``1 + weight`` norm, a GELU MLP) keep their eager forward.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lit_align.algorithms import DPO, KTO, SFT
from lit_align.models.fused import (
    FusedRMSNorm,
    FusedSwiGLU,
    _RMSNormFunction,
    _SwiGLUDownFunction,
    _SwiGLUFunction,
    fuse_layers,
)
from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama
from lit_align.models.logprobs import completion_scores
from tests.test_packing import first_batch, mixed_batch

ATOL = 1e-5


def _double(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


def test_the_hand_written_backwards_match_finite_differences():
    x, w = _double(2, 3, 8, seed=0), _double(8, seed=1)
    assert torch.autograd.gradcheck(lambda x, w: _RMSNormFunction.apply(x, w, 1e-6), (x, w))
    gate, up = _double(2, 3, 5, seed=2), _double(2, 3, 5, seed=3)
    assert torch.autograd.gradcheck(_SwiGLUFunction.apply, (gate, up))
    weight, bias = _double(4, 5, seed=4), _double(4, seed=5)
    assert torch.autograd.gradcheck(_SwiGLUDownFunction.apply, (gate, up, weight, bias))
    assert torch.autograd.gradcheck(_SwiGLUDownFunction.apply, (gate, up, weight, None))


def test_rmsnorm_of_a_constant_row_is_the_weight():
    """x = c·1 gives mean(x²) = c², so x/sqrt(c² + eps) ≈ 1 (eps = 0 here): the output is the weight itself."""
    weight = torch.tensor([0.5, -2.0, 3.0])
    out = _RMSNormFunction.apply(torch.full((1, 3), 4.0), weight, 0.0)
    torch.testing.assert_close(out, weight[None], rtol=0, atol=1e-7)


def _tiny_pair() -> tuple[nn.Module, nn.Module, dict[str, int]]:
    eager = build_tiny_llama(build_byte_tokenizer(), seed=0)
    fused = copy.deepcopy(eager)
    return eager, fused, fuse_layers(fused)


def test_every_norm_and_mlp_is_swapped_keeping_the_parameters_and_their_names():
    eager, fused, counts = _tiny_pair()
    layers = eager.config.num_hidden_layers
    assert counts == {"rmsnorm": 2 * layers + 1, "swiglu": layers}
    assert isinstance(fused.model.layers[0].mlp, FusedSwiGLU) and isinstance(fused.model.norm, FusedRMSNorm)
    assert list(fused.state_dict()) == list(eager.state_dict())
    assert fuse_layers(fused) == {"rmsnorm": 0, "swiglu": 0}  # idempotent


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fused_outputs_and_gradients_equal_the_eager_ones(padding_free, lora):
    eager, fused, _ = _tiny_pair()
    if lora:
        from lit_align.models.loading import apply_lora

        def adapted(model: nn.Module) -> nn.Module:
            torch.manual_seed(0)  # the same adapter initialization on both
            return apply_lora(model, 4, 16, 0.0, "all-linear")

        eager, fused = adapted(eager), adapted(fused)
        down_proj = fused.base_model.model.model.layers[0].mlp.down_proj
        assert type(down_proj) is not nn.Linear  # the LoRA wrapper: the product-saving fallback runs
    batch = mixed_batch()
    weights = torch.randn(batch["labels"].shape, generator=torch.Generator().manual_seed(1))
    results = []
    for model in (eager, fused):
        scores = completion_scores(model, **batch, with_entropy=True, padding_free=padding_free)
        (scores.logps * weights).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((scores, grads))
    (eager_scores, eager_grads), (fused_scores, fused_grads) = results
    torch.testing.assert_close(fused_scores.logps, eager_scores.logps, rtol=0, atol=ATOL)
    torch.testing.assert_close(fused_scores.entropy, eager_scores.entropy, rtol=0, atol=ATOL)
    assert eager_grads.keys() == fused_grads.keys() and eager_grads
    for name, grad in eager_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=0, atol=ATOL, msg=name)


def _saved_floats(model: nn.Module, input_ids: torch.Tensor) -> int:
    """Floats autograd keeps for backward (distinct storages, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model.model(input_ids=input_ids).last_hidden_state.sum().backward()
    return sum(storages.values())


def test_backward_keeps_two_hidden_and_two_intermediate_floats_less_per_token_and_layer():
    eager, fused, _ = _tiny_pair()
    tokens, config = 40, eager.config
    input_ids = torch.randint(3, 250, (1, tokens), generator=torch.Generator().manual_seed(0))
    saved = _saved_floats(eager, input_ids) - _saved_floats(fused, input_ids)
    per_layer = 2 * config.hidden_size + 2 * config.intermediate_size
    # each layer: two norms (hidden each) and the MLP (2 · intermediate); plus the final norm (hidden)
    assert saved == tokens * (config.num_hidden_layers * per_layer + config.hidden_size)


class OnePlusWeightRMSNorm(nn.Module):
    """Gemma's convention: (1 + weight) · x / rms(x). Named like an RMSNorm, but not the fused one's formula."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width))
        self.variance_epsilon = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


class GeluMLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(width, 8), nn.Linear(width, 8), nn.Linear(8, width)
        self.act_fn = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_look_alikes_with_other_semantics_keep_their_eager_forward():
    model = nn.Sequential(OnePlusWeightRMSNorm(6), GeluMLP(6))
    assert fuse_layers(model) == {"rmsnorm": 0, "swiglu": 0}
    assert isinstance(model[0], OnePlusWeightRMSNorm) and isinstance(model[1], GeluMLP)


@pytest.mark.parametrize("cls", [DPO, KTO, SFT], ids=lambda c: c.__name__)
def test_module_losses_and_gradients_are_the_same_with_fused_layers(cls):
    batch = first_batch(cls)
    results = []
    for fused_layers in (False, True):
        module = cls(policy="tiny-llama", fused_layers=fused_layers)
        assert isinstance(module.policy.model.norm, FusedRMSNorm) == fused_layers
        loss, _ = module.compute_loss(batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in module.policy.named_parameters()}))
    (loss0, grads0), (loss1, grads1) = results
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=ATOL)
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=0, atol=ATOL, msg=name)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_outputs_are_identical_and_gradients_agree_to_bf16_precision(precision):
    """Forward: the same ops in the same dtypes, bit for bit. Backward: the fused functions accumulate in float32
    where the eager graph rounds intermediate gradients to bf16 (8 mantissa bits: ~0.4% per rounding), so the
    gradients agree to a few bf16 roundings, not to 1e-5."""
    eager, fused, _ = _tiny_pair()
    if precision == "bf16-true":
        eager, fused = eager.bfloat16(), fused.bfloat16()
    input_ids = torch.randint(3, 250, (2, 17), generator=torch.Generator().manual_seed(0))
    results = []
    for model in (eager, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = model(input_ids=input_ids).logits
        logits.float().pow(2).mean().backward()
        results.append((logits.detach(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (eager_logits, eager_grads), (fused_logits, fused_grads) = results
    assert fused_logits.dtype == eager_logits.dtype == torch.bfloat16
    assert torch.equal(fused_logits, eager_logits)
    for name, grad in eager_grads.items():
        scale = grad.abs().max()
        assert (fused_grads[name] - grad).abs().max() <= 0.02 * scale, name
