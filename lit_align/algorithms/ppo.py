"""Proximal Policy Optimization with a learned critic, for RLHF (Schulman et al. 2017, https://arxiv.org/abs/1707.06347;
Ziegler et al. 2019, https://arxiv.org/abs/1909.08593; Ouyang et al. 2022, https://arxiv.org/abs/2203.02155).

Per rollout of B completions, with π_old the sampling policy, V_old the critic at rollout time:

    r_t = −β k1_t,  + (score − missing_eos_penalty·[no EOS]) on the last completion token,  k1_t = log π_old − log π_ref
    δ_t = r_t + γ V_old(s_{t+1}) − V_old(s_t),   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_old(s_t)     (GAE; terminal
          after the last completion token, a truncated one included)
    Â_t = whiten(A_t) over every trained completion token of the rollout, on all ranks together
    ℓ_t = −min(ρ_t Â_t, clip(ρ_t, 1 − ε, 1 + ε) Â_t)                                   ρ_t = π(y_t) / π_old(y_t)
          + vf_coef · ½ max((V_t − R_t)², (clip(V_t, V_old(s_t) − c, V_old(s_t) + c) − R_t)²)
    L   = agg_t ℓ_t  (``loss_aggregation``: TRL's token mean by default)

``num_iterations`` passes (PPO epochs) over the rollout, each reshuffled into ``num_minibatches`` optimizer steps of
policy AND critic (one AdamW over both, as TRL). β is fixed, or with ``kl_target`` adapted after every rollout
(Ziegler et al. 2019, section 2.2). The details follow TRL 0.11's ``PPOv2Trainer``; docs/algorithms/ppo.md lists
where this module matches it and where not. The shared loop is
:class:`~lit_align.training.online.OnlinePolicyGradient`; the critic's construction is in
:mod:`~lit_align.training.critic`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_align.errors import OptionError, PathNotFound
from lit_align.hparams import as_group, check_options, fix_options
from lit_align.losses.policy_gradient import (
    adaptive_kl_coef,
    aggregate_loss,
    gae_advantages,
    kl_k1,
    masked_mean,
    token_level_rewards,
    value_loss,
    whiten,
)
from lit_align.models.loading import ModelRef
from lit_align.rewards.model_scorer import RewardModelScorer
from lit_align.rewards.reward_set import RewardOptions
from lit_align.rollouts.record import Experience, Rollout
from lit_align.rollouts.sampling import seeded_rng
from lit_align.training.critic import build_critic, disable_dropout, token_values
from lit_align.training.objective import ObjectiveOptions
from lit_align.training.online import OnlinePolicyGradient

DEFAULT_REWARD_MODEL = "runs/reward_model/version_0/hf_model"  # what `python recipes/reward_model.py fit` exports
UPDATE_METRICS = (  # per trained token, over every update of a rollout (TRL's names)
    "loss/policy_avg", "loss/value_avg", "policy/approxkl_avg", "policy/clipfrac_avg", "policy/entropy_avg",
    "val/clipfrac_avg", "val/ratio",
)  # fmt: skip
ROLLOUT_METRICS = ("objective/scores", "objective/rlhf_reward", "objective/entropy")  # per sequence, at rollout time
KL_METRICS = ("objective/kl", "objective/non_score_reward", "objective/kl_coef")

PPO_OBJECTIVE = ObjectiveOptions()  # the clip: PPO's own loss adds the value function


class PPO(OnlinePolicyGradient):
    """PPO with a critic as a LightningModule (manual optimization): policy and critic trained, reward model(s)
    and reference frozen (out of the optimizer and the checkpoint).

    Batches are prompt-only (``lit_align.datamodules.PromptDataModule``). ``trainer.max_steps`` counts optimizer
    steps: one batch of prompts makes ``num_iterations x num_minibatches`` of them. The options are the online
    base's, its parts' and the reference's (``beta`` is the KL coefficient, ``num_iterations`` the PPO epochs,
    ``epsilon`` the policy clip range), with PPO's defaults: β 0.05, 4 epochs, one completion per prompt, and a
    reward model exported by the reward-model recipe. The KL is a per-token penalty in the reward and the ratio is
    per token (neither is an option). The checkpoint holds the critic and the current β.

    Args:
        value_model: the critic's initial weights: ``reward_model`` (a copy of the first ``model:`` reward function,
            which must share the policy's tokenizer), ``policy`` (its backbone and a fresh scalar head), or a model
            reference loaded as a one-label sequence classifier.
        vf_coef: weight of the value loss in the summed loss.
        cliprange_value: c, the value clip range around the rollout's values (PPO2's value clipping).
        gamma: γ, the discount of GAE.
        lam: λ, GAE's bias-variance trade-off (1: Monte Carlo returns; 0: one-step TD).
        whiten_rewards: rescale the per-token rewards to unit variance over the rollout (mean kept) before GAE.
        missing_eos_penalty: subtracted from the score of a completion with no EOS within ``max_new_tokens``
            (``None``: no penalty).
        kl_target: adaptive KL control: β is steered so that the mean summed KL per completion approaches this
            value (``None``: β stays fixed).
        kl_horizon: the adaptive controller's horizon in sequences: per rollout β is multiplied by a factor
            within 1 ± 0.2 x rollout size / horizon.
    """

    def __init__(
        self,
        *,
        value_model: ModelRef = "reward_model",
        vf_coef: float = 0.1,
        cliprange_value: float = 0.2,
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten_rewards: bool = False,
        missing_eos_penalty: float | None = None,
        kl_target: float | None = None,
        kl_horizon: float = 10000.0,
        rewards: RewardOptions = RewardOptions(reward_funcs=(f"model:{DEFAULT_REWARD_MODEL}",)),
        beta: float = 0.05,
        num_generations: int = 1,
        num_iterations: int = 4,
        **kwargs: Any,
    ) -> None:
        fix_options(kwargs, "PPO", "the KL is a per-token penalty in the reward, the ratio per token, the surrogate "
                    "PPO's clip", kl_penalty="reward", importance_ratio="token", kl_importance_correction=True,
                    objective=PPO_OBJECTIVE)  # fmt: skip
        _check_options(vf_coef, cliprange_value, gamma, lam, kl_target, kl_horizon, beta,
                       "lora_dropout" in kwargs and kwargs["lora_dropout"])  # fmt: skip
        rewards = as_group(RewardOptions, rewards)
        _check_reward_models(rewards.reward_funcs, value_model)
        self.vf_coef, self.cliprange_value, self.gamma, self.lam = vf_coef, cliprange_value, gamma, lam
        self.whiten_rewards, self.missing_eos_penalty = whiten_rewards, missing_eos_penalty
        self.kl_target, self.kl_horizon = kl_target, kl_horizon
        super().__init__(rewards=rewards, beta=beta, num_generations=num_generations, num_iterations=num_iterations,
                         kl_penalty="reward", importance_ratio="token", kl_importance_correction=True,
                         objective=PPO_OBJECTIVE, **kwargs)  # fmt: skip
        self.critic = self.prepare(build_critic(value_model, self.policy, self.rewards.models), "critic")
        disable_dropout(self.policy)
        disable_dropout(self.critic)

    # -- hooks of the online step: PPO's rewards, advantages and loss --------------------------------------
    def update_metric_names(self) -> tuple[str, ...]:
        return (*ROLLOUT_METRICS, *(KL_METRICS if self.use_kl else ()), *UPDATE_METRICS)

    def needs_old_logps(self) -> bool:
        return True  # the KL penalty, objective/entropy and every pass after the first need them

    def shape_rewards(self, rewards: Tensor, exp: Experience) -> Tensor:
        """(B,) scores -> (B, L) per-token rewards: −β·k1 per token, the score (minus the missing-EOS penalty) added
        at the last completion token (:func:`~lit_align.losses.policy_gradient.token_level_rewards`). An unscorable
        completion (every reward function returned None) takes no part in the update. The critic's values of the
        rollout are recorded here (``exp.extra["values"]``); with ``kl_target``, β for the next rollout follows this
        one's KL over all ranks."""
        exp.loss_mask[exp.unscorable] = 0
        exp.extra["values"] = self._no_grad_values(exp.rollout)  # (B, L)
        mask = exp.loss_mask
        rows = mask.any(dim=1).float()  # the sequences that take part
        scores = rewards.nan_to_num(0.0)  # NaN only on unscorable rows, whose mask is empty
        if self.missing_eos_penalty is not None:
            scores = scores - self.missing_eos_penalty * exp.rollout.is_truncated.to(scores.dtype)
        token_kl = kl_k1(exp.old_logps, exp.ref_logps) * mask if self.use_kl else torch.zeros_like(exp.old_logps)
        kl = token_kl.sum(dim=1)
        exp.metrics["objective/scores"] = (scores, rows)
        exp.metrics["objective/rlhf_reward"] = (scores - self.beta * kl, rows)
        exp.metrics["objective/entropy"] = (-(exp.old_logps * mask).sum(dim=1), rows)  # sampled tokens' NLL
        token_rewards = token_level_rewards(scores, token_kl, mask, self.beta)
        if self.use_kl:
            exp.metrics["objective/kl"] = (kl, rows)
            exp.metrics["objective/non_score_reward"] = (-self.beta * kl, rows)
            exp.metrics["objective/kl_coef"] = torch.tensor([self.beta])
        if self.kl_target is not None:  # adaptive KL control: β for the next rollout
            kl_sum, count = self.all_reduce(torch.stack([(kl * rows).sum(), rows.sum()])).tolist()
            if count > 0:
                self.beta = adaptive_kl_coef(self.beta, kl_sum / count, self.kl_target, self.kl_horizon, int(count))
        return token_rewards

    def compute_advantages(self, rewards: Tensor, exp: Experience) -> Tensor:
        """GAE over the per-token rewards and the rollout's values, then advantages whitened over the rollout (all
        ranks); the returns (unwhitened advantages + values) are the critic's targets (``exp.extra["returns"]``)."""
        mask = exp.loss_mask
        if self.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False, all_reduce=self.all_reduce)
        advantages, returns = gae_advantages(rewards, exp.extra["values"], mask, self.gamma, self.lam)
        exp.extra["returns"] = returns
        return whiten(advantages, mask, all_reduce=self.all_reduce)

    def policy_loss(self, exp: Experience, rows: Tensor, normalizer: Tensor, stats: dict[str, list]) -> Tensor:
        """Clipped surrogate + ``vf_coef`` x clipped value loss of micro-batch ``rows``, per token, aggregated under
        the minibatch ``normalizer``."""
        logps, entropy = self.policy_logps(exp, rows)  # (b, L)
        input_ids, attention_mask, _ = exp.rollout.model_inputs(rows)
        values = token_values(self.critic, input_ids, attention_mask, exp.rollout.prompt_input_ids.shape[1],
                              exp.rollout.prompt_groups(rows))  # fmt: skip
        mask, old_logps = exp.loss_mask[rows], exp.old_logps[rows]
        policy_losses, _, measures = self.objective.loss(logps, old_logps, mask, exp.advantages[rows])  # the clip
        old_values, returns = exp.extra["values"][rows], exp.extra["returns"][rows]
        value_losses, value_clipped = value_loss(values, old_values, returns, mask, self.cliprange_value)
        per_token = policy_losses + self.vf_coef * value_losses
        loss = aggregate_loss(per_token, mask, self.loss_aggregation, normalizer=normalizer)
        log_ratio = (logps - old_logps).detach()
        tokens = mask.sum().reshape(1).float()
        stats["policy/clipfrac_avg"].append(measures["clip_ratio/region_mean"])  # TRL's PPO name for the clip's
        for name, value in (
            ("loss/policy_avg", policy_losses), ("loss/value_avg", value_losses),
            ("policy/approxkl_avg", 0.5 * log_ratio**2), ("policy/entropy_avg", entropy),
            ("val/clipfrac_avg", value_clipped.float()), ("val/ratio", log_ratio.exp()),
        ):  # fmt: skip
            stats[name].append((masked_mean(value.detach(), mask).reshape(1), tokens))
        return loss

    def minibatch_order(self, num_rows: int, iteration: int) -> Tensor:
        """A fresh permutation of the rollout's rows for every pass (TRL), seeded by (``sampling.seed``, global step,
        rank) so that a resumed run reshuffles as the uninterrupted one; one minibatch needs no shuffle."""
        if self.num_minibatches == 1:
            return super().minibatch_order(num_rows, iteration)
        key = f"{self.global_step}/{self.global_rank}" if self._trainer is not None else f"{self._rollouts}/{iteration}"
        with seeded_rng(f"{self.sampler.options.seed}/minibatches/{key}", torch.device("cpu")):
            return torch.randperm(num_rows).to(self.device)

    # -- checkpoint and helpers --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["kl_coef"] = self.beta  # the adaptive controller's state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.beta = float(checkpoint.get("kl_coef", self.beta))

    @torch.no_grad()
    def _no_grad_values(self, rollout: Rollout) -> Tensor:
        prompt_len = rollout.prompt_input_ids.shape[1]
        values = [token_values(self.critic, *rollout.model_inputs(rows)[:2], prompt_len, rollout.prompt_groups(rows))
                  for rows in self.no_grad_passes(rollout)]  # fmt: skip
        return torch.cat(values)


