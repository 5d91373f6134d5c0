"""Identity Preference Optimization (Azar et al. 2023, https://arxiv.org/abs/2310.12036), Eq. 17.

loss = (h − 1/(2β))²,  h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))

Two normalizations exist in the wild, named here explicitly:
    ``mean`` (default): log-probs averaged over completion tokens, as TRL computes IPO (its authors
        confirmed this form to TRL). β's scale then does not depend on response length, and
        numbers compare with TRL's.
    ``sum``: the paper's equation with log-probs summed over completion tokens; the regression
        target 1/(2β) then has to be met by a sequence-level gap, which grows with length.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lit_align.algorithms.base import AlignmentModule, NonFinite, Scheduler
from lit_align.logprobs import preference_logps
from lit_align.losses import ipo_loss
from lit_align.metrics import Value, preference_values


class IPO(AlignmentModule):
    """IPO as a LightningModule.

    Args:
        policy: model to train (preset, hub id, directory, ``.gguf`` file or ``nn.Module``).
        reference_policy: a separate reference model; default a frozen copy of the policy (or the
            adapter-disabled policy when LoRA is on).
        beta: β (the paper's τ); the loss pulls the log-ratio gap towards 1/(2β).
        normalization: ``mean`` (token-averaged log-probs, TRL's form, default) or ``sum`` (paper).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay on matrices.
        warmup_ratio: fraction of optimizer steps spent warming up.
        scheduler: ``linear``, ``cosine`` or ``constant`` after warmup.
        max_grad_norm: gradient-norm clip (``None`` to disable).
        lora_r: LoRA rank; 0 trains all weights.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: LoRA dropout.
        lora_target_modules: modules to adapt.
        gradient_checkpointing: recompute activations in backward to save memory.
        nonfinite_loss: on a NaN/inf loss, ``stop`` raises naming the step and batch; ``skip`` leaves the
            batch out of the update, warns and counts it (``train/nonfinite_skipped``).
    """

    def __init__(
        self,
        policy: str | nn.Module = "smollm2-135m-instruct",
        reference_policy: str | nn.Module | None = None,
        beta: float = 0.1,
        normalization: Literal["mean", "sum"] = "mean",
        learning_rate: float = 5e-7,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
        scheduler: Scheduler = "linear",
        max_grad_norm: float | None = 1.0,
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | str = "all-linear",
        gradient_checkpointing: bool = False,
        nonfinite_loss: NonFinite = "stop",
    ) -> None:
        super().__init__(
            policy, reference_policy, True, learning_rate, weight_decay, warmup_ratio, scheduler, max_grad_norm,
            lora_r, lora_alpha, lora_dropout, lora_target_modules, gradient_checkpointing,
            nonfinite_loss=nonfinite_loss,
        )  # fmt: skip
        self.beta = beta
        self.normalization = normalization

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        """Policy completion log-probs (chosen, rejected) for a preference batch."""
        return preference_logps(self.policy, batch, self.pad_token_id)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Value]]:
        chosen, rejected = self(batch)
        ref_chosen, ref_rejected = self.reference_forward(lambda ref: preference_logps(ref, batch, self.pad_token_id))
        field = "mean" if self.normalization == "mean" else "sum"
        losses, _, _ = ipo_loss(
            getattr(chosen, field),
            getattr(rejected, field),
            getattr(ref_chosen, field),
            getattr(ref_rejected, field),
            beta=self.beta,
        )
        # rewards/* mean what they mean in TRL (and in DPO): β·(summed log-ratio), whatever the loss normalization.
        chosen_rewards = self.beta * (chosen.sum - ref_chosen.sum).detach()
        rejected_rewards = self.beta * (rejected.sum - ref_rejected.sum).detach()
        return losses.mean(), preference_values(chosen_rewards, rejected_rewards, chosen, rejected)
