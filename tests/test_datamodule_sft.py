"""SFTDataModule: each row format, completion masking, truncation, and malformed rows."""

from __future__ import annotations

import pytest
import torch

from lit_align.datamodules.sft import ALPACA_PROMPT, SFTDataModule
from lit_align.datamodules.tokenize import IGNORE_INDEX, DataError
from lit_align.models.loading import build_byte_tokenizer
from tests.conftest import write_jsonl

USER = [{"role": "user", "content": "What is 2 + 2?"}]
ANSWER = [{"role": "assistant", "content": "4"}]


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def _module(tmp_path, rows, tokenizer, **kwargs) -> SFTDataModule:
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    dm = SFTDataModule(tokenizer=tokenizer, data_path=str(path), val_size=0, batch_size=len(rows), **kwargs)
    dm.setup()
    return dm


def _batch(dm: SFTDataModule) -> dict[str, torch.Tensor]:
    return dm.collate([dm.train_dataset[i] for i in range(len(dm.train_dataset))])


def _decoded_completion(tokenizer, batch, i=0) -> str:
    labels = batch["labels"][i]
    return tokenizer.decode(labels[labels != IGNORE_INDEX])


def test_prompt_completion_text_gets_eos_and_masks_the_prompt(tmp_path, tokenizer):
    dm = _module(tmp_path, [{"prompt": "Q: 2+2? A:", "completion": " 4"}], tokenizer)
    batch = _batch(dm)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    # Byte tokenizer: one token per character; the prompt's 10 tokens are masked.
    assert batch["labels"][0, :10].eq(IGNORE_INDEX).all()
    assert _decoded_completion(tokenizer, batch) == " 4<|im_end|>"
    assert tokenizer.decode(batch["input_ids"][0]) == "Q: 2+2? A: 4<|im_end|>"


def test_prompt_completion_messages_use_the_chat_template(tmp_path, tokenizer):
    dm = _module(tmp_path, [{"prompt": USER, "completion": ANSWER}], tokenizer)
    batch = _batch(dm)
    text = tokenizer.decode(batch["input_ids"][0])
    assert text == "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    assert _decoded_completion(tokenizer, batch) == "4<|im_end|>\n"


def test_messages_last_assistant_turn_is_the_completion(tmp_path, tokenizer):
    chat = [
        {"role": "system", "content": "Be brief."},
        *USER,
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6"},
    ]
    dm = _module(tmp_path, [{"messages": chat}], tokenizer)
    batch = _batch(dm)
    assert _decoded_completion(tokenizer, batch) == "6<|im_end|>\n"  # the earlier answer "4" is prompt
    assert tokenizer.decode(batch["input_ids"][0]).startswith("<|im_start|>system\nBe brief.")


def test_alpaca_rows_become_a_chat_or_the_alpaca_text_prompt(tmp_path, tokenizer):
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]
    batch = _batch(_module(tmp_path, rows, tokenizer))
    assert "user\nAdd the numbers.\n\n2 and 2<|im_end|>" in tokenizer.decode(batch["input_ids"][0])
    assert _decoded_completion(tokenizer, batch, 1) == "hi<|im_end|>\n"

    plain = build_byte_tokenizer()
    plain.chat_template = None
    batch = _batch(_module(tmp_path, rows[1:], plain))
    expected_prompt = ALPACA_PROMPT.format(instruction="Say hi.")
    assert plain.decode(batch["input_ids"][0]) == expected_prompt + "hi<|im_end|>"
    assert batch["labels"][0, : len(expected_prompt)].eq(IGNORE_INDEX).all()


def test_auto_format_per_row_and_column_mapping(tmp_path, tokenizer):
    rows = [{"question": "Q?", "answer": "A", "context": ""}]
    dm = _module(tmp_path, rows, tokenizer, columns={"instruction": "question", "output": "answer", "input": "context"})
    assert _decoded_completion(tokenizer, _batch(dm)) == "A<|im_end|>\n"
    dm = _module(tmp_path, [{"q": "Q:", "a": " A"}], tokenizer, format="prompt_completion",
                 columns={"prompt": "q", "completion": "a"})  # fmt: skip
    assert _decoded_completion(tokenizer, _batch(dm)) == " A<|im_end|>"


def test_full_sequence_loss_trains_every_non_pad_token(tmp_path, tokenizer):
    rows = [{"prompt": "Q: long question?", "completion": " yes"}, {"prompt": "Q?", "completion": " no"}]
    batch = _batch(_module(tmp_path, rows, tokenizer, completion_only_loss=False))
    expected = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    assert torch.equal(batch["labels"], expected)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()  # row 1 is padded
    assert batch["labels"][1, -1] == IGNORE_INDEX


def test_truncation_keeps_the_start_and_is_counted(tmp_path, tokenizer):
    rows = [{"prompt": "Q:", "completion": " " + "x" * 50}, {"prompt": "Q:", "completion": " y"}]
    dm = _module(tmp_path, rows, tokenizer, max_length=10)
    batch = _batch(dm)
    assert batch["input_ids"].shape[1] == 10
    assert tokenizer.decode(batch["input_ids"][0]) == "Q: xxxxxxx"  # no EOS: the end was cut
    assert dm.stats == {"train/truncated": 1, "train/ok": 1}


