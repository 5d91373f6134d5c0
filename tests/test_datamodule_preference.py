"""PreferenceDataModule: formats, tokenization convention, truncation, counting, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from lit_align.datamodules import DataError, PreferenceDataModule
from tests.conftest import write_jsonl


def make(tmp_path, rows, tokenizer, name="data.jsonl", **kwargs):
    path = write_jsonl(tmp_path / name, rows)
    kwargs.setdefault("val_size", 0)
    dm = PreferenceDataModule(tokenizer=tokenizer, data_path=str(path), **kwargs)
    dm.setup("fit")
    return dm


def decode_completion(tok, ids, labels):
    return tok.decode(ids[labels != -100])


def test_plain_text_rows_get_eos_and_prompt_mask(tmp_path, tiny_tokenizer):
    dm = make(tmp_path, [{"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}], tiny_tokenizer)
    batch = dm.collate([dm.train_dataset[0]])
    tok = tiny_tokenizer
    assert decode_completion(tok, batch["chosen_input_ids"][0], batch["chosen_labels"][0]) == " 4<|im_end|>"
    assert decode_completion(tok, batch["rejected_input_ids"][0], batch["rejected_labels"][0]) == " 5<|im_end|>"
    assert tok.decode(batch["chosen_input_ids"][0]) == "Q: 2+2? 4<|im_end|>"
    assert batch["chosen_attention_mask"].all()


def test_conversational_rows_use_chat_template(tmp_path, tiny_tokenizer):
    row = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    dm = make(tmp_path, [row], tiny_tokenizer)
    batch = dm.collate([dm.train_dataset[0]])
    full = tiny_tokenizer.decode(batch["chosen_input_ids"][0])
    assert full == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    completion = decode_completion(tiny_tokenizer, batch["chosen_input_ids"][0], batch["chosen_labels"][0])
    assert completion == "hello<|im_end|>\n"  # completion starts where the token sequences diverge


def test_hh_style_implicit_prompt(tmp_path, tiny_tokenizer):
    row = {
        "chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water.",
        "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Mind your business.",
    }
    dm = make(tmp_path, [row], tiny_tokenizer)
    batch = dm.collate([dm.train_dataset[0]])
    tok = tiny_tokenizer
    assert decode_completion(tok, batch["chosen_input_ids"][0], batch["chosen_labels"][0]) == (
        " Mix flour and water.<|im_end|>"
    )
    assert decode_completion(tok, batch["rejected_input_ids"][0], batch["rejected_labels"][0]) == (
        " Mind your business.<|im_end|>"
    )


def test_batch_schema_padding_and_shapes(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "p" * n, "chosen": "c" * (n + 1), "rejected": "r" * 2} for n in (1, 5, 9)]
    dm = make(tmp_path, rows, tiny_tokenizer, batch_size=3)
    batch = next(iter(dm.train_dataloader()))
    sides = {f"{s}_{k}" for s in ("chosen", "rejected") for k in ("input_ids", "attention_mask", "labels")}
    assert set(batch) == {*sides, "row_index"}  # row_index: each row's number (cached reference values)
    assert sorted(batch["row_index"].tolist()) == sorted(set(batch["row_index"].tolist()))
    for side in ("chosen", "rejected"):
        mask = batch[f"{side}_attention_mask"]
        labels = batch[f"{side}_labels"]
        assert (labels[mask == 0] == -100).all()  # padding is never a target
        assert batch[f"{side}_input_ids"].dtype == torch.long


def test_truncation_counts_and_limits(tmp_path, tiny_tokenizer, caplog):
    rows = [
        {"prompt": "x" * 30, "chosen": "a" * 4, "rejected": "b" * 4},  # prompt truncated
        {"prompt": "y" * 4, "chosen": "c" * 40, "rejected": "d"},  # completion truncated
        {"prompt": "z" * 4, "chosen": "e", "rejected": "f"},  # untouched
    ]
    dm = make(tmp_path, rows, tiny_tokenizer, max_length=20, max_prompt_length=10)
    assert dm.stats["train/prompt_truncated"] == 1
    assert dm.stats["train/completion_truncated"] == 1
    assert dm.stats["train/ok"] == 1
    assert "1 prompt_truncated" in caplog.text
    for row in dm.train_dataset:
        assert len(row["prompt_ids"]) <= 10
        assert len(row["prompt_ids"]) + len(row["chosen_ids"]) <= 20
    kept_end = dm.train_dataset[0]["prompt_ids"]
    assert tiny_tokenizer.decode(kept_end) == "x" * 10  # keep_end keeps the prompt's end


def test_overlong_prompt_is_an_error_unless_dropping(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "x" * 30, "chosen": "a", "rejected": "b"}, {"prompt": "y", "chosen": "a", "rejected": "b"}]
    with pytest.raises(DataError, match=r"row 1 \(1-based\).*no room for a completion"):
        make(tmp_path, rows, tiny_tokenizer, max_length=20, max_prompt_length=None)
    dm = make(tmp_path, rows, tiny_tokenizer, max_length=20, max_prompt_length=None, drop_overlong=True)
    assert len(dm.train_dataset) == 1 and dm.stats["train/dropped"] == 1


def test_field_mapping_and_validation_split(tmp_path, tiny_tokenizer):
    rows = [{"question": f"q{i}", "good": f"g{i}", "bad": f"b{i}"} for i in range(20)]
    cols = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    dm = make(tmp_path, rows, tiny_tokenizer, columns=cols, val_size=5, seed=3)
    assert len(dm.train_dataset) == 15 and len(dm.val_dataset) == 5
    dm2 = make(tmp_path, rows, tiny_tokenizer, columns=cols, val_size=5, seed=3)
    assert dm.val_dataset["prompt_ids"] == dm2.val_dataset["prompt_ids"]  # seeded split


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_other_file_formats(tmp_path, tiny_tokenizer, fmt):
    import datasets

    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3
    path = tmp_path / f"d.{fmt}"
    ds = datasets.Dataset.from_list(rows)
    getattr(ds, f"to_{fmt}")(str(path))
    dm = PreferenceDataModule(tokenizer=tiny_tokenizer, data_path=str(path), val_size=0)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ({"prompt": "", "chosen": "c", "rejected": "r"}, r"row 2 \(1-based\), field 'prompt': expected a non-empty"),
        ({"prompt": "p", "chosen": None, "rejected": "r"}, r"row 2 \(1-based\), field 'chosen'.*got None"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, r"row 2 \(1-based\), field 'chosen'.*got int"),
        ({"prompt": "p", "rejected": "r"}, r"row 2 \(1-based\), field 'chosen'.*got None"),  # json fills absent keys
        ({"prompt": [{"role": "user"}], "chosen": "c", "rejected": "r"}, r"row 2 \(1-based\), field 'prompt'.*content"),
        ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "c", "rejected": "r"}, r"role 'bot'"),
        ({"prompt": [{"role": "user", "content": "x"}], "chosen": "c", "rejected": "r"}, r"row 2 \(1-based\).*message"),
    ],
)
def test_malformed_rows_name_row_and_field(tmp_path, tiny_tokenizer, row, pattern):
    rows = [{"prompt": "ok", "chosen": "c", "rejected": "r"}, row]
    with pytest.raises(DataError, match=pattern):
        make(tmp_path, rows, tiny_tokenizer)


def test_mapped_field_missing_names_the_mapping(tmp_path, tiny_tokenizer):
    with pytest.raises(DataError, match=r"missing field 'chosen' \(mapped from 'good'\)"):
        make(tmp_path, [{"prompt": "p", "chosen": "c", "rejected": "r"}], tiny_tokenizer, columns={"chosen": "good"})


def test_missing_file_and_bad_json_line(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        PreferenceDataModule(tokenizer=tiny_tokenizer, data_path=str(tmp_path / "nope.jsonl")).setup("fit")
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
    path.write_text(f"{good}\n{good}\n{{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 3: not valid JSON"):
        PreferenceDataModule(tokenizer=tiny_tokenizer, data_path=str(path)).setup("fit")


def test_chat_rows_need_a_chat_template(tmp_path, tiny_tokenizer):
    tiny_tokenizer.chat_template = None
    row = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    with pytest.raises(DataError, match="no chat template"):
        make(tmp_path, [row], tiny_tokenizer)


def test_tokenization_is_cached(tmp_path, tiny_tokenizer):
    rows = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r"} for i in range(4)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    modules = [PreferenceDataModule(tokenizer=tiny_tokenizer, data_path=str(path), val_size=0) for _ in range(2)]
    for dm in modules:
        dm.setup("fit")
    first, second = (dm.train_dataset for dm in modules)
    assert first.cache_files and first._fingerprint == second._fingerprint
    other = PreferenceDataModule(tokenizer=tiny_tokenizer, data_path=str(path), val_size=0, max_length=300)
    other.setup("fit")
    assert other.train_dataset._fingerprint != first._fingerprint  # settings key the cache


def test_default_is_the_embedded_demo(tiny_tokenizer):
    dm = PreferenceDataModule(tokenizer=tiny_tokenizer)
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 800
