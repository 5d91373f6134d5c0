"""A trained reward model as a reward function with TRL's signature.

:class:`RewardModelScorer` loads any one-output ``AutoModelForSequenceClassification`` directory —
the ``hf_model`` folder that ``RewardModel`` + ``HFExport`` write (``runs/reward_model/version_N/hf_model``)
or a hub/local reward model — and scores prompt + completion at the last real token, reading the
head there as ``RewardModel`` trains it (:func:`last_token_rewards`, which ``RewardModel`` uses too).

Formatting follows the training data's convention (``datamodules``): a chat prompt plus the
completion as an assistant message goes through the chat template; plain text is prompt +
completion + EOS, tokenized with the tokenizer's special tokens. Left out: scoring with a
tokenizer different from the policy's when the completions are token ids (texts are re-tokenized
here, so any tokenizer works).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from lit_align.errors import OptionError
from lit_align.rewards.verifiers import Completion, completion_text


def exported_folder(path: str | Path) -> str | Path:
    """A run directory (``runs/reward_model/version_0``) stands for its ``hf_model`` export; any other path or hub id
    is itself."""
    export = Path(path) / "hf_model"
    return export if (export / "config.json").is_file() else path


def score_head(model: nn.Module) -> nn.Module:
    """The per-position scalar head (``score``) of a sequence-classification model, PEFT-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    if not isinstance(head, nn.Module):
        raise OptionError(
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


def position_scores(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    groups: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """The scalar head's output (B, T) at every position, from one forward of ``model`` (the head's output is
    captured by a hook, so PEFT and FSDP2 wrappers see a normal call); with grad when grad is enabled.

    With ``groups`` (rows that start alike: a prompt's completions) and a model marked for shared prefixes that can
    run packed (:mod:`lit_align.models.shared_prefix`, PPO's critic), each group's common prefix runs once; the scores
    are read back per row (0 at padding, as the values there are never used)."""
    from lit_align.models import packing, shared_prefix

    shared = groups is not None and shared_prefix.is_enabled(model) and packing.is_enabled(model)
    if shared and packing.unsupported_reason(model) is None:
        row = shared_prefix.share(input_ids, attention_mask, groups)
        with _captured_output(score_head(model)) as captured, shared_prefix.prefix_attention(model):
            model(**row.forward_kwargs())
        scores = captured["output"][0, :, 0]  # (N,)
        return torch.where(row.source >= 0, scores[row.source.clamp(min=0)], scores.new_zeros(()))
    with _captured_output(score_head(model)) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return captured["output"][..., 0]


def last_token_rewards(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    groups: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Scalar rewards (B,) fp32 read at each row's last attention-mask position (right or left padding); ``groups``:
    see :func:`position_scores`."""
    scores = position_scores(model, input_ids, attention_mask, groups)  # (B, T)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (positions * attention_mask.bool()).argmax(-1)  # (B,)
    return scores.gather(1, last.unsqueeze(1)).squeeze(1).float()


class RewardModelScorer:
    """``scorer(prompts, completions, **columns) -> list[float]``, one scalar reward per completion.

    Args:
        path: directory (or hub id) of a sequence-classification model with one label, with its
            tokenizer saved beside it unless ``tokenizer`` is given, or the run directory that exported one
            (``runs/reward_model/version_0``: its ``hf_model``).
        tokenizer: tokenizer to use instead of the one in ``path``.
        batch_size: completions scored per forward pass.
        max_length: longest prompt + completion in tokens; a longer one is an error (``None``: no limit).
        device: where to load the model (default: CUDA when available, else CPU); it scores where its model is,
            so a module that moves it (to its own device) moves the scoring too.
    """

    __name__ = "reward_model"  # the metric name: rewards/reward_model/mean

    def __init__(
        self,
        path: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        path = exported_folder(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path)
        if self.model.config.num_labels != 1:
            labels = self.model.config.num_labels
            raise OptionError(f"{path}: a reward model has one output label, this one has {labels}")
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self.max_length = max_length
        self.model.requires_grad_(False).eval().to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def texts(self, prompts: list[Any], completions: list[Completion]) -> list[str]:
        out = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if isinstance(prompt, list):
                reply = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
                out.append(self.tokenizer.apply_chat_template(prompt + list(reply), tokenize=False))
            else:
                eos = self.tokenizer.eos_token or ""
                text = prompt + completion_text(completion)
                out.append(text if text.endswith(eos) else text + eos)
        return out

    @torch.no_grad()
    def __call__(self, prompts: list[Any], completions: list[Completion], **kwargs: Any) -> list[float]:
        texts = self.texts(prompts, completions)
        chat = bool(prompts) and isinstance(prompts[0], list)
        rewards: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                texts[start : start + self.batch_size], return_tensors="pt", padding=True, padding_side="right",
                add_special_tokens=not chat,  # the chat template already wrote the special tokens
            )  # fmt: skip
            if self.max_length is not None and encoded["input_ids"].shape[1] > self.max_length:
                raise ValueError(
                    f"reward model input of {encoded['input_ids'].shape[1]} tokens exceeds max_length={self.max_length}"
                )
            device = next(self.model.parameters()).device
            ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
            rewards.extend(last_token_rewards(self.model, ids, mask).tolist())
        return rewards
