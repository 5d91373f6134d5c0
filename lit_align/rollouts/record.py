"""The rollout record: sampled completions with their masks and log-probs (:class:`Rollout`), and what an online
step makes of one (:class:`Experience`).

Shapes: N = prompts, G = ``num_generations``, B = N x G rows in prompt-major order (the G
completions of a prompt are contiguous, as TRL orders them), P = prompt length (left-padded),
L = completion length (right-padded, at most ``max_new_tokens``).

A backend (:mod:`lit_align.rollouts.hf`, :mod:`lit_align.rollouts.vllm`) returns a :class:`Rollout` through
:func:`completion_rollout`; :func:`rollout_from_batch` takes a rollout made outside (another sampler, a vLLM server, a
replay). Multi-turn rollouts with tools and environments are made by :class:`lit_align.tools.multi_turn.ToolRunner`
and fill the ``tool_mask`` and conversation fields. :func:`mark_updated` counts the policy's optimizer steps on the
model, so a backend holding a copy of the weights knows when it is stale.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lit_align.batches import IGNORE_INDEX, PromptBatch
from lit_align.errors import DataError
from lit_align.models.logprobs import token_logps


@dataclass
class Rollout:
    """Prompts (repeated G times) and their sampled completions, all (B, ...) prompt-major."""

    prompt_input_ids: Tensor  # (B, P) left-padded
    prompt_attention_mask: Tensor  # (B, P)
    completion_ids: Tensor  # (B, L) right-padded with the pad id after the first EOS
    completion_mask: Tensor  # (B, L) long, 1 up to and including the first EOS
    texts: list[str]  # decoded completions, special tokens skipped
    lengths: Tensor  # (B,) completion tokens, EOS included
    is_truncated: Tensor  # (B,) bool: no EOS within max_new_tokens
    num_generations: int
    logps: Tensor | None = None  # (B, L) per-token log-probs under the sampling policy, 0 on padding (when asked)
    sampler_logps: Tensor | None = None  # (B, L) the rollout engine's own log-probs (vLLM), NaN where it gave none
    # Multi-turn rollouts (lit_align.tools): the completion is the whole conversation after the prompt.
    tool_mask: Tensor | None = None  # (B, L) 1 on the policy's own tokens, 0 on tool/environment tokens
    messages: list[list[dict[str, Any]]] | None = None  # each row's conversation (assistant and tool messages)
    tool_calls: Tensor | None = None  # (B,) calls run per row
    tool_failures: Tensor | None = None  # (B,) of which failed
    turns: Tensor | None = None  # (B,) assistant turns per row
    environments: list[Any] | None = None  # each row's environment instance, after its conversation

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def __iter__(self) -> Iterator[Tensor]:
        """``samples, log_probs = rollout``: the sequences (B, P + L), prompt (left-padded) then completion
        (right-padded), and the completion's per-token log-probs (B, L) under the sampling policy."""
        if self.logps is None:
            raise ValueError("this rollout carries no log-probs: generate_samples(..., with_logps=True) records them")
        return iter((torch.cat([self.prompt_input_ids, self.completion_ids], dim=1), self.logps))

    @property
    def policy_mask(self) -> Tensor:
        """(B, L) the policy's own completion tokens: the completion mask, less tool tokens in a multi-turn rollout."""
        return self.completion_mask if self.tool_mask is None else self.completion_mask * self.tool_mask

    def completion_logps(
        self, model: nn.Module, rows: Tensor | slice = slice(None), temperature: float = 1.0, with_entropy: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``rows``' completion tokens' log-probs under ``model`` at ``temperature`` (with grad when grad is on) and
        their predictive entropies (detached; ``with_entropy``), each (b, L), in one chunked pass. The rows of one
        prompt form a group whose prompt is computed once when ``model`` runs shared prefixes
        (:mod:`lit_align.models.shared_prefix`)."""
        out = token_logps(model, *self.model_inputs(rows), with_entropy=with_entropy, temperature=temperature,
                          groups=self.prompt_groups(rows))  # fmt: skip
        P = self.prompt_input_ids.shape[1]
        return out.logps[:, P:], None if out.entropy is None else out.entropy[:, P:]

    def prompt_groups(self, rows: Tensor | slice = slice(None)) -> list[list[int]]:
        """Positions within ``rows`` of the completions of each prompt (rows ``i·G … i·G + G − 1``)."""
        index = torch.arange(len(self))[rows.cpu() if isinstance(rows, Tensor) else rows]
        groups: dict[int, list[int]] = {}
        for position, row in enumerate(index.tolist()):
            groups.setdefault(row // self.num_generations, []).append(position)
        return list(groups.values())

    def model_inputs(self, rows: Tensor | slice = slice(None)) -> tuple[Tensor, Tensor, Tensor]:
        """``input_ids``, ``attention_mask``, ``labels`` (-100 on prompt and padding) of prompt + completion rows."""
        prompt_ids, completion_ids = self.prompt_input_ids[rows], self.completion_ids[rows]
        attention_mask = torch.cat([self.prompt_attention_mask[rows], self.completion_mask[rows]], dim=1)
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        labels[:, : prompt_ids.shape[1]] = IGNORE_INDEX
        return input_ids, attention_mask, labels


def mark_updated(model: nn.Module) -> None:
    """Count an optimizer step of ``model`` (a generation backend holding a copy of its weights re-syncs on change)."""
    model._lit_align_updates = updates(model) + 1


def updates(model: nn.Module) -> int:
    return getattr(model, "_lit_align_updates", 0)


def completion_mask_until_eos(completion_ids: Tensor, eos_token_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mask (B, L) that is 1 up to and including each row's first EOS, and whether a row has no EOS.

    A row without an EOS is truncated: every one of its L tokens counts.
    """
    is_eos = torch.isin(completion_ids, torch.as_tensor(list(eos_token_ids), device=completion_ids.device))
    has_eos = is_eos.any(dim=1)
    length = completion_ids.shape[1]
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, length, dtype=torch.long))
    positions = torch.arange(length, device=completion_ids.device)
    mask = (positions.unsqueeze(0) <= first_eos.unsqueeze(1)).long()
    return mask, ~has_eos


