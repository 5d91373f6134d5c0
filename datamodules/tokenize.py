"""Row validation, prompt/completion tokenization, truncation and padding shared by the DataModules.

Conventions (TRL's, so results compare): conversational rows (lists of ``{"role", "content"}``
messages) go through the tokenizer's chat template, the prompt with the generation prompt; the
completion starts where the token ids of the prompt and of prompt+completion diverge; a plain-text
completion gets the EOS token appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from lit_align.batches import IGNORE_INDEX

ROLES = ("system", "user", "assistant", "tool")
TruncationMode = Literal["keep_end", "keep_start"]


class DataError(ValueError):
    """A row of the user's data is not what the DataModule expects; the message says where and why."""


def where(source: str, row: int, field: str | None = None) -> str:
    loc = f"{source}, row {row}"
    return f"{loc}, field {field!r}" if field else loc


def is_conversational(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict)


def check_text_or_messages(value: Any, loc: str, allow_empty: bool = False) -> None:
    """Raise :class:`DataError` unless ``value`` is a non-empty string or a well-formed message list."""
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise DataError(f"{loc}: expected a non-empty string or a list of messages, got an empty string")
        return
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            if not isinstance(message, dict):
                raise DataError(f"{loc}: message {i} should be a dict with 'role' and 'content', got {message!r:.80}")
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise DataError(f"{loc}: message {i} has role {role!r}, expected one of {ROLES}")
            if "content" not in message:
                raise DataError(f"{loc}: message {i} has no 'content' (its keys: {', '.join(map(str, message))})")
            if not isinstance(content, str):
                raise DataError(f"{loc}: message {i} content should be a string, got {type(content).__name__}")
        return
    got = "None (null, or absent from this row)" if value is None else f"{type(value).__name__} {value!r:.80}"
    raise DataError(f"{loc}: expected a non-empty string or a list of messages, got {got}")


def extract_implicit_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Split HH-RLHF style rows, where chosen and rejected repeat the prompt, into (prompt, chosen, rejected).

    Message lists: the prompt is the longest common run of messages. Strings: the common prefix,
    cut just after the last ``"Assistant:"`` inside it when there is one (HH's turn marker), else
    before the space that starts the diverging completion (as TRL's ``extract_prompt`` does).
    """
    if is_conversational(chosen) and is_conversational(rejected):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    marker = chosen[:n].rfind("Assistant:")
    if marker >= 0:
        n = marker + len("Assistant:")
    elif 0 < n < len(chosen) and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def preference_row(row: dict[str, Any], loc: str) -> tuple[Any, Any, Any]:
    """The validated (prompt, chosen, rejected) of a preference row; a row without a prompt field (HH-RLHF
    style, where chosen and rejected repeat the prompt) gets its prompt split off (:func:`extract_implicit_prompt`)."""
    chosen, rejected = row["chosen"], row["rejected"]
    check_text_or_messages(chosen, f"{loc}, field 'chosen'")
    check_text_or_messages(rejected, f"{loc}, field 'rejected'")
    prompt = row.get("prompt")
    if prompt is None:
        prompt, chosen, rejected = extract_implicit_prompt(chosen, rejected)
        if not prompt or not chosen or not rejected:
            raise DataError(
                f"{loc}: no 'prompt' field, and chosen/rejected share no prompt prefix to split off "
                "(expected HH-RLHF style rows, or add a prompt column)"
            )
    else:
        check_text_or_messages(prompt, f"{loc}, field 'prompt'")
    return prompt, chosen, rejected


def _ids(tokenizer: PreTrainedTokenizerBase, value: Any, generation_prompt: bool = False) -> list[int]:
    if is_conversational(value):
        out = tokenizer.apply_chat_template(value, tokenize=True, add_generation_prompt=generation_prompt)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    return tokenizer(value, add_special_tokens=True)["input_ids"]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def tokenize_prompt_completions(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, completions: Sequence[Any], loc: str
) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prompt and of each completion given that prompt (TRL's convention)."""
    conversational = is_conversational(prompt)
    if conversational and not tokenizer.chat_template:
        raise DataError(
            f"{loc}: the row is a chat message list but the tokenizer has no chat template; "
            "use a chat model's tokenizer or set tokenizer.chat_template"
        )
    for c in completions:
        if is_conversational(c) != conversational:
            raise DataError(f"{loc}: prompt and completion must both be text or both be message lists")
    prompt_ids = _ids(tokenizer, prompt, generation_prompt=conversational)
    if conversational:
        full = [_ids(tokenizer, prompt + c) for c in completions]
    else:
        eos = tokenizer.eos_token or ""
        full = [_ids(tokenizer, prompt + (c if c.endswith(eos) else c + eos)) for c in completions]
    prompt_len = min(common_prefix_length(prompt_ids, f) for f in full)
    return prompt_ids[:prompt_len], [f[prompt_len:] for f in full]


def truncate_prompt(prompt_ids: list[int], max_prompt_length: int | None, mode: TruncationMode) -> list[int]:
    if max_prompt_length is None or len(prompt_ids) <= max_prompt_length:
        return prompt_ids
    return prompt_ids[-max_prompt_length:] if mode == "keep_end" else prompt_ids[:max_prompt_length]


def fit_to_length(
    prompt_ids: list[int],
    completions: Sequence[list[int]],
    max_length: int,
    max_prompt_length: int | None,
    mode: TruncationMode,
    drop_overlong: bool,
    loc: str,
) -> tuple[list[int], list[list[int]], str]:
    """Cut the prompt to ``max_prompt_length``, then each completion so prompt + completion fits ``max_length``.

    Returns the kept ids and a status for the DataModule's counts: ``ok``, ``prompt_truncated``,
    ``completion_truncated``, ``prompt_and_completion_truncated`` or ``dropped`` (no room left for a
    completion; an error naming the row unless ``drop_overlong``).
    """
    kept_prompt = truncate_prompt(prompt_ids, max_prompt_length, mode)
    status = "prompt_truncated" if len(kept_prompt) < len(prompt_ids) else "ok"
    room = max_length - len(kept_prompt)
    if room < 1:
        if not drop_overlong:
            raise DataError(
                f"{loc}: the prompt is {len(prompt_ids)} tokens, leaving no room for a completion within "
                f"max_length={max_length}; set max_prompt_length, raise max_length, or drop_overlong=True"
            )
        return kept_prompt, [[] for _ in completions], "dropped"
    if any(len(c) > room for c in completions):
        status = "completion_truncated" if status == "ok" else "prompt_and_completion_truncated"
    return kept_prompt, [list(c[:room]) for c in completions], status


def pad(sequences: Sequence[Sequence[int]], value: int, multiple_of: int | None = None) -> torch.Tensor:
    """Right-pad lists of ids into a (B, T) long tensor."""
    length = max((len(s) for s in sequences), default=0)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def left_pad(sequences: Sequence[Sequence[int]], value: int, multiple_of: int | None = None) -> torch.Tensor:
    """Left-pad lists of ids into a (B, T) long tensor (prompts for generation)."""
    length = max((len(s) for s in sequences), default=0)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            out[i, length - len(s) :] = torch.as_tensor(s, dtype=torch.long)
    return out


def sequence_tensors(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    multiple_of: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``labels`` (prompt and padding -100) for prompt+completion rows."""
    ids = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    labels = [[IGNORE_INDEX] * len(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    input_ids = pad(ids, pad_id, multiple_of)
    attention_mask = pad([[1] * len(s) for s in ids], 0, multiple_of)
    return input_ids, attention_mask, pad(labels, IGNORE_INDEX, multiple_of)
