"""Issue 6's bad-input list, one test per case: each error names the file, the row (or line) and field, and
what was expected. Row numbers are 0-based dataset rows; line numbers are 1-based file lines.

Also covered elsewhere: the NaN/inf loss (tests/test_nonfinite.py), truncation counts and drop_overlong
(tests/test_datamodule_*.py).
"""

from __future__ import annotations

import json

import pytest

from lit_align.datamodules import BinaryFeedbackDataModule, PreferenceDataModule, SFTDataModule
from lit_align.datamodules.prompt import PromptDataModule
from lit_align.datamodules.tokenize import DataError
from tests.conftest import write_jsonl

CHAT_PROMPT = [{"role": "user", "content": "Hi?"}]
GOOD = {
    PreferenceDataModule: {"prompt": "Hi?", "chosen": " yes", "rejected": " no"},
    BinaryFeedbackDataModule: {"prompt": "Hi?", "completion": " yes", "label": True},
    SFTDataModule: {"prompt": "Hi?", "completion": " yes"},
    PromptDataModule: {"prompt": "Hi?"},
}
TEXT_FIELD = {PreferenceDataModule: "chosen", BinaryFeedbackDataModule: "completion", SFTDataModule: "completion",
              PromptDataModule: "prompt"}  # fmt: skip
ALL = list(GOOD)


def setup(cls, path, tokenizer, **kwargs):
    kwargs.setdefault("val_size", 0)
    dm = cls(tokenizer=tokenizer, data_path=str(path), **kwargs)
    dm.setup("fit")
    return dm


def error(cls, path, tokenizer, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        setup(cls, path, tokenizer, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("cls", ALL)
def test_missing_file(tmp_path, tiny_tokenizer, cls):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl: data file not found"):
        setup(cls, tmp_path / "nowhere.jsonl", tiny_tokenizer)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"prompt": "a"}\n{oops\n', r"bad\.jsonl, line 2: not valid JSON \(Expecting property name"),
        (b'{"prompt": "a"}\n[1, 2]\n', r"bad\.jsonl, line 2: expected a JSON object, got list"),
        (b'{"prompt": "caf\xe9"}\n', r"bad\.jsonl, line 1: not UTF-8 text \(byte 0xe9 at column 16\)"),
        (b"\n\n", r"bad\.jsonl: the file has no rows"),
    ],
    ids=["malformed", "not-an-object", "not-utf8", "empty"],
)
@pytest.mark.parametrize("cls", ALL)
def test_unreadable_or_malformed_json_lines(tmp_path, tiny_tokenizer, cls, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected):
        setup(cls, path, tiny_tokenizer)


@pytest.mark.parametrize("cls", ALL)
def test_missing_field(tmp_path, tiny_tokenizer, cls):
    field = TEXT_FIELD[cls]
    broken = {k: v for k, v in GOOD[cls].items() if k != field}
    message = error(cls, write_jsonl(tmp_path / "d.jsonl", [broken, broken]), tiny_tokenizer)
    if not broken:  # the prompt DataModule's only field: the line is an empty object
        assert "d.jsonl, line 1: an empty JSON object" in message, message
        return
    assert "d.jsonl [train], row 1 (1-based)" in message and "missing" in message and repr(field) in message, message


@pytest.mark.parametrize("cls", [PreferenceDataModule, BinaryFeedbackDataModule, PromptDataModule])
def test_misnamed_field_mapping(tmp_path, tiny_tokenizer, cls):
    field = TEXT_FIELD[cls]
    message = error(cls, write_jsonl(tmp_path / "d.jsonl", [GOOD[cls]]), tiny_tokenizer, columns={field: "typo"})
    assert f"row 1 (1-based): missing field {field!r} (mapped from 'typo'); the row has: " in message, message


@pytest.mark.parametrize("value, got", [("", "an empty string"), (None, "None"), (42, "int 42"), ([], "list")])
@pytest.mark.parametrize("cls", ALL)
def test_empty_none_or_non_string_field(tmp_path, tiny_tokenizer, cls, value, got):
    field = TEXT_FIELD[cls]
    rows = [GOOD[cls], {**GOOD[cls], field: value}]
    if cls is BinaryFeedbackDataModule:  # both labels: data of one class is refused (test_single_class_...)
        rows.append({**GOOD[cls], "label": False})
    if value == "" and cls is not PromptDataModule:  # an empty completion is valid data (EOS only), counted
        assert setup(cls, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer).stats["train/empty_completions"] == 1
        return
    message = error(cls, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer)
    if cls is SFTDataModule and value is None:  # a null completion leaves a prompt-only row: half a format
        assert "d.jsonl [train], row 2 (1-based), field 'completion': missing or null; a row with prompt" in message
        return
    assert f"d.jsonl [train], row 2 (1-based), field {field!r}: expected a non-empty string or a list" in message
    assert f"got {got}" in message


