"""Padding-free forwards: a padded (B, T) batch runs as ONE row of its N real tokens.

Every log-prob pass (:func:`lit_align.models.logprobs.completion_scores`, hence every algorithm's policy and reference
passes) can run padding-free: the tokens where ``attention_mask`` is 1 are concatenated into a (1, N) row, each
sequence with its own ``position_ids`` starting at 0, and attention stays inside each sequence. The per-position
results are scattered back to the (B, T) layout, so losses, metrics and batches are unchanged; only the
forward's cost is: activations, MLP and head work scale with the N real tokens instead of B·T (1.6× fewer on
HH-harmless pairs padded to their longest). Gradients equal the padded path's up to float rounding
(``tests/test_packing.py``, ≤1e-5).

Attention that respects the boundaries:

- on CPU (and any device without flash attention), :data:`VARLEN` attention: scaled-dot-product attention run
  per sequence (causal) over the cumulative lengths, so its cost is Σ Lᵢ², not N². Transformers' own packed
  mode (block-diagonal mask built from the reset ``position_ids``) is exact too but costs N² per layer;
  ``bench/packing.py`` measures the three.
- with ``flash_attention_2/3`` the model's own varlen kernels (transformers reads the same cumulative lengths).

Which models: in-library Hugging Face models (``transformers.models.*``, also under PEFT or FSDP2) whose forward
takes ``position_ids`` and whose attention is ``sdpa``, ``eager``, ``flash_attention_2/3`` or ``flex_attention``.
Anything else (custom ``nn.Module`` policies, remote code, reward heads) runs padded; the reason is logged once
(:func:`unsupported_reason`). A row whose real tokens are not one contiguous run (holes in the attention
mask) cannot be packed and raises.

Switched by the shared module option ``padding_free`` (:class:`~lit_align.training.base.AlignmentModule`), which
marks the module's policy and reference with :func:`set_padding_free`; a direct call of the log-prob functions takes
``padding_free=True``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

VARLEN = "lit_align_varlen"  # the attention implementation registered below
SUPPORTED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention", VARLEN)
FLASH = ("flash_attention_2", "flash_attention_3")
log = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()


def set_padding_free(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Mark ``model`` so that the log-prob passes over it run padding-free (``enabled``) or padded; returns it. The
    mark is a plain attribute: a deep copy (the default reference) carries it."""
    model._lit_align_padding_free = bool(enabled)
    return model


def is_enabled(model: nn.Module) -> bool:
    """Whether ``model`` is marked padding-free (PEFT and compile wrappers pass the lookup to the model inside)."""
    return bool(getattr(model, "_lit_align_padding_free", False))


class Packed(NamedTuple):
    """A (B, T) batch as one row: ``input_ids`` and ``position_ids`` (1, N); ``keep`` (B, T) marks where each packed
    token came from (row-major); ``cu_seqlens`` (S+1,) int32 the boundaries of the non-empty sequences; ``source``
    (B, T) the packed index of each real token (−1 at padding)."""

    input_ids: Tensor
    position_ids: Tensor
    keep: Tensor
    cu_seqlens: Tensor
    max_length: int
    source: Tensor

    def forward_kwargs(self) -> dict:
        """Keyword arguments of the model's forward: no attention mask (the boundaries are in the positions and the
        cumulative lengths, which transformers' flash path and :data:`VARLEN` read)."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": None,
            "use_cache": False,
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_length,
            "max_length_k": self.max_length,
        }

    def select(self, values: Tensor) -> Tensor:
        """(B, T, ...) values in the packed order, as (1, N, ...)."""
        return values[self.keep].unsqueeze(0)

    def unpack(self, values: Tensor, fill: float = 0) -> Tensor:
        """(1, N, ...) packed values back to (B, T, ...), ``fill`` at the padding."""
        out = values.new_full((*self.keep.shape, *values.shape[2:]), fill)
        return out.index_put((self.keep,), values[0])


def pack(input_ids: Tensor, attention_mask: Tensor) -> Packed:
    """Concatenate each row's real tokens (``attention_mask`` = 1, one contiguous run per row, left or right padded)."""
    keep = attention_mask.bool()
    lengths = keep.sum(1)
    first = keep.int().argmax(1)
    positions = torch.arange(keep.shape[1], device=keep.device)
    contiguous = (keep == ((positions >= first[:, None]) & (positions < (first + lengths)[:, None]))).all(1)
    if not bool(contiguous.all()):
        row = int((~contiguous).nonzero()[0])
        raise ValueError(
            f"padding-free batch: row {row}'s attention mask has holes (its real tokens are not one contiguous run), "
            "which a packed row cannot represent; run it padded (--model.padding_free false)"
        )
    position_ids = positions.expand_as(keep) - first[:, None]
    nonempty = lengths[lengths > 0]
    cu_seqlens = F.pad(nonempty.cumsum(0), (1, 0)).to(torch.int32)
    max_length = int(nonempty.max()) if len(nonempty) else 0
    source = torch.full(keep.shape, -1, dtype=torch.long, device=keep.device)
    source[keep] = torch.arange(int(lengths.sum()), device=keep.device)
    return Packed(input_ids[keep][None], position_ids[keep][None], keep, cu_seqlens, max_length, source)


