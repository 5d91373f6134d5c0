"""Supervised fine-tuning: maximum likelihood of the completion given the prompt.

loss = −(1/N) · Σ_b Σ_t m[b,t] · log π(y[b,t] | x_b, y[b,<t]),   N = Σ_b Σ_t m[b,t]

``m`` marks the trained tokens (``labels != -100``: the completion, or the whole sequence with the
DataModule's ``completion_only_loss=False``). N counts them over the WHOLE optimizer step: every
micro-batch of a gradient-accumulation window on every data-parallel rank. A per-micro-batch token
mean would weight tokens of short micro-batches more than tokens of long ones (TRL's normalization
bug trail), so :meth:`SFT.loss_units` counts the micro-batch's trained tokens: the offline loop backpropagates
the summed NLL and rescales the accumulated gradient by ``k·W / N_window`` before the optimizer step (``k`` undoes
Lightning's division of each micro-batch loss by ``accumulate_grad_batches``, ``W`` DDP/FSDP's average over ranks,
and ``N_window`` is all-reduced once per optimizer step). No look-ahead over the data is needed, any sampler works,
and the last, shorter window of an epoch is exact too.

Deliberately left out: packing / padding-free batches, label smoothing, the DFT and other loss
variants, NEFTune, and TRL's ``entropy`` metric (it needs the full softmax over the vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_align.batches import IGNORE_INDEX, SFTBatch
from lit_align.metrics import Value
from lit_align.models.logprobs import completion_scores
from lit_align.training.offline import OfflineModule


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

    :func:`lit_align.models.logprobs.completion_scores`, as ``token_logps`` computes it (by default through the
    chunked LM head: no (tokens x vocabulary) logits); the top-1 hits are detached.
    """
    scores = completion_scores(model, input_ids, attention_mask, labels, with_accuracy=True, chunked=chunked)
    return TokenStats(-scores.logps.sum(-1), scores.mask.sum(-1), scores.correct.sum(-1))


class SFT(OfflineModule):
    """Supervised fine-tuning as a LightningModule (reference-free).

    Logged (TRL's names): ``train/loss`` (token-mean NLL of the micro-batch over all ranks),
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
        self._tokens_seen: torch.Tensor | int = 0  # non-padding tokens trained on so far (this rank)

    def forward(self, batch: SFTBatch) -> TokenStats:
        """Per-sequence NLL sums, token counts and top-1 hits for an sft batch."""
        return token_stats(self.policy, batch["input_ids"], batch["attention_mask"], batch["labels"])

    def compute_loss(self, batch: SFTBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        """The token-mean NLL of the batch and its token-weighted top-1 accuracy."""
        stats = self(batch)
        if self.in_fit():
            self._tokens_seen = self._tokens_seen + batch["attention_mask"].sum()
            self.log("train/num_tokens", torch.as_tensor(self._tokens_seen).float(), reduce_fx="sum", sync_dist=True)
        accuracy = stats.num_correct.float() / stats.num_tokens.clamp(min=1)
        loss = stats.nll.sum() / stats.num_tokens.sum().clamp(min=1)
        return loss, {"mean_token_accuracy": (accuracy, stats.num_tokens)}

    def loss_units(self, batch: SFTBatch) -> torch.Tensor:
        """The trained tokens (position 0 has no context to predict it from): the step's NLL is their mean."""
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def on_validation_epoch_end(self) -> None:
        loss = self.val_metrics["loss"]
        if loss.update_called:  # the token-weighted validation NLL
            self.log("val/perplexity", torch.exp(loss.compute()), sync_dist=True)