def test_prompt_filling_max_length_is_an_error_unless_dropped(tmp_path, tokenizer):
    rows = [{"prompt": "A very long prompt indeed", "completion": " z"}, {"prompt": "Q:", "completion": " y"}]
    with pytest.raises(DataError, match=r"row 1 \(1-based\): the prompt is 25 tokens.*max_length=10.*drop_overlong"):
        _module(tmp_path, rows, tokenizer, max_length=10)
    dm = _module(tmp_path, rows, tokenizer, max_length=10, drop_overlong=True)
    assert len(dm.train_dataset) == 1
    assert dm.stats == {"train/dropped": 1, "train/ok": 1}
    # With full-sequence loss the cut prompt is still trained on, so the row is kept (truncated).
    # Same file, so this also shows completion_only_loss keys the tokenization cache.
    same_file = SFTDataModule(tokenizer=tokenizer, data_path=dm.data_path, val_size=0, max_length=10,
                              drop_overlong=True, completion_only_loss=False)  # fmt: skip
    same_file.setup()
    assert same_file.stats == {"train/truncated": 1, "train/ok": 1}


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([{"prompt": "Q", "completion": None}], {"format": "prompt_completion"},
         r"row 1 \(1-based\): missing field 'completion'.*format 'prompt_completion'"),
        ([{"prompt": " ", "completion": "A"}], {}, r"row 1 \(1-based\), field 'prompt': expected a non-empty.*space"),
        ([{"prompt": "Q", "completion": ANSWER}], {}, r"row 1 \(1-based\), field 'completion': prompt and completion"),
        ([{"messages": [*USER, {"role": "user", "content": "?"}]}], {},
         r"row 1 \(1-based\), field 'messages': the last message should be the assistant's"),
        ([{"messages": ANSWER}], {}, r"row 1 \(1-based\), field 'messages': expected at least one message before"),
        ([{"messages": [{"role": "robot", "content": "x"}, *ANSWER]}], {},
         r"row 1 \(1-based\), field 'messages': message 1 has role 'robot'"),
        ([{"instruction": "Do it.", "output": 3}], {}, r"row 1 \(1-based\), field 'output': expected a non-empty"),
        ([{"text": "just text"}], {}, r"row 1 \(1-based\): cannot tell the row's format.*the row has: text"),
        ([{"response": "x"}], {"format": "alpaca", "columns": {"output": "response"}},
         r"row 1 \(1-based\): missing field 'instruction', required by format 'alpaca'"),
    ],
)  # fmt: skip
def test_malformed_rows_name_row_and_field(tmp_path, tokenizer, rows, kwargs, message):
    with pytest.raises(DataError, match=message):
        _module(tmp_path, rows, tokenizer, **kwargs)


def test_demo_data_is_the_default(tokenizer):
    dm = SFTDataModule(tokenizer=tokenizer, max_samples=8, val_size=2, batch_size=3)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (6, 2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 3 and (batch["labels"] != IGNORE_INDEX).any()


def test_dolly_through_column_mapping(tokenizer, shared_data):
    dm = SFTDataModule(
        tokenizer=tokenizer,
        data_path=str(shared_data / "dolly_sample" / "dolly_sample.jsonl"),
        format="alpaca",
        columns={"input": "context", "output": "response"},
        max_samples=20,
        max_length=1024,
        drop_overlong=True,
        val_size=0,
    )
    dm.setup()
    # Byte tokens (one per character): long contexts fill max_length; those rows are dropped, counted.
    assert dm.stats == {"train/ok": 12, "train/truncated": 2, "train/dropped": 6}
    assert len(dm.train_dataset) == 14
    batch = dm.collate([dm.train_dataset[i] for i in range(4)])
    assert (batch["labels"] != IGNORE_INDEX).sum() > 100


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_tool_conversations_train_only_the_assistant_turns(tmp_path, tokenizer, which, request):
    """A chat completion with tool messages between the assistant's turns (a cold start for tool use): each assistant
    turn is trained through its EOS; the tool message, the template's newline after the EOS and the next assistant
    header are not (what a multi-turn rollout masks, lit_align.tools)."""
    tok = tokenizer if which == "tiny" else request.getfixturevalue("smollm2_tokenizer")
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
    completion = [{"role": "assistant", "content": call}, {"role": "tool", "name": "calculator", "content": "4"},
                  {"role": "assistant", "content": "It is 4."}]  # fmt: skip
    dm = _module(tmp_path, [{"prompt": USER, "completion": completion}, {"prompt": USER, "completion": ANSWER}], tok)
    batch = _batch(dm)
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    trained = tok.decode(labels[labels != IGNORE_INDEX])
    assert trained == f"{call}<|im_end|>It is 4.<|im_end|>"
    untrained_completion = tok.decode(ids[(labels == IGNORE_INDEX) & batch["attention_mask"][0].bool()])
    assert untrained_completion.endswith("\n<|im_start|>tool\n4<|im_end|>\n<|im_start|>assistant\n\n")
    assert _decoded_completion(tok, batch, 1) == "4<|im_end|>\n"  # without tool messages: as before
