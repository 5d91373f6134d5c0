"""Simple Preference Optimization (Meng et al. 2024, https://arxiv.org/abs/2405.14734), Eq. 6.

loss = −log σ(β/|y_w|·log π(y_w|x) − β/|y_l|·log π(y_l|x) − γ)  [+ sft_weight · NLL(y_w)]

The implicit reward is the length-normalized (token-mean) log-likelihood β·mean log π(y|x); there is
no reference model, so none is loaded and no reference pass runs. γ is the target reward margin.
The optional NLL term on the chosen completion is CPO's (Xu et al. 2024), TRL's ``cpo_alpha``.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_align.batches import PreferenceBatch
from lit_align.hparams import check_beta, check_label_smoothing, check_option
from lit_align.losses import simpo_loss
from lit_align.metrics import PREFERENCE_METRICS, Value, preference_values
from lit_align.models.logprobs import SequenceLogps, preference_logps
from lit_align.training.offline import OfflineModule


class SimPO(OfflineModule):
    """SimPO as a LightningModule (reference-free).

    Defaults follow the SimPO paper: β = 2.0 and γ = 1.0 (γ/β = 0.5), the authors' recommended starting
    point (β in 2.0–2.5; their Llama-3-Base setting); the paper's learning rates are 3e-7 to 1e-6.
    TRL's ``CPOTrainer(loss_type="simpo")`` computes the same loss; its ``simpo_gamma`` is γ and its
    ``cpo_alpha`` is ``sft_weight`` (TRL's defaults β = 0.1, γ = 0.5 are CPO's, not SimPO's).

    Logged like TRL's CPOTrainer: ``rewards/*`` (β·mean log-prob), ``logps/chosen`` and
    ``logps/rejected`` as token-MEAN log-probs (what SimPO's reward uses; DPO logs sums), ``logits/*``
    (vocab-mean logit over completion tokens, DPOTrainer's definition) and ``nll_loss``. ``nll_loss`` is
    logged even when ``sft_weight`` is 0 (TRL logs 0 then).

    The shared options (policy, optimizer, LoRA, ...) are :class:`AlignmentModule`'s.

    Args:
        beta: β, scale of the length-normalized reward β·mean log π(y|x).
        gamma: γ, the target reward margin between chosen and rejected.
        sft_weight: weight of the NLL of the chosen completion (TRL's ``cpo_alpha``); 0 is pure SimPO.
            The NLL is the token mean over all chosen completion tokens of the batch.
        label_smoothing: ε, the assumed rate of flipped labels (conservative loss); 0 is SimPO.
    """

    METRICS = (*PREFERENCE_METRICS, "nll_loss")

    def __init__(
        self,
        *,
        beta: float = 2.0,
        gamma: float = 1.0,
        sft_weight: float = 0.0,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        check_beta(beta)
        check_option(sft_weight >= 0, "sft_weight", sft_weight, "a weight >= 0 (< 0 would push the chosen NLL up)")
        check_label_smoothing(label_smoothing)
        super().__init__(**kwargs)
        self.beta = beta
        self.gamma = gamma
        self.sft_weight = sft_weight
        self.label_smoothing = label_smoothing

    def forward(self, batch: PreferenceBatch) -> tuple[SequenceLogps, SequenceLogps]:
        """Policy completion log-probs (chosen, rejected) for a preference batch."""
        return preference_logps(self.policy, batch, self.pad_token_id)

    def compute_loss(self, batch: PreferenceBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        chosen, rejected = self(batch)
        losses, chosen_rewards, rejected_rewards = simpo_loss(
            chosen.mean, rejected.mean, beta=self.beta, gamma=self.gamma, label_smoothing=self.label_smoothing
        )
        nll_per_token, nll = chosen_nll(chosen)
        loss = losses.mean()
        if self.sft_weight:
            loss = loss + self.sft_weight * nll
        values = preference_values(chosen_rewards, rejected_rewards, chosen, rejected)
        values["logps/chosen"] = chosen.mean.detach()
        values["logps/rejected"] = rejected.mean.detach()
        values["nll_loss"] = (nll_per_token.detach(), chosen.num_tokens)
        return loss, values


def chosen_nll(chosen: SequenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL of the chosen completions: per sequence (token mean, (B,)) and over the batch (token mean, scalar).

    The batch value is Σ_b Σ_t −log π / Σ_b |y_b| — every completion token weighs the same, as in
    ``nn.CrossEntropyLoss`` over the batch (TRL's CPO ``nll_loss``), not a mean of per-sequence means.
    """
    per_token = -chosen.sum / chosen.num_tokens.clamp(min=1)
    return per_token, -chosen.sum.sum() / chosen.num_tokens.sum().clamp(min=1)