def completion_rollout(
    tokenizer: PreTrainedTokenizerBase,
    completion_ids: Tensor,
    eos_ids: Sequence[int],
    input_ids: Tensor,
    attention_mask: Tensor,
    num_generations: int,
) -> Rollout:
    """A backend's :class:`Rollout` from its (B·G, L) completion ids (what follows a row's first EOS is padding) and
    the prompt rows they continue, already repeated G times (prompt-major)."""
    mask, is_truncated = completion_mask_until_eos(completion_ids, eos_ids)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    lengths = mask.sum(dim=1)
    rows = [ids[:n] for ids, n in zip(completion_ids.tolist(), lengths.tolist(), strict=True)]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return Rollout(input_ids, attention_mask, completion_ids, mask, texts, lengths, is_truncated, num_generations)


def rollout_of_completions(
    batch: dict[str, Any], column: str, tokenizer: PreTrainedTokenizerBase, eos_id: int, max_new_tokens: int
) -> Rollout:
    """The data's own completions of ``batch``'s prompts as a rollout of one completion per prompt (GKD's off-policy
    share): each row's ``column`` (text, or an assistant message list whose contents are joined) tokenized without
    special tokens and followed by ``eos_id``, cut at ``max_new_tokens`` (a cut one is truncated, as a sampled one
    would be). A missing or non-text value is an error that names the row."""
    if column not in batch:
        raise DataError(f"the prompt data have no '{column}' column: the data's completions (lmbda < 1) are read "
                        f"from it; its columns are {', '.join(sorted(k for k in batch if isinstance(batch[k], list)))}")
    rows, texts = [], []
    for i, value in enumerate(batch[column]):
        if isinstance(value, list) and all(isinstance(m, dict) for m in value):
            value = "".join(str(m.get("content", "")) for m in value if m.get("role", "assistant") == "assistant")
        if not isinstance(value, str):
            where = batch.get("row_index")
            row = f"row {int(where[i])}" if where is not None else f"batch row {i}"
            raise DataError(f"{row}, field '{column}': expected the completion's text or assistant messages, got "
                            f"{type(value).__name__}")  # fmt: skip
        ids = tokenizer(value, add_special_tokens=False)["input_ids"] + [eos_id]
        rows.append(ids[:max_new_tokens])
        texts.append(value)
    device = batch["prompt_input_ids"].device
    length = max(len(r) for r in rows)
    completion_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long, device=device)
    completion_mask = torch.zeros_like(completion_ids)
    for i, ids in enumerate(rows):
        completion_ids[i, : len(ids)] = torch.tensor(ids, device=device)
        completion_mask[i, : len(ids)] = 1
    lengths = completion_mask.sum(1)
    is_truncated = torch.tensor([r[-1] != eos_id for r in rows], device=device)
    return Rollout(batch["prompt_input_ids"], batch["prompt_attention_mask"], completion_ids, completion_mask, texts,
                   lengths, is_truncated, 1)  # fmt: skip


