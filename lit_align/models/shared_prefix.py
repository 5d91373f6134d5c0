"""Shared-prefix passes: the rows of a pair or a group that start with the same tokens run that prefix ONCE.

A preference pair is ``[prompt, chosen]`` and ``[prompt, rejected]``; an online group is ``[prompt, c_i]`` for
G completions. Padding-free (:mod:`lit_align.models.packing`) they would be packed as 2 (or G) whole sequences, so
the prompt's forward, backward and activations are paid 2 (or G) times. Here each group is packed as
``[prefix, suffix_1, ..., suffix_G]``:

- the prefix is the group's longest common prefix of real tokens (the prompt, or part of it when truncation cut
  the rows differently, or more when two completions begin alike), found from the token ids themselves, so
  nothing about the data's format is assumed; a group whose rows share nothing runs as separate sequences;
- every suffix token attends to the whole prefix and causally to its own suffix, never to another suffix;
- positions continue after the prefix in every suffix (``p, p+1, ...``), as in the row it came from.

Each original (row, position) reads its hidden state from the packed row (``SharedRow.source``): a prefix token
from the shared copy, so the last prompt position, which predicts every completion's first token, is scored
once per row against that row's target. Outputs and gradients equal the unshared pass up to float rounding
(``tests/test_shared_prefix.py``); the gradient of a shared position is the sum of its rows' gradients, which is
what the unshared pass sums too.

Attention kernels, chosen by the module option ``shared_prefix_kernel`` (:func:`set_shared_prefix`'s ``kernel``;
:func:`attention_name` resolves it when a forward starts, and a checkpointed layer recomputes with the same):

- ``sdpa`` (:data:`SHARED`): per group, causal scaled-dot-product attention over the prefix, then one call per
  suffix over ``[prefix keys, suffix keys]`` with a boolean block mask (all prefix keys, causal in the suffix).
  Cost per group P² + Σ Lᵢ·(P + Lᵢ) instead of Σ (P + Lᵢ)². Any device, forward and backward, attention dropout.
- ``flex`` (:data:`SHARED_FLEX`): ONE ``flex_attention`` call over the whole packed row, masked by a ``BlockMask``
  of the layout (a key in the query's segment, at or before it, in the prefix or in the query's own suffix) that
  :class:`Layout` builds once per forward (O(N²) booleans) for every layer; GQA, the model's scaling. Compiled
  (fused, block-sparse) on CUDA; eager elsewhere, which materializes the scores. torch 2.13 has no flex backward
  on CPU (a pass with gradients raises, naming this option); no attention dropout (refused).
- ``auto`` (default): ``flex`` on CUDA with triton (compiled), unless attention dropout runs; ``sdpa`` on CPU and
  everywhere else. On CPU SDPA is the faster too (forward only, 2 threads, 8 completions of 64 tokens after a
  200-token prompt, 9 query heads over 3 KV heads of 64: SDPA kernel 3.3 ms; flex compiled 6.1 ms plus 7.5-9 ms
  for the BlockMask; flex eager 48-52 ms; the unshared SDPA pass over the 8 rows 7.1 ms). The GPU side of ``auto``
  (flex compiled on CUDA) is unmeasured and untested here: no GPU was lent.

Neither kernel applies a logit softcap (refused, as transformers' sdpa refuses it). Flash-attention models run
these kernels too during a shared pass. Not built, flash-attn with the prefix's KV shared: ``flash_attn_varlen_func``
pairs the k-th query sequence with the k-th key sequence only, so a suffix cannot read its segment's prefix in one
call unless the prefix's K/V are copied in front of every suffix (a gather of Σ (P + Lᵢ) keys per layer; the
prefix's queries still run once, in a second causal varlen call, and the causal mask is aligned bottom-right, as
this layout needs). That pair of varlen calls is the variant that would train; ``flash_attn_with_kvcache`` shares
the prefix's KV without a copy (paged, each suffix's block table pointing at the prefix's pages) but has no
backward and needs 256-token pages (flash-attn 2), so it would serve no-grad passes only. Both unverified: flash-attn
needs a GPU, and none was lent.

Switched by the shared module option ``shared_prefix`` (:class:`~lit_align.training.base.AlignmentModule`),
which marks the policy and reference with :func:`set_shared_prefix`; it applies to padding-free passes that are
given groups (pairs: :func:`lit_align.models.logprobs.preference_logps`, ORPO).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lit_align.errors import OptionError
from lit_align.models.packing import _base_model, pack

SHARED = "lit_align_shared_prefix"  # the attention implementations registered below: SDPA kernel
SHARED_FLEX = "lit_align_shared_prefix_flex"  # flex kernel
SEGMENTS = "lit_align_segments"  # the forward keyword that carries the layout to the attention
Kernel = Literal["auto", "sdpa", "flex"]
KERNELS: tuple[str, ...] = get_args(Kernel)


def set_shared_prefix(model: nn.Module, enabled: bool = True, kernel: Kernel = "auto") -> nn.Module:
    """Mark ``model`` so that its padding-free passes over groups share their prefixes (``enabled``), with the
    attention ``kernel`` (see the module docstring); returns it."""
    if kernel not in KERNELS:
        raise OptionError(f"shared_prefix_kernel={kernel!r}: one of {', '.join(KERNELS)}")
    model._lit_align_shared_prefix = bool(enabled)
    model._lit_align_shared_prefix_kernel = kernel
    return model


def is_enabled(model: nn.Module) -> bool:
    return bool(getattr(model, "_lit_align_shared_prefix", False))


def kernel_of(model: nn.Module) -> Kernel:
    return getattr(model, "_lit_align_shared_prefix_kernel", "auto")


class Segment(NamedTuple):
    """One group in the packed row: the prefix at ``[start, start + length)``, then its suffixes."""

    start: int
    length: int
    suffixes: tuple[tuple[int, int], ...]  # (start, length), each non-empty


class Layout(tuple):
    """A :class:`SharedRow`'s segments (a tuple of :class:`Segment`), holding the flex kernel's ``BlockMask``: built
    by the first layer of a forward, reused by the others and by a checkpointed layer's recomputation."""

    def block_mask(self, n: int, device: torch.device):
        key = (n, str(device))
        cached = self.__dict__.get("_block_mask")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_block_mask"] = key, self._make_block_mask(n, device)
        return cached[1]

    def _make_block_mask(self, n: int, device: torch.device):
        """Key k is visible from query q when both are in one segment, k <= q, and k is in the segment's prefix or
        in q's own run (q's suffix; the prefix itself for a prefix token). O(n²) booleans once, on ``device``."""
        from torch.nn.attention.flex_attention import create_block_mask

        runs = [(s, n_, seg.start, seg.start + seg.length) for seg in self
                for s, n_ in ((seg.start, seg.length), *seg.suffixes) if n_]  # fmt: skip
        if sum(r[1] for r in runs) != n:
            raise ValueError(f"shared-prefix layout covers {sum(r[1] for r in runs)} tokens, the row has {n}")
        lengths = torch.tensor([r[1] for r in runs], device=device)
        own, lo, hi = (torch.tensor([r[i] for r in runs], device=device).repeat_interleave(lengths) for i in (0, 2, 3))

        def mask_mod(b, h, q, k):
            return (k <= q) & ((k >= own[q]) | ((k >= lo[q]) & (k < hi[q])))

        return create_block_mask(mask_mod, None, None, n, n, device=device)


