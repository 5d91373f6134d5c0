"""Identity Preference Optimization (Azar et al. 2023, https://arxiv.org/abs/2310.12036), Eq. 17: DPO's ``ipo`` loss
type as a module of its own (a preset: ``DPO(loss_type="ipo")`` trains the same, tested), its equation in
:func:`lit_align.losses.dpo_family.ipo`.

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

from lit_align.batches import PreferenceBatch
from lit_align.hparams import check_beta, check_option
from lit_align.losses.dpo_family import Pair, ipo
from lit_align.metrics import Value, preference_values
from lit_align.models.logprobs import preference_logps
from lit_align.reference.mixin import PREFERENCE_VALUES, ReferenceMixin, preference_reference_values
from lit_align.training.offline import OfflineModule


class IPO(ReferenceMixin, OfflineModule):
    """IPO as a LightningModule.

    The shared options (policy, optimizer, LoRA, ...) are :class:`AlignmentModule`'s and
    ``reference_policy`` and ``precompute_reference`` are :class:`ReferenceMixin`'s.

    Args:
        beta: β (the paper's τ); the loss pulls the log-ratio gap towards 1/(2β).
        normalization: ``mean`` (token-averaged log-probs, TRL's form, default) or ``sum`` (paper).
    """

    REFERENCE_VALUES = PREFERENCE_VALUES

    def __init__(
        self,
        *,
        beta: float = 0.1,
        normalization: Literal["mean", "sum"] = "mean",
        **kwargs: Any,
    ) -> None:
        check_beta(beta, "β (the target gap is 1/(2β))")
        check_option(normalization in ("mean", "sum"), "normalization", normalization, "mean or sum")
        super().__init__(**kwargs)
        self.beta = beta
        self.normalization = normalization

    def forward(self, batch: PreferenceBatch) -> Any:
        """Policy completion log-probs (chosen, rejected) for a preference batch."""
        return preference_logps(self.policy, batch, self.pad_token_id)

    def compute_loss(self, batch: PreferenceBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        chosen, rejected = self(batch)
        ref = self.reference_logps(batch)
        pair = Pair(chosen.sum, rejected.sum, ref["ref_chosen_logps"], ref["ref_rejected_logps"], chosen.num_tokens,
                    rejected.num_tokens)  # fmt: skip
        losses = ipo(pair, self.beta, length_normalized=self.normalization == "mean")
        # rewards/* mean what they mean in TRL (and in DPO): β·(summed log-ratio), whatever the loss normalization.
        rewards = self.beta * pair.chosen_logratios.detach(), self.beta * pair.rejected_logratios.detach()
        return losses.mean(), preference_values(*rewards, chosen, rejected)

    def reference_values(self, model: Any, batch: PreferenceBatch) -> dict[str, torch.Tensor]:
        return preference_reference_values(model, batch, self.pad_token_id)
