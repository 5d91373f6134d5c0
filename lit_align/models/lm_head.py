"""Per-token log-probs through the LM head chunk by chunk: never a (tokens x vocabulary) logits tensor.

Shapes: N scored tokens, H hidden size, V vocabulary, C rows per chunk (``C = CHUNK_LOGITS // V``).

From the scored positions' final hidden states ``h`` (N, H) and the head's weight ``W`` (V, H) and bias ``b``:

    z = h·Wᵀ + b (in the weight's dtype, then fp32)    s = z / temperature    lse = logsumexp_v s
    logp = s[target] − lse      mean_logit = mean_v z      entropy = lse − Σ_v softmax(s)_v·s_v
    hit = (argmax_v z == target)

The forward keeps ``lse`` (N,) besides its inputs; the backward recomputes each chunk's logits:
``∂logp/∂z = (onehot(target) − softmax(s)) · g / temperature``, ``grad_h = (∂/∂z)·W``,
``grad_W = Σ_chunks (∂/∂z)ᵀ·h``. Peak extra memory is O(C x V) in both passes, not O(N x V); the price
is one more (N x H x V) matmul (the recomputation), as with activation checkpointing. Only ``logp``
carries a gradient; the other statistics are detached metrics.

On CUDA with ``liger_kernel`` installed (and no entropy asked for), Liger's fused linear cross-entropy
(``reduction="none"``, which folds each token's upstream gradient in before summing ``grad_W``) gives
``logp`` and the argmax instead; the vocab-mean logit is then ``h·mean_v(W_v) + mean(b)`` (linear, so no
logits needed). Liger has no entropy output: an extra pass over the vocabulary for it would cost more
than our own kernel, so ``with_entropy`` stays here.

How the hidden states reach the head (:func:`scoring_head`): the model's output-embedding module is
swapped, for one forward, for a :class:`ScoringHead` that scores the positions instead of returning
logits, then put back. Why this and not ``output_hidden_states`` or an identity head followed by our
own matmul: under FSDP2 the root group (embeddings, final norm, head) is gathered by the ROOT's forward
hooks and a frozen root (the reference) is resharded as soon as its forward returns, so the head weight
is only whole INSIDE the model's forward. Everything else (PEFT, gradient checkpointing, DDP, FSDP2's
hooks, ``logits_to_keep``) runs as usual, and the result leaves through the model's output, where FSDP2
registers its pre-backward hooks as it does for logits. ``output_hidden_states`` would also keep every
layer's hidden states alive and its last entry is pre- or post-norm depending on the architecture.

Fallbacks (the caller then computes full logits, see ``lit_align.models.logprobs``): an output embedding that
is not exactly ``nn.Linear`` (LoRA on the head, modules_to_save, quantized or separately sharded
heads), hooks on the head, a config that post-processes logits (soft-capping, logit scales), a DTensor
weight inside the forward, and, checked on every call, a model whose returned ``.logits`` is not the
ScoringHead's untouched output (any other post-processing, or a head called more than once).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

# What a ScoringHead computes from the scored positions: (hidden (N, H), weight (V, H), bias, targets (N,)) -> (N, C).
Score = Callable[[Tensor, Tensor, "Tensor | None", Tensor], Tensor]
CHUNK_LOGITS = 2**22  # logits per chunk: 16 MiB in fp32; 85 rows for a 49k vocabulary

# Config fields of Hugging Face models that change the logits after the head (Gemma-2/3, Cohere, Granite, ...).
POSTPROCESSING_FIELDS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "unpadded_vocab_size",
)
_runtime_unsupported: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


class HeadScores(NamedTuple):
    """Per scored token, each (N,): ``logps`` fp32 (differentiable), the rest fp32 and detached."""

    logps: Tensor
    mean_logits: Tensor  # vocab-mean of the raw logits (before the temperature)
    entropy: Tensor | None  # entropy of softmax(logits / temperature)
    hits: Tensor | None  # 1.0 where argmax(logits) == target


def chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_LOGITS // vocab_size)


def head_scores(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hits: bool = False,
) -> HeadScores:
    """Log-probs of ``targets`` under ``softmax((hidden·Wᵀ + b) / temperature)`` without (N, V) logits.

    Args:
        hidden: (N, H) final hidden states of the scored positions.
        weight: (V, H) the LM head's weight; bias: (V,) or None.
        targets: (N,) token ids.
    """
    liger = _liger_function() if hidden.is_cuda and not with_entropy else None
    if liger is not None:
        return _liger_scores(liger, hidden, weight, bias, targets, temperature, with_hits)
    logps, mean_logits, entropy, hits = _ChunkedHeadLogps.apply(
        hidden, weight, bias, targets, temperature, with_entropy, with_hits
    )
    return HeadScores(logps, mean_logits, entropy if with_entropy else None, hits if with_hits else None)


def packed_head_scores(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, **options) -> Tensor:
    """:func:`head_scores` as one (N, 4) tensor, ``[logp, mean_logit, entropy, hit]`` (0 for what was not asked):
    the default ``score`` of a :class:`ScoringHead`."""
    scores = head_scores(hidden, weight, bias, targets, **options)
    zeros = torch.zeros_like(scores.mean_logits)
    entropy = zeros if scores.entropy is None else scores.entropy
    hits = zeros if scores.hits is None else scores.hits
    return torch.stack([scores.logps, scores.mean_logits, entropy, hits], -1)


class _ChunkedHeadLogps(torch.autograd.Function):
    """The module docstring's equations, ``chunk_rows(V)`` rows at a time in both passes."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, with_entropy, with_hits):
        n, rows_per_chunk = hidden.shape[0], chunk_rows(weight.shape[0])
        f32 = {"dtype": torch.float32, "device": hidden.device}
        logps, lse, mean_logits = (torch.empty(n, **f32) for _ in range(3))
        entropy = torch.empty(n if with_entropy else 0, **f32)
        hits = torch.empty(n if with_hits else 0, **f32)
        logits_dtype = weight.dtype
        for start in range(0, n, rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            z = F.linear(hidden[rows], weight, bias)  # (C, V), what the plain head computes for these rows
            logits_dtype, z = z.dtype, z.float()
            target = targets[rows].unsqueeze(-1)
            mean_logits[rows] = z.mean(-1)
            if with_hits:
                hits[rows] = (z.argmax(-1, keepdim=True) == target).squeeze(-1).float()
            if temperature != 1.0:
                z = z.div_(temperature)
            lse[rows] = torch.logsumexp(z, -1)
            logps[rows] = z.gather(-1, target).squeeze(-1) - lse[rows]
            if with_entropy:
                entropy[rows] = lse[rows] - (torch.exp(z - lse[rows].unsqueeze(-1)) * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        device = hidden.device.type
        # Under autocast (Lightning's "bf16-mixed") the backward recomputes the logits as the forward did.
        ctx.autocast = device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        ctx.temperature, ctx.logits_dtype = temperature, logits_dtype
        ctx.mark_non_differentiable(mean_logits, entropy, hits)
        return logps, mean_logits, entropy, hits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logps, *_unused):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        device, autocast, autocast_dtype = ctx.autocast
        # The weight's gradient is summed over chunks in fp32 (one rounding at the end for a half-precision
        # weight, as the plain path's single matmul has); each chunk's products are in the plain path's dtypes.
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        in_place = not autocast and weight.dtype == hidden.dtype == torch.float32
        scale = grad_logps.float() / ctx.temperature  # (N,) upstream gradient through s = z / temperature
        rows_per_chunk = chunk_rows(weight.shape[0])
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast):
            for start in range(0, hidden.shape[0], rows_per_chunk):
                rows = slice(start, start + rows_per_chunk)
                z = F.linear(hidden[rows], weight, bias).float()
                if ctx.temperature != 1.0:
                    z = z.div_(ctx.temperature)
                g = z.sub_(lse[rows].unsqueeze(-1)).exp_().mul_(-scale[rows].unsqueeze(-1))  # −softmax·scale
                g.scatter_add_(-1, targets[rows].unsqueeze(-1), scale[rows].unsqueeze(-1))  # + onehot·scale
                g = g.to(ctx.logits_dtype)  # ∂/∂z (C, V) in the dtype autograd hands the plain head
                if need_h:
                    grad_h[rows] = g @ weight
                if need_w and in_place:
                    grad_w.addmm_(g.t(), hidden[rows])
                elif need_w:
                    grad_w += g.t() @ hidden[rows]
                if need_b:
                    grad_b += g.sum(0, dtype=torch.float32)
        # Always a (possibly zero) weight gradient when one is needed: DDP's reducer waits for every used parameter.
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


