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
from lit_align.errors import DataError, row_label

ROLES = ("system", "user", "assistant", "tool")
COMPLETION_ROLES = ("assistant", "tool")  # a chat completion: the assistant's turns (and tool results between them)
TruncationMode = Literal["keep_end", "keep_start"]
ImplicitPrompt = Literal["turn_marker", "common_prefix"]
# Where a plain-text transcript hands the turn to the assistant: an implicit prompt (no prompt field) is split
# just after the LAST of these inside the text chosen and rejected share.
TURN_MARKERS = (
    "\n\nAssistant:",  # Anthropic HH-RLHF
    "<|im_start|>assistant\n",  # ChatML (SmolLM2, Qwen)
    "<|start_header_id|>assistant<|end_header_id|>\n\n",  # Llama 3
    "<start_of_turn>model\n",  # Gemma
    "<|assistant|>\n",  # Zephyr, Phi-3
    "[/INST]",  # Llama 2, Mistral
    "### Response:",  # Alpaca
)


def where(source: str, row: int, field: str | None = None) -> str:
    """``rows.jsonl [train], row 3 (1-based), field 'rejected'`` for the row at 0-based index ``row``."""
    loc = f"{source}, {row_label(row)}"
    return f"{loc}, field {field!r}" if field else loc


def is_conversational(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict)


def is_blank(value: Any) -> bool:
    """A completion with no visible text: an empty or whitespace-only string, or messages whose contents all are."""
    if isinstance(value, str):
        return not value.strip()
    return is_conversational(value) and all(not str(m.get("content", "")).strip() for m in value)


def visible_text(value: Any) -> str:
    """A text, or a message list's contents joined, with every run of whitespace one space and the ends stripped."""
    text = value if isinstance(value, str) else " ".join(str(m.get("content", "")) for m in value)
    return " ".join(text.split())


def repeats_prompt(prompt: Any, completion: Any) -> bool:
    """Whether a completion says the prompt again, whitespace aside: a text completion equal to the whole text
    prompt, or a chat completion whose contents equal the prompt's last user message (or the whole text prompt).
    An empty completion repeats nothing (it is counted as an empty completion). Decided on the text, before
    tokenization: a completion that merely starts with the prompt's words is not an echo."""
    said = visible_text(completion)
    if not said:
        return False
    if is_conversational(prompt):
        users = [m for m in prompt if m.get("role") == "user"]
        return bool(users) and said == visible_text(str(users[-1].get("content", "")))
    return said == visible_text(prompt)


def check_text_or_messages(value: Any, loc: str, allow_empty: bool = False) -> None:
    """Raise :class:`DataError` unless ``value`` is a string or a well-formed message list.

    A string with no visible text is an error unless ``allow_empty`` (completions: a model that said nothing is
    a legitimate answer; prompts: there is nothing to condition on, usually a broken column).
    """
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            what = "an empty string" if not value else f"a whitespace-only string {value!r:.20}"
            raise DataError(f"{loc}: expected a non-empty string or a list of messages, got {what}")
        return
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            if not isinstance(message, dict):
                raise DataError(f"{loc}: message {i + 1} should be a dict with 'role' and 'content', "
                                f"got {message!r:.80}")
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise DataError(f"{loc}: message {i + 1} has role {role!r}, expected one of {ROLES}")
            if "content" not in message:
                raise DataError(f"{loc}: message {i + 1} has no 'content' (its keys: {', '.join(map(str, message))})")
            if not isinstance(content, str):
                raise DataError(f"{loc}: message {i + 1} content should be a string, got {type(content).__name__}")
        return
    got = "None (null, or absent from this row)" if value is None else f"{type(value).__name__} {value!r:.80}"
    raise DataError(f"{loc}: expected a non-empty string or a list of messages, got {got}")


