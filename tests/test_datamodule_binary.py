"""BinaryFeedbackDataModule: formats, label coercion, field mapping, unpairing, KL pairs, batch-size guard."""

from __future__ import annotations

import pytest
import torch

from lit_align.datamodules.binary import BinaryFeedbackDataModule, coerce_label
from lit_align.datamodules.tokenize import IGNORE_INDEX, DataError
from tests.conftest import write_jsonl


@pytest.fixture
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def make(tokenizer, path, **kwargs) -> BinaryFeedbackDataModule:
    kwargs = {"val_size": 0, "batch_size": 2, **kwargs}
    dm = BinaryFeedbackDataModule(tokenizer=tokenizer, data_path=str(path), **kwargs)
    dm.setup("fit")
    return dm


def completion_text(tokenizer, batch: dict, prefix: str, i: int) -> str:
    labels = batch[f"{prefix}labels"][i]
    return tokenizer.decode(labels[labels != IGNORE_INDEX])


def prompt_text(tokenizer, batch: dict, prefix: str, i: int) -> str:
    ids, labels = batch[f"{prefix}input_ids"][i], batch[f"{prefix}labels"][i]
    mask = batch[f"{prefix}attention_mask"][i].bool() & (labels == IGNORE_INDEX)
    return tokenizer.decode(ids[mask])


PLAIN = [
    {"prompt": "Q: 2+2?", "completion": " 4", "label": True},
    {"prompt": "Q: capital of France?", "completion": " Berlin", "label": "bad"},
    {"prompt": "Q: 3*3?", "completion": " 9", "label": 1},
]


def test_plain_text_rows_schema_and_eos(tokenizer, tmp_path):
    """Plain text: EOS appended to the completion, labels -100 on prompt and padding, bool is_desirable."""
    dm = make(tokenizer, write_jsonl(tmp_path / "d.jsonl", PLAIN), batch_size=3)
    batch = dm.collate([dm.train_dataset[i] for i in range(3)])
    assert set(batch) == {
        "input_ids", "attention_mask", "labels", "is_desirable", "kl_input_ids", "kl_attention_mask", "kl_labels",
        "row_index", "kl_row_index",  # the rows of the examples and of their KL completions (cached reference values)
    }  # fmt: skip
    assert batch["kl_row_index"].tolist() == batch["row_index"].roll(1).tolist()
    assert batch["is_desirable"].dtype == torch.bool and batch["is_desirable"].tolist() == [True, False, True]
    eos = tokenizer.eos_token
    assert [completion_text(tokenizer, batch, "", i) for i in range(3)] == [f" 4{eos}", f" Berlin{eos}", f" 9{eos}"]
    assert prompt_text(tokenizer, batch, "", 1) == "Q: capital of France?"
    padded = batch["attention_mask"] == 0
    assert (batch["labels"][padded] == IGNORE_INDEX).all()
    assert (batch["input_ids"][padded] == tokenizer.pad_token_id).all()


def test_conversational_rows_use_chat_template(tokenizer, tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}],
         "label": False},
        {"prompt": [{"role": "user", "content": "bye"}], "completion": [{"role": "assistant", "content": "ciao"}],
         "label": "true"},
    ]  # fmt: skip
    dm = make(tokenizer, write_jsonl(tmp_path / "c.jsonl", rows))
    batch = dm.collate([dm.train_dataset[0], dm.train_dataset[1]])
    assert prompt_text(tokenizer, batch, "", 0) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert completion_text(tokenizer, batch, "", 0) == "hello<|im_end|>\n"
    assert batch["is_desirable"].tolist() == [False, True]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (1, True), (0, False), (1.0, True), ("good", True), ("BAD", False),
     (" True ", True), ("false", False)],
)  # fmt: skip
def test_label_coercion(value, expected):
    assert coerce_label(value, "here") is expected


