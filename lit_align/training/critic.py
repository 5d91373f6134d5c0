"""PPO's critic: a value model that estimates V(s_t) for every completion token, and where its weights come from.

A value model is a causal LM's ``...ForSequenceClassification`` with one output. Its ``score`` head maps each
position's final hidden state to a scalar; a reward model is read at the LAST position, a value model at every
position (:func:`token_values`). The value of completion token t (the state s_t before y_t is generated) is the
head's output at the position just before y_t, which is the last prompt token for t = 0. TRL does the same
(``full_value[:, context_length - 1 : -1]``).

Where the weights come from (:func:`build_critic`, PPO's ``value_model`` option):

    ``reward_model``  a trainable copy of the first reward model among the reward functions, backbone AND
                      score head (TRL's PPO examples, OpenRLHF's default). It reads the POLICY's token ids, so
                      it must share the policy's tokenizer; a different vocabulary size is refused.
    ``policy``        the policy's backbone and a fresh scalar head (Hugging Face's initialization of a new
                      ``score`` layer, under a fixed seed).
    anything else     a model reference loaded as ``sequence_classification``: a reward-model export, a causal
                      LM (its head new), a preset; from Python also a ``...ForSequenceClassification`` module.

Deliberately left out: a value head on the policy's own trunk (shared actor-critic). Sharing would halve the
memory, but the value loss would then move the policy's features (Ouyang et al. 2022 and TRL keep two models).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification

from lit_align.errors import OptionError
from lit_align.models.loading import ModelRef, resolve_model
from lit_align.rewards.model_scorer import RewardModelScorer, position_scores


def token_values(
    critic: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_len: int, groups: list | None = None
) -> Tensor:
    """V(s_t) for each completion token, (B, L) fp32, of prompt (left-padded to ``prompt_len``) + completion rows.

    One forward of the critic (each prompt once over its ``groups`` of rows when the critic shares prefixes); with
    grad when grad is enabled.
    """
    scores = position_scores(critic, input_ids, attention_mask, groups)  # (B, P + L)
    return scores[:, prompt_len - 1 : -1].float()


def build_critic(value_model: ModelRef, policy: nn.Module, reward_models: list[RewardModelScorer]) -> nn.Module:
    """A trainable value model (train mode, every parameter requiring grad) initialized from ``value_model``."""
    if isinstance(value_model, str) and value_model == "reward_model":
        if not reward_models:
            raise OptionError("value_model='reward_model' needs a 'model:<dir>' entry in --model.reward_funcs")
        critic = copy.deepcopy(reward_models[0].model)
    elif isinstance(value_model, str) and value_model == "policy":
        critic = critic_from_causal_lm(policy)
    else:
        name = value_model.removeprefix("model:") if isinstance(value_model, str) else value_model
        critic = resolve_model(name, "sequence_classification")
    _check_critic(critic, policy, value_model)
    return critic.requires_grad_(True).train()


def critic_from_causal_lm(model: nn.Module, seed: int = 0) -> nn.Module:
    """A ``...ForSequenceClassification`` (one label) with ``model``'s backbone weights and a fresh ``score`` head.

    A PEFT (LoRA) policy contributes its base weights: a merged copy is made and dropped (memory for one more
    model, briefly), which equals the base model while the adapters are fresh, as at construction.
    """
    if hasattr(model, "peft_config"):
        model = copy.deepcopy(model).merge_and_unload()
    config = copy.deepcopy(model.config)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = AutoModelForSequenceClassification.from_config(config)
    critic.to(dtype=next(model.parameters()).dtype)
    source = getattr(model, model.base_model_prefix)
    getattr(critic, critic.base_model_prefix).load_state_dict(source.state_dict())
    return critic


def disable_dropout(model: nn.Module) -> None:
    """Every dropout off (``nn.Dropout`` layers and attention-probability dropout), so that the rollout's
    log-probs and values equal the first update's: on-policy the ratio is exactly 1 (TRL does the same)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def _check_critic(critic: nn.Module, policy: nn.Module, value_model: ModelRef) -> None:
    if not type(critic).__name__.endswith("ForSequenceClassification") or critic.config.num_labels != 1:
        raise OptionError(
            f"--model.value_model {value_model!r}: a value model is a ...ForSequenceClassification with one label, "
            f"got {type(critic).__name__}"
        )
    vocab, policy_vocab = critic.get_input_embeddings().num_embeddings, policy.get_input_embeddings().num_embeddings
    if vocab != policy_vocab:
        raise OptionError(
            f"--model.value_model {value_model!r}: the critic reads the policy's token ids, but its vocabulary has "
            f"{vocab} entries and the policy's {policy_vocab}; use a reward model trained from the policy's "
            "tokenizer, or --model.value_model policy"
        )
