"""Completion log-probs from ``(model, batch)``, memory-lean.

Shapes: B batch, T sequence length, V vocabulary, K kept positions (K <= T).

Convention: ``labels`` is ``input_ids`` with -100 on the prompt and on padding. Token ``t`` is
scored by the logits at position ``t - 1`` (the shift). Outputs are aligned with ``labels``:
``token_logps[b, t] = log p(labels[b, t] | input_ids[b, :t])`` and 0 where ``labels`` is -100.
With ``temperature`` τ the log-probs (and entropies) are those of ``softmax(logits / τ)``.

Two paths, both ONE forward from the first completion position onwards (``logits_to_keep``, when the
model supports it):

- chunked head (default, :mod:`lit_align.models.lm_head`): the model's output embedding is swapped, for that
  forward, for a module that gathers the scored positions' final hidden states (N, H) and runs the LM
  head + log-softmax chunk by chunk, in forward AND backward (a custom autograd function that
  recomputes each chunk's logits), so no (tokens x V) logits tensor ever exists. Liger's fused kernel
  serves it on CUDA when installed.
- plain: the model returns its (B, K, V) logits and log-probs are taken row-chunk by row-chunk as
  ``logit[target] - logsumexp(logits)``, never materializing a log-softmax; for half-precision logits
  each chunk's fp32 upcast is recomputed in backward (checkpointed) rather than stored.

The plain path is used when ``chunked=False`` is passed, when :data:`CHUNKED_HEAD` is False, or when the
model's head is not a plain linear layer the chunked path can reproduce exactly (logit soft-capping or
scaling, LoRA on the head, ...; :func:`lit_align.models.lm_head.unsupported_reason`), which is logged once per
reason. ``bench/logprobs_memory.py`` measures both against the naive full log-softmax.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lit_align.batches import IGNORE_INDEX
from lit_align.models import lm_head, packing, shared_prefix

CHUNK_ROWS = 1024
CHUNKED_HEAD = True  # False forces the plain path (full logits) wherever ``chunked`` is left at None
log = logging.getLogger(__name__)


@dataclass
class SequenceLogps:
    """Per-sequence completion statistics, each of shape (B,)."""

    sum: torch.Tensor  # sum of completion-token log-probs
    mean: torch.Tensor  # sum / num_tokens (0 for an empty completion)
    num_tokens: torch.Tensor  # completion tokens per sequence
    logits_sum: torch.Tensor  # detached: sum over completion tokens of the vocab-mean logit

    def split(self, n: int) -> tuple[SequenceLogps, SequenceLogps]:
        """Split the first ``n`` rows from the rest (chosen/rejected after a concatenated pass)."""
        first = SequenceLogps(self.sum[:n], self.mean[:n], self.num_tokens[:n], self.logits_sum[:n])
        rest = SequenceLogps(self.sum[n:], self.mean[n:], self.num_tokens[n:], self.logits_sum[n:])
        return first, rest


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    forward = getattr(model, "forward", None)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
    if "logits_to_keep" in params:
        return True
    # PEFT wrappers take **kwargs and pass them to the wrapped model.
    inner = getattr(model, "get_base_model", None)
    return inner is not None and _accepts_logits_to_keep(inner())


def _chunk_logps(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def selective_log_softmax(
    logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int = CHUNK_ROWS, temperature: float = 1.0
) -> torch.Tensor:
    """``log_softmax(logits / temperature)[..., targets]`` in fp32, computed ``chunk_rows`` rows at a time.

    Args:
        logits: (..., V) in any float dtype.
        targets: (...) token ids.
        temperature: divides the (fp32) logits before the softmax.
    Returns:
        (...) fp32 log-probs.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    recompute = torch.is_grad_enabled() and logits.requires_grad and logits.dtype != torch.float32
    chunks = []
    for start in range(0, flat_logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        if recompute:
            chunks.append(
                checkpoint(_chunk_logps, flat_logits[rows], flat_targets[rows], temperature, use_reentrant=False)
            )
        else:
            chunks.append(_chunk_logps(flat_logits[rows], flat_targets[rows], temperature))
    if not chunks:
        return flat_logits.new_zeros(targets.shape, dtype=torch.float32)
    return torch.cat(chunks).reshape(targets.shape)


class TokenLogps(NamedTuple):
    """Per-token outputs of :func:`token_logps`, each (B, T) and aligned with ``labels``."""

    logps: torch.Tensor  # fp32 log-prob of each label token, 0 where labels == -100
    mask: torch.Tensor  # bool, the scored (completion) positions
    mean_logits: torch.Tensor  # fp32, detached vocab-mean logit per scored token (0 elsewhere)
    entropy: torch.Tensor | None  # fp32, detached entropy of the predictive distribution (with_entropy=True)


class CompletionScores(NamedTuple):
    """:class:`TokenLogps` plus top-1 hits: everything one forward gives per scored token, (B, T) each."""

    logps: torch.Tensor
    mask: torch.Tensor
    mean_logits: torch.Tensor  # of the raw logits, before the temperature
    entropy: torch.Tensor | None  # with_entropy=True
    correct: torch.Tensor | None  # bool, argmax(logits) == label (with_accuracy=True)


def token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    with_entropy: bool = False,
    temperature: float = 1.0,
    chunked: bool | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> TokenLogps:
    """Per-token completion log-probs in ONE forward pass.

    ``with_entropy`` also returns each scored position's predictive entropy ``H = lse − Σ p·logit``,
    computed in the same chunks as the log-probs (no extra forward, no full softmax). ``chunked`` picks
    the path (None: :data:`CHUNKED_HEAD`; see the module docstring). ``groups``: see :func:`completion_scores`.
    """
    scores = completion_scores(model, input_ids, attention_mask, labels, with_entropy=with_entropy,
                               temperature=temperature, chunked=chunked, groups=groups)  # fmt: skip
    return TokenLogps(scores.logps, scores.mask, scores.mean_logits, scores.entropy)


def completion_scores(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    with_entropy: bool = False,
    with_accuracy: bool = False,
    temperature: float = 1.0,
    chunked: bool | None = None,
    padding_free: bool | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> CompletionScores:
    """Log-probs, vocab-mean logits and optionally entropies and top-1 hits of the completion tokens, one forward.

    ``padding_free`` (None: whether ``model`` is marked so, :func:`lit_align.models.packing.set_padding_free`) runs the
    forward over the batch's real tokens only, packed into one row (:mod:`lit_align.models.packing`); the outputs are
    the same (B, T) tensors either way. ``groups`` (row indices of a pair or a group) let a padding-free pass of a
    model marked :func:`lit_align.models.shared_prefix.set_shared_prefix` compute each group's common prefix once."""
    if packing.is_enabled(model) if padding_free is None else padding_free:
        reason = packing.unsupported_reason(model)
        if reason is None:
            if groups is not None and shared_prefix.is_enabled(model):
                row = shared_prefix.share(input_ids, attention_mask, groups)
            else:
                row = packing.pack(input_ids, attention_mask)
            return _packed_scores(
                model, row, input_ids, attention_mask, labels, with_entropy, with_accuracy, temperature, chunked
            )
        packing.log_fallback(model, reason)
    if CHUNKED_HEAD if chunked is None else chunked:
        reason = lm_head.unsupported_reason(model)
        if reason is None:
            scores = _chunked_scores(model, input_ids, attention_mask, labels, with_entropy, with_accuracy, temperature)
            if scores is not None:
                return scores
            reason = lm_head.unsupported_reason(model)  # the runtime check's finding, now recorded
        _log_fallback(model, reason)
    logits, targets, mask, completion_mask, offset = completion_logits(model, input_ids, attention_mask, labels)
    logps = selective_log_softmax(logits, targets, temperature=temperature)[:, :-1] * mask
    with torch.no_grad():  # row chunks: one .float() of half-precision logits would be a full fp32 copy
        flat = logits.detach().reshape(-1, logits.shape[-1])
        chunks = [_chunk_stats(rows.float(), with_entropy, temperature) for rows in flat.split(CHUNK_ROWS)]
        mean_logits = torch.cat([c[0] for c in chunks]).reshape(targets.shape)[:, :-1] * mask
        entropy = torch.cat([c[1] for c in chunks]).reshape(targets.shape)[:, :-1] * mask if with_entropy else None
        correct = (logits[:, :-1].argmax(-1) == targets[:, :-1]) & mask if with_accuracy else None
    return CompletionScores(
        _align(logps, labels.shape, offset),
        completion_mask,
        _align(mean_logits, labels.shape, offset),
        None if entropy is None else _align(entropy, labels.shape, offset),
        None if correct is None else _align(correct, labels.shape, offset),
    )


def _chunked_scores(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    with_entropy: bool,
    with_accuracy: bool,
    temperature: float,
) -> CompletionScores | None:
    """The chunked-head path; None when the model turned out to post-process its head's output."""
    options = {"temperature": temperature, "with_entropy": with_entropy, "with_hits": with_accuracy}
    score = functools.partial(lm_head.packed_head_scores, **options)
    scores = head_pass(model, input_ids, attention_mask, labels, score, padding_free=False)  # (B, T, 4)
    if scores is None:
        return None
    logps, mean_logits, entropy, hits = scores.unbind(-1)
    return CompletionScores(
        logps,
        _completion_mask(labels),
        mean_logits,
        entropy if with_entropy else None,
        hits.bool() if with_accuracy else None,
    )


def head_pass(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    score: lm_head.Score,
    *,
    padding_free: bool | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor | None:
    """ONE forward of ``model`` whose output embedding is swapped for ``score`` (:func:`lm_head.scoring_head`):
    ``score(hidden (M, H), weight, bias, targets (M,)) -> (M, C)`` of the M completion tokens, returned as (B, T, C)
    aligned with ``labels`` (row b, column t: what scores token t; 0 where ``labels`` is -100). The M rows reach
    ``score`` in row-major order of the completion mask, the same order for any model run on the same batch, padded
    or padding-free (``padding_free``, None: as ``model`` is marked; each group's prefix once with ``groups`` when it
    runs shared prefixes). None when the head cannot be swapped (:func:`lm_head.unsupported_reason`, or found at run
    time): no (tokens x vocabulary) logits exist on this path, so the caller decides what to do instead."""
    if lm_head.unsupported_reason(model) is not None:
        return None
    completion_mask = _completion_mask(labels) & attention_mask.bool()
    scored = nn.functional.pad(completion_mask[:, 1:], (0, 1))  # (B, T): position t scores token t + 1
    targets = nn.functional.pad(labels[:, 1:].clamp(min=0), (0, 1))
    use_packing = packing.is_enabled(model) if padding_free is None else padding_free
    if use_packing and packing.unsupported_reason(model) is None:
        shared = groups is not None and shared_prefix.is_enabled(model)
        row = shared_prefix.share(input_ids, attention_mask, groups) if shared else packing.pack(input_ids,
                                                                                                   attention_mask)
        attention = shared_prefix.prefix_attention(model) if shared else packing.boundary_attention(model)
        with lm_head.scoring_head(model, row.source[scored], targets[scored], index=True, score=score) as head, \
                attention:  # fmt: skip
            out = model(**row.forward_kwargs())
        result = head.result(out.logits)  # (1, M, C)
        if result is None:
            return None
        per_score = result[0]
        at_scoring = per_score.new_zeros((*scored.shape, per_score.shape[-1])).index_put((scored,), per_score)
        offset = 0
    else:
        with lm_head.scoring_head(model, scored, targets, score=score) as head:
            out = model(input_ids=input_ids, attention_mask=attention_mask, **_forward_kwargs(model, completion_mask))
        at_scoring = head.result(out.logits)  # (B, K, C) at the kept positions
        if at_scoring is None:
            return None
        offset = labels.shape[1] - at_scoring.shape[1]
    aligned = at_scoring.new_zeros((*labels.shape, at_scoring.shape[-1]))
    aligned[:, offset + 1 :] = at_scoring[:, :-1]
    return aligned


def _packed_scores(
    model: nn.Module,
    row: packing.Packed | shared_prefix.SharedRow,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    with_entropy: bool,
    with_accuracy: bool,
    temperature: float,
    chunked: bool | None,
) -> CompletionScores:
    """:func:`completion_scores` over a packed row of the batch's real tokens (each group's prefix once in a
    :class:`~lit_align.models.shared_prefix.SharedRow`), scattered back to (B, T): every scored position reads the
    packed position its hidden state comes from (``source``)."""
    completion_mask = _completion_mask(labels) & attention_mask.bool()
    scored = nn.functional.pad(completion_mask[:, 1:], (0, 1))  # (B, T): position t scores token t + 1
    targets = nn.functional.pad(labels[:, 1:].clamp(min=0), (0, 1))
    index, targets_sel = row.source[scored], targets[scored]  # (M,): packed position and target of each score
    shared = isinstance(row, shared_prefix.SharedRow)
    attention = shared_prefix.prefix_attention(model) if shared else packing.boundary_attention(model)
    per_score = None  # (M, 4): logp, mean logit, entropy, hit
    use_chunked = CHUNKED_HEAD if chunked is None else chunked
    reason = lm_head.unsupported_reason(model) if use_chunked else None
    if use_chunked and reason is None:
        options = {"temperature": temperature, "with_entropy": with_entropy, "with_hits": with_accuracy}
        with lm_head.scoring_head(model, index, targets_sel, index=True, **options) as head, attention:
            out = model(**row.forward_kwargs())
        result = head.result(out.logits)
        per_score = None if result is None else result[0]
        reason = None if per_score is not None else lm_head.unsupported_reason(model)
    if reason is not None:
        _log_fallback(model, reason)
    if per_score is None:
        attention = shared_prefix.prefix_attention(model) if shared else packing.boundary_attention(model)
        with attention:
            logits = model(**row.forward_kwargs()).logits[0, index]  # (M, V)
        logps = selective_log_softmax(logits[None], targets_sel[None], temperature=temperature)[0]
        with torch.no_grad():
            flat = logits.detach()
            chunks = [_chunk_stats(rows.float(), with_entropy, temperature) for rows in flat.split(CHUNK_ROWS)]
            mean_logits = torch.cat([c[0] for c in chunks]) if chunks else logps.new_zeros(0)
            entropy = torch.cat([c[1] for c in chunks]) if with_entropy and chunks else torch.zeros_like(logps)
            hits = (logits.argmax(-1) == targets_sel).float() if with_accuracy else torch.zeros_like(logps)
        per_score = torch.stack([logps, mean_logits.to(logps.dtype), entropy.to(logps.dtype), hits], -1)
    padded = per_score.new_zeros((*scored.shape, 4)).index_put((scored,), per_score.to(torch.float32))
    logps, mean_logits, entropy, hits = (_align(padded[:, :-1, i], labels.shape, 0) for i in range(4))
    return CompletionScores(
        logps,
        completion_mask,
        mean_logits,
        entropy if with_entropy else None,
        hits.bool() if with_accuracy else None,
    )


def _log_fallback(model: nn.Module, reason: str) -> None:
    key = (type(model).__name__, reason)
    if key not in _logged_fallbacks:
        _logged_fallbacks.add(key)
        log.warning("log-probs of %s use the plain path (full logits): %s", type(model).__name__, reason)


_logged_fallbacks: set[tuple[str, str]] = set()


def _completion_mask(labels: torch.Tensor) -> torch.Tensor:
    completion_mask = labels != IGNORE_INDEX
    completion_mask[:, 0] = False  # position 0 has no preceding context to score it
    return completion_mask


def _forward_kwargs(model: nn.Module, completion_mask: torch.Tensor) -> dict:
    """``use_cache=False`` and, if the model takes it, ``logits_to_keep`` from the first scored position - 1."""
    seq_len = completion_mask.shape[1]
    scored_positions = completion_mask.any(dim=0).nonzero()
    first = int(scored_positions[0]) if len(scored_positions) else seq_len - 1
    kwargs = {"use_cache": False}
    keep = seq_len - first + 1  # logits at positions first-1 .. T-1
    if _accepts_logits_to_keep(model) and keep < seq_len:
        kwargs["logits_to_keep"] = keep
    return kwargs


def completion_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The plain path's forward, keeping only the logits from the first scored position on (``logits_to_keep``).

    Returns ``logits`` (B, K, V), where ``logits[:, j]`` sits at position ``offset + j`` and scores token
    ``offset + j + 1``; ``targets`` (B, K), the scored tokens with a dummy 0 for the last kept position
    (padding it rather than slicing ``logits[:, :-1]``, which is non-contiguous and would be copied
    whole when flattened); ``mask`` (B, K-1) of the scored targets; the full (B, T) ``completion_mask``;
    and ``offset``.
    """
    completion_mask = _completion_mask(labels)
    kwargs = _forward_kwargs(model, completion_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits  # (B, K, V)
    offset = input_ids.shape[1] - logits.shape[1]
    targets = nn.functional.pad(labels[:, offset + 1 :].clamp(min=0), (0, 1))  # (B, K)
    return logits, targets, completion_mask[:, offset + 1 :], completion_mask, offset


def _chunk_stats(
    logits: torch.Tensor, with_entropy: bool, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not with_entropy:
        return logits.mean(-1), None
    scaled = logits / temperature if temperature != 1.0 else logits
    lse = torch.logsumexp(scaled, dim=-1, keepdim=True)
    entropy = lse.squeeze(-1) - (torch.exp(scaled - lse) * scaled).sum(-1)
    return logits.mean(-1), entropy


def _align(values: torch.Tensor, shape: torch.Size, offset: int) -> torch.Tensor:
    """Place (B, K-1) values scored from kept position ``offset`` into a (B, T) tensor aligned with labels."""
    out = values.new_zeros(shape)
    out[:, offset + 1 :] = values
    return out


def sequence_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    chunked: bool | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> SequenceLogps:
    """Sum and mean of completion-token log-probs per sequence, and token counts."""
    logps, mask, mean_logits, _ = token_logps(
        model, input_ids, attention_mask, labels, temperature=temperature, chunked=chunked, groups=groups
    )
    num_tokens = mask.sum(-1)
    total = logps.sum(-1)
    mean = total / num_tokens.clamp(min=1)
    return SequenceLogps(total, mean, num_tokens, mean_logits.sum(-1))


def pair_groups(n: int) -> list[tuple[int, int]]:
    """The rows of each pair in :func:`concatenate_pair`'s stack: chosen i and rejected i."""
    return [(i, n + i) for i in range(n)]


def concatenate_pair(batch: dict[str, torch.Tensor], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack a preference batch's chosen rows over its rejected rows, right-padding to one length."""
    length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out = {}
    for key, value in pad_values.items():
        parts = []
        for side in ("chosen", "rejected"):
            t = batch[f"{side}_{key}"]
            parts.append(nn.functional.pad(t, (0, length - t.shape[1]), value=value))
        out[key] = torch.cat(parts)
    return out


def preference_logps(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    pad_token_id: int = 0,
    temperature: float = 1.0,
    chunked: bool | None = None,
) -> tuple[SequenceLogps, SequenceLogps]:
    """Chosen and rejected completion log-probs from one forward pass over both (each pair's prompt once when the
    model runs shared prefixes, :mod:`lit_align.models.shared_prefix`)."""
    joint = concatenate_pair(batch, pad_token_id)
    n = batch["chosen_input_ids"].shape[0]
    stats = sequence_logps(model, joint["input_ids"], joint["attention_mask"], joint["labels"],
                           temperature=temperature, chunked=chunked, groups=pair_groups(n))  # fmt: skip
    return stats.split(batch["chosen_input_ids"].shape[0])
