"""Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", https://arxiv.org/abs/2402.03300, eq. 3).

For each prompt, G completions are sampled and scored; each is pushed up or down by its reward
relative to its group:

    A_i = (r_i − mean(r_group)) / (std(r_group) + 1e-4)          (scale_rewards="group")
    L   = agg_t [ −min(ρ_t A_i, clip(ρ_t, 1 − ε, 1 + ε_high) A_i) + β k3_t ],   ρ_t = π(y_t)/π_old(y_t)

with k3 = π_ref/π − log(π_ref/π) − 1 (eq. 4). ``scale_rewards="none"`` with ``loss_aggregation=
"constant"`` is Dr. GRPO (Liu et al. 2025); ``epsilon_high=0.28`` with ``token_mean`` is DAPO's
clip-higher (Yu et al. 2025). The shared loop is :class:`~lit_align.training.online.OnlinePolicyGradient`.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lit_align.hparams import check_option
from lit_align.losses.policy_gradient import group_normalized_advantages
from lit_align.rollouts.record import Experience
from lit_align.training.online import OnlinePolicyGradient


class GRPO(OnlinePolicyGradient):
    """GRPO (and Dr. GRPO / DAPO through its knobs) as a LightningModule with manual optimization.

    Batches are prompt-only (``lit_align.datamodules.PromptDataModule``). ``trainer.max_steps`` counts
    optimizer steps: one batch of prompts makes ``num_iterations x num_minibatches`` of them. The
    other options are the online base's, its parts' and the reference's (see ``--help``): the surrogate
    (``objective``: clip, CISPO, SAPO, VESPO) and the importance level (``importance_ratio``: per token, or GSPO's
    ``sequence_mean``) make TRL's GRPO loss family, ``docs/algorithms/grpo.md``.

    Args:
        scale_rewards: ``group`` (GRPO), ``batch`` (std over the batch), ``none`` (Dr. GRPO).
    """

    MIN_GENERATIONS = (2, ": the advantage is each reward minus its group's mean, 0 for a group of one")

    def __init__(self, *, scale_rewards: Literal["group", "batch", "none"] = "group", **kwargs: Any) -> None:
        check_option(
            scale_rewards in ("group", "batch", "none"), "scale_rewards", scale_rewards, "group, batch or none"
        )
        self.scale_rewards = scale_rewards
        super().__init__(**kwargs)

    def compute_advantages(self, rewards: Tensor, exp: Experience) -> Tensor:
        return group_normalized_advantages(rewards, self.num_generations, self.scale_rewards)
