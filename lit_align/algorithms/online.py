"""What the critic-free online algorithms (GRPO, RLOO, ReMax) share: one RL step, written out.

Per batch of N prompts (``OnlinePolicyGradient.rl_step``):

    1. rollout     G = ``num_generations`` completions per prompt from the current policy (no grad, KV cache)
    2. rewards     weighted sum of the reward functions; a completion every function scores None is
                   unscorable: excluded from the statistics, advantage 0 (TRL's handling)
    3. log-probs   of the sampling policy ("old", only when ``num_iterations > 1`` or the KL is a
                   reward penalty) and of the reference (only when ``beta > 0``)
    4. advantages  the one piece each algorithm defines (:meth:`compute_advantages`)
    5. updates     ``num_iterations`` passes x ``num_minibatches`` optimizer steps, each accumulating
                   ``gradient_accumulation_steps`` micro-batches under ONE normalizer counted over the
                   whole minibatch (and over ranks for ``token_mean``), so accumulation changes nothing

Shapes: B = N x G rows, prompt-major; L completion length; ``loss_mask`` (B, L) is the completion
mask, zeroed for truncated completions when ``mask_truncated_completions``.

``entropy`` is the token-mean predictive entropy over the trained completion tokens, computed in the
same chunked pass as the log-probs (no extra forward).

Deliberately left out (and what it costs): minibatches are
contiguous, not reshuffled per iteration; under DDP each rank normalizes its own groups (all G
completions of a prompt live on one rank, so group statistics are exact; ``scale_rewards="batch"``
and ``reward_std`` are per rank); a group with SOME unscorable completions fills them with the
group's mean scorable reward before the advantage, where TRL drops them from the group's std and
leave-one-out counts; every micro-batch backward all-reduces (no ``no_sync``), which costs
communication, not correctness.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lit_align.algorithms.base import AlignmentModule, NonFinite, Scheduler
from lit_align.logprobs import token_logps
from lit_align.losses.policy_gradient import aggregate_loss, clipped_surrogate, kl_k1, kl_k3, masked_mean
from lit_align.metrics import MetricGroup
from lit_align.rewards.model_scorer import RewardModelScorer
from lit_align.rewards.resolve import resolve_reward_funcs
from lit_align.rewards.scoring import fill_unscorable, nanstd, score_completions, weighted_rewards
from lit_align.rollout import HFGenerate, Rollout, seeded_rng
from lit_align.sharding import fully_shard_model

LossAggregation = Literal["sequence_mean", "token_mean", "constant"]
ARITHMETIC_REWARD = "lit_align.rewards.verifiers:arithmetic_answer_reward"
TABLE_ROWS = 8


class OnlinePolicyGradient(AlignmentModule):
    """Base of GRPO, RLOO and ReMax; subclasses set the class switches and :meth:`compute_advantages`.

    The shared arguments are documented in each subclass's ``Args:``.
    """

    KL_IN_REWARD: ClassVar[bool] = False  # True: r <- r - beta * sum_t k1 (RLOO); False: + beta * k3 per token (GRPO)
    SEQUENCE_RATIO: ClassVar[bool] = False  # importance ratio of summed sequence log-probs (REINFORCE family)
    EXTRA_METRICS: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        policy: str | nn.Module,
        reference_policy: str | nn.Module | None,
        beta: float,
        reward_funcs: Sequence[str | Callable],
        reward_weights: Sequence[float] | None,
        num_generations: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        num_iterations: int,
        num_minibatches: int,
        gradient_accumulation_steps: int,
        epsilon: float,
        epsilon_high: float | None,
        loss_aggregation: LossAggregation,
        mask_truncated_completions: bool,
        log_completions_every_n_steps: int,
        tokenizer: Any,
        learning_rate: float,
        weight_decay: float,
        warmup_ratio: float,
        scheduler: Scheduler,
        max_grad_norm: float | None,
        lora_r: int,
        lora_alpha: int,
        lora_dropout: float,
        lora_target_modules: list[str] | str,
        gradient_checkpointing: bool,
        sampling_seed: int = 0,
        nonfinite_loss: NonFinite = "stop",
    ) -> None:
        if num_generations < 1 or num_iterations < 1 or num_minibatches < 1 or gradient_accumulation_steps < 1:
            raise ValueError("num_generations, num_iterations, num_minibatches and gradient_accumulation_steps >= 1")
        super().__init__(
            policy, reference_policy, beta > 0, learning_rate, weight_decay, warmup_ratio, scheduler, max_grad_norm,
            lora_r, lora_alpha, lora_dropout, lora_target_modules, gradient_checkpointing,
            nonfinite_loss=nonfinite_loss,
        )  # fmt: skip
        given = {"policy": policy, "reference_policy": reference_policy, "tokenizer": tokenizer}
        objects = [name for name, value in given.items() if not isinstance(value, str | None)]
        self.save_hyperparameters(ignore=[*objects, "needs_reference", "policy_kind"])
        # Callables are recorded by import path: checkpoints then hold only plain data (weights_only loading).
        self.hparams["reward_funcs"] = [spec if isinstance(spec, str) else _import_path(spec) for spec in reward_funcs]
        self.automatic_optimization = False
        self.reward_funcs, self.reward_names, weights = resolve_reward_funcs(reward_funcs, reward_weights)
        self.register_buffer("reward_weights", torch.tensor(weights), persistent=False)
        self.beta, self.num_generations, self.max_new_tokens = beta, num_generations, max_new_tokens
        self.num_iterations, self.num_minibatches = num_iterations, num_minibatches
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.epsilon, self.epsilon_high = epsilon, epsilon_high
        self.loss_aggregation: LossAggregation = "sequence_mean" if self.SEQUENCE_RATIO else loss_aggregation
        self.mask_truncated_completions = mask_truncated_completions
        self.log_completions_every_n_steps = log_completions_every_n_steps
        self._tokenizer = tokenizer if not isinstance(tokenizer, str) else None
        names = [t for t in (tokenizer, policy) if isinstance(t, str)]
        self._tokenizer_name = names[0] if names else None
        self._sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k}
        self._backend: HFGenerate | None = None
        self.sampling_seed = sampling_seed
        self._rollouts = 0
        fn_metrics = tuple(f"rewards/{n}/mean" for n in self.reward_names)
        rollout = ("reward", "reward_std", "frac_reward_zero_std", *fn_metrics, "completions/mean_length",
                   "completions/clipped_ratio")  # fmt: skip
        clip = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "entropy")
        kl = ("kl",) if beta > 0 else ()
        times = ("time/generation", "time/reward", "time/update")  # update: log-prob passes + optimizer steps
        self.train_metrics = MetricGroup((*rollout, *clip, *kl, *self.EXTRA_METRICS, *times), "train/")
        self.val_metrics = MetricGroup(("reward", *fn_metrics, "completions/mean_length",
                                        "completions/clipped_ratio"), "val/", dist_sync_on_step=False)  # fmt: skip

    # -- devices and sharding ------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Reward models run on this rank's device (not every rank's ``cuda:0``)."""
        device = self.trainer.strategy.root_device
        for scorer in self._reward_models():
            scorer.device = device
            scorer.model.to(device)

    def configure_model(self) -> None:
        """FSDP2: the policy and reference (base class), then every reward model, like the reference."""
        super().configure_model()
        mesh = self.data_parallel_mesh()
        if mesh is None:
            return
        for scorer in self._reward_models():
            fully_shard_model(scorer.model, mesh, frozen=True)

    def _reward_models(self) -> list[RewardModelScorer]:
        return [f for f in self.reward_funcs if isinstance(f, RewardModelScorer)]

    # -- the algorithm-specific piece -------------------------------------------------------------
    def compute_advantages(self, rewards: Tensor, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """(B,) advantages from (B,) rewards (no NaN), plus extra metric values."""
        raise NotImplementedError  # abstract

    # -- Lightning hooks ------------------------------------------------------------------------
    def forward(self, prompt_input_ids: Tensor, prompt_attention_mask: Tensor) -> Rollout:
        return self.generate_samples(prompt_input_ids, prompt_attention_mask)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, values, rollout, rewards_per_func = self.rl_step(batch)
        self.train_metrics.step(_to(values, self.device))
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log_dict(self.train_metrics, on_step=True, on_epoch=False)
        every = self.log_completions_every_n_steps
        if every and self._rollouts % every == 0:
            self._log_completion_table(batch["prompt"], rollout, rewards_per_func)
        self._rollouts += 1
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Greedy completions of held-out prompts, scored by the reward functions."""
        rollout = self.backend()(self.policy, batch["prompt_input_ids"], batch["prompt_attention_mask"], 1, greedy=True)
        per_func = self.score(batch, rollout)
        self.val_metrics.step(_to(self.reward_values(per_func, rollout, with_std=False), self.device))
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> dict[str, Any]:
        total = self.trainer.estimated_stepping_batches
        if self.trainer.max_steps == -1:  # horizon given in rollouts (batches): count optimizer steps
            total *= self.num_iterations * self.num_minibatches
        optimizer, scheduler = self._optimizer_and_scheduler(total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- the step --------------------------------------------------------------------------------
    def rl_step(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor], Rollout, Tensor]:
        """Rollout -> rewards -> advantages -> K updates. Returns the mean loss, metric values, the
        rollout and the (B, F) rewards per function."""
        G = self.num_generations
        start = time.perf_counter()
        rollout = self.generate_samples(batch["prompt_input_ids"], batch["prompt_attention_mask"])
        t_generation = time.perf_counter() - start
        start = time.perf_counter()
        rewards_per_func = self.score(batch, rollout)  # (B, F), NaN = not applicable
        values = self.reward_values(rewards_per_func, rollout, with_std=True)
        t_reward = time.perf_counter() - start

        start = time.perf_counter()
        loss_mask = rollout.completion_mask.clone()  # (B, L)
        if self.mask_truncated_completions:
            loss_mask[rollout.is_truncated] = 0
        needs_old = self.num_iterations > 1 or (self.KL_IN_REWARD and self.beta > 0)
        old_logps = self._no_grad_logps(rollout, self.policy) if needs_old else None  # (B, L) or None
        ref_logps = None
        if self.beta > 0:
            ref_logps = self.reference_forward(lambda ref: self._no_grad_logps(rollout, ref))
        rewards = weighted_rewards(rewards_per_func.to(self.device), self.reward_weights)  # (B,), NaN: unscorable
        unscorable = rewards.isnan()
        if self.KL_IN_REWARD and self.beta > 0:  # REINFORCE-style KL penalty: unbiased k1, summed per sequence
            token_kl = kl_k1(old_logps, ref_logps)
            rewards = rewards - self.beta * (token_kl * loss_mask).sum(dim=1)
            values["kl"] = token_kl[loss_mask.bool()]
        rewards = fill_unscorable(rewards, G)
        t_logps = time.perf_counter() - start
        advantages, extra = self.compute_advantages(rewards, batch)  # ReMax times its greedy decode itself
        start = time.perf_counter()
        advantages = advantages.masked_fill(unscorable, 0.0)  # (B,)
        values.update(extra)

        losses, stats = [], defaultdict(list)
        for _ in range(self.num_iterations):
            row_ids = torch.arange(len(rollout), device=self.device)
            for minibatch in row_ids.tensor_split(min(self.num_minibatches, len(rollout))):
                normalizer = self._normalizer(loss_mask[minibatch])
                self._zero_grad()
                total = 0.0
                for rows in minibatch.tensor_split(min(self.gradient_accumulation_steps, len(minibatch))):
                    old = old_logps[rows] if old_logps is not None else None
                    ref = ref_logps[rows] if ref_logps is not None else None
                    mask, adv = loss_mask[rows], advantages[rows]
                    loss = self.policy_loss(rollout, rows, mask, adv, old, ref, normalizer, stats)
                    if not self.loss_is_finite(loss, None):
                        loss = self.skipped_loss()
                    self._backward(loss)
                    total += float(loss.detach())
                self._optimizer_step()
                losses.append(total)
        values["time/generation"] = torch.tensor([t_generation])
        values["time/reward"] = torch.tensor([t_reward])
        values["time/update"] = torch.tensor([t_logps + time.perf_counter() - start])
        for name, parts in stats.items():
            values[name] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        return torch.tensor(sum(losses) / len(losses), device=self.device), values, rollout, rewards_per_func

    def policy_loss(
        self,
        rollout: Rollout,
        rows: Tensor,
        mask: Tensor,
        advantages: Tensor,
        old_logps: Tensor | None,
        ref_logps: Tensor | None,
        normalizer: Tensor,
        stats: dict[str, list],
    ) -> Tensor:
        """Clipped-surrogate loss of one micro-batch, divided by the minibatch ``normalizer``."""
        input_ids, attention_mask, labels = rollout.model_inputs(rows)
        prompt_len = rollout.prompt_input_ids.shape[1]
        out = token_logps(self.policy, input_ids, attention_mask, labels, with_entropy=True)
        logps, entropy = out.logps[:, prompt_len:], out.entropy[:, prompt_len:]
        stats["entropy"].append((masked_mean(entropy, mask).reshape(1), mask.sum().reshape(1).float()))
        old_logps = logps.detach() if old_logps is None else old_logps  # on-policy: ratio 1, same gradient
        weights = mask.float()
        if self.SEQUENCE_RATIO:  # one ratio per sequence: exp(sum_t logp - sum_t old_logp)
            seq, old_seq = (logps * mask).sum(-1), (old_logps * mask).sum(-1)
            per_seq, low, high = clipped_surrogate(seq, old_seq, advantages, None, self.epsilon, self.epsilon_high)
            loss = aggregate_loss(per_seq.unsqueeze(1), mask.any(-1, keepdim=True), "sequence_mean", None, normalizer)
            weights = torch.ones_like(per_seq)
        else:
            clip = self.epsilon, self.epsilon_high
            per_token, low, high = clipped_surrogate(logps, old_logps, advantages, mask, *clip)
            if self.beta > 0:  # GRPO: k3 KL to the reference, per token in the loss
                token_kl = kl_k3(logps, ref_logps)
                per_token = per_token + self.beta * token_kl
                stats["kl"].append((masked_mean(token_kl.detach(), mask).reshape(1), mask.sum().reshape(1).float()))
            loss = aggregate_loss(per_token, mask, self.loss_aggregation, self.max_new_tokens, normalizer)
        for name, flags in (("low", low), ("high", high), ("region", low | high)):
            stats[f"clip_ratio/{name}_mean"].append((flags.float().flatten(), weights.flatten()))
        return loss

    # -- rollouts and rewards ------------------------------------------------------------------
    def generate_samples(self, prompt_input_ids: Tensor, prompt_attention_mask: Tensor) -> Rollout:
        """``num_generations`` sampled completions per prompt (prompt-major), without grad."""
        with self.seeded_sampling():
            return self.backend()(self.policy, prompt_input_ids, prompt_attention_mask, self.num_generations)

    @contextmanager
    def seeded_sampling(self) -> Iterator[None]:
        """Sample from an RNG seeded by (``sampling_seed``, global step, rank), restoring the global RNG after.

        The completions of a step are then a function of the checkpointed state alone: a run killed and
        resumed draws what the uninterrupted run drew, without storing RNG state in the checkpoint.
        """
        trainer = self._trainer is not None
        step, rank = (self.global_step, self.global_rank) if trainer else (self._rollouts, 0)
        with seeded_rng(f"{self.sampling_seed}/{step}/{rank}", self.device):
            yield

    def backend(self) -> HFGenerate:
        if self._backend is None:
            self._backend = HFGenerate(self.tokenizer, **self._sampling)
        return self._backend

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            if getattr(datamodule, "tokenizer", None) is not None:
                self._tokenizer = datamodule.tokenizer
            elif self._tokenizer_name is not None:
                from lit_align.models import load_tokenizer

                self._tokenizer = load_tokenizer(self._tokenizer_name)
            else:
                raise ValueError("pass tokenizer=... when the policy is given as an nn.Module")
        return self._tokenizer

    def score(self, batch: dict[str, Any], rollout: Rollout) -> Tensor:
        """(B, F) rewards of a rollout of ``batch``'s prompts; every non-tensor column reaches the functions."""
        columns = {k: v for k, v in batch.items() if k != "prompt" and not torch.is_tensor(v)}
        ids = [r[:n] for r, n in zip(rollout.completion_ids.tolist(), rollout.lengths.tolist(), strict=True)]
        G = rollout.num_generations
        return score_completions(self.reward_funcs, batch["prompt"], rollout.texts, columns, ids, G)

    def reward_values(self, per_func: Tensor, rollout: Rollout, with_std: bool) -> dict[str, Any]:
        """TRL's rollout metrics: reward (weighted sum, unscorable excluded), per-function means, lengths."""
        rewards = weighted_rewards(per_func, self.reward_weights)  # NaN: unscorable
        scorable = ~rewards.isnan()
        values: dict[str, Any] = {"reward": (rewards.nan_to_num(0.0), scorable.float())}
        for i, name in enumerate(self.reward_names):
            applies = ~per_func[:, i].isnan()
            values[f"rewards/{name}/mean"] = (per_func[:, i].nan_to_num(0.0), applies.float())
        values["completions/mean_length"] = rollout.lengths.float()
        values["completions/clipped_ratio"] = rollout.is_truncated.float()
        if with_std:
            kept = rewards[scorable]
            values["reward_std"] = (kept.std() if kept.numel() > 1 else torch.zeros(())).reshape(1)
            grouped = rewards.view(-1, rollout.num_generations)
            std = nanstd(grouped).nan_to_num(0.0)  # a group with < 2 scorable rewards has zero std
            values["frac_reward_zero_std"] = torch.isclose(std, torch.zeros_like(std)).float()
        return values

    # -- optimization plumbing (Trainer or standalone) -------------------------------------------------
    def update(self, batch: dict[str, Any], total_steps: int = 1000) -> dict[str, float]:
        """One rollout and its ``num_iterations x num_minibatches`` optimizer steps outside a Trainer."""
        if self._standalone is None:
            self._standalone = self._optimizer_and_scheduler(total_steps)
        self.train()
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, values, _, _ = self.rl_step(batch)
        self._rollouts += 1
        out = {"loss": float(loss)}
        for name, value in values.items():
            data, weight = value if isinstance(value, tuple) else (value, torch.ones_like(value))
            out[name] = float((data.float() * weight.float()).sum() / weight.float().sum().clamp(min=1e-12))
        return out

    def _normalizer(self, mask: Tensor) -> Tensor:
        """The minibatch's loss normalizer; token counts are global over ranks (DDP averages gradients)."""
        rows = torch.tensor(float(mask.shape[0]), device=mask.device)
        if self.loss_aggregation == "constant":
            return rows * self.max_new_tokens
        if self.loss_aggregation == "sequence_mean":
            return rows
        tokens = mask.sum().float()
        if self._trainer is not None and self.trainer.world_size > 1:
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="sum") / self.trainer.world_size
        return tokens

    @torch.no_grad()
    def _no_grad_logps(self, rollout: Rollout, model: nn.Module) -> Tensor:
        P = rollout.prompt_input_ids.shape[1]
        parts = []
        rows_per_pass = math.ceil(len(rollout) / (self.num_minibatches * self.gradient_accumulation_steps))
        for rows in torch.arange(len(rollout), device=self.device).split(rows_per_pass):
            parts.append(token_logps(model, *rollout.model_inputs(rows))[0][:, P:])
        return torch.cat(parts)

    def _zero_grad(self) -> None:
        optimizer = self.optimizers() if self._trainer is not None else self._standalone[0]
        optimizer.zero_grad(set_to_none=True)

    def _backward(self, loss: Tensor) -> None:
        if self._trainer is not None:
            self.manual_backward(loss)  # under DDP this re-arms the reducer: gradients are all-reduced
        else:
            loss.backward()

    def _optimizer_step(self) -> None:
        trainer = self._trainer is not None
        optimizer, scheduler = (self.optimizers(), self.lr_schedulers()) if trainer else self._standalone
        self.close_window(optimizer)  # a minibatch whose micro-batches were all non-finite moves nothing
        clip = self.hparams.max_grad_norm
        if clip and trainer:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        elif clip:
            torch.nn.utils.clip_grad_norm_(self._trainable(), clip)
        optimizer.step()  # under a Trainer: counts one global_step
        scheduler.step()

    def _log_completion_table(self, prompts: list[Any], rollout: Rollout, per_func: Tensor) -> None:
        logger = self.logger
        if logger is None or not self.trainer.is_global_zero or type(logger).__name__ != "TensorBoardLogger":
            return
        header = "| prompt | completion | " + " | ".join(self.reward_names) + " |"
        lines = [header, "|" + " --- |" * (2 + len(self.reward_names))]
        for i in range(min(TABLE_ROWS, len(rollout))):
            prompt = prompts[i // rollout.num_generations]
            text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            scores = " | ".join(f"{v:.3g}" for v in per_func[i].tolist())
            lines.append(f"| {_cell(text)} | {_cell(rollout.texts[i])} | {scores} |")
        logger.experiment.add_text("completions", "\n".join(lines), self.global_step)


def _import_path(func: Callable) -> str:
    module, name = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    return f"{module}:{name}" if module and name else repr(func)


def _to(values: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: tuple(t.to(device) for t in v) if isinstance(v, tuple) else v.to(device) for k, v in values.items()}


def _cell(text: str, limit: int = 300) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>")