# -- Liger (CUDA) ---------------------------------------------------------------------------------
_liger_cache: list = []


def _liger_function():
    """Liger's ``LigerFusedLinearCrossEntropyFunction`` if installed and new enough, else None (cached).

    Needed: ``reduction="none"`` whose backward applies the per-token upstream gradient before the sum into
    ``grad_W`` (``token_grad_output``; older releases scaled the summed gradient, which is wrong for
    per-token weights) and ``return_predicted_tokens``. Checked by signature, not by version number.
    """
    if not _liger_cache:
        function = None
        if importlib.util.find_spec("liger_kernel") is not None:
            try:
                from liger_kernel.ops import fused_linear_cross_entropy as flce

                inner = inspect.signature(flce.fused_linear_cross_entropy_forward).parameters
                outer = inspect.signature(flce.LigerFusedLinearCrossEntropyFunction.forward).parameters
                if "token_grad_output" in inner and "return_predicted_tokens" in outer:
                    function = flce.LigerFusedLinearCrossEntropyFunction
            except (ImportError, AttributeError, RuntimeError):
                function = None
        _liger_cache.append(function)
    return _liger_cache[0]


def _liger_scores(liger, hidden, weight, bias, targets, temperature, with_hits) -> HeadScores:
    scaled_h = hidden if temperature == 1.0 else hidden / temperature  # (h·Wᵀ + b)/T = (h/T)·Wᵀ + b/T
    scaled_b = bias if bias is None or temperature == 1.0 else bias / temperature
    accum = None if weight.dtype == torch.float32 else torch.float32
    # positional: input, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing,
    # reduction, softcap, return_z_loss, accum_dtype, use_token_scaling, return_token_accuracy, return_predicted_tokens
    loss, _, _, predicted = liger.apply(
        scaled_h, weight, targets, scaled_b, None, -100, 0.0, 0.0, "none", None, False, accum, False, False, with_hits
    )
    with torch.no_grad():
        mean_logits = hidden.float() @ weight.mean(0, dtype=torch.float32)
        if bias is not None:
            mean_logits += bias.float().mean()
        hits = (predicted == targets).float() if with_hits else None
    return HeadScores(-loss.float(), mean_logits, None, hits)


