"""Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

loss = -log σ(β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])

Log-probs are summed over completion tokens, chosen and rejected in one forward pass.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lit_align.algorithms.offline import OfflineModule
from lit_align.batches import PreferenceBatch
from lit_align.hparams import check_beta, check_label_smoothing, check_option
from lit_align.logprobs import preference_logps
from lit_align.losses import dpo_loss, hinge_loss, robust_dpo_loss
from lit_align.metrics import Value, preference_values
from lit_align.reference import PREFERENCE_VALUES, ReferenceMixin, preference_reference_values

LOSSES = {"sigmoid": dpo_loss, "robust": robust_dpo_loss, "hinge": hinge_loss}


class DPO(ReferenceMixin, OfflineModule):
    """DPO and its sigmoid-family variants as a LightningModule.

    The shared options (policy, optimizer, LoRA, ...) are :class:`AlignmentModule`'s and
    ``reference_policy`` and ``precompute_reference`` are :class:`ReferenceMixin`'s.

    Args:
        beta: β, the strength of the implicit KL constraint (higher stays closer to the reference).
        loss_type: ``sigmoid`` (DPO), ``robust`` (Chowdhury et al. 2024, needs label_smoothing),
            ``hinge`` (SLiC/RSO).
        label_smoothing: ε, the assumed rate of flipped labels: conservative DPO for ``sigmoid``,
            the unbiased robust estimator for ``robust``. 0 = plain DPO.
    """

    REFERENCE_VALUES = PREFERENCE_VALUES

    def __init__(
        self,
        *,
        beta: float = 0.1,
        loss_type: Literal["sigmoid", "robust", "hinge"] = "sigmoid",
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        check_beta(beta)
        check_option(loss_type in LOSSES, "loss_type", loss_type, ", ".join(LOSSES))
        check_label_smoothing(label_smoothing)
        check_option(not label_smoothing or loss_type in ("sigmoid", "robust"), "label_smoothing", label_smoothing,
                     f"applies to the sigmoid and robust losses, not --model.loss_type={loss_type}")  # fmt: skip
        super().__init__(**kwargs)
        self.loss_fn = LOSSES[loss_type]
        self.loss_kwargs = (
            {"beta": beta} if loss_type == "hinge" else {"beta": beta, "label_smoothing": label_smoothing}
        )

    def forward(self, batch: PreferenceBatch) -> Any:
        """Policy completion log-probs (chosen, rejected) for a preference batch."""
        return preference_logps(self.policy, batch, self.pad_token_id)

    def compute_loss(self, batch: PreferenceBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        chosen, rejected = self(batch)
        ref = self.reference_logps(batch)
        losses, chosen_rewards, rejected_rewards = self.loss_fn(
            chosen.sum, rejected.sum, ref["ref_chosen_logps"], ref["ref_rejected_logps"], **self.loss_kwargs
        )
        return losses.mean(), preference_values(chosen_rewards, rejected_rewards, chosen, rejected)

    def reference_values(self, model: Any, batch: PreferenceBatch) -> dict[str, torch.Tensor]:
        return preference_reference_values(model, batch, self.pad_token_id)
