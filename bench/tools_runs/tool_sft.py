"""`python recipes/sft.py fit`, with assistant-only loss on multi-turn tool conversations.

Same CLI, config (recipes/configs/sft.yaml) and callbacks (HFExport) as recipes/sft.py; only the DataModule differs:
ToolSFTDataModule takes prompt/completion rows whose chat completion holds assistant turns with tool messages between
them and trains ONLY the assistant turns' tokens (content + <|im_end|>), exactly the tokens the policy samples in a
multi-turn rollout (lit_align.tools.multi_turn: tool_mask = 1). Everything between two assistant turns -- the newline
after <|im_end|>, the tool message, the next "<|im_start|>assistant\n" header -- gets label -100, as the rollout gives
those tokens tool_mask = 0.

Why a wrapper: lit_align's SFTDataModule accepts role "tool" inside a chat completion but trains every completion
token (tool results and headers included; sequence_tensors labels the whole completion), and its "messages" format
trains only the LAST assistant turn (the tool-call turns would be prompt, never trained).
"""
from pathlib import Path
from typing import Any

from lit_align.algorithms.sft import SFT
from lit_align.batches import IGNORE_INDEX
from lit_align.commands.cli import run
from lit_align.datamodules.sft import SFTDataModule
from lit_align.datamodules.tokenize import DataError, is_conversational, pad

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _ids(tokenizer, messages, generation_prompt=False):
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


class ToolSFTDataModule(SFTDataModule):
    def tokenize_row(self, row: dict[str, Any], loc: str, tokenizer) -> dict[str, Any]:
        out = super().tokenize_row(row, loc, tokenizer)
        prompt, completion = self.prompt_completion(row, loc, chat=True)
        if not is_conversational(completion):
            raise DataError(f"{loc}: ToolSFTDataModule needs chat rows")
        full = _ids(tokenizer, prompt + completion)
        start = len(out["prompt_ids"])
        if full[:start] != out["prompt_ids"] or full[start:start + len(out["completion_ids"])] != out["completion_ids"]:
            raise DataError(f"{loc}: the conversation does not tokenize as prompt + completion (truncated?)")
        eos = tokenizer.eos_token_id
        train = [0] * len(full)
        for k, message in enumerate(completion):
            if message["role"] != "assistant":
                continue
            s = len(_ids(tokenizer, prompt + completion[:k], generation_prompt=True))
            e = len(_ids(tokenizer, prompt + completion[: k + 1]))
            if full[:s] != _ids(tokenizer, prompt + completion[:k], generation_prompt=True):
                raise DataError(f"{loc}: turn {k} does not start where its prefix ends")
            while e > s and full[e - 1] != eos:  # up to and including the turn's <|im_end|>
                e -= 1
            for t in range(s, e):
                train[t] = 1
        out["train_mask"] = train[start:start + len(out["completion_ids"])]
        return out

    def collate(self, rows):
        batch = super().collate(rows)
        mask = pad([[0] * len(r["prompt_ids"]) + list(r["train_mask"]) for r in rows], 0, self.pad_to_multiple_of)
        batch["labels"] = batch["labels"].masked_fill(mask[:, : batch["labels"].shape[1]] == 0, IGNORE_INDEX)
        return batch


def main(args=None):
    run(SFT, ToolSFTDataModule, RECIPES / "configs" / "sft.yaml", args)


if __name__ == "__main__":
    main()
