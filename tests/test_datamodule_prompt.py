"""PromptDataModule: chat template with generation prompt, left padding, pass-through columns, truncation."""

from __future__ import annotations

import re

import pytest
import torch

from lit_align.datamodules.prompt import PromptDataModule
from lit_align.datamodules.tokenize import DataError
from tests.conftest import write_jsonl


def make(tmp_path, rows, tokenizer, **kwargs):
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    kwargs.setdefault("val_size", 0)
    dm = PromptDataModule(tokenizer=tokenizer, data_path=str(path), **kwargs)
    dm.setup("fit")
    return dm


def test_chat_prompts_get_generation_prompt_and_left_padding(tmp_path, tiny_tokenizer):
    rows = [
        {"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5"},
        {"prompt": [{"role": "user", "content": "Hi"}], "answer": None},
    ]
    dm = make(tmp_path, rows, tiny_tokenizer)
    batch = dm.collate([dm.train_dataset[0], dm.train_dataset[1]])
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    long = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    assert tiny_tokenizer.decode(ids[0]) == long  # ends with the assistant turn's opening: generation continues it
    pad = len(tiny_tokenizer(long)["input_ids"]) - len(tiny_tokenizer("<|im_start|>user\nHi<|im_end|>\n")["input_ids"])
    pad -= len(tiny_tokenizer("<|im_start|>assistant\n")["input_ids"])
    assert mask[0].all() and not mask[1, :pad].any() and mask[1, pad:].all()  # LEFT padding
    assert (ids[1, :pad] == tiny_tokenizer.pad_token_id).all()
    assert tiny_tokenizer.decode(ids[1, pad:]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # Untouched pass-through: the raw prompt and every other column, as lists (None kept).
    assert batch["prompt"] == [rows[0]["prompt"], rows[1]["prompt"]]
    assert batch["answer"] == ["5", None]
    assert set(batch) == {"prompt_input_ids", "prompt_attention_mask", "prompt", "answer"}


def test_text_prompts_and_column_mapping(tmp_path, tiny_tokenizer):
    rows = [{"question": "Q: 2+2? A:", "answer": 4, "source": "x"}]
    dm = make(tmp_path, rows, tiny_tokenizer, columns={"prompt": "question"})
    batch = dm.collate([dm.train_dataset[0]])
    assert tiny_tokenizer.decode(batch["prompt_input_ids"][0]) == "Q: 2+2? A:"
    assert batch["prompt"] == ["Q: 2+2? A:"] and batch["answer"] == [4] and batch["source"] == ["x"]
    assert "question" not in batch  # consumed by the mapping, passed as "prompt"


def test_max_prompt_length_keeps_end_and_counts(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "abcdefghij"}, {"prompt": "abc"}]
    dm = make(tmp_path, rows, tiny_tokenizer, max_prompt_length=4)
    batch = dm.collate([dm.train_dataset[0], dm.train_dataset[1]])
    assert tiny_tokenizer.decode(batch["prompt_input_ids"][0]) == "ghij"
    assert batch["prompt"][0] == "abcdefghij"  # the raw prompt stays whole for the reward functions
    assert dm.stats["train/prompt_truncated"] == 1 and dm.stats["train/ok"] == 1
    dm = make(tmp_path, rows, tiny_tokenizer, max_prompt_length=4, truncation_mode="keep_start")
    assert tiny_tokenizer.decode(dm.train_dataset[0]["prompt_ids"]) == "abcd"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": ""}, "row 1 (1-based), field 'prompt': expected a non-empty string"),
        ({"prompt": [{"role": "robot", "content": "x"}]}, "row 1 (1-based), field 'prompt': message 1 has role 'robot"),
        ({"question": "x"}, "row 1 (1-based): missing field 'prompt'"),
        ({"prompt": "x", "prompt_input_ids": [1]}, "column 'prompt_input_ids' is a name the DataModule uses"),
    ],
)
def test_bad_rows_name_row_and_field(tmp_path, tiny_tokenizer, row, message):
    with pytest.raises(DataError, match=re.escape(message)):
        make(tmp_path, [row], tiny_tokenizer)


def test_chat_prompt_without_chat_template(tmp_path, tiny_tokenizer):
    tiny_tokenizer.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        make(tmp_path, [{"prompt": [{"role": "user", "content": "x"}]}], tiny_tokenizer)


def test_default_data_is_the_arithmetic_task(tiny_tokenizer):
    dm = PromptDataModule(tokenizer=tiny_tokenizer, max_samples=20, val_size=4, batch_size=3)
    dm.setup("fit")
    assert len(dm.train_dataset) == 16 and len(dm.val_dataset) == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["prompt_input_ids"].shape[0] == 3 and batch["prompt_input_ids"].dtype == torch.long
    assert all(isinstance(a, str) and a.lstrip("-").isdigit() for a in batch["answer"])
    assert all(p[-1]["role"] == "user" for p in batch["prompt"])
    assert (batch["prompt_input_ids"][:, -1] == tiny_tokenizer("\n")["input_ids"][0]).all()  # "...assistant\n"


def test_user_template_makes_text_prompts_chat_turns_with_an_optional_system_prompt(tmp_path, tiny_tokenizer):
    rows = [{"question": "What is 2 + 3?", "final_answer": "5"},
            {"question": [{"role": "user", "content": "Hi"}], "final_answer": None}]  # fmt: skip
    dm = make(tmp_path, rows, tiny_tokenizer, columns={"prompt": "question"}, user_template="{prompt} End with ####.",
              system_prompt="Be brief.")  # fmt: skip
    batch = dm.collate([dm.train_dataset[0], dm.train_dataset[1]])
    system = {"role": "system", "content": "Be brief."}
    assert batch["prompt"] == [[system, {"role": "user", "content": "What is 2 + 3? End with ####."}],
                               [system, {"role": "user", "content": "Hi"}]]  # a chat row keeps its own turns
    text = tiny_tokenizer.decode(batch["prompt_input_ids"][0])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3? End with ####."
                    "<|im_end|>\n<|im_start|>assistant\n")  # fmt: skip
    assert batch["final_answer"] == ["5", None]
    plain = make(tmp_path, rows, tiny_tokenizer, columns={"prompt": "question"})  # same rows, no template: text
    assert plain.train_dataset[0]["prompt"] == "What is 2 + 3?"  # the options key the tokenization cache


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"user_template": "Solve: {question}"}, "not a format string"),
        ({"user_template": "Solve {{prompt}}"}, "has no {prompt}"),
        ({"user_template": "{prompt"}, "not a format string"),
    ],
)
def test_bad_user_template_is_refused(tiny_tokenizer, options, message):
    with pytest.raises(ValueError, match=message):
        PromptDataModule(tokenizer=tiny_tokenizer, **options)


def test_system_prompt_needs_chat_prompts(tmp_path, tiny_tokenizer):
    with pytest.raises(DataError, match="system_prompt needs chat prompts; set user_template"):
        make(tmp_path, [{"prompt": "Q?"}], tiny_tokenizer, system_prompt="Be brief.")


def test_val_size_count_parses_as_an_int():
    """jsonargparse tries the union's types in order: ``float | int`` read 200 as 200.0, which datasets refuses."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PromptDataModule, "data", skip={"tokenizer"})
    assert parser.parse_args(["--data.val_size", "200"]).data.val_size == 200
    assert isinstance(parser.parse_args(["--data.val_size", "200"]).data.val_size, int)
    assert parser.parse_args(["--data.val_size", "0.05"]).data.val_size == 0.05
