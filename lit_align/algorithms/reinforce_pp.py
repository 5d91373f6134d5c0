"""REINFORCE++ and REINFORCE++-baseline (Hu et al. 2025, https://arxiv.org/abs/2501.03262), as OpenRLHF defines them.

PPO's tricks without a critic: the KL to the reference is a per-token reward, each token's advantage is its return
(the rewards from it to the end), and the advantages are normalized over the whole batch instead of per prompt:

    s_i ← s_i − mean_group(s)                    baseline="group_mean" (REINFORCE++-baseline; OpenRLHF's
                                                 recommendation for verifiable rewards, robust to their scale)
    r_{i,t} = −β·clip(k1_{i,t}, −10, 10) + [t = T_i]·s_i,   k1 = log π_old − log π_ref
    A_{i,t} = (G_{i,t} − μ) / sqrt(max(σ², 1e-8)),   G_{i,t} = Σ_{u ≥ t} γ^(u−t) r_{i,u}
    L = token mean of −min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε_high) A_t)      (the online base's objective)

μ and σ² over every completion token of the rollout, on all ranks (:func:`~lit_align.losses.returns.
reinforce_pp_advantages`). ``kl_penalty="loss"`` moves the KL out of the reward into the loss (the base's β·ρ·k3;
OpenRLHF's ``--algo.kl.use_loss``). The shared loop is :class:`~lit_align.training.online.OnlinePolicyGradient`.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lit_align.hparams import check_options
from lit_align.losses.policy_gradient import kl_k1
from lit_align.losses.returns import reinforce_pp_advantages
from lit_align.rewards.scoring import fill_unscorable
from lit_align.rollouts.record import Experience
from lit_align.training.online import KLPenalty, OnlinePolicyGradient

Baseline = Literal["none", "group_mean"]


class ReinforcePP(OnlinePolicyGradient):
    """REINFORCE++ (``baseline="none"``) and REINFORCE++-baseline (``"group_mean"``) with manual optimization.

    Batches are prompt-only (``lit_align.datamodules.PromptDataModule``). The other options are the online base's,
    its parts' and the reference's; REINFORCE++ changes the defaults of ``beta`` (OpenRLHF's 0.01) and
    ``kl_penalty`` (``reward``: per token, not summed per sequence as in RLOO).

    Args:
        baseline: ``group_mean`` subtracts each prompt's mean score before the returns (needs
            ``num_generations`` >= 2, and ``gamma`` = 1); ``none`` is plain REINFORCE++.
        gamma: the discount of the per-token returns.
    """

    def __init__(
        self,
        *,
        baseline: Baseline = "group_mean",
        gamma: float = 1.0,
        beta: float = 0.01,
        kl_penalty: KLPenalty = "reward",
        **kwargs: Any,
    ) -> None:
        check_options(
            (baseline in ("none", "group_mean"), "baseline", baseline, "none or group_mean"),
            (0 < gamma <= 1, "gamma", gamma, "a discount in (0, 1]"),
            (baseline == "none" or gamma == 1, "gamma", gamma, "1 with baseline=group_mean (OpenRLHF sets it so)"),
        )  # fmt: skip
        self.baseline, self.gamma = baseline, gamma
        if baseline == "group_mean":  # the base checks num_generations against it, and reads zero spread as no signal
            self.MIN_GENERATIONS = (2, " with baseline=group_mean: the baseline is the mean score of the prompt's "
                                       "completions, 0 for a group of one")  # fmt: skip
        super().__init__(beta=beta, kl_penalty=kl_penalty, **kwargs)

    def shape_rewards(self, rewards: Tensor, exp: Experience) -> Tensor:
        """The sequence scores as they are (unscorable ones filled with their group's mean): the KL enters per token,
        in :meth:`compute_advantages`."""
        return fill_unscorable(rewards, self.num_generations)

    def compute_advantages(self, rewards: Tensor, exp: Experience) -> Tensor:
        """Per-token advantages (B, L): the normalized returns of the per-token rewards."""
        token_kl = rewards.new_zeros(exp.loss_mask.shape)
        if self.use_kl and self.kl_penalty == "reward":
            token_kl = kl_k1(exp.old_logps, exp.ref_logps)
            exp.metrics["kl"] = token_kl[exp.loss_mask.bool()]
        advantages, _ = reinforce_pp_advantages(rewards, token_kl, exp.loss_mask, self.beta, self.num_generations,
                                                self.baseline == "group_mean", self.gamma, self.all_reduce)  # fmt: skip
        return advantages
