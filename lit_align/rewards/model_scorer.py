"""A trained reward model as a reward function with TRL's signature.

:class:`RewardModelScorer` loads any one-output ``AutoModelForSequenceClassification`` directory —
the ``hf_model`` folder that ``RewardModel`` + ``HFExport`` write (``runs/reward_model/version_N/hf_model``)
or a hub/local reward model — and scores prompt + completion at the last real token, reading the
head there as ``RewardModel`` trained it (:func:`lit_align.algorithms.reward_model.last_token_rewards`).

Formatting follows the training data's convention (``datamodules``): a chat prompt plus the
completion as an assistant message goes through the chat template; plain text is prompt +
completion + EOS, tokenized with the tokenizer's special tokens. Left out: scoring with a
tokenizer different from the policy's when the completions are token ids (texts are re-tokenized
here, so any tokenizer works).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from lit_align.rewards.verifiers import Completion, completion_text


class RewardModelScorer:
    """``scorer(prompts, completions, **columns) -> list[float]``, one scalar reward per completion.

    Args:
        path: directory (or hub id) of a sequence-classification model with one label, with its
            tokenizer saved beside it unless ``tokenizer`` is given.
        tokenizer: tokenizer to use instead of the one in ``path``.
        batch_size: completions scored per forward pass.
        max_length: longest prompt + completion in tokens; a longer one is an error (``None``: no limit).
        device: where to run the model (default: CUDA when available, else CPU).
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
        self.model = AutoModelForSequenceClassification.from_pretrained(path)
        if self.model.config.num_labels != 1:
            labels = self.model.config.num_labels
            raise ValueError(f"{path}: a reward model has one output label, this one has {labels}")
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.requires_grad_(False).eval().to(self.device)

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
        from lit_align.algorithms.reward_model import last_token_rewards

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
            ids, mask = encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)
            rewards.extend(last_token_rewards(self.model, ids, mask).tolist())
        return rewards
