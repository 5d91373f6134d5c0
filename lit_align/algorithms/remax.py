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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_align.algorithms.base import NonFinite, Scheduler
from lit_align.algorithms.online import ARITHMETIC_REWARD, OnlinePolicyGradient
from lit_align.losses.policy_gradient import greedy_baseline_advantages
from lit_align.rewards.scoring import weighted_rewards


class ReMax(OnlinePolicyGradient):
    """ReMax as a LightningModule with manual optimization.

    Batches are prompt-only (``datamodules.prompt.PromptDataModule``). ``trainer.max_steps`` counts
    optimizer steps: one batch of prompts makes ``num_iterations x num_minibatches`` of them.
    Logs ``greedy_reward`` (the baseline's mean reward) besides the shared metrics.

    Args:
        policy: model to train: a preset (``smollm2-135m-instruct``, ``tiny-llama``), hub id, local
            directory, ``.gguf`` file, or an ``nn.Module`` (then pass ``tokenizer``).
        reference_policy: a separate reference model for the KL term; default a frozen copy of the
            policy (or the adapter-disabled policy with LoRA). Never loaded when ``beta == 0``.
        beta: β, weight of the k1 KL penalty subtracted from each sampled sequence's reward; 0 (the
            default) means no reference model at all.
        reward_funcs: reward functions by import path (``package.module:function``), ``model:<dir>``
            for a trained reward model, or callables; TRL's signature ``f(prompts, completions, **columns)``.
        reward_weights: one weight per reward function (default 1.0 each); the reward is the weighted sum.
        num_generations: G, completions sampled per prompt, each compared with the greedy one.
        max_new_tokens: completion length limit.
        temperature: sampling temperature.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: top-k sampling (0 = off).
        sampling_seed: sampling is seeded from (sampling_seed, global step, rank), so a run and its
            resume from a checkpoint draw the same completions.
        num_iterations: μ, passes over each rollout; > 1 records the sampling policy's log-probs and
            makes the clip active.
        num_minibatches: optimizer steps per pass over a rollout.
        gradient_accumulation_steps: micro-batches per optimizer step (memory only: same gradient).
        epsilon: lower clip range ε.
        epsilon_high: upper clip range (default ``epsilon``; DAPO: 0.28).
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

    KL_IN_REWARD = True
    SEQUENCE_RATIO = True
    EXTRA_METRICS = ("greedy_reward", "time/greedy_generation")

    def __init__(
        self,
        policy: str | nn.Module = "smollm2-135m-instruct",
        reference_policy: str | nn.Module | None = None,
        beta: float = 0.0,
        reward_funcs: Sequence[str | Callable] = (ARITHMETIC_REWARD,),
        reward_weights: Sequence[float] | None = None,
        num_generations: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        sampling_seed: int = 0,
        num_iterations: int = 1,
        num_minibatches: int = 1,
        gradient_accumulation_steps: int = 1,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
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
            epsilon_high, "sequence_mean", mask_truncated_completions, log_completions_every_n_steps, tokenizer,
            learning_rate, weight_decay, warmup_ratio, scheduler, max_grad_norm, lora_r, lora_alpha, lora_dropout,
            lora_target_modules, gradient_checkpointing, sampling_seed=sampling_seed,
            nonfinite_loss=nonfinite_loss,
        )  # fmt: skip

    def compute_advantages(self, rewards: Tensor, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        start = time.perf_counter()
        greedy = self.backend()(self.policy, batch["prompt_input_ids"], batch["prompt_attention_mask"], 1, greedy=True)
        per_func = self.score(batch, greedy).to(rewards.device)  # (N, F)
        elapsed = time.perf_counter() - start
        greedy_rewards = weighted_rewards(per_func, self.reward_weights)  # (N,), NaN: unscorable
        advantages = greedy_baseline_advantages(rewards, greedy_rewards, self.num_generations).nan_to_num(0.0)
        kept = greedy_rewards[~greedy_rewards.isnan()]
        return advantages, {"greedy_reward": kept, "time/greedy_generation": torch.tensor([elapsed])}