@pytest.mark.parametrize("bad", ["maybe", 2, -1, None, "yes", 0.5, [1]])
def test_bad_label_names_row_field_and_value(tokenizer, tmp_path, bad):
    rows = [PLAIN[0], {"prompt": "p", "completion": "c", "label": bad}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        make(tokenizer, path)
    message = str(err.value)
    assert "bad.jsonl" in message and "row 2 (1-based)" in message and "field 'label'" in message
    assert repr(bad) in message


def test_field_mapping(tokenizer, tmp_path):
    rows = [{"question": r["prompt"], "answer": r["completion"], "thumbs_up": r["label"]} for r in PLAIN]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    dm = make(tokenizer, path, columns={"prompt": "question", "completion": "answer", "label": "thumbs_up"})
    assert dm.train_dataset["label"] == [True, False, True]
    with pytest.raises(DataError, match=r"missing field 'label' \(mapped from 'thumbs'\)"):
        make(tokenizer, path, columns={"prompt": "question", "completion": "answer", "label": "thumbs"})


def test_unpair_preference_rows(tokenizer, tmp_path):
    """Each pair gives a desirable (chosen) and an undesirable (rejected) example with the same prompt; HH-style
    rows without a prompt field get it split off; the validation split is carved by pairs."""
    rows = [{"prompt": f"Q{i}:", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(4)]
    rows.append({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"})
    dm = make(tokenizer, write_jsonl(tmp_path / "p.jsonl", rows), unpair=True)
    assert len(dm.train_dataset) == 10 and dm.train_dataset["label"] == [True, False] * 5
    batch = dm.collate([dm.train_dataset[i] for i in (8, 9)])
    assert prompt_text(tokenizer, batch, "", 0) == prompt_text(tokenizer, batch, "", 1) == "\n\nHuman: hi\n\nAssistant:"
    eos = tokenizer.eos_token
    assert [completion_text(tokenizer, batch, "", i) for i in (0, 1)] == [f" hello{eos}", f" go away{eos}"]
    assert (dm.stats["train/desirable"], dm.stats["train/undesirable"]) == (5, 5)
    split = make(tokenizer, write_jsonl(tmp_path / "p.jsonl", rows), unpair=True, val_size=2)
    assert len(split.train_dataset) == 6 and len(split.val_dataset) == 4
    val_prompts = {tuple(p) for p in split.val_dataset["prompt_ids"]}
    assert val_prompts.isdisjoint(tuple(p) for p in split.train_dataset["prompt_ids"])


def test_kl_pairs_rotate_completions_like_trl(tokenizer, tmp_path):
    """kl row i = prompt_i + completion_{(i-1) mod B}, token for token what TRL 1.16's collator builds from its
    `KL_completion_ids = [c[-1]] + c[:-1]`."""
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    dm = make(tokenizer, write_jsonl(tmp_path / "d.jsonl", PLAIN), batch_size=3)
    rows = [dm.train_dataset[i] for i in range(3)]
    batch = dm.collate(rows)
    eos = tokenizer.eos_token
    assert [completion_text(tokenizer, batch, "kl_", i) for i in range(3)] == [f" 9{eos}", f" 4{eos}", f" Berlin{eos}"]
    assert [prompt_text(tokenizer, batch, "kl_", i) for i in range(3)] == [r["prompt"] for r in PLAIN]
    completions = [r["completion_ids"] for r in rows]
    trl_rows = [{**r, "KL_completion_ids": kl} for r, kl in zip(rows, completions[-1:] + completions[:-1], strict=True)]
    trl = DataCollatorForUnpairedPreference(pad_token_id=tokenizer.pad_token_id)(trl_rows)
    for ours, theirs in (("", ""), ("kl_", "KL_")):
        torch.testing.assert_close(batch[f"{ours}input_ids"], trl[f"{theirs}input_ids"])
        torch.testing.assert_close(batch[f"{ours}attention_mask"], trl[f"{theirs}attention_mask"])
        torch.testing.assert_close((batch[f"{ours}labels"] != IGNORE_INDEX).long(), trl[f"{theirs}completion_mask"])


def test_kl_completion_cut_to_max_length(tokenizer, tmp_path):
    rows = [{"prompt": "a", "completion": "x" * 30, "label": True}, {"prompt": "b" * 10, "completion": "y", "label": 0}]
    dm = make(tokenizer, write_jsonl(tmp_path / "long.jsonl", rows), max_length=20, max_prompt_length=12)
    batch = dm.collate([dm.train_dataset[0], dm.train_dataset[1]])
    assert batch["kl_attention_mask"].sum(-1).tolist() == [1 + 2, 20]  # "a" + "y</s>"; "b"*10 + 10 of the x's
    assert dm.stats["train/completion_truncated"] == 1


def test_kl_pair_of_a_truncated_completion_and_a_shorter_prompt_matches_trl_collator(tokenizer, tmp_path):
    """A completion cut to fit its own LONG prompt, paired with a SHORT prompt: its KL sequence is cut once from the
    uncut completion, token for token what TRL 1.16's collator builds from the raw (uncut) rows, so it fills
    max_length (the old double cut left it at 2 + 8 tokens)."""
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    rows = [{"prompt": "s" * 2, "completion": "x" * 30, "label": True},
            {"prompt": "L" * 12, "completion": "y" * 30, "label": False}]  # fmt: skip
    dm = make(tokenizer, write_jsonl(tmp_path / "trunc.jsonl", rows), max_length=20, max_prompt_length=None)
    batch = dm.collate([dm.train_dataset[0], dm.train_dataset[1]])
    assert batch["attention_mask"].sum(-1).tolist() == [20, 20] and dm.stats["train/completion_truncated"] == 2
    assert batch["kl_attention_mask"].sum(-1).tolist() == [20, 20]  # prompt 0 (2 tokens) + 18 of the y's
    raw = [tokenizer(r["prompt"] + r["completion"] + tokenizer.eos_token)["input_ids"] for r in rows]
    prompts = [tokenizer(r["prompt"])["input_ids"] for r in rows]
    completions = [ids[len(p) :] for ids, p in zip(raw, prompts, strict=True)]
    rotated = completions[-1:] + completions[:-1]  # TRL's KL_completion_ids, from the uncut completions
    trl_rows = [{"prompt_ids": p, "completion_ids": c, "KL_completion_ids": kl, "label": r["label"]}
                for p, c, kl, r in zip(prompts, completions, rotated, rows, strict=True)]  # fmt: skip
    trl = DataCollatorForUnpairedPreference(pad_token_id=tokenizer.pad_token_id, max_length=20)(trl_rows)
    for ours, theirs in (("", ""), ("kl_", "KL_")):
        assert torch.equal(batch[f"{ours}input_ids"], trl[f"{theirs}input_ids"])
        assert torch.equal(batch[f"{ours}attention_mask"], trl[f"{theirs}attention_mask"])
        assert torch.equal((batch[f"{ours}labels"] != IGNORE_INDEX).long(), trl[f"{theirs}completion_mask"])


def test_batch_size_one_refused(tokenizer):
    with pytest.raises(ValueError, match=r"--data.batch_size=1: BinaryFeedbackDataModule needs batch_size >= 2"):
        BinaryFeedbackDataModule(tokenizer=tokenizer, batch_size=1)
    with pytest.raises(ValueError, match=r"--data.eval_batch_size=1: .*needs eval_batch_size >= 2"):
        BinaryFeedbackDataModule(tokenizer=tokenizer, batch_size=4, eval_batch_size=1)


def test_demo_data_counts_logged_once(tokenizer, caplog):
    """The default data is the project's demo feedback; counts land in stats and are logged once."""
    with caplog.at_level("INFO"):
        dm = BinaryFeedbackDataModule(tokenizer=tokenizer, max_samples=50, val_size=10)
        dm.setup("fit")
        dm.setup("fit")
    assert dm.stats["train/desirable"] + dm.stats["train/undesirable"] == 40
    assert dm.stats["val/desirable"] + dm.stats["val/undesirable"] == 10
    assert dm.stats["train/desirable"] > 0 and dm.stats["train/undesirable"] > 0
    assert sum("desirable" in r.getMessage() for r in caplog.records) == 1
