"""Pairwise reward model (Bradley & Terry 1952; Ouyang et al. 2022, https://arxiv.org/abs/2203.02155, Eq. 1).

loss = −log σ(r(x, y_w) − r(x, y_l) − m) + c·(r(x, y_w) + r(x, y_l))²

r(x, y) is a scalar head on the causal LM's last hidden state, read at the last real token of
prompt + completion. m is an optional per-pair margin (Llama 2, Touvron et al. 2023, Eq. 2), c the
reward-centering coefficient (Eisenstein et al. 2023).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lit_align.algorithms.base import AlignmentModule, NonFinite, Scheduler
from lit_align.logprobs import concatenate_pair
from lit_align.losses import bradley_terry_loss
from lit_align.metrics import Value


class RewardModel(AlignmentModule):
    """A Bradley-Terry reward model as a LightningModule (no reference).

    The policy is a ``...ForSequenceClassification`` with one output, built from a causal-LM preset,
    hub id or directory (its ``score`` head freshly initialised). The reward is the head's output at
    the LAST ATTENTION-MASK POSITION. Hugging Face's own pooling instead takes the rightmost token
    that is not ``pad_token_id``; when the pad token is the EOS token (SmolLM2, and the default of
    ``load_model``) and a completion ends with EOS, that picks the token before the EOS. Here the
    head's per-position output is captured during the ordinary forward and read at the right place
    (so PEFT and FSDP wrappers see a normal forward call).

    Batches are the preference schema (``datamodules.PreferenceDataModule``); labels are unused, and an
    optional ``margin`` (B,) float tensor enters the loss. Logged (TRL RewardTrainer's names):
    ``accuracy`` (r_w > r_l), ``margin`` (r_w − r_l), ``mean_reward``, ``min_reward``, ``max_reward``
    (min/max per batch, averaged over batches in epoch values).

    Using the export: the ``HFExport`` callback writes ``<run_dir>/hf_model``; load it as a reward
    source with ``AutoModelForSequenceClassification.from_pretrained(run_dir / "hf_model")`` and the
    tokenizer saved beside it, and score with :func:`last_token_rewards` (or HF's pooling when the pad
    token differs from EOS, or the inputs do not end with the pad token).

    Args:
        policy: base model: a preset (``smollm2-135m-instruct``, ``tiny-llama``), hub id, local
            directory, or an ``nn.Module`` (a sequence-classification model with one label).
        center_rewards_coefficient: c, weight of the (r_w + r_l)² penalty that centers rewards on 0
            (``None`` disables it; TRL's name; TRL's docs recommend 0.01).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay on matrices (not on norms/biases).
        warmup_ratio: fraction of the total optimizer steps spent warming up linearly.
        scheduler: ``linear`` / ``cosine`` decay to 0 after warmup, or ``constant``.
        max_grad_norm: gradient-norm clip (``None`` to disable); a Trainer ``gradient_clip_val`` wins.
        lora_r: LoRA rank; 0 trains all weights (with LoRA, PEFT also trains the score head).
        lora_alpha: LoRA scaling numerator.
        lora_dropout: LoRA dropout.
        lora_target_modules: modules to adapt (``all-linear`` or a list of names).
        gradient_checkpointing: recompute activations in backward to save memory.
        nonfinite_loss: on a NaN/inf loss, ``stop`` raises naming the step and batch; ``skip`` leaves the
            batch out of the update, warns and counts it (``train/nonfinite_skipped``).
    """

    METRICS = ("accuracy", "margin", "mean_reward", "min_reward", "max_reward")

    def __init__(
        self,
        policy: str | nn.Module = "smollm2-135m-instruct",
        center_rewards_coefficient: float | None = None,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
        scheduler: Scheduler = "linear",
        max_grad_norm: float | None = 1.0,
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | str = "all-linear",
        gradient_checkpointing: bool = False,
        nonfinite_loss: NonFinite = "stop",
    ) -> None:
        super().__init__(
            policy, None, False, learning_rate, weight_decay, warmup_ratio, scheduler, max_grad_norm,
            lora_r, lora_alpha, lora_dropout, lora_target_modules, gradient_checkpointing,
            policy_kind="sequence_classification", nonfinite_loss=nonfinite_loss,
        )  # fmt: skip
        self.center_rewards_coefficient = center_rewards_coefficient

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) fp32 of prompt + completion sequences."""
        return last_token_rewards(self.policy, input_ids, attention_mask)

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Value]]:
        joint = concatenate_pair(batch, self.pad_token_id)
        rewards = self(joint["input_ids"], joint["attention_mask"])  # (2B,)
        chosen_rewards, rejected_rewards = rewards.split(batch["chosen_input_ids"].shape[0])
        losses = bradley_terry_loss(
            chosen_rewards, rejected_rewards, batch.get("margin"), self.center_rewards_coefficient
        )
        rewards = rewards.detach()
        values = {
            "accuracy": (chosen_rewards > rejected_rewards).float(),
            "margin": (chosen_rewards - rejected_rewards).detach(),
            "mean_reward": rewards,
            "min_reward": rewards.min().reshape(1),
            "max_reward": rewards.max().reshape(1),
        }
        return losses.mean(), values


def score_head(model: nn.Module) -> nn.Module:
    """The per-position scalar head (``score``) of a sequence-classification model, PEFT-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    if not isinstance(head, nn.Module):
        raise ValueError(
            f"{type(base).__name__} has no 'score' head; a reward model needs a causal LM's "
            "...ForSequenceClassification (load_model(name, kind='sequence_classification'))"
        )
    return head


@contextmanager
def _captured_output(module: nn.Module):
    captured: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda _m, _inputs, output: captured.__setitem__("output", output))
    try:
        yield captured
    finally:
        handle.remove()


def last_token_rewards(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar rewards (B,) fp32 read at each row's last attention-mask position (right or left padding)."""
    with _captured_output(score_head(model)) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    scores = captured["output"][..., 0]  # (B, T)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (positions * attention_mask.bool()).argmax(-1)  # (B,)
    return scores.gather(1, last.unsqueeze(1)).squeeze(1).float()