# -- swapping the head inside the model's forward --------------------------------------------------------
def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model``'s head cannot be replaced by the chunked computation, or None if it can (static checks)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return f"{type(model).__name__} has no output embedding (get_output_embeddings)"
    if type(head) is not nn.Linear:
        return f"its output embedding is a {type(head).__module__}.{type(head).__qualname__}, not a plain nn.Linear"
    if head._forward_hooks or head._forward_pre_hooks:
        return "its output embedding has forward hooks, which the chunked head would skip"
    if head in _runtime_unsupported:
        return _runtime_unsupported[head]
    config = getattr(model, "config", None)
    configs = [config]
    if config is not None and callable(getattr(config, "get_text_config", None)):
        configs.append(config.get_text_config())
    for cfg in configs:
        for field in POSTPROCESSING_FIELDS:
            if getattr(cfg, field, None) is not None:
                return f"its config sets {field}={getattr(cfg, field)!r}, which post-processes the logits"
    if _locate(model, head) is None:
        return "its output embedding is not a submodule of the model"
    return None


class ScoringHead(nn.Module):
    """Stands in for the output embedding during one forward: scores positions instead of emitting logits.

    Given the (B, K, H) hidden states the model would feed its head (K = kept positions, the last K of T),
    returns a (B, K, C) tensor: ``score`` of the positions where ``scored`` (the (B, T) positions that score token
    t + 1) is set, zeros elsewhere. The default ``score`` (:func:`packed_head_scores`) gives C = 4, per position
    ``[logp, mean_logit, entropy, hit]`` in fp32, of which only ``logp`` carries a gradient; a distillation pass
    gives its own (:mod:`lit_align.models.divergence`).
    """

    def __init__(self, head: nn.Linear, scored: Tensor, targets: Tensor, score: Score | None = None,
                 **options) -> None:  # fmt: skip
        super().__init__()
        self.__dict__["head"] = head  # not registered: the model's parameters stay where they are
        self.scored, self.targets, self.options = scored, targets, options
        self.score = score if score is not None else functools.partial(packed_head_scores, **options)
        self.calls = 0
        self.problem: str | None = None
        self.output: Tensor | None = None
        self.output_version = -1  # its autograd version counter when returned: an in-place change moves it

    @property
    def weight(self) -> Tensor:  # for model code that reads lm_head.weight (its dtype, say)
        return self.head.weight

    @property
    def bias(self) -> Tensor | None:
        return self.head.bias

    def forward(self, hidden: Tensor) -> Tensor:
        self.calls += 1
        batch, seq_len = self.scored.shape
        weight = self.head.weight
        if self.calls > 1:
            self.problem = "the model calls its output embedding more than once per forward"
        elif hidden.dim() != 3 or hidden.shape[0] != batch or hidden.shape[1] > seq_len:
            self.problem = f"its head receives hidden states of shape {tuple(hidden.shape)}, not (B, K <= T, H)"
        elif type(weight) is not nn.Parameter and type(weight) is not Tensor:
            self.problem = f"its head weight is a {type(weight).__name__} inside the forward (tensor parallel?)"
        if self.problem is not None:
            return self.head(hidden)  # the forward finishes as usual; the caller redoes the batch the plain way
        offset = seq_len - hidden.shape[1]
        mask = self.scored[:, offset:]  # (B, K)
        packed = self.score(hidden[mask], weight, self.head.bias, self.targets[:, offset:][mask])  # (N, C)
        out = packed.new_zeros(batch, hidden.shape[1], packed.shape[1]).index_put((mask,), packed)
        # Inference tensors (Trainer.validate runs under torch.inference_mode) have no version counter: identity
        # alone then tells whether the model returned our output.
        self.output, self.output_version = out, None if out.is_inference() else out._version
        return out

    def result(self, logits: Tensor) -> Tensor | None:
        """The (B, K, 4) scores if ``logits`` (the model's returned ``.logits``) is our output, untouched."""
        untouched = self.output_version is None or logits._version == self.output_version
        if self.problem is None and logits is self.output and untouched:
            return logits
        if self.problem is None and self.calls == 0:
            self.problem = "the model's forward never called its output embedding"
        elif self.problem is None:
            self.problem = "the model post-processes its head's output (its returned .logits is not the head's)"
        _runtime_unsupported[self.head] = self.problem
        return None


