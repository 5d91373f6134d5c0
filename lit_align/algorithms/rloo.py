"""REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics", https://arxiv.org/abs/2402.14740, eq. 5;
Kool et al. 2019).

For each prompt, G completions are sampled; each one's baseline is the mean reward of the OTHER G − 1:

    A_i = r_i − 1/(G−1) Σ_{j≠i} r_j,        r_i = R(x, y_i) − β Σ_t k1_t,   k1_t = log π_old(y_t) − log π_ref(y_t)
    L   = mean_i −min(ρ_i A_i, clip(ρ_i, 1 − ε, 1 + ε_high) A_i),   ρ_i = π(y_i|x) / π_old(y_i|x)

The KL is a penalty on the sequence reward (k1 summed over tokens) and the ratio is of whole
sequences (summed log-probs), both as TRL 1.16's ``RLOOTrainer``; with ``num_iterations=1`` the
gradient is plain REINFORCE, −A_i ∇ Σ_t log π(y_t). The shared loop is
:class:`~lit_align.algorithms.online.OnlinePolicyGradient`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from lit_align.algorithms.base import NonFinite, Scheduler
from lit_align.algorithms.online import ARITHMETIC_REWARD, OnlinePolicyGradient
from lit_align.losses.policy_gradient import leave_one_out_advantages


class RLOO(OnlinePolicyGradient):
    """RLOO as a LightningModule with manual optimization.

    Batches are prompt-only (``datamodules.prompt.PromptDataModule``). ``trainer.max_steps`` counts
    optimizer steps: one batch of prompts makes ``num_iterations x num_minibatches`` of them.

    Args:
        policy: model to train: a preset (``smollm2-135m-instruct``, ``tiny-llama``), hub id, local
            directory, ``.gguf`` file, or an ``nn.Module`` (then pass ``tokenizer``).
        reference_policy: a separate reference model for the KL term; default a frozen copy of the
            policy (or the adapter-disabled policy with LoRA). Never loaded when ``beta == 0``.
        beta: β, weight of the k1 KL penalty subtracted from each sequence's reward (TRL's default
            0.05); 0 means no reference model at all.
        reward_funcs: reward functions by import path (``package.module:function``), ``model:<dir>``
            for a trained reward model, or callables; TRL's signature ``f(prompts, completions, **columns)``.
        reward_weights: one weight per reward function (default 1.0 each); the reward is the weighted sum.
        num_generations: G ≥ 2, completions sampled per prompt (G = 1 has no leave-one-out baseline: A = 0).
        max_new_tokens: completion length limit.
        temperature: sampling temperature.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: top-k sampling (0 = off).
        sampling_seed: sampling is seeded from (sampling_seed, global step, rank), so a run and its
            resume from a checkpoint draw the same completions.
        normalize_advantages: whiten the advantages over the batch (TRL's ``normalize_advantages``).
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

    def __init__(
        self,
        policy: str | nn.Module = "smollm2-135m-instruct",
        reference_policy: str | nn.Module | None = None,
        beta: float = 0.05,
        reward_funcs: Sequence[str | Callable] = (ARITHMETIC_REWARD,),
        reward_weights: Sequence[float] | None = None,
        num_generations: int = 2,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        sampling_seed: int = 0,
        normalize_advantages: bool = False,
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
        self.normalize_advantages = normalize_advantages

    def compute_advantages(self, rewards: Tensor, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return leave_one_out_advantages(rewards, self.num_generations, self.normalize_advantages), {}
