"""Fused RMSNorm and SwiGLU layers: the same forward and gradients, less activation memory.

A decoder layer's activation memory is dominated by what autograd saves for backward, not by the GEMMs. In a
Llama-style layer (SmolLM2: hidden 576, MLP 1,536) the eager modules save per token and layer:

- each RMSNorm: its input, ``rsqrt(mean(x²) + eps)`` and the normalized ``x · rstd`` (for the weight's gradient),
  so the normalized copy is a third hidden-sized tensor beside the output the next projection keeps;
- the MLP ``down(silu(gate) · up)``: ``gate`` (for SiLU), ``silu(gate)`` and ``up`` (for the product), and the
  product (for ``down``'s weight gradient): four intermediate-sized tensors.

The fused versions save only what backward cannot cheaply rebuild and recompute the elementwise rest (the way
Liger's GPU kernels do): RMSNorm keeps its input and the per-token ``rstd``; the MLP keeps ``gate`` and ``up``
and rebuilds ``silu(gate)`` and the product in backward. That is 2 · hidden + 2 · intermediate fewer floats per
token and layer (4,224 of about 11,800 for SmolLM2), for elementwise recomputation only: no GEMM runs twice,
unlike gradient checkpointing. ``bench/compare.py`` measures the effect on DPO's peak memory.

Which modules: RMSNorms that compute ``weight · normalize(x)`` in float32 (Llama, Mistral, Qwen2/3 and the like)
and MLPs ``down_proj(silu(gate_proj(x)) · up_proj(x))``; each candidate must reproduce the eager module's output
on a probe input before it is swapped, so a look-alike with other semantics (Gemma's ``1 + weight``, a GELU MLP)
keeps its own module. The swap keeps the parameters and their names (checkpoints, ``save_pretrained``, LoRA
targets and FSDP2 are unaffected). When ``down_proj`` is not a plain ``nn.Linear`` (LoRA, quantized, hooked) it
runs as its own module and only ``silu(gate) · up`` is fused (its product is then saved by ``down_proj``).

Switched by the shared module option ``fused_layers`` (:class:`~lit_align.training.base.AlignmentModule`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

log = logging.getLogger(__name__)


# -- RMSNorm -------------------------------------------------------------------------------------------------------
class _RMSNormFunction(torch.autograd.Function):
    """``weight · (x · rstd).to(x.dtype)`` with ``rstd = rsqrt(mean(x²) + eps)`` in float32; saves x and rstd."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        x32 = x.to(rstd.dtype)
        normed = (x32 * rstd).to(x.dtype)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_out * normed).reshape(-1, weight.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d/dx_j of x_j·r with r = (mean(x²)+eps)^(-1/2): r·g_j − r³·x_j·mean(g·x), g = grad_out·weight
            g = (grad_out * weight).to(rstd.dtype)
            grad_x = (rstd * g - rstd.pow(3) * x32 * (g * x32).mean(-1, keepdim=True)).to(x.dtype)
        return grad_x, grad_weight, None


class FusedRMSNorm(nn.Module):
    """An RMSNorm (``weight · x / sqrt(mean(x²) + eps)``) whose backward recomputes the normalized input."""

    def __init__(self, weight: nn.Parameter, eps: float) -> None:
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps

    def forward(self, hidden_states: Tensor) -> Tensor:
        return _RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, fused"


# -- SwiGLU MLP ------------------------------------------------------------------------------------------------------
def _silu_grad(gate: Tensor) -> tuple[Tensor, Tensor]:
    """silu(gate) and its derivative σ(g)·(1 + g·(1 − σ(g)))."""
    sig = torch.sigmoid(gate)
    return gate * sig, sig * (1 + gate * (1 - sig))


class _SwiGLUFunction(torch.autograd.Function):
    """``silu(gate) · up``; saves gate and up only."""

    @staticmethod
    def forward(ctx: Any, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor]:
        gate, up = ctx.saved_tensors
        act, dact = _silu_grad(gate)
        return grad_out * up * dact, grad_out * act


class _SwiGLUDownFunction(torch.autograd.Function):
    """``linear(silu(gate) · up, weight, bias)``; saves gate, up and the weight, rebuilds the product in backward.
    Under autocast the product and weight go to the autocast dtype, as ``nn.Linear`` would."""

    @staticmethod
    def forward(ctx: Any, gate: Tensor, up: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        product = F.silu(gate) * up
        device = product.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        ctx.save_for_backward(gate, up, weight)
        ctx.dtype, ctx.has_bias = dtype, bias is not None
        if dtype is not None:
            with torch.autocast(device, enabled=False):
                bias = None if bias is None else bias.to(dtype)
                return F.linear(product.to(dtype), weight.to(dtype), bias)
        return F.linear(product, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        gate, up, weight = ctx.saved_tensors
        act, dact = _silu_grad(gate)
        product = act * up
        w = weight if ctx.dtype is None else weight.to(ctx.dtype)
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_weight = (flat_grad.t() @ product.reshape(-1, product.shape[-1]).to(w.dtype)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = flat_grad.sum(0)
        grad_product = (grad_out @ w).to(product.dtype)
        return grad_product * up * dact, grad_product * act, grad_weight, grad_bias


def _plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` whose forward is exactly ``F.linear`` (no LoRA wrapper, quantization or hooks)."""
    return type(module) is nn.Linear and not module._forward_hooks and not module._forward_pre_hooks


class FusedSwiGLU(nn.Module):
    """``down_proj(silu(gate_proj(x)) · up_proj(x))`` saving gate and up only (the same child modules)."""

    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        if _plain_linear(self.down_proj):
            return _SwiGLUDownFunction.apply(gate, up, self.down_proj.weight, self.down_proj.bias)
        return self.down_proj(_SwiGLUFunction.apply(gate, up))


# -- the swap ------------------------------------------------------------------------------------------------------
def _fused_counterpart(module: nn.Module) -> nn.Module | None:
    """The fused replacement of ``module`` if it looks like an RMSNorm or a SwiGLU MLP, else None."""
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if type(module).__name__.endswith("RMSNorm") and isinstance(weight, nn.Parameter) and weight.dim() == 1:
        if isinstance(eps, float):
            return FusedRMSNorm(weight, eps)
    children = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    act = getattr(module, "act_fn", None)
    silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"
    if silu and all(isinstance(child, nn.Module) for child in children) and len(module._modules) <= 4:
        return FusedSwiGLU(*children)
    return None


@torch.no_grad()
def _same_output(eager: nn.Module, fused: nn.Module, width: int) -> bool:
    """Whether ``fused`` reproduces ``eager`` on a random (2, 3, width) input."""
    param = next(eager.parameters())
    probe = torch.randn(2, 3, width, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    try:
        expected, got = eager(probe), fused(probe)
    except Exception:  # noqa: BLE001 - an unexpected layout is a mismatch, not a crash
        return False
    tol = 1e-5 if param.dtype == torch.float32 else 1e-2
    return expected.shape == got.shape and torch.allclose(expected, got, rtol=tol, atol=tol)


def _input_width(module: nn.Module) -> int | None:
    if isinstance(module, FusedRMSNorm):
        return module.weight.shape[0]
    weight = getattr(module.gate_proj, "weight", None)
    return None if weight is None or weight.dim() != 2 else weight.shape[1]


def fuse_layers(model: nn.Module) -> dict[str, int]:
    """Swap ``model``'s RMSNorms and SwiGLU MLPs for their fused versions in place (module docstring); returns how
    many of each were swapped. Idempotent; meta-device (not yet materialized) modules are left alone."""
    counts = {"rmsnorm": 0, "swiglu": 0}
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is None or isinstance(child, (FusedRMSNorm, FusedSwiGLU)):
                continue
            fused = _fused_counterpart(child)
            if fused is None or any(p.is_meta for p in child.parameters()):
                continue
            width = _input_width(fused)
            if width is None or not _same_output(child, fused, width):
                log.info("%s (%s) keeps its eager forward: the fused one differs", name, type(child).__name__)
                continue
            fused.train(child.training)
            setattr(parent, name, fused)
            counts["rmsnorm" if isinstance(fused, FusedRMSNorm) else "swiglu"] += 1
    return counts


def log_fused(model: nn.Module, role: str) -> dict[str, int]:
    """:func:`fuse_layers` on a module's ``role`` model (policy, critic), logging what was swapped."""
    counts = fuse_layers(model)
    log.info("%s: %d RMSNorm and %d SwiGLU layers fused", role, counts["rmsnorm"], counts["swiglu"])
    return counts
