"""Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", https://arxiv.org/abs/2402.03300, eq. 3).

For each prompt, G completions are sampled and scored; each is pushed up or down by its reward
relative to its group:

    A_i = (r_i − mean(r_group)) / (std(r_group) + 1e-4)          (scale_rewards="group")
    L   = agg_t [ −min(ρ_t A_i, clip(ρ_t, 1 − ε, 1 + ε_high) A_i) + β k3_t ],   ρ_t = π(y_t)/π_old(y_t)

with k3 = π_ref/π − log(π_ref/π) − 1 (eq. 4). ``scale_rewards="none"`` with ``loss_aggregation=
"constant"`` is Dr. GRPO (Liu et al. 2025); ``epsilon_high=0.28`` with ``token_mean`` is DAPO's
clip-higher (Yu et al. 2025). The shared loop is :class:`~lit_align.algorithms.online.OnlinePolicyGradient`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch import Tensor, nn

from lit_align.algorithms.base import NonFinite, Scheduler
from lit_align.algorithms.online import ARITHMETIC_REWARD, LossAggregation, OnlinePolicyGradient
from lit_align.losses.policy_gradient import group_normalized_advantages


class GRPO(OnlinePolicyGradient):
    """GRPO (and Dr. GRPO / DAPO through its knobs) as a LightningModule with manual optimization.

    Batches are prompt-only (``datamodules.prompt.PromptDataModule``). ``trainer.max_steps`` counts
    optimizer steps: one batch of prompts makes ``num_iterations x num_minibatches`` of them.

    Args:
        policy: model to train: a preset (``smollm2-135m-instruct``, ``tiny-llama``), hub id, local
            directory, ``.gguf`` file, or an ``nn.Module`` (then pass ``tokenizer``).
        reference_policy: a separate reference model for the KL term; default a frozen copy of the
            policy (or the adapter-disabled policy with LoRA). Never loaded when ``beta == 0``.
        beta: β, weight of the k3 KL to the reference in the loss; 0 (TRL's default) means no
            reference model at all.
        reward_funcs: reward functions by import path (``package.module:function``), ``model:<dir>``
            for a trained reward model, or callables; TRL's signature ``f(prompts, completions, **columns)``.
        reward_weights: one weight per reward function (default 1.0 each); the reward is the weighted sum.
        num_generations: G, completions sampled per prompt.
        max_new_tokens: completion length limit (also L of the ``constant`` normalizer).
        temperature: sampling temperature.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: top-k sampling (0 = off).
        sampling_seed: sampling is seeded from (sampling_seed, global step, rank), so a run and its
            resume from a checkpoint draw the same completions.
        scale_rewards: ``group`` (GRPO), ``batch`` (std over the batch), ``none`` (Dr. GRPO).
        num_iterations: μ, passes over each rollout; > 1 records the sampling policy's log-probs and
            makes the clip active.
        num_minibatches: optimizer steps per pass over a rollout.
        gradient_accumulation_steps: micro-batches per optimizer step (memory only: same gradient).
        epsilon: lower clip range ε.
        epsilon_high: upper clip range (default ``epsilon``; DAPO: 0.28).
        loss_aggregation: ``sequence_mean`` (GRPO paper: token mean per sequence, then mean),
            ``token_mean`` (DAPO / TRL's default ``dapo``: mean over all tokens of the minibatch),
            ``constant`` (Dr. GRPO: sum over tokens / (sequences x max_new_tokens)).
        mask_truncated_completions: completions without EOS take no part in the loss (DAPO).
        log_completions_every_n_steps: every N rollouts a table of prompts, completions and rewards
            goes to TensorBoard (0 = never).
        tokenizer: tokenizer for decoding (default: the DataModule's, else the policy's by name).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay on matrices (not on norms/biases).
        warmup_ratio: fraction of the total optimizer steps spent warming up linearly.
        scheduler: ``linear`` / ``cosine`` decay to 0 after warmup, or ``constant``.
        max_grad_norm: gradient-norm clip per optimizer step (``None`` to disable).
        lora_r: LoRA rank; 0 trains all weights.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: LoRA dropout.
        lora_target_modules: modules to adapt (``all-linear`` or a list of names).
        gradient_checkpointing: recompute activations in backward to save memory.
        nonfinite_loss: on a NaN/inf loss, ``stop`` raises naming the step and batch; ``skip`` leaves the
            batch out of the update, warns and counts it (``train/nonfinite_skipped``).
    """

    def __init__(
        self,
        policy: str | nn.Module = "smollm2-135m-instruct",
        reference_policy: str | nn.Module | None = None,
        beta: float = 0.0,
        reward_funcs: Sequence[str | Callable] = (ARITHMETIC_REWARD,),
        reward_weights: Sequence[float] | None = None,
        num_generations: int = 8,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        sampling_seed: int = 0,
        scale_rewards: Literal["group", "batch", "none"] = "group",
        num_iterations: int = 1,
        num_minibatches: int = 1,
        gradient_accumulation_steps: int = 1,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        loss_aggregation: LossAggregation = "token_mean",
        mask_truncated_completions: bool = False,
        log_completions_every_n_steps: int = 10,
        tokenizer: Any = None,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        scheduler: Scheduler = "constant",
        max_grad_norm: float | None = 1.0,
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | str = "all-linear",
        gradient_checkpointing: bool = False,
        nonfinite_loss: NonFinite = "stop",
    ) -> None:
        super().__init__(
            policy, reference_policy, beta, reward_funcs, reward_weights, num_generations, max_new_tokens,
            temperature, top_p, top_k, num_iterations, num_minibatches, gradient_accumulation_steps, epsilon,
            epsilon_high, loss_aggregation, mask_truncated_completions, log_completions_every_n_steps, tokenizer,
            learning_rate, weight_decay, warmup_ratio, scheduler, max_grad_norm, lora_r, lora_alpha, lora_dropout,
            lora_target_modules, gradient_checkpointing, sampling_seed=sampling_seed,
            nonfinite_loss=nonfinite_loss,
        )  # fmt: skip
        self.scale_rewards = scale_rewards

    def compute_advantages(self, rewards: Tensor, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return group_normalized_advantages(rewards, self.num_generations, self.scale_rewards), {}