@pytest.mark.parametrize(
    "messages, expected",
    [
        ([{"role": "human", "content": "Hi?"}], r"message 1 has role 'human', expected one of"),
        ([{"role": "user", "text": "Hi?"}], r"message 1 has no 'content' \(its keys: role, text\)"),
        ([{"role": "user", "content": 7}], r"message 1 content should be a string, got int"),
        ([{"role": "user", "content": "Hi?"}, "plain"], r"message 2 should be a dict with 'role' and 'content'"),
    ],
    ids=["role", "no-content", "content-type", "not-a-dict"],
)
@pytest.mark.parametrize("cls", [PreferenceDataModule, BinaryFeedbackDataModule, PromptDataModule])
def test_wrong_message_structure(tmp_path, tiny_tokenizer, cls, messages, expected):
    rows = [{**GOOD[cls], "prompt": CHAT_PROMPT}, {**GOOD[cls], "prompt": messages}]
    if cls is PreferenceDataModule:
        rows = [{**r, "chosen": [{"role": "assistant", "content": "yes"}],
                 "rejected": [{"role": "assistant", "content": "no"}]} for r in rows]  # fmt: skip
    elif cls is BinaryFeedbackDataModule:
        rows = [{**r, "completion": [{"role": "assistant", "content": "yes"}]} for r in rows]
    with pytest.raises(DataError, match=r"d\.jsonl \[train\], row 2 \(1-based\), field 'prompt': " + expected):
        setup(cls, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer)


def test_wrong_message_structure_in_sft_messages(tmp_path, tiny_tokenizer):
    rows = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "bot", "content": "yes"}]}]
    with pytest.raises(DataError, match=r"d\.jsonl \[train\], row 1 \(1-based\).*role 'bot', expected one of"):
        setup(SFTDataModule, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer)


@pytest.mark.parametrize("cls", [PreferenceDataModule, BinaryFeedbackDataModule, SFTDataModule])
def test_prompt_longer_than_max_length(tmp_path, tiny_tokenizer, cls):
    rows = [GOOD[cls], {**GOOD[cls], "prompt": "x" * 300}]
    kwargs = {"max_length": 64} if cls is SFTDataModule else {"max_length": 64, "max_prompt_length": None}
    message = error(cls, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer, **kwargs)
    assert "d.jsonl [train], row 2 (1-based)" in message and "max_length=64" in message and "drop_overlong" in message


@pytest.mark.parametrize("cls", [PreferenceDataModule, BinaryFeedbackDataModule, SFTDataModule])
def test_dataset_empty_after_filtering(tmp_path, tiny_tokenizer, cls):
    rows = [{**GOOD[cls], "prompt": "x" * 300}] * 3
    kwargs = {"max_length": 64, "drop_overlong": True}
    if cls is not SFTDataModule:
        kwargs["max_prompt_length"] = None
    message = error(cls, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer, **kwargs)
    assert "d.jsonl: no training rows are left after truncation and splitting" in message


@pytest.mark.parametrize("label", ["maybe", 2, None, 0.5, [True]])
def test_labels_that_are_not_binary(tmp_path, tiny_tokenizer, label):
    rows = [GOOD[BinaryFeedbackDataModule], {**GOOD[BinaryFeedbackDataModule], "label": label}]
    message = error(BinaryFeedbackDataModule, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer)
    assert "d.jsonl [train], row 2 (1-based), field 'label': expected a binary label" in message, message


@pytest.mark.parametrize("cls", ALL)
def test_chat_rows_with_a_tokenizer_without_chat_template(tmp_path, tiny_tokenizer, cls):
    tiny_tokenizer.chat_template = None
    assistant = [{"role": "assistant", "content": "yes"}]
    row = {
        PreferenceDataModule: {"prompt": CHAT_PROMPT, "chosen": assistant, "rejected": assistant},
        BinaryFeedbackDataModule: {"prompt": CHAT_PROMPT, "completion": assistant, "label": True},
        SFTDataModule: {"messages": CHAT_PROMPT + assistant},
        PromptDataModule: {"prompt": CHAT_PROMPT},
    }[cls]
    message = error(cls, write_jsonl(tmp_path / "d.jsonl", [row]), tiny_tokenizer)
    assert "d.jsonl [train], row 1 (1-based)" in message and "no chat template" in message, message


def test_per_device_batch_too_small_for_kto(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD[BinaryFeedbackDataModule]] * 4)
    with pytest.raises(ValueError, match=r"--data.batch_size=1: .*needs batch_size >= 2 per device: KTO estimates"):
        BinaryFeedbackDataModule(tokenizer=tiny_tokenizer, data_path=str(path), batch_size=1)


def test_nothing_is_dropped_silently(tmp_path, tiny_tokenizer):
    """Truncation and opted-in drops are counted in ``stats``; every row is accounted for."""
    rows = [GOOD[PreferenceDataModule]] * 3 + [{**GOOD[PreferenceDataModule], "prompt": "x" * 300}]
    dm = setup(PreferenceDataModule, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer, max_length=64,
               max_prompt_length=None, drop_overlong=True)  # fmt: skip
    assert len(dm.train_dataset) == 3 and sum(dm.stats.values()) == 4, dict(dm.stats)
    assert json.dumps(dict(dm.stats))  # plain counts, logged once at setup
