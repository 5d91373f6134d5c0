"""The distillation passes: a teacher's and a student's next-token distributions compared per completion token,
through the chunked LM head, so neither model's (tokens x vocabulary) logits are ever held whole.

Shapes: B rows, T sequence length (prompt + completion), L = T − ``start`` completion columns, M completion tokens
(row-major over the completion mask), H a model's hidden size, V the shared vocabulary, k the teacher's top k.

1. :func:`teacher_pass` (no grad) runs the teacher once over the rows with its output embedding swapped
   (:func:`lit_align.models.logprobs.head_pass`) and keeps, per completion token, what the student's pass will need:
   its final hidden state (H_t floats; with the head's weight, cloned only when FSDP2 reshards it after the forward)
   or, with ``top_k``, its k most likely tokens and their log-probs; and its log-prob of the sampled token.
2. :func:`student_divergence` runs the student's forward with its head swapped for one that, chunk by chunk of
   ``lm_head.chunk_rows(V)`` tokens, projects the student's hidden states and the teacher's through their heads,
   takes both log-softmaxes at the temperature and the divergence (:mod:`lit_align.losses.distillation`). Each chunk
   is checkpointed: its logits are recomputed in the backward, so the peak is O(chunk x V) in both passes, at the
   price of one more projection per model per chunk.

The M rows of both passes come in the same order (:func:`~lit_align.models.logprobs.head_pass`), so the teacher's
per-token values line up with the student's whatever path each model takes (padded, padding-free, shared prefix).
A model whose head cannot be swapped (:func:`lit_align.models.lm_head.unsupported_reason`) falls back, logged once, to
its full logits over the completion tokens, the one place (tokens x vocabulary) values are held.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from lit_align.losses.distillation import generalized_jsd, renormalized
from lit_align.models import lm_head
from lit_align.models.logprobs import _completion_mask, head_pass

log = logging.getLogger(__name__)
_logged: set[str] = set()


@dataclass
class TeacherTokens:
    """The teachers' view of B rows' completion tokens, each tensor (B, L, ...) over the completion columns.

    ``hidden`` (their final hidden states, zero-padded to the widest teacher's H) with ``heads`` (each teacher's
    head: weight (V, H_t), bias) and ``head`` (each row's index into ``heads``) serve the full-vocabulary divergence;
    ``top_logps`` / ``top_ids`` (the top k at the temperature) the top-k one; ``logits`` only the fallback path.
    """

    logps: Tensor  # (B, L) log-prob of each sampled token at the temperature, 0 off the completion
    hidden: Tensor | None = None  # (B, L, H)
    heads: tuple[tuple[Tensor, Tensor | None], ...] = ()
    head: Tensor | None = None  # (B,) long
    top_logps: Tensor | None = None  # (B, L, k), not renormalized
    top_ids: Tensor | None = None  # (B, L, k)
    logits: Tensor | None = None  # (B, L, V), the fallback path only

    def rows(self, rows: Tensor) -> TeacherTokens:
        """These values for a subset of the rows."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return TeacherTokens(self.logps[rows], pick(self.hidden), self.heads, pick(self.head), pick(self.top_logps),
                             pick(self.top_ids), pick(self.logits))  # fmt: skip

    @staticmethod
    def cat(parts: Sequence[TeacherTokens]) -> TeacherTokens:
        """Row-chunks of one teacher's pass, joined."""
        def join(name: str) -> Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)
        return TeacherTokens(join("logps"), join("hidden"), parts[0].heads, join("head"), join("top_logps"),
                             join("top_ids"), join("logits"))  # fmt: skip

    @staticmethod
    def select(teachers: Sequence[TeacherTokens | None], owner: Tensor, position: Tensor) -> TeacherTokens:
        """Rows taught by several teachers: row i is row ``position[i]`` of ``teachers[owner[i]]``'s values."""
        present = [t for t in teachers if t is not None]
        first = present[0]
        logps = first.logps.new_zeros((len(owner), first.logps.shape[1]))
        fields: dict[str, Tensor | None] = {}
        for name in ("top_logps", "top_ids", "logits"):
            value = getattr(first, name)
            fields[name] = None if value is None else value.new_zeros((len(owner), *value.shape[1:]))
        hidden = None
        if first.hidden is not None:
            width = max(t.hidden.shape[-1] for t in present)
            hidden = first.hidden.new_zeros((len(owner), first.hidden.shape[1], width))
        heads: list[tuple[Tensor, Tensor | None]] = []
        head = torch.zeros(len(owner), dtype=torch.long, device=owner.device)
        for k, tokens in enumerate(teachers):
            rows = (owner == k).nonzero().squeeze(1)
            if tokens is None or not len(rows):
                continue
            taken = tokens.rows(position[rows])
            logps[rows] = taken.logps
            for name, value in fields.items():
                if value is not None:
                    value[rows] = getattr(taken, name)
            if hidden is not None:
                hidden[rows, :, : taken.hidden.shape[-1]] = taken.hidden
                head[rows] = len(heads)
                heads.append(tokens.heads[0])
        return TeacherTokens(logps, hidden, tuple(heads), head, fields["top_logps"], fields["top_ids"],
                             fields["logits"])  # fmt: skip


