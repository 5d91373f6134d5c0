"""Chat rendering for tool use: prompts that show the tools, and the tokens of tool messages between turns.

Tools reach the model through the chat template's ``tools=`` when the template renders them (its source reads
``tools``); a template that ignores them (SmolLM2's, plain ChatML) gets them in the system message instead, in the
Hermes wording and format that :mod:`lit_align.tools.calls` parses (:data:`TOOL_INSTRUCTIONS`), so the model is always
told what it can call and how.

Between turns nothing the policy wrote is re-tokenized: its tokens stay as sampled, up to and including its end of
turn (EOS). What follows is the tool messages as the template writes them after an assistant turn, with the next
assistant header: the text the template adds to ``[user, assistant]`` when ``tool`` messages and the generation
prompt are appended, less the EOS the policy already wrote (:func:`tool_turn_ids`). A template that rewrites earlier
turns when later ones come, or whose assistant turn does not end with the EOS the policy samples, is refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from lit_align.errors import OptionError
from lit_align.tools.calls import tool_schema

TOOL_INSTRUCTIONS = (
    "You can call functions to help you answer. The functions are described as JSON schemas inside <tools></tools>:\n"
    "<tools>\n{schemas}\n</tools>\n"
    "To call a function, write a JSON object with its name and arguments inside <tool_call></tool_call> tags and "
    "end your turn:\n<tool_call>\n{{\"name\": <function name>, \"arguments\": <arguments as a JSON object>}}\n"
    "</tool_call>\nThe result comes back in a message from the tool. Answer without a tool call when you are done."
)
_ASSISTANT_SENTINEL = "lit_align_assistant_7f3a9c"


def template_renders_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default") or ""
    return bool(template) and "tools" in template


def with_observation(prompt: list[dict[str, Any]], observation: str | None) -> list[dict[str, Any]]:
    """The prompt with an environment's ``reset`` observation appended to its last user message (TRL's rule)."""
    if not observation:
        return prompt
    last = prompt[-1]
    return [*prompt[:-1], {**last, "content": (last.get("content") or "") + observation}]


def with_tool_instructions(prompt: list[dict[str, Any]], tools: Sequence[Callable]) -> list[dict[str, Any]]:
    """The tools described in the system message (opened when the prompt has none), for templates without ``tools``."""
    schemas = "\n".join(json.dumps(tool_schema(t)) for t in tools)
    text = TOOL_INSTRUCTIONS.format(schemas=schemas)
    if prompt and prompt[0].get("role") == "system":
        return [{**prompt[0], "content": f"{prompt[0].get('content') or ''}\n\n{text}"}, *prompt[1:]]
    return [{"role": "system", "content": text}, *prompt]


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, Any]], tools: Sequence[Callable]
) -> list[int]:
    """The token ids of a chat prompt with its tools shown, ending with the assistant's generation prompt."""
    kwargs: dict[str, Any] = {}
    if tools and template_renders_tools(tokenizer):
        kwargs["tools"] = [tool_schema(t) for t in tools]
    elif tools:
        prompt = with_tool_instructions(prompt, tools)
    out = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def tool_turn_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]], eos_text: str) -> list[int]:
    """The tokens that follow a policy turn ending in ``eos_text``: ``messages`` (role ``tool``) as the template
    writes them, then the next assistant header."""
    base = [{"role": "user", "content": "question"}, {"role": "assistant", "content": _ASSISTANT_SENTINEL}]
    before = tokenizer.apply_chat_template(base, tokenize=False)
    after = tokenizer.apply_chat_template([*base, *messages], tokenize=False, add_generation_prompt=True)
    if not after.startswith(before):
        raise OptionError("the tokenizer's chat template writes an assistant turn differently once tool messages "
                          "follow it; tool results cannot be appended to the policy's own tokens with it")  # fmt: skip
    end_of_turn = before[before.rindex(_ASSISTANT_SENTINEL) + len(_ASSISTANT_SENTINEL) :]
    if not end_of_turn.startswith(eos_text):
        raise OptionError(f"the tokenizer's chat template ends an assistant turn with {end_of_turn!r}, not with the "
                          f"EOS {eos_text!r} that ends the policy's turns; tool use needs a template whose turns end "
                          "with the EOS")  # fmt: skip
    text = end_of_turn[len(eos_text) :] + after[len(before) :]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
