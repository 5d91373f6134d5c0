"""Pure loss functions over log-prob tensors, one file per family (no model, no config, no reduction)."""

from lit_align.losses.binary import apo_zero_unpaired_loss, kto_kl_estimate, kto_loss, kto_side_sums
from lit_align.losses.preference import (
    bradley_terry_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    log1mexp,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
)

# policy_gradient.py (advantages, clipped surrogate, value loss, KL estimators): re-export here once added.

__all__ = [
    "apo_zero_unpaired_loss",
    "bradley_terry_loss",
    "dpo_loss",
    "hinge_loss",
    "ipo_loss",
    "kto_kl_estimate",
    "kto_loss",
    "kto_side_sums",
    "log1mexp",
    "orpo_loss",
    "robust_dpo_loss",
    "simpo_loss",
]
