"""Prompt-only rows -> the prompt-only batch schema of the online algorithms (``lit_align.batches``).

A row is ``{"prompt": ...}`` plus any other columns (e.g. ``answer``). The prompt is plain text or
a chat message list; a message list goes through the chat template WITH the generation prompt, so
the policy continues as the assistant. ``user_template`` makes text prompts (e.g. GSM8K's questions)
user messages of a chat, for instruct models, and ``system_prompt`` opens every chat with a system
message. Batches carry LEFT-padded ``prompt_input_ids`` / ``prompt_attention_mask`` (generation
appends on the right) and, untouched, the raw ``prompt`` and every other column as Python lists, for
the reward functions (TRL's convention: columns arrive at the reward function as keyword lists).

Deliberately left out: multimodal prompts.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from lit_align.batches import PromptBatch
from lit_align.datamodules.base import SAMPLES, TokenizedDataModule
from lit_align.datamodules.tokenize import DataError, _ids, check_text_or_messages, is_conversational, left_pad
from lit_align.datamodules.tokenize import truncate_prompt as cut_prompt
from lit_align.errors import OptionError

DEMO_PROMPTS = str(SAMPLES / "arithmetic_prompts.jsonl")
TOKENIZED_KEYS = ("prompt_ids", "_status", "_row")  # not columns of the batches (``_row``: the row's number)
RESERVED = (*TOKENIZED_KEYS, "prompt_input_ids", "prompt_attention_mask")


class PromptDataModule(TokenizedDataModule):
    """Rows ``{"prompt", ...}`` for online RL; every column besides the prompt is passed through.

    Truncation: a prompt longer than ``max_prompt_length`` tokens is cut (``keep_end`` keeps its end,
    where the question and the generation prompt are) and counted as ``prompt_truncated``.

    The options are :class:`~lit_align.datamodules.base.TokenizedDataModule`'s. ``columns`` maps the prompt's own
    name (``{"prompt": "question"}``) and renames any pass-through column (``{"answer": "solution"}``: the
    reward functions get the ``solution`` column as ``answer``), e.g. one whose name is taken by the reward
    functions' own arguments (``prompts``, ``completions``, ``completion_ids``); ``batch_size`` counts prompts
    (the module samples several completions for each), and ``pad_to_multiple_of`` left-pads.
    The other options are :class:`~lit_align.datamodules.base.TokenizedDataModule`'s (``columns`` maps the
    prompt's own name, e.g. ``{"prompt": "question"}``); ``batch_size`` counts prompts (the module samples
    several completions for each), and ``pad_to_multiple_of`` left-pads. The reward functions receive the
    prompt as tokenized: a text prompt wrapped by ``user_template`` arrives as its chat.

    Args:
        user_template: make each text prompt the user message of a chat, written by this format string
            (``{prompt}`` is the row's text; write literal braces as ``{{ }}``), e.g. ``"{prompt} End with
            '#### <number>'."``; ``None`` keeps text prompts as text. Chat prompts are left as they are.
        system_prompt: a system message put first in every chat prompt that has none (text prompts become
            chats only with ``user_template``).
    """

    FIELDS = ("prompt",)
    KEEP_ROW_NUMBERS = True  # the reward functions' columns are checked before training, naming rows
    TOKENIZATION_SETTINGS = (*TokenizedDataModule.TOKENIZATION_SETTINGS, "user_template", "system_prompt")

    def __init__(
        self,
        *,
        user_template: str | None = None,
        system_prompt: str | None = None,
        data_path: str = DEMO_PROMPTS,
        val_size: int | float = 0.05,  # int first: jsonargparse would read 200 as 200.0, a fraction to datasets
        batch_size: int = 4,
        **kwargs: Any,
    ) -> None:
        if user_template is not None:
            try:
                written = user_template.format(prompt="\x00")
            except (AttributeError, IndexError, KeyError, ValueError) as err:
                raise OptionError(
                    f"user_template {user_template!r} is not a format string of {{prompt}} alone ({err!r}); "
                    "write literal braces as {{ }}"
                ) from err
            if "\x00" not in written:
                raise OptionError(f"user_template {user_template!r} has no {{prompt}}: the question would be lost")
        super().__init__(data_path=data_path, val_size=val_size, batch_size=batch_size, **kwargs)
        self.user_template, self.system_prompt = user_template, system_prompt

    def tokenize_row(self, row: dict[str, Any], loc: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        prompt = row["prompt"]
        check_text_or_messages(prompt, f"{loc}, field 'prompt'")
        prompt = self._as_chat(prompt, loc)
        if is_conversational(prompt) and not tokenizer.chat_template:
            raise DataError(
                f"{loc}, field 'prompt': a chat message list, but the tokenizer has no chat template; "
                "use a chat model's tokenizer or give prompts as text"
            )
        ids = _ids(tokenizer, prompt, generation_prompt=is_conversational(prompt), prompt_bos=self.prompt_bos)
        kept = cut_prompt(ids, self.max_prompt_length, self.truncation_mode)
        status = "ok" if len(kept) == len(ids) else "prompt_truncated"
        return {**row, "prompt": prompt, "prompt_ids": kept, "_status": status}

    def collate(self, rows: list[dict[str, Any]]) -> PromptBatch:
        prompts = [r["prompt_ids"] for r in rows]
        multiple = self.pad_to_multiple_of
        batch: dict[str, Any] = {
            "prompt_input_ids": left_pad(prompts, self.tokenizer.pad_token_id, multiple),
            "prompt_attention_mask": left_pad([[1] * len(p) for p in prompts], 0, multiple),
        }
        for key in rows[0]:
            if key not in TOKENIZED_KEYS:
                batch[key] = [r[key] for r in rows]
        return batch

    # -- helpers --------------------------------------------------------------------------------
    def column_fields(self) -> None:
        return None  # besides the prompt, ``columns`` renames any pass-through column

    def _as_chat(self, prompt: Any, loc: str) -> Any:
        """The prompt with ``user_template`` and ``system_prompt`` applied."""
        if isinstance(prompt, str) and self.user_template is not None:
            prompt = [{"role": "user", "content": self.user_template.format(prompt=prompt)}]
        if self.system_prompt is not None:
            if not is_conversational(prompt):
                raise DataError(f"{loc}, field 'prompt': system_prompt needs chat prompts; set user_template for text")
            if prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": self.system_prompt}, *prompt]
        return prompt

    def _canonical(self, row: dict[str, Any], loc: str) -> dict[str, Any]:
        """The prompt under its canonical name, renamed columns under their new names, every other under its own."""
        out = super()._canonical(row, loc)
        renamed = {new: old for new, old in self.columns.items() if new not in self.FIELDS}
        for new, old in renamed.items():
            if old not in row:
                raise DataError(f"{loc}: --data.columns renames {old!r} to {new!r}, but the row has no {old!r}; "
                                f"it has: {', '.join(sorted(row))}")  # fmt: skip
            out[new] = row[old]
        consumed = {self.columns.get(f, f) for f in self.FIELDS} | set(renamed.values())
        passed = {k: v for k, v in row.items() if k not in consumed}
        if twice := [new for new in renamed if new in passed]:
            raise DataError(f"{loc}: --data.columns renames {renamed[twice[0]]!r} to {twice[0]!r}, but the row has a "
                            f"{twice[0]!r} column too; rename that one as well, or pick another name")  # fmt: skip
        clash = [k for k in [*passed, *renamed] if k in RESERVED]
        if clash:
            raise DataError(
                f"{loc}: column {clash[0]!r} is a name the DataModule uses itself; rename it with --data.columns "
                f'\'{{"<new name>": "{clash[0]}"}}\''
            )
        out.update(passed)
        return out