class GatherScoringHead(ScoringHead):
    """A :class:`ScoringHead` for a packed row whose positions may each score several targets (a shared prefix's
    last token predicts every completion's first): given the (1, N, H) hidden states, scores ``index`` (M,) rows of
    them against ``targets`` (M,) and returns (1, M, 4)."""

    def forward(self, hidden: Tensor) -> Tensor:
        self.calls += 1
        index, weight = self.scored, self.head.weight
        if self.calls > 1:
            self.problem = "the model calls its output embedding more than once per forward"
        elif hidden.dim() != 3 or hidden.shape[0] != 1 or (len(index) and int(index.max()) >= hidden.shape[1]):
            self.problem = f"its head receives hidden states of shape {tuple(hidden.shape)}, not the packed row's"
        elif type(weight) is not nn.Parameter and type(weight) is not Tensor:
            self.problem = f"its head weight is a {type(weight).__name__} inside the forward (tensor parallel?)"
        if self.problem is not None:
            return self.head(hidden)
        out = self.score(hidden[0, index], weight, self.head.bias, self.targets)[None]  # (1, M, C)
        self.output, self.output_version = out, None if out.is_inference() else out._version
        return out


@contextmanager
def scoring_head(
    model: nn.Module, scored: Tensor, targets: Tensor, index: bool = False, score: Score | None = None, **options
) -> Iterator[ScoringHead]:
    """Swap ``model``'s output embedding for a :class:`ScoringHead` for the duration of the block.

    Check :func:`unsupported_reason` first. ``options``: ``temperature``, ``with_entropy``, ``with_hits`` (of the
    default ``score``, :func:`packed_head_scores`; another ``score`` takes none). With ``index``, ``scored`` is a
    (M,) index into a packed row's positions and ``targets`` (M,) (a :class:`GatherScoringHead`).
    """
    head = model.get_output_embeddings()
    parent, name = _locate(model, head)
    scoring = (GatherScoringHead if index else ScoringHead)(head, scored, targets, score, **options)
    parent._modules[name] = scoring
    try:
        yield scoring
    finally:
        parent._modules[name] = head


def _locate(model: nn.Module, head: nn.Module) -> tuple[nn.Module, str] | None:
    for parent in model.modules():
        for name, child in parent._modules.items():
            if child is head:
                return parent, name
    return None
