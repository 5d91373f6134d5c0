"""Reinforcement learning from verifiable rewards (RLVR), optionally combined with a learned reward model.

Lambert et al. 2024, "Tülu 3" (https://arxiv.org/abs/2411.15124, section 6: RLVR); DeepSeek-AI 2025,
"DeepSeek-R1" (https://arxiv.org/abs/2501.12948, section 2.2: rule-based accuracy and format rewards).
For each prompt x, G completions y_1..y_G are sampled and scored by verifiers v_f (answer checks, format
checks: usually 0/1) and, optionally, by learned reward models s_m:

    r_i = Σ_f w_f v_f(x, y_i) + Σ_m w_m z_m(x, y_i),     z_m = (s_m − μ_m) / σ_m
    A_i = (r_i − mean_g r) / (std_g r + 1e-4)           advantage_estimator="group_normalized" (GRPO, eq. 3)
    A_i = r_i − 1/(G−1) Σ_{j≠i} r_j                      advantage_estimator="leave_one_out"    (RLOO, eq. 5)
    L   = agg_t [ −min(ρ_t A_i, clip(ρ_t, 1 − ε, 1 + ε_high) A_i) + β k3_t ]    (the online base's loss)

with mean_g / std_g over the G completions of x (std unbiased). μ_m and σ_m are the mean and the POPULATION
standard deviation of reward model m's scores over the completions of this rollout it scored (all N x G
of this rank); with one scored completion, or σ_m < 1e-6, z_m = 0
(:func:`~lit_align.rewards.scoring.batch_zscore`). Why: a reward model's scale is arbitrary (a
Bradley-Terry head is defined up to shift and scale, and drifts between checkpoints), a 0/1 verifier's is
not; standardized, ``w_m`` means "w_m batch standard deviations of reward-model score weigh as much as w_m
of a correct answer". Verifier columns are used as they are. Which columns are standardized is
``normalized_rewards`` (default: every reward model, ``model:<dir>``).

Metrics: ``rewards/<name>/mean`` stays raw (a 0/1 verifier's is its accuracy over the completions it
scored; a reward model's is its mean raw score); ``reward`` is the combined r, whose reward-model part has
batch mean 0 by construction. Validation decodes held-out prompts greedily and scores them the same way:
``val/rewards/<verifier>/mean`` is held-out accuracy, ``val/reward`` the combined reward.

Deliberately left out (and what it costs): the z-score is per rank (under DDP each rank standardizes its
own rollout, as ``scale_rewards="batch"``) and per batch, with no running statistics, so a batch whose
reward-model scores barely differ still gets unit spread; the reward model is never trained here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from torch import Tensor

from lit_align.errors import OptionError
from lit_align.losses.policy_gradient import group_normalized_advantages, leave_one_out_advantages
from lit_align.rewards.model_scorer import RewardModelScorer
from lit_align.rewards.scoring import batch_zscore
from lit_align.rollouts.record import Experience
from lit_align.training.online import OnlinePolicyGradient

AdvantageEstimator = Literal["group_normalized", "leave_one_out"]


class RLVR(OnlinePolicyGradient):
    """RLVR (verifiers, optionally + a standardized reward model) as a LightningModule with manual optimization.

    Batches are prompt-only (``lit_align.datamodules.PromptDataModule``). ``trainer.max_steps`` counts
    optimizer steps: one batch of prompts makes ``num_iterations x num_minibatches`` of them. The other
    options are the online base's, its parts' and the reference's (see ``--help``); ``rewards.reward_funcs``
    takes the verifiers and the reward models (``model:<dir>``) alike, ``rewards.reward_weights`` their weights;
    the surrogate (``objective``) and the importance level (``importance_ratio``) are GRPO's family.

    Args:
        advantage_estimator: ``group_normalized`` (GRPO: (r − group mean) / (group std + 1e-4)) or
            ``leave_one_out`` (RLOO: r − mean of the other G − 1).
        normalized_rewards: metric names (``rewards/<name>/mean``) of the reward functions whose scores are
            z-scored over the batch before weighting; default: every reward model (``model:<dir>``); ``[]``
            standardizes none.
    """

    MIN_GENERATIONS = (2, ": each completion is compared with the others of its prompt")
    ESTIMATORS: ClassVar[dict[str, Callable[[Tensor, int], Tensor]]] = {
        "group_normalized": group_normalized_advantages,
        "leave_one_out": leave_one_out_advantages,
    }

    def __init__(
        self,
        *,
        advantage_estimator: AdvantageEstimator = "group_normalized",
        normalized_rewards: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if advantage_estimator not in self.ESTIMATORS:
            choices = ", ".join(self.ESTIMATORS)
            raise OptionError(f"--model.advantage_estimator={advantage_estimator!r}: one of {choices}")
        super().__init__(**kwargs)
        self.advantage_estimator = advantage_estimator
        self._advantages = self.ESTIMATORS[advantage_estimator]  # the variant, selected once
        rewards = self.rewards
        if normalized_rewards is None:
            models = zip(rewards.names, rewards.funcs, strict=True)
            normalized_rewards = [name for name, func in models if isinstance(func, RewardModelScorer)]
        unknown = sorted(set(normalized_rewards) - set(rewards.names))
        if unknown:
            raise OptionError(
                f"--model.normalized_rewards names {unknown}, which are not reward functions; their names are "
                f"{rewards.names} (as in rewards/<name>/mean)"
            )
        self.normalized_columns = [i for i, name in enumerate(rewards.names) if name in normalized_rewards]

    def combine_rewards(self, per_func: Tensor) -> Tensor:
        """(B,) combined reward: the ``normalized_rewards`` columns z-scored over the batch, then the weighted sum."""
        if self.normalized_columns and per_func.shape[1] == len(self.rewards.names):  # not rewards given from outside
            per_func = per_func.clone()
            for i in self.normalized_columns:
                per_func[:, i] = batch_zscore(per_func[:, i])
        return super().combine_rewards(per_func)

    def compute_advantages(self, rewards: Tensor, exp: Experience) -> Tensor:
        return self._advantages(rewards, self.num_generations)
