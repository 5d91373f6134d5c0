"""Kahneman-Tversky Optimization (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306), Eq. 7.

Learns from single completions labelled desirable or undesirable (``BinaryFeedbackDataModule``):

    r = log π(y|x) − log π_ref(y|x)                         (log-probs summed over completion tokens)
    z = max(0, mean over ranks of mean_i [log π(y'_i|x_i) − log π_ref(y'_i|x_i)])   (detached)
    desirable:   λ_D·(1 − σ(β·(r − z)))        undesirable:   λ_U·(1 − σ(β·(z − r)))

where (x_i, y'_i) are the batch's mismatched KL pairs. z is KTO's reference point: a biased,
low-variance estimate of KL(π ‖ π_ref), computed as TRL 1.16 ``KTOTrainer`` does (each rank's local
mean, averaged across ranks, then clamped) and never back-propagated. ``apo_zero_unpaired`` is TRL's
unpaired APO-zero (no z, so the two KL forward passes are skipped and ``kl`` logs 0, as in TRL).

With ``precompute_reference`` the reference values are cached per row (``ref_logps``) and per KL pair
(``ref_kl_logps``, keyed by the pair's two rows, for every pair the planned epochs meet):
:mod:`lit_align.reference.cache`.

Deliberately left out: TRL's ``entropy``/``num_tokens`` metrics.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_align.batches import BinaryBatch
from lit_align.hparams import check_beta, check_option
from lit_align.losses.binary import apo_zero_unpaired_loss, kto_kl_estimate, kto_loss, kto_side_sums
from lit_align.metrics import Value
from lit_align.models.logprobs import SequenceLogps, sequence_logps
from lit_align.reference.mixin import ROW, ReferenceMixin
from lit_align.training.offline import OfflineModule

KTO_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "kl",
)
RECOMMENDED_RATIO = (1.0, 4.0 / 3.0)  # KTO paper Eq. 8: λ_D·n_D / (λ_U·n_U) in [1, 4/3]


def weight_advice(
    n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float
) -> str | None:
    """None when λ_D·n_D / (λ_U·n_U) lies in the KTO paper's recommended [1, 4/3] (Eq. 8), else what to set."""
    if n_desirable == 0 or n_undesirable == 0:
        side = "desirable" if n_desirable == 0 else "undesirable"
        return f"the training data has no {side} examples; KTO needs both kinds of feedback to be useful"
    ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    low, high = RECOMMENDED_RATIO
    if low <= ratio <= high:
        return None
    d_low, d_high = (undesirable_weight * n_undesirable / n_desirable * r for r in (low, high))
    u_low, u_high = (desirable_weight * n_desirable / n_undesirable / r for r in (high, low))
    return (
        f"with {n_desirable} desirable and {n_undesirable} undesirable examples, desirable_weight={desirable_weight} "
        f"and undesirable_weight={undesirable_weight} give (λ_D·n_D)/(λ_U·n_U) = {ratio:.3f}, outside the KTO "
        f"paper's recommended [1, 4/3] (Eq. 8). Set EITHER desirable_weight in [{d_low:.3g}, {d_high:.3g}] OR "
        f"undesirable_weight in [{u_low:.3g}, {u_high:.3g}] (not both)."
    )


