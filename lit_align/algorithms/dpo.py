"""Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

loss = -log σ(β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])

Log-probs are summed over completion tokens, chosen and rejected in one forward pass.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lit_align.algorithms.base import AlignmentModule, NonFinite, Scheduler
from lit_align.logprobs import preference_logps
from lit_align.losses import dpo_loss, hinge_loss, robust_dpo_loss
from lit_align.metrics import Value, preference_values

LOSSES = {"sigmoid": dpo_loss, "robust": robust_dpo_loss, "hinge": hinge_loss}


class DPO(AlignmentModule):
    """DPO and its sigmoid-family variants as a LightningModule.

    Args:
        policy: model to train: a preset (``smollm2-135m-instruct``, ``tiny-llama``), hub id,
            local directory, ``.gguf`` file, or an ``nn.Module``.
        reference_policy: a separate reference model; default a frozen copy of the policy (or the
            adapter-disabled policy when LoRA is on).
        beta: β, the strength of the implicit KL constraint (higher stays closer to the reference).
        loss_type: ``sigmoid`` (DPO), ``robust`` (Chowdhury et al. 2024, needs label_smoothing),
            ``hinge`` (SLiC/RSO).
        label_smoothing: ε, the assumed rate of flipped labels: conservative DPO for ``sigmoid``,
            the unbiased robust estimator for ``robust``. 0 = plain DPO.
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay on matrices (not on norms/biases).
        warmup_ratio: fraction of the total optimizer steps spent warming up linearly.
        scheduler: ``linear`` / ``cosine`` decay to 0 after warmup, or ``constant``.
        max_grad_norm: gradient-norm clip (``None`` to disable); a Trainer ``gradient_clip_val`` wins.
        lora_r: LoRA rank; 0 trains all weights.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: LoRA dropout.
        lora_target_modules: modules to adapt (``all-linear`` or a list of names).
        gradient_checkpointing: recompute activations in backward to save memory.
        nonfinite_loss: on a NaN/inf loss, ``stop`` raises naming the step and batch; ``skip`` leaves the
            batch out of the update, warns and counts it (``train/nonfinite_skipped``).
    """

    def __init__(
        self,
        policy: str | nn.Module = "smollm2-135m-instruct",
        reference_policy: str | nn.Module | None = None,
        beta: float = 0.1,
        loss_type: Literal["sigmoid", "robust", "hinge"] = "sigmoid",
        label_smoothing: float = 0.0,
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
        if loss_type != "sigmoid" and loss_type != "robust" and label_smoothing:
            raise ValueError(f"label_smoothing applies to the sigmoid and robust losses, not {loss_type!r}")
        self.loss_fn = LOSSES[loss_type]
        self.loss_kwargs = (
            {"beta": beta} if loss_type == "hinge" else {"beta": beta, "label_smoothing": label_smoothing}
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        """Policy completion log-probs (chosen, rejected) for a preference batch."""
        return preference_logps(self.policy, batch, self.pad_token_id)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Value]]:
        chosen, rejected = self(batch)
        ref_chosen, ref_rejected = self.reference_forward(lambda ref: preference_logps(ref, batch, self.pad_token_id))
        losses, chosen_rewards, rejected_rewards = self.loss_fn(
            chosen.sum, rejected.sum, ref_chosen.sum, ref_rejected.sum, **self.loss_kwargs
        )
        return losses.mean(), preference_values(chosen_rewards, rejected_rewards, chosen, rejected)
