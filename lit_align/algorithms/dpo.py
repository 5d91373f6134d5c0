"""Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290) and TRL 1.16's DPO loss
family, mixed by weights, with TR-DPO's reference syncing.

loss = Σ_k w_k · mean_pairs ℓ_k,
ℓ_sigmoid = −log σ(β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])

The 15 loss types and their equations are in :mod:`lit_align.losses.dpo_family` (``docs/algorithms/dpo.md``: when to
use each). Log-probs are summed over completion tokens, chosen and rejected in one forward pass.

TR-DPO (Gorbatovski et al. 2024, https://arxiv.org/abs/2404.09656): every ``ref_model_sync_steps`` optimizer steps
the reference becomes α·π + (1 − α)·π_ref (α = ``ref_model_mixup_alpha``; 1 is the hard copy), as TRL's
``SyncRefModelCallback``. The synced reference is then part of the module's state (a child module), so a checkpoint
holds it and a resumed run continues from it; a cached reference (it would go stale) and a LoRA policy's adapter
reference (it is the policy) are refused. Under DDP every rank syncs its own copy of identical weights; under FSDP2
the policy and reference shards line up and are mixed shard by shard.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lit_align.batches import PreferenceBatch
from lit_align.hparams import check_beta, check_label_smoothing, check_option, check_options
from lit_align.losses.dpo_family import LOSSES, USES_LABEL_SMOOTHING, Pair, mixture
from lit_align.metrics import Value, preference_values
from lit_align.models.logprobs import preference_logps
from lit_align.reference.mixin import PREFERENCE_VALUES, ReferenceMixin, preference_reference_values
from lit_align.training.offline import OfflineModule

LossType = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                   "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]  # fmt: skip


class DPO(ReferenceMixin, OfflineModule):
    """DPO and TRL's DPO loss family as a LightningModule.

    The shared options (policy, optimizer, LoRA, ...) are :class:`AlignmentModule`'s and
    ``reference_policy`` and ``precompute_reference`` are :class:`ReferenceMixin`'s.

    Args:
        beta: β, the strength of the implicit KL constraint (higher stays closer to the reference).
        loss_type: one of TRL 1.16's loss types, or a list of them mixed by ``loss_weights`` (e.g. ``[sigmoid,
            sft]``, RPO): sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired,
            apo_zero, apo_down, discopop, sft, sigmoid_norm (:mod:`lit_align.losses.dpo_family`).
        loss_weights: one weight per loss type (default 1.0 each).
        label_smoothing: ε, the assumed rate of flipped labels: conservative DPO for ``sigmoid`` (TRL 1.16's sigmoid
            ignores it), the robust estimator for ``robust``, the smoothed target of ``exo_pair`` (which needs
            ε > 0; EXO's 1e-3) and of ``aot``/``aot_unpaired``. 0 = none.
        discopop_tau: τ of ``discopop``'s log-ratio modulation (the paper's and TRL's 0.05).
        sync_ref_model: TR-DPO: mix the policy into the reference every ``ref_model_sync_steps`` optimizer steps.
        ref_model_mixup_alpha: α of the mix, reference ← α·policy + (1 − α)·reference (1: a hard copy).
        ref_model_sync_steps: optimizer steps between syncs.
    """

    REFERENCE_VALUES = PREFERENCE_VALUES

    def __init__(
        self,
        *,
        beta: float = 0.1,
        loss_type: LossType | list[LossType] = "sigmoid",
        loss_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        discopop_tau: float = 0.05,
        sync_ref_model: bool = False,
        ref_model_mixup_alpha: float = 0.6,
        ref_model_sync_steps: int = 512,
        **kwargs: Any,
    ) -> None:
        loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
        weights = [1.0] * len(loss_types) if loss_weights is None else [float(w) for w in loss_weights]
        check_beta(beta)
        check_label_smoothing(label_smoothing)
        known = ", ".join(LOSSES)
        check_options(
            (len(loss_types) > 0 and all(t in LOSSES for t in loss_types), "loss_type", loss_type, f"one of {known}, "
             "or a list of them"),
            (len(set(loss_types)) == len(loss_types), "loss_type", loss_type, "each loss type once"),
            (len(weights) == len(loss_types), "loss_weights", loss_weights, f"one weight per loss type ({loss_types})"),
            (all(w >= 0 for w in weights) and any(w > 0 for w in weights), "loss_weights", loss_weights,
             "weights >= 0, not all 0"),
            (not label_smoothing or bool(set(loss_types) & set(USES_LABEL_SMOOTHING)), "label_smoothing",
             label_smoothing, f"applies to {', '.join(USES_LABEL_SMOOTHING)}, not {loss_types}"),
            ("exo_pair" not in loss_types or label_smoothing > 0, "label_smoothing", label_smoothing,
             "exo_pair needs ε > 0 (its target is (1 − ε, ε), and log ε appears in the loss; EXO uses 1e-3)"),
            (discopop_tau > 0, "discopop_tau", discopop_tau, "τ > 0"),
            (discopop_tau == 0.05 or "discopop" in loss_types, "discopop_tau", discopop_tau, "applies to discopop"),
            (0 < ref_model_mixup_alpha <= 1, "ref_model_mixup_alpha", ref_model_mixup_alpha, "α in (0, 1]"),
            (ref_model_sync_steps >= 1, "ref_model_sync_steps", ref_model_sync_steps, "at least 1"),
            (not sync_ref_model or not kwargs.get("precompute_reference"), "sync_ref_model", sync_ref_model,
             "a precomputed reference is fixed, and syncing would change it: turn off --model.precompute_reference"),
            (not sync_ref_model or not kwargs.get("lora_r"), "sync_ref_model", sync_ref_model, "with LoRA the "
             "reference is the policy without its adapters, and cannot be moved toward the policy apart from it"),
        )  # fmt: skip
        super().__init__(**kwargs)
        self.beta, self.loss_types, self.loss_weights = beta, loss_types, weights
        self.label_smoothing, self.discopop_tau = label_smoothing, discopop_tau
        self.sync_ref_model, self.ref_model_mixup_alpha = sync_ref_model, ref_model_mixup_alpha
        self.ref_model_sync_steps = ref_model_sync_steps
        if sync_ref_model:
            check_option(self.reference_source in ("copy", "model"), "sync_ref_model", sync_ref_model,
                         f"needs a reference model of its own, not a {self.reference_source} one")  # fmt: skip
            self.reference_model = self.reference  # a child: in the checkpoint, which then holds the synced weights

    def forward(self, batch: PreferenceBatch) -> Any:
        """Policy completion log-probs (chosen, rejected) for a preference batch."""
        return preference_logps(self.policy, batch, self.pad_token_id)

    def compute_loss(self, batch: PreferenceBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        chosen, rejected = self(batch)
        ref = self.reference_logps(batch)
        pair = Pair(chosen.sum, rejected.sum, ref["ref_chosen_logps"], ref["ref_rejected_logps"], chosen.num_tokens,
                    rejected.num_tokens)  # fmt: skip
        loss, _ = mixture(pair, self.beta, self.loss_types, self.loss_weights, self.label_smoothing,
                          self.discopop_tau)  # fmt: skip
        rewards = self.beta * pair.chosen_logratios.detach(), self.beta * pair.rejected_logratios.detach()
        return loss, preference_values(*rewards, chosen, rejected)

    def reference_values(self, model: Any, batch: PreferenceBatch) -> dict[str, torch.Tensor]:
        return preference_reference_values(model, batch, self.pad_token_id)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """TR-DPO: once ``ref_model_sync_steps`` optimizer steps more are done, before the next step's first
        micro-batch, reference ← α·policy + (1 − α)·reference (TRL syncs at the end of that step: the same weights).
        Done here rather than after the step so that a checkpoint written at that step resumes into the same sync."""
        step = self.trainer.global_step
        if self.sync_ref_model and step > self._reference.synced_at and step % self.ref_model_sync_steps == 0:
            self._reference.sync(self.policy, self.ref_model_mixup_alpha, step)