class SharedRow(NamedTuple):
    """A (B, T) batch as one row with each group's prefix once: ``input_ids``/``position_ids`` (1, N); ``source``
    (B, T) the packed index each real token reads (−1 at padding); ``segments`` the layout."""

    input_ids: Tensor
    position_ids: Tensor
    source: Tensor
    segments: Layout  # a tuple of Segment
    shared_tokens: int  # real tokens of the batch not computed again (Σ over groups of (rows − 1) · prefix)

    def forward_kwargs(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": None,
            "use_cache": False,
            SEGMENTS: self.segments,
        }


def _common_prefix(rows: list[Tensor]) -> int:
    shortest = min(len(r) for r in rows)
    if shortest == 0 or len(rows) < 2:
        return 0
    stacked = torch.stack([r[:shortest] for r in rows])
    differs = (stacked != stacked[:1]).any(0)
    return int(differs.int().argmax()) if bool(differs.any()) else shortest


def share(input_ids: Tensor, attention_mask: Tensor, groups: Sequence[Sequence[int]]) -> SharedRow:
    """Pack ``input_ids`` (B, T) (one contiguous run of real tokens per row, left or right padded) with each group's
    common prefix once. ``groups`` partition (a subset of) the rows; rows in no group run alone."""
    plain = pack(input_ids, attention_mask)  # checks contiguity; its positions are each token's position in its row
    keep = plain.keep
    starts = keep.int().argmax(1).tolist()
    lengths = keep.sum(1).tolist()
    grouped = {r for g in groups for r in g}
    if len(grouped) != sum(len(g) for g in groups) or any(not 0 <= r < len(lengths) for r in grouped):
        raise ValueError(f"shared-prefix groups must be disjoint row indices of the batch (0..{len(lengths) - 1})")
    order = [list(g) for g in groups if g] + [[r] for r in range(len(lengths)) if r not in grouped]
    tokens, positions, segments, shared = [], [], [], 0
    source = torch.full(keep.shape, -1, dtype=torch.long, device=input_ids.device)
    at = 0
    for group in order:
        rows = [input_ids[r, starts[r] : starts[r] + lengths[r]] for r in group]
        prefix = _common_prefix(rows) if len(group) > 1 else 0
        prefix_start = at
        if prefix:
            tokens.append(rows[0][:prefix])
            positions.append(torch.arange(prefix, device=input_ids.device))
            at += prefix
            shared += prefix * (len(group) - 1)
        suffixes = []
        for r, ids in zip(group, rows, strict=True):
            n = len(ids) - prefix
            index = torch.arange(lengths[r], device=input_ids.device)
            packed_index = torch.where(index < prefix, prefix_start + index, at + index - prefix)
            source[r, starts[r] : starts[r] + lengths[r]] = packed_index
            if n:
                tokens.append(ids[prefix:])
                positions.append(torch.arange(prefix, len(ids), device=input_ids.device))
                suffixes.append((at, n))
                at += n
        segments.append(Segment(prefix_start, prefix, tuple(suffixes)))
    empty = input_ids.new_zeros(0)
    ids = torch.cat(tokens) if tokens else empty
    pos = torch.cat(positions) if positions else empty
    return SharedRow(ids[None], pos[None], source, Layout(segments), shared)


