"""Pairwise reward model (Bradley & Terry 1952; Ouyang et al. 2022, https://arxiv.org/abs/2203.02155, Eq. 1).

loss = −log σ(r(x, y_w) − r(x, y_l) − m) + c·(r(x, y_w) + r(x, y_l))²

r(x, y) is a scalar head on the causal LM's last hidden state, read at the last real token of
prompt + completion. m is an optional per-pair margin (Llama 2, Touvron et al. 2023, Eq. 2), c the
reward-centering coefficient (Eisenstein et al. 2023).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lit_align.batches import PreferenceBatch
from lit_align.hparams import check_option
from lit_align.losses import bradley_terry_loss
from lit_align.metrics import Value
from lit_align.models.loading import ModelKind
from lit_align.models.logprobs import concatenate_pair, pair_groups
from lit_align.rewards.model_scorer import last_token_rewards
from lit_align.training.offline import OfflineModule


class RewardModel(OfflineModule):
    """A Bradley-Terry reward model as a LightningModule (no reference).

    The policy is a ``...ForSequenceClassification`` with one output, built from a causal-LM preset,
    hub id or directory (its ``score`` head freshly initialised). The reward is the head's output at
    the LAST ATTENTION-MASK POSITION. Hugging Face's own pooling instead takes the rightmost token
    that is not ``pad_token_id``; when the pad token is the EOS token (SmolLM2, and the default of
    ``load_model``) and a completion ends with EOS, that picks the token before the EOS. Here the
    head's per-position output is captured during the ordinary forward and read at the right place
    (so PEFT and FSDP wrappers see a normal forward call).

    Batches are the preference schema (``lit_align.datamodules.PreferenceDataModule``); labels are unused, and an
    optional ``margin`` (B,) float tensor enters the loss. Logged (TRL RewardTrainer's names):
    ``accuracy`` (r_w > r_l), ``margin`` (r_w − r_l), ``mean_reward``, ``min_reward``, ``max_reward``
    (min/max per batch, averaged over batches in epoch values).

    Using the export: the ``HFExport`` callback writes ``<run_dir>/hf_model``; load it as a reward
    source with ``AutoModelForSequenceClassification.from_pretrained(run_dir / "hf_model")`` and the
    tokenizer saved beside it, and score with :func:`~lit_align.rewards.model_scorer.last_token_rewards`
    (or HF's pooling when the pad token differs from EOS, or the inputs do not end with the pad token);
    ``reward_funcs: ["model:<run_dir>/hf_model"]`` does exactly that for the online algorithms.

    The shared options are :class:`AlignmentModule`'s; a policy given by name is loaded as a
    ``...ForSequenceClassification`` with one output (its ``score`` head new), one given as an
    ``nn.Module`` must be one. With LoRA, PEFT also trains the score head.

    Args:
        center_rewards_coefficient: c, weight of the (r_w + r_l)² penalty that centers rewards on 0
            (``None`` disables it; TRL's name; TRL's docs recommend 0.01).
    """

    METRICS = ("accuracy", "margin", "mean_reward", "min_reward", "max_reward")
    KEY_METRICS = ("accuracy", "margin")
    POLICY_KIND: ClassVar[ModelKind] = "sequence_classification"

    def __init__(
        self,
        *,
        center_rewards_coefficient: float | None = None,
        learning_rate: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        check_option(center_rewards_coefficient is None or center_rewards_coefficient >= 0,
                     "center_rewards_coefficient", center_rewards_coefficient, "c >= 0, or null")  # fmt: skip
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.center_rewards_coefficient = center_rewards_coefficient

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, groups: list | None = None
    ) -> torch.Tensor:
        """Rewards (B,) fp32 of prompt + completion sequences (``groups``: rows that share a prompt, computed once)."""
        return last_token_rewards(self.policy, input_ids, attention_mask, groups)

    def compute_loss(self, batch: PreferenceBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        joint = concatenate_pair(batch, self.pad_token_id)
        n = batch["chosen_input_ids"].shape[0]
        rewards = self(joint["input_ids"], joint["attention_mask"], pair_groups(n))  # (2B,), each prompt once
        chosen_rewards, rejected_rewards = rewards.split(n)
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
