"""Shared-prefix passes: the rows of a pair or a group that start with the same tokens run that prefix ONCE.

A preference pair is ``[prompt, chosen]`` and ``[prompt, rejected]``; an online group is ``[prompt, c_i]`` for
G completions. Padding-free (:mod:`lit_align.packing`) they would be packed as 2 (or G) whole sequences, so
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

Attention kernel (:data:`SHARED`): per group, causal scaled-dot-product attention over the prefix, then one call
per suffix over ``[prefix keys, suffix keys]`` with a boolean block mask (all prefix keys, causal in the suffix).
It runs on any device (CPU and GPU alike; flash-attention models use it too during a shared pass, since the
varlen flash kernels cannot express a shared prefix). Cost per group: P² + Σ Lᵢ·(P + Lᵢ) instead of
Σ (P + Lᵢ)².

Switched by the shared module option ``shared_prefix`` (:class:`~lit_align.algorithms.base.AlignmentModule`),
which marks the policy and reference with :func:`set_shared_prefix`; it applies to padding-free passes that are
given groups (pairs: :func:`lit_align.logprobs.preference_logps`, ORPO).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lit_align.packing import _base_model, pack

SHARED = "lit_align_shared_prefix"  # the attention implementation registered below
SEGMENTS = "lit_align_segments"  # the forward keyword that carries the layout to the attention


def set_shared_prefix(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Mark ``model`` so that its padding-free passes over groups share their prefixes (``enabled``); returns it."""
    model._lit_align_shared_prefix = bool(enabled)
    return model


def is_enabled(model: nn.Module) -> bool:
    return bool(getattr(model, "_lit_align_shared_prefix", False))


class Segment(NamedTuple):
    """One group in the packed row: the prefix at ``[start, start + length)``, then its suffixes."""

    start: int
    length: int
    suffixes: tuple[tuple[int, int], ...]  # (start, length), each non-empty


class SharedRow(NamedTuple):
    """A (B, T) batch as one row with each group's prefix once: ``input_ids``/``position_ids`` (1, N); ``source``
    (B, T) the packed index each real token reads (−1 at padding); ``segments`` the layout."""

    input_ids: Tensor
    position_ids: Tensor
    source: Tensor
    segments: tuple[Segment, ...]
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
    return SharedRow(ids[None], pos[None], source, tuple(segments), shared)


# -- attention ------------------------------------------------------------------------------------------------
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
    """Attention of a :class:`SharedRow`: ``query`` (1, H, N, D), ``key``/``value`` (1, H_kv, N, D), the layout in
    ``kwargs[SEGMENTS]``. Without it (generation, any other call) it is transformers' sdpa."""
    segments = kwargs.get(SEGMENTS)
    if segments is None or query.shape[0] != 1 or attention_mask is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    dropout = dropout if module.training else 0.0

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
    out = torch.cat(parts, dim=2) if parts else query.new_zeros(query.shape)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SHARED, shared_prefix_attention_forward)


@contextmanager
def prefix_attention(model: nn.Module) -> Iterator[None]:
    """For one shared-prefix forward: :data:`SHARED` attention (whatever the model's own implementation)."""
    config = getattr(_base_model(model), "config", None)
    current = getattr(config, "_attn_implementation", None)
    if config is None or current == SHARED:
        yield
        return
    _register()
    config._attn_implementation = SHARED
    try:
        yield
    finally:
        config._attn_implementation = current


__all__ = ["SHARED", "SharedRow", "is_enabled", "prefix_attention", "set_shared_prefix", "share"]