def completion_turns(prompt: Any, completion: Any, loc: str) -> tuple[Any, bool]:
    """A chat completion as the assistant's turns only; ``(completion, True)`` when it repeated the prompt's turns.

    A completion that starts with the whole prompt (full conversations stored as chosen/rejected), or with the
    prompt's last turns (its user turn again), has them removed: training on them would train the user's words.
    Anything else that is not the assistant's (a user or system message) is an error naming the message.
    Plain-text completions are returned as they are.
    """
    if not is_conversational(completion):
        return completion, False
    removed = False
    if is_conversational(prompt):
        leading = next((i for i, m in enumerate(completion) if m["role"] in COMPLETION_ROLES), len(completion))
        if len(completion) > len(prompt) and completion[: len(prompt)] == prompt:
            completion, removed = completion[len(prompt) :], True
        elif 0 < leading < len(completion) and completion[:leading] == prompt[-leading:]:
            completion, removed = completion[leading:], True
    if completion[0]["role"] != "assistant":
        raise DataError(
            f"{loc}: message 1 of the completion has role {completion[0]['role']!r}; a completion is the assistant's "
            "reply: move earlier turns into the prompt"
        )
    for i, message in enumerate(completion):
        if message["role"] not in COMPLETION_ROLES:
            raise DataError(
                f"{loc}: message {i + 1} of the completion has role {message['role']!r}; a completion holds only the "
                f"assistant's turns (and tool results between them): end the pair's conversation before it"
            )
    return completion, removed


def extract_implicit_prompt(chosen: Any, rejected: Any, mode: ImplicitPrompt = "turn_marker") -> tuple[Any, Any, Any]:
    """Split rows where chosen and rejected repeat the prompt (HH-RLHF style) into (prompt, chosen, rejected).

    Message lists: the prompt is the longest common run of messages. Strings, ``mode="turn_marker"``: the
    common prefix, cut just after the last :data:`TURN_MARKERS` marker inside it (the prompt is empty when
    there is none); ``mode="common_prefix"``: the whole common prefix, less the space that starts the diverging
    completion (TRL's ``extract_prompt``).
    """
    n = common_prefix_length(chosen, rejected)
    if is_conversational(chosen) and is_conversational(rejected):
        return chosen[:n], chosen[n:], rejected[n:]
    if mode == "turn_marker":
        shared = chosen[:n]
        ends = [shared.rfind(m) + len(m) for m in TURN_MARKERS if m in shared]
        n = max(ends, default=0)
    elif 0 < n < len(chosen) and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def preference_row(
    row: dict[str, Any], loc: str, implicit_prompt: ImplicitPrompt = "turn_marker"
) -> tuple[Any, Any, Any]:
    """The validated (prompt, chosen, rejected) of a preference row.

    Empty completions are valid. A row without a prompt field (HH-RLHF style, where chosen and rejected repeat
    the prompt) gets its prompt split off (:func:`extract_implicit_prompt`).
    """
    chosen, rejected = row["chosen"], row["rejected"]
    check_text_or_messages(chosen, f"{loc}, field 'chosen'", allow_empty=True)
    check_text_or_messages(rejected, f"{loc}, field 'rejected'", allow_empty=True)
    prompt = row.get("prompt")
    if prompt is not None:
        check_text_or_messages(prompt, f"{loc}, field 'prompt'")
        return prompt, chosen, rejected
    if is_conversational(chosen) != is_conversational(rejected):
        raise DataError(f"{loc}, field 'rejected': chosen and rejected must both be text or both be message lists")
    prompt, chosen, rejected = extract_implicit_prompt(chosen, rejected, implicit_prompt)
    if not prompt:
        if is_conversational(chosen) or implicit_prompt == "common_prefix":
            found = "chosen and rejected share no leading text or messages"
        else:
            found = "the text chosen and rejected share has no turn marker (" + ", ".join(map(repr, TURN_MARKERS)) + ")"
        raise DataError(
            f"{loc}: no 'prompt' field, and {found}. Add a prompt column (or map one: --data.columns "
            '\'{"prompt": "<column>"}\'), or split at the longest shared prefix with --data.implicit_prompt '
            "common_prefix (TRL's extract_prompt)"
        )
    return prompt, chosen, rejected


def set_prompt_bos(ids: list[int], bos_token_id: int | None, prompt_bos: bool | None) -> list[int]:
    """``ids`` of a plain-text prompt (or prompt + completion) with the BOS token as asked: ``None`` leaves what the
    tokenizer did, ``True`` prepends it unless already first (TRL's ``add_bos_token_if_needed``), ``False`` removes
    a leading one."""
    if prompt_bos is None or bos_token_id is None:
        return ids
    starts = ids[:1] == [bos_token_id]
    if prompt_bos and not starts:
        return [bos_token_id, *ids]
    if not prompt_bos and starts:
        return ids[1:]
    return ids


