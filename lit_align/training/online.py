"""What the online policy-gradient algorithms (GRPO, RLOO, ReMax, RLVR, PPO) share: one RL step, written out.

Besides the policy and the reference, the module holds two parts: ``self.sampler``
(:class:`~lit_align.rollouts.sampling.Sampler`) and ``self.rewards``
(:class:`~lit_align.rewards.reward_set.RewardSet`). Per batch of N prompts (:meth:`OnlinePolicyGradient.rl_step`):

    1. rollout     G = ``num_generations`` completions per prompt from the current policy (``self.sampler``, seeded)
    2. rewards     ``self.rewards.score`` -> the (B, F) table (1 and 2: :meth:`collect`) -> :meth:`combine_rewards`
                   (the weighted sum); a completion every function scores None is unscorable: excluded from the
                   statistics, advantage 0; the rollout's metrics: :meth:`rollout_values`
    3. log-probs   of the sampling policy ("old": only when :meth:`needs_old_logps`) and of the reference (only
                   when ``beta > 0``), in :meth:`make_experience`, at the sampling temperature (see below)
    4. shaping     :meth:`shape_rewards`: where the KL goes (``kl_penalty``)
    5. advantages  :meth:`compute_advantages`: per sequence (B,) or per token (B, L); by default the rewards
    6. updates     :meth:`optimize`: ``num_iterations`` passes x ``num_minibatches`` optimizer steps of
                   :meth:`policy_loss`, each over micro-batches under one normalizer (accumulation changes nothing)

The hooks of steps 1-6 (:data:`EXTENSION_HOOKS`) are the extension points; each default is the common case, and a
subclass overrides only what makes it that algorithm (GRPO, RLOO and ReMax: :meth:`compute_advantages`; distillation:
whose completions and no rewards in :meth:`collect`, the teachers' pass in :meth:`make_experience`).
``kl_penalty`` (the KL in the loss or in the reward) and ``importance_ratio`` (per
token or per sequence) choose among the built-in variants; an algorithm with a single legal value fixes it (passes
it to this class itself), so the option is not offered there, and ``kl_penalty="loss"`` with a sequence ratio is
refused (a per-token KL term has no per-token loss to join). ``beta > 0`` is decided once, before the base builds
anything: it loads the reference and adds the ``kl`` metric.

Shapes: B = N x G rows, prompt-major; L completion length; ``loss_mask`` (B, L) is the completion
mask, zeroed for truncated completions when ``mask_truncated_completions``.

Temperature: every training pass (policy, sampling policy, reference) scores the completions under
softmax(logits / τ), τ = the sampling ``temperature``, as TRL 1.16 and verl do: the ratio, the KL and the
entropy (``entropy``: token mean over the trained completion tokens, from the same chunked pass) are taken under
the distribution the completions were drawn from. ``top_p`` / ``top_k`` truncation is NOT reflected in these
log-probs (nor in TRL's or verl's).

The seed interface: ``samples, log_probs = module.generate_samples(prompt_ids, prompt_mask)``, and
``module.update(batch)`` with a prompt batch or a rollout made outside
(:func:`~lit_align.rollouts.record.rollout_from_batch`). Deliberately left out (and what it costs): minibatches are
contiguous, not reshuffled per iteration (the :meth:`minibatch_order` default; PPO reshuffles);
under DDP each rank normalizes its own groups (all G completions of a prompt live on one rank, so group
statistics are exact; ``scale_rewards="batch"`` and ``reward_std`` are per rank); a group with SOME
unscorable completions fills them with the group's mean scorable reward before the advantage, where TRL
drops them from the group's std and leave-one-out counts; every micro-batch backward all-reduces (no
``no_sync``), which costs communication, not correctness.
"""

from __future__ import annotations