def _dense(values: Tensor, mask: Tensor) -> Tensor:
    """(M, ...) values of the mask's True positions, row-major, as (B, L, ...) with zeros elsewhere."""
    return values.new_zeros((*mask.shape, *values.shape[1:])).index_put((mask,), values)


@torch.no_grad()
def teacher_pass(
    teacher: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    start: int,
    temperature: float,
    top_k: int | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> TeacherTokens:
    """What :func:`student_divergence` needs of ``teacher`` for these rows (module docstring); ``start`` is the first
    completion column."""
    kept: dict[str, Tensor] = {}

    def score(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
        scores = lm_head.head_scores(hidden, weight, bias, targets, temperature)
        if top_k is None:
            kept["hidden"] = hidden.detach()
            sharded = _reshards(teacher)  # its head is whole only inside this forward
            kept["weight"] = weight.detach().clone() if sharded else weight.detach()
            if bias is not None:
                kept["bias"] = bias.detach().clone() if sharded else bias.detach()
        else:
            kept["top_logps"], kept["top_ids"] = _top_k(hidden, weight, bias, temperature, top_k)
        return scores.logps.unsqueeze(-1)

    mask = (_completion_mask(labels) & attention_mask.bool())[:, start:]
    scored = head_pass(teacher, input_ids, attention_mask, labels, score, groups=groups)
    if scored is None:  # a head the swap cannot reproduce: full logits, the completion tokens only
        _log_fallback(teacher)
        logits = _completion_logits(teacher, input_ids, attention_mask, labels, start)[mask]  # (M, V)
        logps = torch.log_softmax(logits.float() / temperature, -1)
        targets = labels[:, start:][mask]
        token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        if top_k is not None:
            top_logps, top_ids = logps.topk(top_k, dim=-1)
            return TeacherTokens(_dense(token_logps, mask), top_logps=_dense(top_logps, mask),
                                 top_ids=_dense(top_ids, mask))  # fmt: skip
        return TeacherTokens(_dense(token_logps, mask), logits=_dense(logits, mask))
    token_logps = scored[:, start:, 0] * mask
    if top_k is not None:
        return TeacherTokens(token_logps, top_logps=_dense(kept["top_logps"], mask),
                             top_ids=_dense(kept["top_ids"], mask))  # fmt: skip
    hidden = _dense(kept["hidden"], mask)
    head = torch.zeros(len(hidden), dtype=torch.long, device=hidden.device)
    return TeacherTokens(token_logps, hidden, ((kept["weight"], kept.get("bias")),), head)


def _reshards(model: nn.Module) -> bool:
    """Whether FSDP2 manages ``model`` (on any number of ranks): its parameters' storage is freed after a forward."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # older torch
        return False
    return any(isinstance(module, FSDPModule) for module in model.modules())


def _top_k(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float, k: int) -> tuple[Tensor, Tensor]:
    """The k most likely tokens per row of ``hidden`` (M, H) and their log-probs at the temperature, chunk by chunk."""
    values, ids = [], []
    for rows in torch.arange(hidden.shape[0], device=hidden.device).split(lm_head.chunk_rows(weight.shape[0])):
        logps = torch.log_softmax(F.linear(hidden[rows], weight, bias).float() / temperature, -1)
        top = logps.topk(k, dim=-1)
        values.append(top.values)
        ids.append(top.indices)
    if not values:
        return hidden.new_zeros(0, k, dtype=torch.float32), torch.zeros(0, k, dtype=torch.long, device=hidden.device)
    return torch.cat(values), torch.cat(ids)


def student_divergence(
    student: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    start: int,
    teacher: TeacherTokens,
    beta: float,
    temperature: float,
    groups: Sequence[Sequence[int]] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(divergence, logps, entropy)``, each (B, L) over the completion columns: the generalized JSD with β
    (:func:`~lit_align.losses.distillation.generalized_jsd`; over the teacher's top k when ``teacher`` carries them)
    and the student's log-prob of each sampled token, both with grad, and its entropy (detached), all at
    ``temperature``; 0 off the completion."""
    mask = (_completion_mask(labels) & attention_mask.bool())[:, start:]
    head = None if teacher.head is None else teacher.head[:, None].expand(mask.shape)
    flat = {name: None if value is None else value[mask] for name, value in (
        ("hidden", teacher.hidden), ("head", head), ("top_logps", teacher.top_logps), ("top_ids", teacher.top_ids),
        ("logits", teacher.logits))}  # fmt: skip
    options = {"beta": beta, "temperature": temperature, "teacher_heads": teacher.heads}
    score = functools.partial(_student_score, flat=flat, **options)
    scored = head_pass(student, input_ids, attention_mask, labels, score, groups=groups)
    if scored is None:
        _log_fallback(student)
        logits = _completion_logits(student, input_ids, attention_mask, labels, start)[mask]  # (M, V)
        # the logits stand for the hidden states, and no head projects them
        per_token = _student_score(logits, None, None, labels[:, start:][mask], flat, **options)
        scored_completion = _dense(per_token, mask)
    else:
        scored_completion = scored[:, start:]
    divergence, logps, entropy = scored_completion.unbind(-1)
    return divergence, logps, entropy.detach()


def _student_score(hidden: Tensor, weight: Tensor | None, bias: Tensor | None, targets: Tensor,
                   flat: dict[str, Tensor | None], **options) -> Tensor:  # fmt: skip
    """(M, 3) ``[divergence, logp, entropy]`` of the student's M tokens, checkpointed chunk by chunk."""
    rows_per_chunk = lm_head.chunk_rows(weight.shape[0] if weight is not None else hidden.shape[-1])
    chunks = []
    for rows in torch.arange(hidden.shape[0], device=hidden.device).split(rows_per_chunk):
        teacher = [None if flat[n] is None else flat[n][rows] for n in ("hidden", "head", "top_logps", "top_ids",
                                                                          "logits")]  # fmt: skip
        args = (hidden[rows], weight, bias, targets[rows], *teacher)
        if torch.is_grad_enabled() and (hidden.requires_grad or (weight is not None and weight.requires_grad)):
            chunks.append(checkpoint(_chunk, *args, use_reentrant=False, **options))
        else:
            chunks.append(_chunk(*args, **options))
    if not chunks:
        return hidden.new_zeros(0, 3, dtype=torch.float32)
    return torch.cat(chunks)


def _chunk(hidden: Tensor, weight: Tensor | None, bias: Tensor | None, targets: Tensor,
           teacher_hidden: Tensor | None, teacher_head: Tensor | None, top_logps: Tensor | None,
           top_ids: Tensor | None, teacher_logits: Tensor | None, *, beta: float, temperature: float,
           teacher_heads: Sequence[tuple[Tensor, Tensor | None]] = ()) -> Tensor:  # fmt: skip
    """One chunk's (C, 3) from the student's hidden states (or logits, ``weight`` None) and the teacher's values."""
    logits = hidden if weight is None else F.linear(hidden, weight, bias)
    student = torch.log_softmax(logits.float() / temperature, -1)  # (C, V)
    with torch.no_grad():
        if top_ids is not None:
            teacher = renormalized(top_logps)
        elif teacher_logits is not None:
            teacher = torch.log_softmax(teacher_logits.float() / temperature, -1)
        else:  # each token through its own teacher's head
            teacher = student.new_empty(student.shape)
            for k, (teacher_weight, teacher_bias) in enumerate(teacher_heads):
                rows = teacher_head == k
                projected = F.linear(teacher_hidden[rows, : teacher_weight.shape[1]], teacher_weight, teacher_bias)
                teacher[rows] = torch.log_softmax(projected.float() / temperature, -1)
        entropy = -(student.exp() * student).sum(-1)
    compared = renormalized(student.gather(-1, top_ids)) if top_ids is not None else student
    divergence = generalized_jsd(compared, teacher, beta)
    logps = student.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.stack([divergence, logps, entropy], -1)


def _completion_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                       start: int) -> Tensor:  # fmt: skip
    """(B, L, V) logits scoring each completion column (the fallback path)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logits[:, start - 1 : -1]


def _log_fallback(model: nn.Module) -> None:
    reason = lm_head.unsupported_reason(model) or "its head's output is post-processed"
    if reason not in _logged:
        _logged.add(reason)
        log.warning("distillation of %s uses full logits over the completion tokens: %s", type(model).__name__,
                    reason)  # fmt: skip