def merge_rollouts(parts: Sequence[tuple[Tensor, Rollout]], pad_token_id: int) -> Rollout:
    """Single-turn rollouts of one completion per prompt, each of some rows ``(rows, rollout)`` of one batch, as one
    rollout in row order; completions right-padded to the longest."""
    if len(parts) == 1:
        return parts[0][1]
    n = sum(len(rows) for rows, _ in parts)
    length = max(r.completion_ids.shape[1] for _, r in parts)
    first = parts[0][1]
    device = first.completion_ids.device
    prompt_ids = first.prompt_input_ids.new_zeros((n, first.prompt_input_ids.shape[1]))
    prompt_mask, completion_ids = torch.zeros_like(prompt_ids), torch.full((n, length), pad_token_id, device=device)
    completion_mask, lengths = torch.zeros_like(completion_ids), torch.zeros(n, dtype=torch.long, device=device)
    is_truncated, texts = torch.zeros(n, dtype=torch.bool, device=device), [""] * n
    for rows, r in parts:
        width = r.completion_ids.shape[1]
        prompt_ids[rows], prompt_mask[rows] = r.prompt_input_ids, r.prompt_attention_mask
        completion_ids[rows, :width], completion_mask[rows, :width] = r.completion_ids, r.completion_mask
        lengths[rows], is_truncated[rows] = r.lengths, r.is_truncated
        for row, text in zip(rows.tolist(), r.texts, strict=True):
            texts[row] = text
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts, lengths, is_truncated, 1)