import functools
import math
import time
from collections import defaultdict
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_align.batches import PromptBatch
from lit_align.hparams import as_group, check_options, fix_options
from lit_align.losses.objectives import ImportanceLevel
from lit_align.losses.policy_gradient import (
    aggregate_loss,
    kl_k1,
    kl_k3,
    kl_k3_importance_weighted,
    loss_normalizer,
    masked_mean,
)
from lit_align.metrics import to_device, weighted_mean
from lit_align.reference.mixin import ReferenceMixin
from lit_align.rewards.reward_set import RewardOptions, RewardSet, check_reward_options
from lit_align.rewards.scoring import fill_unscorable
from lit_align.rewards.signal import RewardSignal
from lit_align.rollouts.record import Experience, Rollout, rollout_from_batch
from lit_align.rollouts.sampling import Sampler, SamplingOptions
from lit_align.tools.multi_turn import TOOL_METRICS, ToolRunner, check_tool_data
from lit_align.tools.options import ToolOptions
from lit_align.training.base import AlignmentModule, Scheduler
from lit_align.training.objective import ROLLOUT_CORRECTION_METRICS, Objective, ObjectiveOptions, rollout_correction

LossAggregation = Literal["sequence_mean", "token_mean", "constant", "sequence_sum"]
KLPenalty = Literal["loss", "reward"]
ImportanceRatio = ImportanceLevel
EXTENSION_HOOKS = ("collect", "needs_old_logps", "combine_rewards", "rollout_values", "make_experience",
                   "shape_rewards", "compute_advantages", "policy_loss", "minibatch_order", "update_metric_names")