class KTO(ReferenceMixin, OfflineModule):
    """KTO (and TRL's unpaired APO-zero) on binary-feedback batches, as a LightningModule.

    Metrics (TRL's names; ``chosen`` = desirable, ``rejected`` = undesirable): ``rewards/*`` and
    ``logps/*`` are means over the examples of that side, ``logits/*`` over its completion tokens,
    weighted so that they aggregate exactly across batches and ranks (TRL logs the mean of per-step
    means instead). ``rewards/margins`` per training step is the step's desirable mean minus its
    undesirable mean over all ranks (TRL's); the validation value is the difference of the epoch
    means. ``kl`` is the reference point z used by the loss.

    The shared options (policy, optimizer, LoRA, ...) are :class:`AlignmentModule`'s and
    ``reference_policy`` and ``precompute_reference`` are :class:`ReferenceMixin`'s.

    Args:
        beta: β, the strength of the implicit KL constraint (higher stays closer to the reference).
        loss_type: ``kto`` (paper, Eq. 7) or ``apo_zero_unpaired`` (TRL's unpaired APO-zero).
        desirable_weight: λ_D, weight of the desirable examples' losses.
        undesirable_weight: λ_U, weight of the undesirable examples' losses. Keep
            λ_D·n_D / (λ_U·n_U) in [1, 4/3]; a warning at setup says what to set when it is not.
    """

    METRICS = KTO_METRICS
    KEY_METRICS = ("rewards/margins", "kl")
    # A KL pair's value depends on which completion the batch puts beside the prompt: keyed by both rows.
    REFERENCE_VALUES = {"ref_logps": ROW, "ref_kl_logps": ("row_index", "kl_row_index")}

    def __init__(
        self,
        *,
        beta: float = 0.1,
        loss_type: Literal["kto", "apo_zero_unpaired"] = "kto",
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        check_beta(beta)
        check_option(loss_type in ("kto", "apo_zero_unpaired"), "loss_type", loss_type, "kto or apo_zero_unpaired")
        check_option(desirable_weight > 0, "desirable_weight", desirable_weight, "λ_D must be > 0")
        check_option(undesirable_weight > 0, "undesirable_weight", undesirable_weight, "λ_U must be > 0")
        super().__init__(**kwargs)
        self.beta = beta
        self.uses_kl = loss_type == "kto"  # decided once: apo_zero_unpaired skips the KL passes entirely
        self.loss_type = loss_type
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def forward(self, batch: BinaryBatch) -> SequenceLogps:
        """Policy completion log-probs of the batch's (prompt, completion) examples."""
        return sequence_logps(self.policy, batch["input_ids"], batch["attention_mask"], batch["labels"])

    @classmethod
    def check_data(cls, datamodule: Any, options: dict[str, Any]) -> None:
        """Warn when λ_D·n_D / (λ_U·n_U) leaves the KTO paper's recommended range (:func:`weight_advice`)."""
        stats = getattr(datamodule, "stats", None)
        if stats and "train/desirable" in stats:
            advice = weight_advice(stats["train/desirable"], stats["train/undesirable"],
                                   options.get("desirable_weight", 1.0), options.get("undesirable_weight", 1.0))
            if advice:
                rank_zero_warn(f"KTO: {advice}")

    def on_validation_epoch_end(self) -> None:
        # The epoch's margin is the difference of the epoch means, not a mean of per-batch differences:
        # replace the accumulated per-batch values before Lightning computes and logs the metric.
        metrics = self.val_metrics
        margin = metrics["rewards/chosen"].compute() - metrics["rewards/rejected"].compute()
        metrics["rewards/margins"].reset()
        metrics["rewards/margins"].update(margin)

    # -- helpers --------------------------------------------------------------------------------
    def compute_loss(self, batch: BinaryBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        is_desirable = batch["is_desirable"].bool()
        policy = self(batch)
        ref = self.reference_logps(batch)
        if self.uses_kl:
            kl = self.kl_estimate(batch, ref["ref_kl_logps"])
            losses, rewards = kto_loss(policy.sum, ref["ref_logps"], is_desirable, kl, self.beta,
                                       self.desirable_weight, self.undesirable_weight)  # fmt: skip
        else:
            kl = policy.sum.new_zeros(())
            losses, rewards = apo_zero_unpaired_loss(
                policy.sum, ref["ref_logps"], is_desirable, self.beta, self.desirable_weight, self.undesirable_weight
            )
        return losses.mean(), self._metric_values(rewards, policy, is_desirable, kl)

    def reference_value_keys(self) -> dict[str, tuple[str, ...]]:
        keys = dict(self.REFERENCE_VALUES)
        if not self.uses_kl:  # apo_zero_unpaired: no KL pass, nothing to cache for it
            del keys["ref_kl_logps"]
        return keys

    def reference_values(self, model: nn.Module, batch: BinaryBatch) -> dict[str, torch.Tensor]:
        """Summed completion log-probs of the examples (``ref_logps``) and of their KL pairs (``ref_kl_logps``)."""
        values = {"ref_logps": sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"]).sum}
        if self.uses_kl:
            values["ref_kl_logps"] = _kl_logps(model, batch)
        return values

    def kl_estimate(self, batch: BinaryBatch, ref_kl: torch.Tensor) -> torch.Tensor:
        """z from the mismatched KL pairs under policy and reference: a detached scalar, the cross-rank mean."""
        with torch.no_grad():  # z is never back-propagated; no activations kept (TRL does the same)
            policy_kl = _kl_logps(self.policy, batch)
        return kto_kl_estimate(policy_kl, ref_kl, all_reduce_mean=lambda t: self.all_reduce(t, "mean"))

    def _metric_values(
        self, rewards: torch.Tensor, policy: SequenceLogps, is_desirable: torch.Tensor, kl: torch.Tensor
    ) -> dict[str, Value]:
        desirable, undesirable = is_desirable.float(), (~is_desirable).float()
        # TRL's step margin: global desirable mean − global undesirable mean (weight 0 when a side is empty).
        sums = self.all_reduce(torch.stack(kto_side_sums(rewards, is_desirable)))
        both = (sums[1] > 0) & (sums[3] > 0)
        margin = sums[0] / sums[1].clamp(min=1) - sums[2] / sums[3].clamp(min=1)
        token_logits = policy.logits_sum / policy.num_tokens.clamp(min=1)
        return {
            "rewards/chosen": (rewards, desirable),
            "rewards/rejected": (rewards, undesirable),
            "rewards/margins": (margin.reshape(1), both.float().reshape(1)),
            "logps/chosen": (policy.sum.detach(), desirable),
            "logps/rejected": (policy.sum.detach(), undesirable),
            "logits/chosen": (token_logits, policy.num_tokens * desirable),
            "logits/rejected": (token_logits, policy.num_tokens * undesirable),
            "kl": kl.detach().reshape(1),
        }

def _kl_logps(model: nn.Module, batch: BinaryBatch) -> torch.Tensor:
    """Summed completion log-probs of the batch's mismatched KL pairs (B,)."""
    return sequence_logps(model, batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"]).sum
