"""Supervised fine-tuning: maximum likelihood of the completion given the prompt.

loss = −(1/N) · Σ_b Σ_t m[b,t] · log π(y[b,t] | x_b, y[b,<t]),   N = Σ_b Σ_t m[b,t]

``m`` marks the trained tokens (``labels != -100``: the completion, or the whole sequence with the
DataModule's ``completion_only_loss=False``). N counts them over the WHOLE optimizer step: every
micro-batch of a gradient-accumulation window on every data-parallel rank. A per-micro-batch token
mean would weight tokens of short micro-batches more than tokens of long ones (TRL's normalization
bug trail), so ``training_step`` returns the micro-batch's summed NLL and
``on_before_optimizer_step`` rescales the accumulated gradient by ``k·W / N_window``: ``k`` undoes
Lightning's division of each micro-batch loss by ``accumulate_grad_batches``, ``W`` DDP/FSDP's
average over ranks, and ``N_window`` is all-reduced once per optimizer step. No look-ahead over the
data is needed, any sampler works, and the last, shorter window of an epoch is exact too.

Deliberately left out: packing / padding-free batches, label smoothing, the DFT and other loss
variants, NEFTune, and TRL's ``entropy`` metric (it needs the full softmax over the vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from lit_align.algorithms.base import AlignmentModule
from lit_align.batches import SFTBatch
from lit_align.logprobs import completion_scores
from lit_align.metrics import Value


@dataclass
class TokenStats:
    """Per-sequence sums over trained tokens, each of shape (B,)."""

    nll: torch.Tensor  # summed negative log-likelihood (carries the gradient)
    num_tokens: torch.Tensor  # trained tokens
    num_correct: torch.Tensor  # trained tokens whose argmax prediction is the label


def token_stats(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    chunked: bool | None = None,
) -> TokenStats:
    """Summed NLL, token count and top-1 hits per sequence, from one forward pass.

    :func:`lit_align.logprobs.completion_scores`, as ``token_logps`` computes it (by default through the
    chunked LM head: no (tokens x vocabulary) logits); the top-1 hits are detached.
    """
    scores = completion_scores(model, input_ids, attention_mask, labels, with_accuracy=True, chunked=chunked)
    return TokenStats(-scores.logps.sum(-1), scores.mask.sum(-1), scores.correct.sum(-1))


class SFT(AlignmentModule):
    """Supervised fine-tuning as a LightningModule (reference-free).

    Logged (TRL's names): ``train/loss`` (token-mean NLL of the micro-batch),
    ``train/mean_token_accuracy``, ``train/num_tokens`` (non-padding tokens seen so far, all ranks),
    ``val/loss``, ``val/mean_token_accuracy`` and ``val/perplexity`` (exp of the token-weighted
    validation NLL).

    The options are :class:`AlignmentModule`'s; SFT changes two defaults.
    """

    METRICS = ("mean_token_accuracy",)  # plus train/num_tokens and val/perplexity, logged separately
    KEY_METRICS = ("mean_token_accuracy",)

    def __init__(
        self,
        *,
        learning_rate: float = 2e-5,
        warmup_ratio: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, warmup_ratio=warmup_ratio, **kwargs)
        self.val_nll = MeanMetric(dist_sync_on_step=False)  # token-weighted, for val/perplexity
        self._window_tokens: torch.Tensor | int = 0  # trained tokens in this accumulation window (this rank)
        self._tokens_seen: torch.Tensor | int = 0  # non-padding tokens trained on so far (this rank)

    def forward(self, batch: SFTBatch) -> TokenStats:
        """Per-sequence NLL sums, token counts and top-1 hits for an sft batch."""
        return token_stats(self.policy, batch["input_ids"], batch["attention_mask"], batch["labels"])

    def training_step(self, batch: SFTBatch, batch_idx: int) -> torch.Tensor:
        stats = self(batch)
        nll_sum, num_tokens = stats.nll.sum(), stats.num_tokens.sum()
        if not self.loss_is_finite(nll_sum, batch_idx):
            return self.skipped_loss()  # its tokens are not counted either
        self._window_tokens = self._window_tokens + num_tokens
        self._tokens_seen = self._tokens_seen + batch["attention_mask"].sum()
        self.train_metrics.step(self._values(stats))
        # The step's loss is the token mean over all ranks (not the mean of per-rank means), as the gradient is.
        totals = torch.stack([nll_sum.detach(), num_tokens.float()])
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        self.log("train/loss", totals[0] / totals[1].clamp(min=1), prog_bar=True)
        self.log("train/num_tokens", torch.as_tensor(self._tokens_seen).float(), reduce_fx="sum", sync_dist=True)
        self.log_dict(self.train_metrics, on_step=True, on_epoch=False)
        self.show_key_metrics(self._values(stats))
        return nll_sum  # a sum: on_before_optimizer_step divides the gradient by the window's tokens

    def validation_step(self, batch: SFTBatch, batch_idx: int) -> None:
        stats = self(batch)
        per_sequence = stats.nll / stats.num_tokens.clamp(min=1)
        if stats.num_tokens.sum() > 0:
            self.val_nll.update(per_sequence, stats.num_tokens)
        self.val_metrics.step({"loss": (per_sequence, stats.num_tokens), **self._values(stats)})
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.val_nll.update_called:
            self.log("val/perplexity", torch.exp(self.val_nll.compute()), sync_dist=True)
        self.val_nll.reset()

    def on_train_start(self) -> None:
        self._window_tokens = 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Each micro-batch contributed ∇(nll_sum)/k and the ranks' gradients were averaged (/W):
        # multiplying by k·W/N_window leaves ∇ of the token-mean NLL over the whole optimizer step.
        tokens = self.trainer.strategy.reduce(torch.as_tensor(self._window_tokens, device=self.device), reduce_op="sum")
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / max(float(tokens), 1.0)
        for param in self._trainable():
            if param.grad is not None:
                param.grad.mul_(scale)
        self._window_tokens = 0
        super().on_before_optimizer_step(optimizer)  # drops the step's gradient if all its batches were skipped

    def compute_loss(self, batch: SFTBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        """Token-mean NLL of one batch (``update`` and evaluation; training normalizes per window)."""
        stats = self(batch)
        return stats.nll.sum() / stats.num_tokens.sum().clamp(min=1), self._values(stats)

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _values(stats: TokenStats) -> dict[str, Value]:
        accuracy = stats.num_correct.float() / stats.num_tokens.clamp(min=1)
        return {"mean_token_accuracy": (accuracy, stats.num_tokens)}  # token-weighted