def _check_options(vf_coef, cliprange_value, gamma, lam, kl_target, kl_horizon, beta, lora_dropout) -> None:
    adaptive = kl_target is not None
    check_options(
        (vf_coef >= 0, "vf_coef", vf_coef, "must be >= 0"),
        (cliprange_value > 0, "cliprange_value", cliprange_value, "must be > 0"),
        (0 <= gamma <= 1, "gamma", gamma, "must lie in [0, 1]"),
        (0 <= lam <= 1, "lam", lam, "must lie in [0, 1]"),
        (not adaptive or kl_target > 0, "kl_target", kl_target, "> 0 (adaptive KL), or null"),
        (not adaptive or beta > 0, "beta", beta, "an initial β > 0 with --model.kl_target (adaptive KL)"),
        (not adaptive or kl_horizon > 0, "kl_horizon", kl_horizon, "> 0 with --model.kl_target (adaptive KL)"),
        (not lora_dropout, "lora_dropout", lora_dropout, "0: PPO turns dropout off in policy and critic (on-policy "
         "ratio 1)"),
    )  # fmt: skip


def _check_reward_models(reward_funcs: Sequence[str | Callable], value_model: ModelRef) -> None:
    """Before any model loads: a reward model for ``value_model='reward_model'``, and no missing local export."""
    specs = [f.removeprefix("model:") for f in reward_funcs if isinstance(f, str) and f.startswith("model:")]
    has_model = bool(specs) or any(isinstance(f, RewardModelScorer) for f in reward_funcs)
    if value_model == "reward_model" and not has_model:
        raise OptionError(
            "--model.value_model reward_model initializes the critic from a reward model, and "
            "--model.rewards.reward_funcs names none ('model:<dir>'); add one, or use --model.value_model policy"
        )
    for spec in specs:
        if _is_local_path(spec) and not Path(spec).expanduser().is_dir():
            raise PathNotFound(
                f"reward model {spec!r} not found (from --model.rewards.reward_funcs). Train one first with "
                f"`python recipes/reward_model.py fit` (it exports {DEFAULT_REWARD_MODEL}), or point "
                "--model.rewards.reward_funcs at another reward model: '[model:<dir>]'"
            )


def _is_local_path(spec: str) -> bool:
    """A filesystem path rather than a hub id (``org/name``): absolute, explicitly relative, or deeper than one '/'."""
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1