# -- attention ------------------------------------------------------------------------------------------------
def _refuse_softcap(kwargs: dict) -> None:
    if kwargs.get("softcap") is not None:  # as transformers' sdpa: neither kernel applies a logit softcap
        raise OptionError("shared-prefix attention does not support softcap; run with --model.shared_prefix false")


def shared_prefix_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """Attention of a :class:`SharedRow` (:data:`SHARED`, the SDPA kernel): ``query`` (1, H, N, D), ``key``/``value``
    (1, H_kv, N, D), the layout in ``kwargs[SEGMENTS]``. Without it (generation, any other call) transformers' sdpa."""
    segments = kwargs.get(SEGMENTS)
    if segments is None or query.shape[0] != 1 or attention_mask is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    _refuse_softcap(kwargs)
    dropout = dropout if module.training else 0.0
    return _sdpa_kernel(query, key, value, segments, dropout, scaling).transpose(1, 2).contiguous(), None


def _sdpa_kernel(query: Tensor, key: Tensor, value: Tensor, segments, dropout: float, scaling) -> Tensor:
    gqa = query.shape[1] != key.shape[1]

    def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=scaling, enable_gqa=gqa
        )

    parts = []
    for seg in segments:
        p0, p = seg.start, seg.length
        if p:
            parts.append(attend(query[:, :, p0 : p0 + p], key[:, :, p0 : p0 + p], value[:, :, p0 : p0 + p], None))
        for s0, n in seg.suffixes:
            q = query[:, :, s0 : s0 + n]
            if not p:
                parts.append(attend(q, key[:, :, s0 : s0 + n], value[:, :, s0 : s0 + n], None))
                continue
            k = torch.cat([key[:, :, p0 : p0 + p], key[:, :, s0 : s0 + n]], dim=2)
            v = torch.cat([value[:, :, p0 : p0 + p], value[:, :, s0 : s0 + n]], dim=2)
            causal = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
            mask = torch.cat([causal.new_ones(n, p), causal], dim=1)
            parts.append(attend(q, k, v, mask))
    return torch.cat(parts, dim=2) if parts else query.new_zeros(query.shape)