def _ids(
    tokenizer: PreTrainedTokenizerBase, value: Any, generation_prompt: bool = False, prompt_bos: bool | None = None
) -> list[int]:
    if is_conversational(value):
        out = tokenizer.apply_chat_template(value, tokenize=True, add_generation_prompt=generation_prompt)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    return set_prompt_bos(tokenizer(value, add_special_tokens=True)["input_ids"], tokenizer.bos_token_id, prompt_bos)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def tokenize_prompt_completions(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Any,
    completions: Sequence[Any],
    loc: str,
    prompt_bos: bool | None = None,
) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prompt and of each completion given that prompt (TRL's convention).

    An empty plain-text completion is the EOS token alone (TRL's DPO/KTO: ``"" + eos_token``). ``prompt_bos``
    applies to plain-text prompts (:func:`set_prompt_bos`); chat rows are the chat template's business.
    """
    conversational = is_conversational(prompt)
    if conversational and not tokenizer.chat_template:
        raise DataError(
            f"{loc}: the row is a chat message list but the tokenizer has no chat template; "
            "use a chat model's tokenizer or set tokenizer.chat_template"
        )
    for c in completions:
        if is_conversational(c) != conversational:
            raise DataError(f"{loc}: prompt and completion must both be text or both be message lists")
    prompt_ids = _ids(tokenizer, prompt, generation_prompt=conversational, prompt_bos=prompt_bos)
    if conversational:
        full = [_ids(tokenizer, prompt + c) for c in completions]
    else:
        eos = tokenizer.eos_token or ""
        full = [
            _ids(tokenizer, prompt + (c if c.endswith(eos) else c + eos), prompt_bos=prompt_bos) for c in completions
        ]
    prompt_len = min(common_prefix_length(prompt_ids, f) for f in full)
    kept = [f[prompt_len:] for f in full]
    if not all(kept):
        raise DataError(
            f"{loc}: a completion tokenizes to nothing beyond the prompt (an empty completion needs the tokenizer's "
            "EOS token, and this tokenizer has none): set tokenizer.eos_token"
        )
    return prompt_ids[:prompt_len], kept


def assistant_token_mask(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, completion: Any, completion_ids: Sequence[int], loc: str
) -> list[int]:
    """1 on each completion token the assistant wrote, 0 elsewhere: in a chat completion with ``tool`` messages
    between the assistant's turns, each assistant turn is trained through its end of turn (the EOS) and the rest
    (the template's text after the EOS, the tool message, the next assistant header) is not, as a multi-turn rollout
    masks it (``lit_align.tools``). All ones for text completions and chats without tool messages. The turns are
    found by rendering the conversation's prefixes; a template under which they are not prefixes of the whole is a
    ``DataError`` naming the row."""
    if not is_conversational(completion) or all(m.get("role") != "tool" for m in completion):
        return [1] * len(completion_ids)
    full = _ids(tokenizer, prompt + completion)
    offset = len(full) - len(completion_ids)
    if offset < 0 or full[offset:] != list(completion_ids):
        raise DataError(f"{loc}: the conversation's tokens do not end with its completion's; cannot tell its turns")
    mask, eos = [0] * len(completion_ids), tokenizer.eos_token_id
    for k, message in enumerate(completion):
        if message.get("role") != "assistant":
            continue
        before = _ids(tokenizer, prompt + completion[:k], generation_prompt=True)
        through = _ids(tokenizer, prompt + completion[: k + 1])
        if full[: len(before)] != before or full[: len(through)] != through:
            raise DataError(f"{loc}: message {k + 1} of the completion: the chat template writes earlier turns "
                            "differently once later ones follow; its assistant turns cannot be told apart")  # fmt: skip
        start, stop = max(len(before) - offset, 0), len(through) - offset
        while stop > start and full[offset + stop - 1] != eos:  # the template's text after the EOS is not the model's
            stop -= 1
        if stop == start:  # no EOS in the turn (a template that ends turns otherwise): the turn as rendered
            stop = len(through) - offset
        mask[start:stop] = [1] * (stop - start)
    return mask


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
