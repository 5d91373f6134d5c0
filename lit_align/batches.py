"""The batch schemas every DataModule emits and every module's ``compute_loss`` takes, declared once.

Tensors are right-padded unless said; ``labels`` are ``input_ids`` with :data:`IGNORE_INDEX` on the
prompt and on padding. B = batch, T = sequence length, P = prompt length.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from typing_extensions import NotRequired, TypedDict  # NotRequired: Python 3.11+ in typing

IGNORE_INDEX = -100  # label of a position that is not scored (prompt, padding)


class PreferenceBatch(TypedDict):
    """Pairs (``lit_align.datamodules.PreferenceDataModule``)."""

    chosen_input_ids: Tensor  # (B, T)
    chosen_attention_mask: Tensor  # (B, T)
    chosen_labels: Tensor  # (B, T)
    rejected_input_ids: Tensor  # (B, T')
    rejected_attention_mask: Tensor  # (B, T')
    rejected_labels: Tensor  # (B, T')
    margin: NotRequired[Tensor]  # (B,) float, when the data has a margin column (reward model)
    row_index: NotRequired[Tensor]  # (B,) long, when the rows are indexed (cached reference log-probs)
    # With --model.precompute_reference the batch also carries ref_chosen_logps and ref_rejected_logps, (B,) float,
    # the cached reference's summed log-probs (SelfPlayBatch's keys; a TypedDict cannot declare them twice).


class SelfPlayBatch(PreferenceBatch):
    """SPIN's pairs (``lit_align.datamodules.SPINDataModule``): chosen = the ground-truth response, rejected = the
    opponent's own response, with the opponent's log-probs of both computed when the iteration began (TRL's names
    for precomputed reference log-probs)."""

    ref_chosen_logps: Tensor  # (B,) float, summed over completion tokens
    ref_rejected_logps: Tensor  # (B,)


class BinaryBatch(TypedDict):
    """Single completions labelled desirable or not (``lit_align.datamodules.BinaryFeedbackDataModule``), with KTO's
    mismatched KL pairs: prompt i with completion i-1 of the same batch."""

    input_ids: Tensor  # (B, T)
    attention_mask: Tensor  # (B, T)
    labels: Tensor  # (B, T)
    is_desirable: Tensor  # (B,) bool
    kl_input_ids: Tensor  # (B, T')
    kl_attention_mask: Tensor  # (B, T')
    kl_labels: Tensor  # (B, T')
    row_index: NotRequired[Tensor]  # (B,) long, when the rows are indexed (cached reference log-probs)
    kl_row_index: NotRequired[Tensor]  # (B,) long: the row whose completion the KL pair uses (row_index rotated)
    ref_logps: NotRequired[Tensor]  # (B,) float, a cached reference's summed log-probs (precompute_reference)
    ref_kl_logps: NotRequired[Tensor]  # (B,) float, the same for the KL pairs


class SFTBatch(TypedDict):
    """Prompt + completion rows for supervised fine-tuning (``lit_align.datamodules.SFTDataModule``)."""

    input_ids: Tensor  # (B, T)
    attention_mask: Tensor  # (B, T)
    labels: Tensor  # (B, T); the whole non-padding sequence when completion_only_loss=False


class PromptBatch(TypedDict):
    """Prompts for online algorithms (``lit_align.datamodules.PromptDataModule``): LEFT-padded ids for generation, plus
    the raw ``prompt`` and every other column of the data as Python lists (one entry per prompt), which
    reach the reward functions as keyword lists (TRL's convention)."""

    prompt_input_ids: Tensor  # (B, P) left-padded
    prompt_attention_mask: Tensor  # (B, P)
    prompt: list[Any]  # text or chat message lists
    # ... and one list per further column of the data (e.g. ``answer``): a TypedDict cannot declare them.