def flex_shared_prefix_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """:data:`SHARED_FLEX`, the flex kernel: one ``flex_attention`` call over the whole packed row with the layout's
    :meth:`Layout.block_mask`. Without a layout, transformers' sdpa, as :func:`shared_prefix_attention_forward`."""
    segments = kwargs.get(SEGMENTS)
    if segments is None or query.shape[0] != 1 or attention_mask is not None:
        return shared_prefix_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    _refuse_softcap(kwargs)
    if module.training and dropout > 0:
        raise OptionError("shared_prefix_kernel='flex': flex attention has no attention dropout; use 'auto' or 'sdpa'")
    if not query.shape[2]:
        return query.new_zeros(query.transpose(1, 2).shape), None
    from torch.nn.attention.flex_attention import flex_attention

    compiled = query.device.type == "cuda" and not torch.compiler.is_compiling()
    attend = _compiled_flex() if compiled else flex_attention  # eager: scores materialized (tests, CPU forwards)
    layout = segments if isinstance(segments, Layout) else Layout(segments)
    mask = layout.block_mask(query.shape[2], query.device)  # built by the first layer, reused by the others
    try:
        out = attend(query, key, value, block_mask=mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    except NotImplementedError as err:  # torch 2.13: no flex backward on CPU (nor MPS)
        raise OptionError(f"shared_prefix_kernel='flex' on {query.device.type}: {err} Use 'auto' or 'sdpa'.") from err
    return out.transpose(1, 2).contiguous(), None


_COMPILED_FLEX = None


def _compiled_flex():
    """``torch.compile(flex_attention)``, made once (the fused kernel; eager flex materializes the scores)."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED_FLEX = torch.compile(flex_attention)
    return _COMPILED_FLEX


def flex_available(device: torch.device) -> bool:
    """Whether the flex kernel runs compiled (fused, forward and backward) on ``device``: CUDA with triton."""
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return importlib.util.find_spec("triton") is not None


def attention_name(model: nn.Module) -> str:
    """The attention implementation a shared-prefix forward of ``model`` runs (its :func:`kernel_of`): :data:`SHARED`
    (SDPA) or :data:`SHARED_FLEX`; ``auto`` picks flex where :func:`flex_available` and no attention dropout runs."""
    kernel = kernel_of(model)
    if kernel == "auto":
        parameter = next(_base_model(model).parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        config = getattr(_base_model(model), "config", None)
        dropout = model.training and float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0
        kernel = "flex" if flex_available(device) and not dropout else "sdpa"
    return SHARED_FLEX if kernel == "flex" else SHARED


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SHARED, shared_prefix_attention_forward)
    AttentionInterface.register(SHARED_FLEX, flex_shared_prefix_attention_forward)


@contextmanager
def prefix_attention(model: nn.Module) -> Iterator[None]:
    """For one shared-prefix forward: the shared-prefix attention of :func:`attention_name` (whatever the model's
    own implementation); a checkpointed layer recomputes with the same
    (:func:`lit_align.models.packing.recompute_context`)."""
    config = getattr(_base_model(model), "config", None)
    current = getattr(config, "_attn_implementation", None)
    if config is None or current in (SHARED, SHARED_FLEX):
        yield
        return
    _register()
    config._attn_implementation = attention_name(model)
    try:
        yield
    finally:
        config._attn_implementation = current


__all__ = [
    "KERNELS",
    "SHARED",
    "SHARED_FLEX",
    "Layout",
    "SharedRow",
    "attention_name",
    "is_enabled",
    "kernel_of",
    "prefix_attention",
    "set_shared_prefix",
    "share",
]
