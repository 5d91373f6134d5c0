"""Issue 21, the data side: data that cannot teach anything is counted and named before training, and compressed
data files load like uncompressed ones, with the same row-numbered errors.

Tokenization matters for identical pairs (two texts can tokenize alike) and for chat echoes (the chat template
renders them), so those cases also run on SmolLM2's real tokenizer (``smollm2_tokenizer``).
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import shutil

import pytest

from lit_align.datamodules import BinaryFeedbackDataModule, PreferenceDataModule, SFTDataModule
from lit_align.datamodules.base import code_fingerprint
from lit_align.datamodules.sources import load_rows
from lit_align.datamodules.tokenize import DataError, repeats_prompt
from tests.conftest import write_jsonl

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def setup(cls, path, tokenizer, **kwargs):
    kwargs.setdefault("val_size", 0)
    dm = cls(tokenizer=tokenizer, data_path=str(path), **kwargs)
    dm.setup("fit")
    return dm


# -- identical pairs ---------------------------------------------------------------------------------------------
def test_identical_pairs_are_counted_with_their_first_rows(tmp_path, tiny_tokenizer, caplog):
    good = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
    same = {"prompt": "Q?", "chosen": " same", "rejected": " same"}
    rows = [good, same, good, same, same, same, same, same, same, good]  # identical at rows 1, 3-8
    with caplog.at_level(logging.WARNING):
        dm = setup(PreferenceDataModule, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer)
    assert len(dm.train_dataset) == 3 and dm.stats["train/chosen_equals_rejected"] == 7
    said = "d.jsonl [train]: 10 rows; 7 chosen_equals_rejected (dropped; rows 2, 4, 5, 6, 7, ...) (rows 1-based)"
    assert said in caplog.text


def test_pairs_that_differ_only_in_a_written_eos_are_identical_as_tokens(tmp_path, smollm2_tokenizer, caplog):
    """SmolLM2's EOS is ``<|im_end|>``: a text completion gets it appended unless it ends with it, so "Paris" and
    "Paris<|im_end|>" are one token sequence: no preference between them."""
    rows = [{"prompt": "Capital of France?", "chosen": " Paris<|im_end|>", "rejected": " Paris"},
            {"prompt": "Capital of Italy?", "chosen": " Rome", "rejected": " Milan"}]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        dm = setup(PreferenceDataModule, write_jsonl(tmp_path / "d.jsonl", rows), smollm2_tokenizer)
    assert len(dm.train_dataset) == 1 and dm.stats["train/chosen_equals_rejected"] == 1
    with pytest.raises(DataError, match=r"d\.jsonl \[train\], row 1 \(1-based\): chosen and rejected are identical as "
                                        r"tokens \(the texts differ only in what tokenizes alike"):  # fmt: skip
        setup(PreferenceDataModule, tmp_path / "d.jsonl", smollm2_tokenizer, identical_pairs="error")


def test_unpaired_identical_pairs_are_dropped_too(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Q?", "chosen": " a", "rejected": " a"}, {"prompt": "Q?", "chosen": " a", "rejected": " b"}]
    dm = setup(BinaryFeedbackDataModule, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer, unpair=True)
    assert len(dm.train_dataset) == 2 and dm.stats["train/chosen_equals_rejected"] == 1


# -- completions that repeat the prompt -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "completion", "echo"),
    [("What is 2+2?", " What is  2+2? ", True),  # whitespace aside
     ("What is 2+2?", "What is 2+2? It is 4.", False),  # starting with the prompt's words is not an echo
     ("What is 2+2?", "", False),  # an empty completion is counted as empty, not as an echo
     (CHAT, [{"role": "assistant", "content": "What is the capital of France?"}], True),
     (CHAT, [{"role": "assistant", "content": "Paris."}], False),
     ([*CHAT, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Italy?"}],
      [{"role": "assistant", "content": "What is the capital of France?"}], False)],  # the LAST user turn counts
)  # fmt: skip
def test_what_repeats_the_prompt(prompt, completion, echo):
    assert repeats_prompt(prompt, completion) is echo


@pytest.mark.parametrize("mode", ["keep", "drop", "error"])
def test_chosen_that_repeats_the_chat_prompt(tmp_path, smollm2_tokenizer, caplog, mode):
    echo = [{"role": "assistant", "content": CHAT[0]["content"]}]
    rows = [{"prompt": CHAT, "chosen": [{"role": "assistant", "content": "Paris."}], "rejected": echo},  # fine
            {"prompt": CHAT, "chosen": echo, "rejected": [{"role": "assistant", "content": "Lyon."}]},
            {"prompt": CHAT, "chosen": [{"role": "assistant", "content": "Paris!"}],
             "rejected": [{"role": "assistant", "content": "Nice."}]}]  # fmt: skip
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    if mode == "error":
        with pytest.raises(DataError, match=r"d\.jsonl \[train\], row 2 \(1-based\): the completion trained toward "
                                            r"repeats the prompt \('What is the capital of France\?'\).*prompt_echoes"):
            setup(PreferenceDataModule, path, smollm2_tokenizer, prompt_echoes=mode)
        return
    with caplog.at_level(logging.WARNING):
        dm = setup(PreferenceDataModule, path, smollm2_tokenizer, prompt_echoes=mode)
    assert len(dm.train_dataset) == (3 if mode == "keep" else 2)
    assert dm.stats["train/completion_repeats_prompt"] == 1  # a rejected echo is a fine negative: not counted
    dropped = "dropped; " if mode == "drop" else ""
    assert f"1 completion_repeats_prompt ({dropped}row 2) (rows 1-based)" in caplog.text


def test_only_desirable_echoes_count_in_binary_data_and_sft_checks_every_completion(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Say hi", "completion": "Say hi", "label": True},
            {"prompt": "Say hi", "completion": "Say hi", "label": False},  # an undesirable echo: a fine example
            {"prompt": "Say hi", "completion": "hi", "label": False},
            {"prompt": "Say hi", "completion": "Hello!", "label": True}]  # fmt: skip
    dm = setup(BinaryFeedbackDataModule, write_jsonl(tmp_path / "b.jsonl", rows), tiny_tokenizer, prompt_echoes="drop")
    assert dm.stats["train/completion_repeats_prompt"] == 1 and len(dm.train_dataset) == 3
    sft = [{"prompt": "Say hi", "completion": "Say hi"}, {"prompt": "Say hi", "completion": "hi"}]
    dm = setup(SFTDataModule, write_jsonl(tmp_path / "s.jsonl", sft), tiny_tokenizer)
    assert dm.stats["train/completion_repeats_prompt"] == 1 and len(dm.train_dataset) == 2  # kept by default


def test_prompt_echoes_option_is_checked(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"--data.prompt_echoes='warn': keep, drop or error"):
        PreferenceDataModule(tokenizer=tiny_tokenizer, prompt_echoes="warn")


# -- binary data of one class -----------------------------------------------------------------------------------------
def test_binary_data_of_a_single_class_is_refused_unless_allowed(tmp_path, smollm2_tokenizer):
    rows = [{"prompt": CHAT, "completion": [{"role": "assistant", "content": f"Paris {i}."}], "label": 1}
            for i in range(4)]  # fmt: skip
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d\.jsonl: the training split holds only desirable examples \(train: 4 "
                                        r"desirable, 0 undesirable\).*no contrast.*'label' column.*"
                                        r"--data.allow_single_class true"):  # fmt: skip
        setup(BinaryFeedbackDataModule, path, smollm2_tokenizer)
    with pytest.warns(UserWarning, match=r"only desirable examples.*trained anyway \(--data.allow_single_class true"):
        dm = setup(BinaryFeedbackDataModule, path, smollm2_tokenizer, allow_single_class=True)
    assert dm.stats["train/desirable"] == 4 and dm.stats["train/undesirable"] == 0


def test_a_label_column_read_from_the_wrong_column_is_refused_by_name(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Q", "completion": " a", "label": i % 2, "flag": 0} for i in range(4)]
    with pytest.raises(DataError, match=r"only undesirable examples.*the 'flag' column holds the labels"):
        setup(BinaryFeedbackDataModule, write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer,
              columns={"label": "flag"})  # fmt: skip


# -- compressed files ---------------------------------------------------------------------------------------------
ROWS = [{"prompt": f"Q{i}?", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(6)]
OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def compress(path, suffix):
    target = path.with_name(path.name + suffix)
    with path.open("rb") as source, OPENERS[suffix](target, "wb") as out:
        shutil.copyfileobj(source, out)
    return target


def as_json_array(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS))
    return path


def as_csv(tmp_path):
    path = tmp_path / "rows.csv"
    lines = [f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in ROWS]
    path.write_text("prompt,chosen,rejected\n" + "".join(lines))
    return path


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
@pytest.mark.parametrize("make", [lambda p: write_jsonl(p / "rows.jsonl", ROWS), as_json_array, as_csv],
                         ids=["jsonl", "json", "csv"])  # fmt: skip
def test_compressed_files_load_like_the_uncompressed_file(tmp_path, smollm2_tokenizer, make, suffix):
    plain = make(tmp_path)
    packed = compress(plain, suffix)
    expected = setup(PreferenceDataModule, plain, smollm2_tokenizer).train_dataset
    got = setup(PreferenceDataModule, packed, smollm2_tokenizer).train_dataset
    assert got.to_dict() == expected.to_dict() and len(got) == len(ROWS)


def test_compressed_files_give_the_same_row_numbered_errors(tmp_path, tiny_tokenizer):
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz, line 2: not valid JSON"):
        load_rows(str(compress(bad_line, ".gz")), "train")
    bad_row = write_jsonl(tmp_path / "row.jsonl", [ROWS[0], {**ROWS[1], "chosen": 7}])
    for path in (bad_row, compress(bad_row, ".gz")):
        with pytest.raises(DataError, match=rf"{path.name} \[train\], row 2 \(1-based\), field 'chosen': expected a"):
            setup(PreferenceDataModule, path, tiny_tokenizer)


def test_a_file_that_is_not_what_its_compression_suffix_says_is_named(tmp_path):
    (tmp_path / "rows.jsonl.gz").write_text(json.dumps(ROWS[0]) + "\n")  # not compressed at all
    with pytest.raises(DataError, match=r"rows\.jsonl\.gz: not readable as gzip-compressed \.jsonl data "
                                        r"\(BadGzipFile: .*compress the file again, or give it uncompressed"):
        load_rows(str(tmp_path / "rows.jsonl.gz"), "train")
    cut = compress(write_jsonl(tmp_path / "cut.jsonl", ROWS * 50), ".xz")
    cut.write_bytes(cut.read_bytes()[:100])
    with pytest.raises(DataError, match=r"cut\.jsonl\.xz: not readable as xz-compressed \.jsonl data \(EOFError"):
        load_rows(str(cut), "train")
    with pytest.raises(DataError, match=r"x\.parquet\.gz: a compressed Parquet file; Parquet compresses inside"):
        (tmp_path / "x.parquet.gz").write_bytes(b"x")
        load_rows(str(tmp_path / "x.parquet.gz"), "train")


@pytest.mark.parametrize("codec", ["snappy", "gzip", "zstd", "brotli", "lz4", "none"])
def test_parquet_with_any_compression_loads(tmp_path, tiny_tokenizer, codec):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, compression=codec)
    plain = setup(PreferenceDataModule, write_jsonl(tmp_path / "rows.jsonl", ROWS), tiny_tokenizer).train_dataset
    assert setup(PreferenceDataModule, path, tiny_tokenizer).train_dataset.to_dict() == plain.to_dict()


def test_a_folder_of_compressed_files(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    compress(write_jsonl(folder / "train.jsonl", ROWS), ".gz")
    (folder / "train.jsonl").unlink()
    assert len(load_rows(str(folder), "train")) == len(ROWS)


# -- the tokenization cache --------------------------------------------------------------------------------------
def test_the_cache_fingerprint_covers_the_code(tmp_path):
    class Mine(PreferenceDataModule):  # a user's DataModule: its own file counts too
        pass

    assert code_fingerprint(PreferenceDataModule) == code_fingerprint(PreferenceDataModule)
    assert code_fingerprint(Mine) != code_fingerprint(PreferenceDataModule)