class OnlinePolicyGradient(ReferenceMixin, AlignmentModule):
    """Base of the online policy-gradient algorithms (manual optimization). Subclasses override the hooks.

    Args:
        beta: β, weight of the KL to the reference (``kl_penalty`` says where it goes); 0 means no reference
            model at all.
        kl_penalty: ``loss`` adds β·k3 per token to the loss (times the ratio, see ``kl_importance_correction``);
            ``reward`` subtracts β·Σ_t k1 (under the sampling policy) from each sequence's reward.
        kl_importance_correction: with ``kl_penalty="loss"``, the per-token KL term is ρ_t·k3_t, ρ_t = π/π_old
            (TRL 1.16's ``use_bias_correction_kl``, on by default there too): its gradient is that of KL(π‖π_ref),
            and it differs from plain k3's even on-policy, where ρ_t = 1 in value. ``False``: plain k3, whose
            gradient follows the forward KL(π_ref‖π); refused with ``kl_penalty="reward"``, where it has no term
            to change.
        importance_ratio: where the importance weight is taken (:func:`~lit_align.losses.objectives.
            importance_log_weights`): ``token`` (per token), ``sequence`` (the sequences' probability ratio, TRL's
            RLOO), ``sequence_mean`` (its geometric mean per token: GSPO, TRL's ``importance_sampling_level=
            "sequence"``) or ``sequence_mean_token`` (GSPO-token).
        num_generations: G, completions sampled per prompt.
        num_iterations: μ, passes over each rollout; > 1 records the sampling policy's log-probs and
            makes the clip active.
        num_minibatches: optimizer steps per pass over a rollout.
        gradient_accumulation_steps: micro-batches per optimizer step (memory only: same gradient).
        epsilon: lower clip range ε.
        epsilon_high: upper clip range (default ``epsilon``; DAPO: 0.28).
        loss_aggregation: ``sequence_mean`` (token mean per sequence, then mean; TRL's ``grpo``), ``token_mean``
            (DAPO / TRL's ``dapo``: mean over all tokens of the minibatch), ``constant`` (Dr. GRPO: sum over tokens /
            (sequences x max_new_tokens)) or ``sequence_sum`` (token sum per sequence, then mean; LUSPO). Null:
            ``token_mean`` with a token-level weight, else ``sequence_mean`` (also for ``objective.name=sapo``).
            A sequence-level weight aggregated per token weighs each sequence by its length (warned, as TRL does).
        mask_truncated_completions: completions without EOS take no part in the loss (DAPO).
        objective: the per-token surrogate (a group: ``--model.objective.name clip|cispo|sapo|vespo`` and its
            knobs; :mod:`lit_align.training.objective`).
        sampling: how completions are sampled (a group: ``--model.sampling.<option>``).
        rewards: the reward functions and their weights (a group: ``--model.rewards.<option>``).
        tools: tools and environments for multi-turn rollouts (a group: ``--model.tools.<option>``; none by default,
            :mod:`lit_align.tools`).
    """

    EXTRA_METRICS: ClassVar[tuple[str, ...]] = ()  # metric names an algorithm's hooks add
    KEY_METRICS = ("reward", "kl")
    # The fewest completions per prompt the advantage can learn from, and why (GRPO/RLOO: group statistics).
    MIN_GENERATIONS: ClassVar[tuple[int, str]] = (1, "")
    REWARDS_OPTIONAL: ClassVar[bool] = False  # whether it trains without reward functions (distillation)

    def __init__(
        self,
        *,
        beta: float = 0.0,
        kl_penalty: KLPenalty = "loss",
        kl_importance_correction: bool = True,
        importance_ratio: ImportanceRatio = "token",
        num_generations: int = 8,
        num_iterations: int = 1,
        num_minibatches: int = 1,
        gradient_accumulation_steps: int = 1,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        loss_aggregation: LossAggregation | None = None,
        mask_truncated_completions: bool = False,
        objective: ObjectiveOptions = ObjectiveOptions(),
        sampling: SamplingOptions = SamplingOptions(),
        rewards: RewardOptions = RewardOptions(),
        tools: ToolOptions = ToolOptions(),
        learning_rate: float = 1e-6,
        warmup_ratio: float = 0.0,
        scheduler: Scheduler = "constant",
        **kwargs: Any,
    ) -> None:
        fix_options(kwargs, type(self).__name__, "the completions it compares against the reference are sampled "
                    "during training, so there is nothing to precompute", precompute_reference=False)  # fmt: skip
        fewest, why = self.MIN_GENERATIONS
        check_options(
            (num_generations >= fewest, "num_generations", num_generations, f"at least {fewest}{why}"),
            (num_iterations >= 1, "num_iterations", num_iterations, "at least 1"),
            (num_minibatches >= 1, "num_minibatches", num_minibatches, "at least 1"),
            (gradient_accumulation_steps >= 1, "gradient_accumulation_steps", gradient_accumulation_steps, ">= 1"),
            (beta >= 0, "beta", beta, "β >= 0 (0: no KL and no reference; < 0 rewards drifting away)"),
            (kl_penalty in ("loss", "reward"), "kl_penalty", kl_penalty, "loss or reward"),
            (importance_ratio in ("token", "sequence", "sequence_mean", "sequence_mean_token"), "importance_ratio",
             importance_ratio, "token, sequence, sequence_mean or sequence_mean_token"),
            (kl_importance_correction or kl_penalty == "loss", "kl_importance_correction", kl_importance_correction,
             "applies to kl_penalty=loss only"),
            (epsilon > 0, "epsilon", epsilon, "a clip range > 0"),
            (epsilon_high is None or epsilon_high > 0, "epsilon_high", epsilon_high, "a clip range > 0, or null"),
            (loss_aggregation in (None, "sequence_mean", "token_mean", "constant", "sequence_sum"), "loss_aggregation",
             loss_aggregation, "sequence_mean, token_mean, constant or sequence_sum"),
        )  # fmt: skip
        objective = as_group(ObjectiveOptions, objective)
        per_sequence = importance_ratio in ("sequence", "sequence_mean")
        if per_sequence and loss_aggregation in ("token_mean", "constant"):
            rank_zero_warn(f"importance_ratio={importance_ratio} with loss_aggregation={loss_aggregation} sums "
                           "per-token copies of each sequence's loss, which weighs it by its length rather than "
                           "optimizing the per-sequence objective (GSPO uses sequence_mean)")  # fmt: skip
        # Decided before the base builds anything: what the run needs (a reference only when β > 0; the metric
        # groups from the reward functions' names) and the parts it holds.
        self.beta, self.use_kl = beta, beta > 0
        self.kl_penalty, self.importance_ratio = kl_penalty, importance_ratio
        self.kl_importance_correction = kl_importance_correction
        self.num_generations, self.num_iterations = num_generations, num_iterations
        self.num_minibatches, self.gradient_accumulation_steps = num_minibatches, gradient_accumulation_steps
        self.epsilon, self.epsilon_high = epsilon, epsilon_high
        token_level = importance_ratio in ("token", "sequence_mean_token") and objective.name != "sapo"
        self.loss_aggregation: LossAggregation = loss_aggregation or ("token_mean" if token_level else "sequence_mean")
        self.mask_truncated_completions = mask_truncated_completions
        sampling, rewards = as_group(SamplingOptions, sampling), as_group(RewardOptions, rewards)  # saved as groups
        tools = as_group(ToolOptions, tools)
        self.objective = self.hold(Objective(objective, epsilon, epsilon_high, importance_ratio))
        self.sampler = self.hold(Sampler(sampling))
        self.tool_runner = self.hold(ToolRunner(tools)) if tools.enabled else None
        self.rewards = self.hold(RewardSet(rewards, self.tool_runner.environment_rewards if self.tool_runner else (),
                                           optional=self.REWARDS_OPTIONAL))  # fmt: skip
        group_relative = self.MIN_GENERATIONS[0] >= 2  # GRPO, RLOO, RLVR: zero spread means zero advantages
        self.signal = self.hold(RewardSignal(rewards, self.rewards.names, group_relative))
        super().__init__(precompute_reference=False, learning_rate=learning_rate, warmup_ratio=warmup_ratio,
                         scheduler=scheduler, **kwargs)  # fmt: skip
        self.automatic_optimization = False
        self._rollouts = 0

    # -- hooks of the base ------------------------------------------------------------------------
    def needs_reference(self) -> bool:
        return self.use_kl

    def metric_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What every online algorithm logs (the rewards, the tools' metrics with tools, the rollout correction's with
        vLLM, the optimizer steps' and the timings) around what its updates log (:meth:`update_metric_names`)."""
        correction = ()
        if self.sampler.options.generation_backend == "vllm" and self.sampler.options.rollout_correction != "none":
            correction = ROLLOUT_CORRECTION_METRICS
        steps = ("learning_rate", "grad_norm")  # per optimizer step, averaged over the rollout's steps
        times = ("time/generation", "time/reward", "time/update")  # update: log-prob passes + optimizer steps
        tools = TOOL_METRICS if self.tool_runner else ()
        train = (*self.rewards.metric_names(), *tools, *self.update_metric_names(), *correction, *self.EXTRA_METRICS,
                 *steps, *times)  # fmt: skip
        return train, (*self.rewards.metric_names(with_std=False), *tools)

    def update_metric_names(self) -> tuple[str, ...]:
        """The metrics the rollout's updates log. Default: the objective's clip statistics, the entropy and, with
        β > 0, the KL (PPO: its own, TRL's ``objective/*`` and ``policy/*``)."""
        return (*self.objective.options.metric_names(), "entropy", *(("kl",) if self.use_kl else ()))

    @classmethod
    def check_data(cls, datamodule: Any, options: dict[str, Any]) -> None:
        """The reward functions called on the first rows of the data (reward models are not loaded)."""
        tools = as_group(ToolOptions, options.get("tools"))
        environments = functools.partial(check_tool_data, tools) if tools.enabled else None
        check_reward_options(datamodule, as_group(RewardOptions, options.get("rewards")), environments)

    def planned_optimizer_steps(self) -> int | float:
        total = self.trainer.estimated_stepping_batches
        if self.trainer.max_steps == -1:  # horizon given in rollouts (batches): count optimizer steps
            total *= self.num_iterations * self.num_minibatches
        return total

    # -- Lightning hooks ------------------------------------------------------------------------
    def forward(self, prompt_input_ids: Tensor, prompt_attention_mask: Tensor) -> Rollout:
        return self.generate_samples(prompt_input_ids, prompt_attention_mask)

    def training_step(self, batch: PromptBatch, batch_idx: int) -> Tensor | None:
        loss, values, exp = self.rl_step(batch)
        if loss is None:  # no completion could be scored: skipped (rewards.unscorable_rollouts="skip"), counted
            self._rollouts += 1
            return None
        self.train_metrics.step(to_device(values, self.device))
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log_dict(self.train_metrics, on_step=True, on_epoch=False)
        self.show_key_metrics(values)
        if self.trainer.is_global_zero and type(self.logger).__name__ == "TensorBoardLogger":
            table = self.rewards.completions_table(self._rollouts, batch["prompt"], exp.rollout, exp.rewards_per_func)
            if table is not None:
                self.logger.experiment.add_text("completions", table, self.global_step)
        self._rollouts += 1
        return loss

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        """Greedy completions of held-out prompts, scored by the reward functions."""
        rollout = self.sample(batch.get("prompt_input_ids"), batch.get("prompt_attention_mask"), greedy=True,
                              batch=batch)  # fmt: skip
        per_func = self.rewards.score(batch, rollout, training=False)
        values = self.rollout_values(batch, rollout, per_func, self.combine_rewards(per_func), training=False)
        self.val_metrics.step(to_device(values, self.device))
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True)

    def on_validation_epoch_start(self) -> None:
        self.rewards.start_validation()

    def on_validation_epoch_end(self) -> None:
        self.rewards.end_validation()

    # -- the step --------------------------------------------------------------------------------
    def rl_step(self, batch: PromptBatch) -> tuple[Tensor | None, dict[str, Any], Experience | None]:
        """Rollout -> rewards -> advantages -> K updates. Returns the mean loss, metric values and the experience;
        ``(None, {}, None)`` for a rollout skipped for having no scorable completion (``self.signal``)."""
        rollout, rewards_per_func, timings = self.collect(batch)
        start = time.perf_counter()
        rewards = self.combine_rewards(rewards_per_func)  # (B,), NaN: unscorable
        where = f"global step {self.global_step}" if self.in_fit() else "a standalone update()"
        if not self.signal.check(rewards, rewards_per_func, batch, self.num_generations, self.reduce_on_device, where):
            if self.in_fit():
                self.log("train/unscorable_skipped", float(self.signal.unscorable_skipped), on_step=True,
                         on_epoch=False)  # fmt: skip
            return None, {}, None  # no completion on any rank has a reward: skipped (or raised), counted
        values = self.rollout_values(batch, rollout, rewards_per_func, rewards, training=True)
        exp = self.make_experience(batch, rollout, rewards_per_func)
        rewards = self.shape_rewards(rewards.to(self.device), exp)
        t_logps = time.perf_counter() - start
        advantages = self.compute_advantages(rewards, exp)  # ReMax times its greedy decode itself
        start = time.perf_counter()
        unscorable = exp.unscorable.view(-1, *([1] * (advantages.dim() - 1)))
        exp.advantages = advantages.masked_fill(unscorable, 0.0)
        values.update(exp.metrics)

        losses, stats = self.optimize(exp)
        values["time/generation"] = torch.tensor([timings["generation"]])
        values["time/reward"] = torch.tensor([timings["reward"]])
        values["time/update"] = torch.tensor([t_logps + time.perf_counter() - start])
        for name, parts in stats.items():
            values[name] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        return torch.tensor(sum(losses) / len(losses), device=self.device), values, exp

    def collect(self, batch: PromptBatch) -> tuple[Rollout, Tensor, dict[str, float]]:
        """The rollout of ``batch`` and its (B, F) rewards (NaN: None), with the seconds of its ``generation`` and
        ``reward``. Default: a rollout made outside when the batch brings its ``rewards``, else ``num_generations``
        samples of the policy (the sampling policy's log-probs recorded when the updates need them), scored by the
        reward set."""
        if "rewards" in batch:  # a rollout made outside: completions, rewards and sampling log-probs given
            eos_ids = self.sampler.eos_ids(self.policy, self.tokenizer)
            rollout, rewards_per_func = rollout_from_batch(batch, self.num_generations, self.tokenizer, eos_ids)
            return rollout, rewards_per_func, {"generation": 0.0, "reward": 0.0}
        start = time.perf_counter()
        rollout = self.generate_samples(batch.get("prompt_input_ids"), batch.get("prompt_attention_mask"),
                                        self.needs_old_logps(), batch)  # fmt: skip
        t_generation = time.perf_counter() - start
        start = time.perf_counter()
        rewards_per_func = self.rewards.score(batch, rollout, training=self.training)  # (B, F), NaN: None
        return rollout, rewards_per_func, {"generation": t_generation, "reward": time.perf_counter() - start}

    def rollout_values(
        self, batch: PromptBatch, rollout: Rollout, rewards_per_func: Tensor, rewards: Tensor, training: bool
    ) -> dict[str, Any]:  # fmt: skip
        """The metric values of a rollout (training) or of held-out greedy completions (validation) before any update:
        the rewards' and completions' (TRL's names; the spread within groups in training, from sampled rows), and the
        tools' with tools."""
        values = self.rewards.values(rewards_per_func, rewards, rollout, with_std=training and "rewards" not in batch)
        if self.tool_runner and rollout.tool_calls is not None:
            values.update(ToolRunner.values(rollout))
        return values

    def make_experience(self, batch: PromptBatch, rollout: Rollout, rewards_per_func: Tensor) -> Experience:
        """The loss mask and the no-grad log-prob passes the updates need (sampling policy, reference)."""
        loss_mask = rollout.policy_mask.clone()  # (B, L): tool tokens are context, never trained
        if self.mask_truncated_completions:
            loss_mask[rollout.is_truncated] = 0
        correct = rollout.sampler_logps is not None and self.sampler.options.rollout_correction != "none"
        old_logps = rollout.logps
        if old_logps is None and (self.needs_old_logps() or correct):  # the engine's are not the trainer's
            old_logps = self._no_grad_logps(rollout, self.policy)
        ref_logps = None
        if self.use_kl:
            ref_logps = self.reference_forward(lambda ref: self._no_grad_logps(rollout, ref))
        unscorable = rewards_per_func.isnan().all(dim=1).to(self.device)
        exp = Experience(batch, rollout, rewards_per_func, unscorable, loss_mask, old_logps, ref_logps)
        if correct:
            exp.rollout_weights = rollout_correction(exp, self.sampler.options, self.all_reduce, self.device)
        return exp

    def reduce_on_device(self, stats: Tensor) -> Tensor:
        """``stats`` summed over the ranks, wherever it lives (a part's CPU statistics; the collective runs on the
        module's device)."""
        return self.all_reduce(stats.to(self.device))

    def optimize(self, exp: Experience) -> tuple[list[float], dict[str, list]]:
        """The rollout's optimizer steps: ``num_iterations`` passes x ``num_minibatches`` steps, each accumulating
        ``gradient_accumulation_steps`` micro-batches of :meth:`policy_loss` under ONE normalizer counted over the
        whole minibatch (and over ranks for ``token_mean``), so accumulation changes nothing; a non-finite micro-batch
        loss is skipped as ``nonfinite_loss`` says. Returns each step's summed micro-batch losses and the statistics
        the hooks collected (``(values, weights)`` per name), the steps' own (learning rate, grad norm) included."""
        losses: list[float] = []
        stats: dict[str, list] = defaultdict(list)
        rows_total = len(exp.rollout)
        for iteration in range(self.num_iterations):
            row_ids = self.minibatch_order(rows_total, iteration)
            for minibatch in row_ids.tensor_split(min(self.num_minibatches, rows_total)):
                normalizer = loss_normalizer(exp.loss_mask[minibatch], self.loss_aggregation,
                                             self.max_completion_length, self.all_reduce)  # fmt: skip
                self.zero_grad_manual()
                total = 0.0
                for rows in minibatch.tensor_split(min(self.gradient_accumulation_steps, len(minibatch))):
                    loss = self.policy_loss(exp, rows, normalizer, stats)
                    if not self.loss_is_finite(loss, None):
                        loss = self.skipped_loss()
                    self.backward_manual(loss)
                    total += float(loss.detach())
                for name, value in self.step_manual().items():
                    stats[name].append((torch.tensor([value]), torch.ones(1)))
                losses.append(total)
        return losses, stats

    @property
    def max_completion_length(self) -> int:
        """L of the ``constant`` aggregation (Dr. GRPO): the completion's length limit, ``sampling.max_new_tokens``
        (with tools, the whole conversation's after the prompt)."""
        return self.sampler.options.max_new_tokens

    # -- the seed interface: rollouts made or consumed outside a Trainer --------------------------------
    def sample(
        self, prompt_input_ids: Tensor, prompt_attention_mask: Tensor, num_generations: int = 1, greedy: bool = False,
        batch: PromptBatch | None = None,
    ) -> Rollout:  # fmt: skip
        """Completions of the policy (G per prompt, prompt-major), or one greedy completion each, without grad.

        Sampling is seeded by (``sampling.seed``, global step, rank) in a Trainer's fit (a function of the
        checkpointed step), and by the number of earlier sampling calls outside one; greedy calls take no key, so
        evaluating between updates leaves the samples alone. With ``tools`` the completions are conversations
        (:class:`~lit_align.tools.multi_turn.ToolRunner`), which need the ``batch``'s chat prompts and columns.
        """
        key = f"{self.global_step}/{self.global_rank}" if self.in_fit() and not greedy else None
        if self.tool_runner:  # conversations start from the batch's chat prompts and columns, not from token ids
            return self.tool_runner.rollout(self.sampler, self.policy, self.tokenizer, batch, num_generations, key,
                                            greedy)  # fmt: skip
        return self.sampler.sample(self.policy, prompt_input_ids, prompt_attention_mask, self.tokenizer,
                                   num_generations, key, greedy)  # fmt: skip

    def generate_samples(
        self, prompt_input_ids: Tensor, prompt_attention_mask: Tensor, with_logps: bool = True,
        batch: PromptBatch | None = None,
    ) -> Rollout:  # fmt: skip
        """``num_generations`` sampled completions per prompt (prompt-major), without grad.

        ``samples, log_probs = module.generate_samples(prompt_ids, prompt_mask)`` unpacks the rollout into the
        sequences (prompt + completion) and the completion tokens' log-probs under the sampling policy (at the
        sampling temperature; one extra no-grad forward, skipped with ``with_logps=False``). Together with the
        rewards they make the batch :meth:`update` takes.
        """
        rollout = self.sample(prompt_input_ids, prompt_attention_mask, self.num_generations, batch=batch)
        if with_logps:
            rollout.logps = self._no_grad_logps(rollout, self.policy) * rollout.completion_mask
        return rollout

    def update(self, batch: PromptBatch | dict[str, Any], total_steps: int = 1000) -> dict[str, float]:
        """One rollout and its ``num_iterations x num_minibatches`` optimizer steps outside a Trainer.

        ``batch`` is a prompt batch (the module samples and scores), or a rollout made outside: ``{"input_ids",
        "rewards", "old_log_probs"}`` (see :func:`~lit_align.rollouts.record.rollout_from_batch`). The optimizer is the
        one of :meth:`~lit_align.training.base.AlignmentModule.standalone_optimizer`: the fit's, continued, after
        ``Trainer.fit``.
        """
        self.standalone_optimizer(total_steps)
        self.train()
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, values, _ = self.rl_step(batch)
        self._rollouts += 1
        if loss is None:  # no scorable completion, skipped (rewards.unscorable_rollouts="skip"): no update
            return {"unscorable_skipped": float(self.signal.unscorable_skipped)}
        return {"loss": float(loss), **{name: weighted_mean(value) for name, value in values.items()}}

    # -- extension points ------------------------------------------------------------------------
    def needs_old_logps(self) -> bool:
        """Whether the updates need the sampling policy's log-probs as a separate pass: when they differ from the
        live policy's (several passes over a rollout) or feed the reward's KL; on-policy they are the detached
        live ones."""
        return self.num_iterations > 1 or (self.use_kl and self.kl_penalty == "reward")

    def combine_rewards(self, per_func: Tensor) -> Tensor:
        """(B,) reward of each completion from the (B, F) per-function table, NaN where unscorable; what the
        advantages and the ``reward`` metric see. Default: the weighted sum (RLVR normalizes reward models first)."""
        return self.rewards.combine(per_func)

    def shape_rewards(self, rewards: Tensor, exp: Experience) -> Tensor:
        """(B,) sequence rewards (NaN: unscorable) -> what the advantage sees, NaN filled.

        Default: with ``kl_penalty="reward"`` and β > 0, r ← r − β·Σ_t k1_t, k1 = log π_old − log π_ref
        (unbiased, summed per sequence; logged as ``kl`` per token); unscorable rows then take their group's
        mean scorable reward (:func:`~lit_align.rewards.scoring.fill_unscorable`).
        """
        if self.use_kl and self.kl_penalty == "reward":
            token_kl = kl_k1(exp.old_logps, exp.ref_logps)
            rewards = rewards - self.beta * (token_kl * exp.loss_mask).sum(dim=1)
            exp.metrics["kl"] = token_kl[exp.loss_mask.bool()]
        return fill_unscorable(rewards, self.num_generations)

    def compute_advantages(self, rewards: Tensor, exp: Experience) -> Tensor:
        """Advantages (B,) or per token (B, L) from the shaped rewards (unscorable rows are zeroed after).

        Default: the rewards themselves (no baseline).
        """
        return rewards

    def policy_loss(self, exp: Experience, rows: Tensor, normalizer: Tensor, stats: dict[str, list]) -> Tensor:
        """The objective's per-token loss of micro-batch ``rows`` (:class:`~lit_align.training.objective.Objective`;
        times the rollout's importance correction), + β·w·k3 or β·k3 per token with ``kl_penalty="loss"``, aggregated
        and divided by the minibatch ``normalizer``; log-probs at the sampling temperature."""
        logps, entropy = self.policy_logps(exp, rows)
        mask, advantages = exp.loss_mask[rows], exp.advantages[rows]
        stats["entropy"].append((masked_mean(entropy.detach(), mask).reshape(1), mask.sum().reshape(1).float()))
        # On-policy the sampling policy IS the live one: ratio 1, same gradient, no extra pass.
        old_logps = logps.detach() if exp.old_logps is None else exp.old_logps[rows]
        correction = None if exp.rollout_weights is None else exp.rollout_weights[rows]
        per_token, log_weights, measures = self.objective.loss(logps, old_logps, mask, advantages, correction)
        for name, measured in measures.items():
            stats[name].append(measured)
        if self.use_kl and self.kl_penalty == "loss":  # k3 KL to the reference, per token in the loss
            ref_logps = exp.ref_logps[rows]
            # w·k3: the weight's gradient counts even where it is 1
            token_kl = (kl_k3_importance_weighted(logps, ref_logps, log_weights) if self.kl_importance_correction
                        else kl_k3(logps, ref_logps))  # fmt: skip
            per_token = per_token + self.beta * token_kl
            stats["kl"].append((masked_mean(token_kl.detach(), mask).reshape(1), mask.sum().reshape(1).float()))
        return aggregate_loss(per_token.expand_as(mask), mask, self.loss_aggregation, normalizer=normalizer)

    def minibatch_order(self, num_rows: int, iteration: int) -> Tensor:
        """The rollout's row indices in pass ``iteration``, split in order into ``num_minibatches`` minibatches.

        Default: as sampled, the same every pass (PPO reshuffles per pass).
        """
        return torch.arange(num_rows, device=self.device)

    # -- log-prob passes ---------------------------------------------------------------------------
    def policy_logps(self, exp: Experience, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probs (with grad) and predictive entropies (detached) of micro-batch ``rows``' completion tokens
        under the live policy at the sampling temperature, each (b, L), in one chunked pass."""
        return exp.rollout.completion_logps(self.policy, rows, self.sampler.options.temperature, with_entropy=True)

    def no_grad_passes(self, rollout: Rollout) -> list[Tensor]:
        """The rollout's rows in the chunks that no-grad passes over it take (as many as the update's micro-batches:
        the same peak memory)."""
        rows_per_pass = math.ceil(len(rollout) / (self.num_minibatches * self.gradient_accumulation_steps))
        return list(torch.arange(len(rollout), device=self.device).split(rows_per_pass))

    @torch.no_grad()
    def _no_grad_logps(self, rollout: Rollout, model: nn.Module) -> Tensor:
        passes = [rollout.completion_logps(model, rows, self.sampler.options.temperature)[0]
                  for rows in self.no_grad_passes(rollout)]  # fmt: skip
        return torch.cat(passes)
