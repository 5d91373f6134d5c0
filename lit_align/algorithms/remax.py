"""ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for
Aligning Large Language Models", https://arxiv.org/abs/2310.10505, Algorithm 1).

REINFORCE whose baseline is the reward of the policy's own GREEDY completion of the same prompt:

    A_i = r(x, y_i) − r(x, ȳ),   ȳ = greedy decode of π,   r(x, y_i) = R(x, y_i) − β Σ_t k1_t
    L   = mean_i −min(ρ_i A_i, clip(ρ_i, 1 − ε, 1 + ε_high) A_i),   ρ_i = π(y_i|x) / π_old(y_i|x)

Each rollout costs one extra greedy generation per prompt and one extra reward call (timed
together as ``time/greedy_generation``, outside ``time/update``); no value model, and no group of
samples is needed (G = 1 is the paper's setting).
The greedy baseline carries no KL penalty: any baseline independent of the sample keeps the
gradient unbiased, and skipping it saves a reference pass. A prompt whose greedy completion is
unscorable (every reward function returned None) gets advantage 0. The KL penalty and
sequence-level ratio are as in :mod:`~lit_align.algorithms.rloo`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from lit_align.hparams import fix_options
from lit_align.losses.policy_gradient import greedy_baseline_advantages
from lit_align.rollouts.record import Experience
from lit_align.training.online import ImportanceRatio, OnlinePolicyGradient


class ReMax(OnlinePolicyGradient):
    """ReMax as a LightningModule with manual optimization: the online base with a greedy baseline
    (:meth:`compute_advantages`).

    Batches are prompt-only (``lit_align.datamodules.PromptDataModule``). ``trainer.max_steps`` counts
    optimizer steps: one batch of prompts makes ``num_iterations x num_minibatches`` of them.
    Logs ``greedy_reward`` (the baseline's mean reward) besides the shared metrics. The options are the
    online base's, its parts' and the reference's; the KL is a penalty on the sequence reward (``kl_penalty`` is
    not offered), and ReMax changes the defaults of ``importance_ratio`` and ``num_generations`` (each sample is
    compared with the greedy completion).
    """

    EXTRA_METRICS = ("greedy_reward", "time/greedy_generation")

    def __init__(
        self,
        *,
        importance_ratio: ImportanceRatio = "sequence",
        num_generations: int = 1,
        **kwargs: Any,
    ) -> None:
        fix_options(kwargs, "ReMax", "the KL is a penalty on the sequence reward", kl_penalty="reward",
                    kl_importance_correction=True)  # fmt: skip
        super().__init__(kl_penalty="reward", kl_importance_correction=True, importance_ratio=importance_ratio,
                         num_generations=num_generations, **kwargs)  # fmt: skip

    def compute_advantages(self, rewards: Tensor, exp: Experience) -> Tensor:
        """Each sample's reward minus its prompt's greedy completion's
        (:func:`~lit_align.losses.policy_gradient.greedy_baseline_advantages`); 0 where the greedy completion is
        unscorable."""
        return greedy_baseline_advantages(rewards, self.greedy_rewards(exp).to(rewards.device),
                                          self.num_generations).nan_to_num(0.0)

    def greedy_rewards(self, exp: Experience) -> Tensor:
        """(N,) the reward of each prompt's greedy completion, NaN where unscorable; timed and logged."""
        start = time.perf_counter()
        batch = exp.batch
        greedy = self.sample(batch.get("prompt_input_ids"), batch.get("prompt_attention_mask"), greedy=True,
                             batch=batch)  # fmt: skip
        per_func = self.rewards.score(batch, greedy, training=self.training)  # (N, F)
        greedy_rewards = self.rewards.combine(per_func)  # (N,), NaN: unscorable
        exp.metrics["greedy_reward"] = greedy_rewards[~greedy_rewards.isnan()]
        exp.metrics["time/greedy_generation"] = torch.tensor([time.perf_counter() - start])
        return greedy_rewards