# -- which models ----------------------------------------------------------------------------------------------
def _base_model(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)  # PEFT
    return get_base() if callable(get_base) else model


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot run padding-free (see the module docstring), or None if it can."""
    base = _base_model(model)
    in_library = any(cls.__module__.startswith("transformers.models.") for cls in type(base).__mro__)
    if not in_library:
        return f"{type(base).__name__} is not an in-library transformers model (its packed-row attention is unknown)"
    try:
        takes_positions = "position_ids" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        takes_positions = False
    if not takes_positions:
        return f"{type(base).__name__}.forward takes no position_ids"
    attention = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if attention not in SUPPORTED_ATTENTION:
        return f"its attention implementation is {attention!r}, not one of {', '.join(SUPPORTED_ATTENTION[:-1])}"
    return None


def log_fallback(model: nn.Module, reason: str) -> None:
    key = (type(model).__name__, reason)
    if key not in _logged:
        _logged.add(key)
        log.warning("padding-free passes of %s run padded: %s", type(model).__name__, reason)


# -- per-sequence attention ----------------------------------------------------------------------------------------
def varlen_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """Causal attention within each packed sequence: ``query`` (1, H, N, D), ``key``/``value`` (1, H_kv, N, D), the
    boundaries in ``kwargs["cu_seq_lens_q"]``. Without them (generation, a padded call) it is transformers' sdpa."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None or query.shape[0] != 1 or attention_mask is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    dropout = dropout if module.training else 0.0
    bounds = cu_seqlens.tolist()
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        parts.append(
            F.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=groups > 1,
            )
        )
    out = torch.cat(parts, dim=2) if parts else query.new_zeros(query.shape)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)


@contextmanager
def boundary_attention(model: nn.Module) -> Iterator[None]:
    """For one packed forward: :data:`VARLEN` attention unless the model runs flash attention (whose own varlen
    path transformers drives from the same cumulative lengths)."""
    config = getattr(_base_model(model), "config", None)
    current = getattr(config, "_attn_implementation", None)
    if config is None or current in FLASH or current == VARLEN:
        yield
        return
    _register()
    config._attn_implementation = VARLEN
    try:
        yield
    finally:
        config._attn_implementation = current


@contextmanager
def _attention_as(config, name: str) -> Iterator[None]:
    current = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = current


def recompute_context(model: nn.Module) -> Callable[[], tuple[AbstractContextManager, AbstractContextManager]]:
    """A ``context_fn`` for activation checkpointing (``torch.utils.checkpoint``, non-reentrant) of ``model``: the
    recomputation in backward runs with the attention implementation that the forward ran with.

    The packed passes switch the model's attention for one forward (:func:`boundary_attention`,
    :func:`lit_align.models.shared_prefix.prefix_attention`) and switch it back before backward; without this, a
    checkpointed layer would be recomputed with the model's own attention over the packed row and fail (or,
    with the same saved-tensor count, silently differ)."""
    config = getattr(_base_model(model), "config", None)

    def context_fn() -> tuple[AbstractContextManager, AbstractContextManager]:
        if config is None:
            return nullcontext(), nullcontext()
        return nullcontext(), _attention_as(config, config._attn_implementation)

    return context_fn

