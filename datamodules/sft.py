"""Supervised fine-tuning rows (prompt + completion) -> the sft batch schema (``lit_align.batches``).

Three row formats, each turned into a (prompt, completion) pair and tokenized by TRL's convention
(``tokenize_prompt_completions``):

    prompt_completion  ``{"prompt", "completion"}``, both text or both chat message lists.
    messages           ``{"messages": [...]}``, a chat whose last turn is the assistant's: that
                       turn is the completion, every earlier turn the prompt.
    alpaca             ``{"instruction", "input", "output"}`` (``input`` optional or empty). With a
                       chat template the instruction (+ blank line + input) becomes the user turn and
                       the output the assistant turn; without one, Stanford Alpaca's text prompt
                       ("Below is an instruction ... ### Response:") is used.

A chat completion may hold ``tool`` messages between the assistant's turns (tool-use demonstrations, e.g. a cold
start before RL with ``lit_align.tools``): every assistant turn is trained through its EOS, and the tool messages and
the template's text between the turns are not (``assistant_token_mask``), as a multi-turn rollout masks them.

Deliberately left out: packing, plain-text language modelling rows (``{"text"}``) and multi-turn
loss on every assistant turn of a ``messages`` chat (only its last turn is trained on; put the turns to train in a
chat ``completion``).
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from lit_align.batches import SFTBatch
from lit_align.datamodules.base import SAMPLES, PromptCompletionDataModule
from lit_align.datamodules.tokenize import (
    IGNORE_INDEX,
    DataError,
    assistant_token_mask,
    check_text_or_messages,
    completion_turns,
    is_blank,
    is_conversational,
    pad,
    sequence_tensors,
    tokenize_prompt_completions,
    truncate_prompt,
)

DEMO_SFT = str(SAMPLES / "sft_demo.jsonl")
SFTFormat = Literal["auto", "prompt_completion", "messages", "alpaca"]
FORMAT_FIELDS = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
}
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)


def detect_format(row: dict[str, Any]) -> str | None:
    """The first format whose required fields the row has (non-null), else ``None``."""
    for name, fields in FORMAT_FIELDS.items():
        if all(row.get(f) is not None for f in fields):
            return name
    return None


def messages_to_prompt_completion(messages: Any, loc: str) -> tuple[list[dict], list[dict]]:
    check_text_or_messages(messages, loc)
    if not isinstance(messages, list):
        raise DataError(f"{loc}: expected a list of chat messages, got text")
    if messages[-1]["role"] != "assistant":
        raise DataError(
            f"{loc}: the last message should be the assistant's (the completion), got {messages[-1]['role']!r}"
        )
    if len(messages) < 2:
        raise DataError(f"{loc}: expected at least one message before the assistant's answer (the prompt)")
    return messages[:-1], messages[-1:]


def alpaca_to_prompt_completion(row: dict[str, Any], loc: str, chat: bool) -> tuple[Any, Any]:
    instruction, extra, output = row["instruction"], row.get("input") or "", row["output"]
    check_text_or_messages(instruction, f"{loc}, field 'instruction'")
    check_text_or_messages(output, f"{loc}, field 'output'", allow_empty=True)
    for field, value in (("instruction", instruction), ("input", extra), ("output", output)):
        if not isinstance(value, str):
            raise DataError(f"{loc}, field {field!r}: expected a string, got {type(value).__name__}")
    if chat:
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return [{"role": "user", "content": user}], [{"role": "assistant", "content": output}]
    template = ALPACA_PROMPT_WITH_INPUT if extra else ALPACA_PROMPT
    return template.format(instruction=instruction, input=extra), output


def _undetected(loc: str, row: dict[str, Any]) -> DataError:
    present = sorted(k for k, v in row.items() if v is not None)
    for fields in FORMAT_FIELDS.values():  # half of a format: name the missing field
        missing = [f for f in fields if f not in present]
        if len(missing) < len(fields):
            has = ", ".join(f for f in fields if f in present)
            return DataError(
                f"{loc}, field {missing[0]!r}: missing or null; a row with {has} needs {'+'.join(fields)} "
                f'(map other names with --data.columns \'{{"{missing[0]}": "<column>"}}\')'
            )
    return DataError(
        f"{loc}: cannot tell the row's format; expected fields prompt+completion, messages, or "
        f'instruction(+input)+output (map other names with --data.columns \'{{"prompt": "<column>", ...}}\'); '
        f"the row has: {', '.join(present) or 'none'}"
    )


class SFTDataModule(PromptCompletionDataModule):
    """Prompt/completion rows (three formats, see the module docstring) for supervised fine-tuning.

    Batches are ``input_ids``, ``attention_mask``, ``labels`` (right-padded). With
    ``completion_only_loss`` the prompt's labels are -100, so only completion tokens are trained
    on; without it every non-padding token is. Sequences longer than ``max_length`` keep their
    start (the prompt, then as much completion as fits) and are counted as ``truncated``. A row
    left without any trained token (a prompt that fills ``max_length``) is an error unless
    ``drop_overlong=True``, when it is dropped and counted. An empty completion is valid (the model learns
    to answer with EOS alone, as in TRL) and counted as ``empty_completions``; a chat completion holds the
    assistant's turns only (repeated prompt turns are removed and counted as ``prompt_turns_removed``).

    The other options are :class:`~lit_align.datamodules.base.PromptCompletionDataModule`'s and its base's; SFT
    changes the defaults of ``max_length`` (1024) and ``max_prompt_length`` (``None``: a long prompt keeps its
    start and the completion fills what is left, TRL's SFT truncation).

    Args:
        format: ``prompt_completion``, ``messages``, ``alpaca``, or ``auto`` (per row, the first of
            those whose fields are present).
        completion_only_loss: train on completion tokens only (``False``: on the whole sequence).
    """

    OPTIONAL_FIELDS = ("prompt", "completion", "messages", "instruction", "input", "output")
    TOKENIZATION_SETTINGS = (*PromptCompletionDataModule.TOKENIZATION_SETTINGS, "format", "completion_only_loss")

    def __init__(
        self,
        *,
        data_path: str = DEMO_SFT,
        format: SFTFormat = "auto",
        completion_only_loss: bool = True,
        max_length: int = 1024,
        max_prompt_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_path=data_path, max_length=max_length, max_prompt_length=max_prompt_length, **kwargs)
        self.format = format
        self.completion_only_loss = completion_only_loss

    def tokenize_row(self, row: dict[str, Any], loc: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        prompt, completion = self.prompt_completion(row, loc, chat=bool(tokenizer.chat_template))
        completion, removed = completion_turns(prompt, completion, f"{loc}, field 'completion'")
        notes = ["prompt_turns_removed"] * removed + ["empty_completions"] * is_blank(completion)
        prompt_ids, (completion_ids,) = tokenize_prompt_completions(tokenizer, prompt, [completion], loc,
                                                                    self.prompt_bos)  # fmt: skip
        trained_tokens = assistant_token_mask(tokenizer, prompt, completion, completion_ids, loc)
        status, prompt_length = "ok", len(prompt_ids)
        if self.max_prompt_length is not None and len(prompt_ids) > self.max_prompt_length:
            status = "truncated"
            prompt_ids = truncate_prompt(prompt_ids, self.max_prompt_length, self.truncation_mode)
        if len(prompt_ids) + len(completion_ids) > self.max_length:
            status = "truncated"
            prompt_ids = prompt_ids[: self.max_length]
            completion_ids = completion_ids[: self.max_length - len(prompt_ids)]
            trained_tokens = trained_tokens[: len(completion_ids)]
        # Token 0 is never scored (nothing precedes it), so a lone token trains nothing either.
        trained = len(completion_ids) if self.completion_only_loss else len(prompt_ids) + len(completion_ids) - 1
        if trained < 1:
            if not self.drop_overlong:
                raise DataError(
                    f"{loc}: the prompt is {prompt_length} tokens, leaving no completion token within "
                    f"max_length={self.max_length}; raise max_length or set drop_overlong=True"
                )
            status = "dropped"
        status = self.check_prompt_echo(prompt, completion, loc, status, notes)
        notes_text = ",".join(notes)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "trained_tokens": trained_tokens,
                "_status": status, "_notes": notes_text}  # fmt: skip

    def prompt_completion(self, row: dict[str, Any], loc: str, chat: bool) -> tuple[Any, Any]:
        """The row's (prompt, completion), each text or a message list; DataError when malformed."""
        fmt = detect_format(row) if self.format == "auto" else self.format
        if fmt is None:
            raise _undetected(loc, row)
        for field in FORMAT_FIELDS[fmt]:
            if row.get(field) is None:
                source = self.columns.get(field, field)
                hint = f" (mapped from {source!r})" if source != field else ""
                raise DataError(f"{loc}: missing field {field!r}{hint}, required by format {fmt!r}")
        if fmt == "messages":
            return messages_to_prompt_completion(row["messages"], f"{loc}, field 'messages'")
        if fmt == "alpaca":
            return alpaca_to_prompt_completion(row, loc, chat)
        prompt, completion = row["prompt"], row["completion"]
        check_text_or_messages(prompt, f"{loc}, field 'prompt'")
        check_text_or_messages(completion, f"{loc}, field 'completion'", allow_empty=True)
        if is_conversational(prompt) != is_conversational(completion):
            raise DataError(f"{loc}, field 'completion': prompt and completion must both be text or both be messages")
        return prompt, completion

    def _canonical(self, row: dict[str, Any], loc: str) -> dict[str, Any]:
        out = super()._canonical(row, loc)
        if self.format == "auto" and detect_format(out) is None:
            raise _undetected(loc, row)  # names the row's own columns, not just the canonical ones
        return out

    def collate(self, rows: list[dict[str, Any]]) -> SFTBatch:
        input_ids, attention_mask, labels = sequence_tensors(
            [r["prompt_ids"] for r in rows],
            [r["completion_ids"] for r in rows],
            self.tokenizer.pad_token_id,
            self.pad_to_multiple_of,
        )
        if not self.completion_only_loss:
            labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        else:  # tool messages between the assistant's turns are context, not trained
            trained = pad([[1] * len(r["prompt_ids"]) + list(r["trained_tokens"]) for r in rows], 1,
                          self.pad_to_multiple_of)  # fmt: skip
            labels = labels.masked_fill(trained == 0, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
