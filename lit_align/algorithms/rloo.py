"""REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics", https://arxiv.org/abs/2402.14740, eq. 5;
Kool et al. 2019).

For each prompt, G completions are sampled; each one's baseline is the mean reward of the OTHER G − 1:

    A_i = r_i − 1/(G−1) Σ_{j≠i} r_j,        r_i = R(x, y_i) − β Σ_t k1_t,   k1_t = log π_old(y_t) − log π_ref(y_t)
    L   = mean_i −min(ρ_i A_i, clip(ρ_i, 1 − ε, 1 + ε_high) A_i),   ρ_i = π(y_i|x) / π_old(y_i|x)

By default the KL is a penalty on the sequence reward (k1 summed over tokens) and the ratio is of whole
sequences (summed log-probs), both as TRL 1.16's ``RLOOTrainer``; with ``num_iterations=1`` the
gradient is plain REINFORCE, −A_i ∇ Σ_t log π(y_t). ``importance_ratio="token"`` clips per token
instead (aggregated by ``loss_aggregation``). The shared loop is
:class:`~lit_align.training.online.OnlinePolicyGradient`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_align.hparams import fix_options
from lit_align.losses.policy_gradient import leave_one_out_advantages
from lit_align.rollouts.record import Experience
from lit_align.training.online import ImportanceRatio, OnlinePolicyGradient


class RLOO(OnlinePolicyGradient):
    """RLOO as a LightningModule with manual optimization.

    Batches are prompt-only (``lit_align.datamodules.PromptDataModule``). ``trainer.max_steps`` counts
    optimizer steps: one batch of prompts makes ``num_iterations x num_minibatches`` of them. The other
    options are the online base's, its parts' and the reference's; the KL is a penalty on the sequence reward
    (``kl_penalty`` is not offered), and RLOO changes the defaults of ``beta`` (TRL's 0.05), ``importance_ratio``
    and ``num_generations`` (G ≥ 2: G = 1 has no leave-one-out baseline, A = 0).

    Args:
        normalize_advantages: whiten the advantages over the batch (TRL's ``normalize_advantages``).
    """

    MIN_GENERATIONS = (2, ": each completion's baseline is the mean reward of the OTHER completions of its prompt")

    def __init__(
        self,
        *,
        normalize_advantages: bool = False,
        beta: float = 0.05,
        importance_ratio: ImportanceRatio = "sequence",
        num_generations: int = 2,
        **kwargs: Any,
    ) -> None:
        fix_options(kwargs, "RLOO", "the KL is a penalty on the sequence reward", kl_penalty="reward",
                    kl_importance_correction=True)  # fmt: skip
        self.normalize_advantages = normalize_advantages
        super().__init__(
            beta=beta, kl_penalty="reward", kl_importance_correction=True, importance_ratio=importance_ratio,
            num_generations=num_generations, **kwargs,
        )  # fmt: skip

    def compute_advantages(self, rewards: Tensor, exp: Experience) -> Tensor:
        return leave_one_out_advantages(rewards, self.num_generations, self.normalize_advantages)
