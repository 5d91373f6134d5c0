"""Pure loss functions over log-prob tensors, one file per family (no model, no config, no reduction).

    preference.py       pairwise: DPO and its robust and hinge variants, SPIN, SimPO, ORPO, Bradley-Terry
    dpo_family.py       TRL 1.16's DPO loss family (``loss_type``: sigmoid, ipo, exo_pair, ..., apo_down), one
                        function per paper equation; IPO is its ``ipo``
    binary.py           unpaired feedback: KTO, its KL reference point, unpaired APO-zero
    objectives.py       policy-gradient surrogates: the importance weight (token or sequence level) and the
                        advantage -> the per-token loss (clip, CISPO, SAPO, VESPO); the rollout correction weights
    policy_gradient.py  advantages (group-normalized, leave-one-out, greedy baseline, GAE), per-token KL rewards,
                        whitening, the value loss, the KL estimators, loss aggregation and its normalizer
    returns.py          REINFORCE++'s discounted per-token returns and its advantages
    distillation.py     student vs teacher next-token distributions: the generalized JSD (forward and reverse KL at
                        its ends), the teacher's top k renormalized, the sampled reverse KL
"""

from lit_align.losses.binary import apo_zero_unpaired_loss, kto_kl_estimate, kto_loss, kto_side_sums
from lit_align.losses.policy_gradient import (
    adaptive_kl_coef,
    aggregate_loss,
    gae_advantages,
    greedy_baseline_advantages,
    group_normalized_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_k3_importance_weighted,
    leave_one_out_advantages,
    masked_mean,
    token_level_rewards,
    value_loss,
    whiten,
)
from lit_align.losses.preference import (
    bradley_terry_loss,
    dpo_loss,
    hinge_loss,
    log1mexp,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
    spin_loss,
)

__all__ = [
    "adaptive_kl_coef",
    "aggregate_loss",
    "apo_zero_unpaired_loss",
    "bradley_terry_loss",

    "dpo_loss",
    "gae_advantages",
    "greedy_baseline_advantages",
    "group_normalized_advantages",
    "hinge_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_k3_importance_weighted",
    "kto_kl_estimate",
    "kto_loss",
    "kto_side_sums",
    "leave_one_out_advantages",
    "log1mexp",
    "masked_mean",
    "orpo_loss",
    "robust_dpo_loss",
    "simpo_loss",
    "spin_loss",
    "token_level_rewards",
    "value_loss",
    "whiten",
]