def rollout_from_batch(
    batch: dict[str, Any], num_generations: int, tokenizer: PreTrainedTokenizerBase, eos_ids: Sequence[int]
) -> tuple[Rollout, Tensor]:
    """A rollout made outside a module (the seed interface's ``update(batch)``) and its (B, 1) rewards. ``batch``:

        ``input_ids``      (B, P + L) sequences: prompt (left-padded) then completion (right-padded),
                           B = prompts x ``num_generations``, prompt-major; what ``generate_samples`` returns
        ``rewards``        (B,) the task reward of each completion (NaN: unscorable)
        ``old_log_probs``  (B, L) the completion tokens' log-probs under the sampling policy, as the trainer
                           computes them (used as they are), or
        ``sampling_log_probs``  (B, L) the rollout ENGINE's log-probs (vLLM's): the module computes the sampling
                           policy's own with its weights and corrects for the difference
                           (``sampling.rollout_correction``); NaN where the engine gave none
        ``attention_mask`` optional (B, P + L); by default the prompt starts at its first non-pad token and the
                           completion ends at its first EOS (``eos_ids``); give it for multi-turn completions
        ``tool_mask``      optional (B, L): 1 on the policy's own completion tokens, 0 on tool or environment
                           tokens (TRL's ``env_mask``), which stay in the context but are not trained

    The batch gains ``prompt_input_ids`` / ``prompt_attention_mask`` (one row per prompt) unless it has them.
    """
    input_ids = batch["input_ids"]
    given = [k for k in ("old_log_probs", "sampling_log_probs") if k in batch]
    if len(given) != 1:
        raise ValueError("update() with a rollout batch needs old_log_probs (the trainer's log-probs of the "
                         "completions) or sampling_log_probs (the rollout engine's), one of them; got "
                         f"{', '.join(given) or 'neither'}")  # fmt: skip
    logps = batch[given[0]].float()
    L = logps.shape[1]
    P = input_ids.shape[1] - L
    rewards = torch.as_tensor(batch["rewards"], dtype=torch.float, device=input_ids.device)
    if P < 1 or rewards.shape != (input_ids.shape[0],) or input_ids.shape[0] % num_generations:
        raise ValueError(
            f"update() with a rollout batch expects input_ids (B, P + L), {given[0]} (B, L) and rewards (B,) "
            f"with B a multiple of num_generations={num_generations}; got input_ids {tuple(input_ids.shape)}, "
            f"{given[0]} {tuple(logps.shape)}, rewards {tuple(rewards.shape)}"
        )
    prompt_ids, completion_ids = input_ids[:, :P], input_ids[:, P:]
    if "attention_mask" in batch:
        prompt_mask, completion_mask = batch["attention_mask"][:, :P], batch["attention_mask"][:, P:]
        is_truncated = completion_mask[:, -1].bool()
    else:
        prompt_mask = (prompt_ids != tokenizer.pad_token_id).long().cummax(dim=1).values  # left padding
        completion_mask, is_truncated = completion_mask_until_eos(completion_ids, eos_ids)
    completion_mask = completion_mask.long()
    lengths = completion_mask.sum(1)
    rows = [ids[:n] for ids, n in zip(completion_ids.tolist(), lengths.tolist(), strict=True)]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    engine = given[0] == "sampling_log_probs"
    rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts, lengths, is_truncated,
                      num_generations, None if engine else logps * completion_mask,
                      logps if engine else None)  # fmt: skip
    if "tool_mask" in batch:
        tool_mask = torch.as_tensor(batch["tool_mask"], device=input_ids.device).long()
        if tool_mask.shape != completion_mask.shape:
            raise ValueError(f"update() with a rollout batch: tool_mask {tuple(tool_mask.shape)} must be (B, L) = "
                             f"{tuple(completion_mask.shape)}, like {given[0]}")  # fmt: skip
        rollout.tool_mask = tool_mask
    batch.setdefault("prompt_input_ids", prompt_ids[::num_generations])
    batch.setdefault("prompt_attention_mask", prompt_mask[::num_generations])
    return rollout, rewards.unsqueeze(1)


@dataclass
class Experience:
    """One rollout and everything its updates need; rows prompt-major (B = N x G)."""

    batch: PromptBatch  # the prompts and their columns
    rollout: Rollout
    rewards_per_func: Tensor  # (B, F), NaN where a function returned None
    unscorable: Tensor  # (B,) bool: every function returned None
    loss_mask: Tensor  # (B, L) trained completion tokens
    old_logps: Tensor | None  # (B, L) under the sampling policy, when needed
    ref_logps: Tensor | None  # (B, L) under the reference, when beta > 0
    advantages: Tensor | None = None  # (B,) or (B, L), set after compute_advantages
    rollout_weights: Tensor | None = None  # (B, L) or (B, 1): π_old / π_sampler corrected, when an engine sampled
    extra: dict[str, Any] = field(default_factory=dict)  # per-row values an algorithm adds (e.g. values)
    metrics: dict[str, Any] = field(default_factory=dict)  # metric values the hooks add (logged as train/<name>)
