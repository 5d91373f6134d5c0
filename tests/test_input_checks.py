"""Issue 11's classes of bad input, one test per case: what used to be trained on silently, what failed late, and what
failed with a vague message. Each error names the file and row/line/field, or the option by its CLI name, and
when the failure is in the data or the options no model weights were loaded: ``built_models`` counts every
Hugging Face model constructed (``PreTrainedModel.__init__``), and the recipe cases run through
``lit_align.commands.cli.run``.

Row numbers are 0-based dataset rows; line numbers are 1-based file lines.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import PreTrainedModel

from lit_align.algorithms import DPO, GRPO, IPO, KTO, ORPO, RLOO, SimPO
from lit_align.commands.cli import check_checkpoint, run
from lit_align.datamodules import (
    BinaryFeedbackDataModule,
    DataError,
    PreferenceDataModule,
    PromptDataModule,
    SFTDataModule,
)
from lit_align.datamodules.sources import load_rows
from tests.conftest import REPO, write_jsonl

TINY = REPO / "recipes" / "configs" / "tiny.yaml"
QUIET = ["--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"]
CHAT = [{"role": "user", "content": "Hi?"}]
YES, NO = [{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no"}]


@pytest.fixture
def built_models(monkeypatch) -> list[str]:
    """The class names of every Hugging Face model constructed during the test (from_pretrained included)."""
    built: list[str] = []
    original = PreTrainedModel.__init__

    def counting(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "__init__", counting)
    return built


def test_the_weight_counter_sees_a_model_load(built_models):
    """The fixture the other tests rely on: building a module with a policy by name counts its model."""
    DPO(policy="tiny-llama")
    assert "LlamaForCausalLM" in built_models


def recipe(algo: str, *args: str, model=DPO, data=PreferenceDataModule):
    """``python recipes/<algo>.py fit --config tiny.yaml <args>`` in process, without logger or checkpoints."""
    default = REPO / "recipes" / "configs" / f"{algo}.yaml"
    return run(model, data, default, args=["fit", "--config", str(TINY), *QUIET, *args])


def prepared(cls, tokenizer, rows, tmp_path, name="d.jsonl", **kwargs):
    dm = cls(tokenizer=tokenizer, data_path=str(write_jsonl(tmp_path / name, rows)), val_size=0, **kwargs)
    dm.setup("fit")
    return dm


# --- silently trained on, now explicit --------------------------------------------------------------------------


def test_identical_pairs_are_dropped_counted_and_warned(tmp_path, tiny_tokenizer, caplog):
    rows = [{"prompt": "p", "chosen": " a", "rejected": " b"}, {"prompt": "q", "chosen": " same", "rejected": " same"}]
    dm = prepared(PreferenceDataModule, tiny_tokenizer, rows, tmp_path)
    assert len(dm.train_dataset) == 1 and dm.stats["train/chosen_equals_rejected"] == 1
    assert "1 chosen_equals_rejected (dropped; row 2) (rows 1-based)" in caplog.text
    assert "d.jsonl [train]" in caplog.text


def test_identical_pairs_error_when_asked(tmp_path, built_models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": "p", "chosen": " a", "rejected": " b"}, {"prompt": "q", "chosen": [], "rejected": []}]
    rows[1] = {"prompt": CHAT, "chosen": YES, "rejected": YES}
    write_jsonl(tmp_path / "pairs.jsonl", [rows[1], rows[1]])
    expected = (
        r"pairs\.jsonl \[train\], row 1 \(1-based\): chosen and rejected are identical.*"
        r"--data.identical_pairs drop"
    )
    with pytest.raises(DataError, match=expected):
        recipe("dpo", "--data.data_path", "pairs.jsonl", "--data.identical_pairs", "error")
    assert built_models == []


def test_pairs_identical_once_truncated_are_dropped(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "p", "chosen": " " + "x" * 30 + "A", "rejected": " " + "x" * 30 + "B"}]
    dm = PreferenceDataModule(tokenizer=tiny_tokenizer, data_path=str(write_jsonl(tmp_path / "d.jsonl", rows * 2)),
                              val_size=0, max_length=12, max_prompt_length=None, identical_pairs="drop")  # fmt: skip
    with pytest.raises(DataError, match="no training rows are left"):
        dm.setup("fit")
    assert dm.stats["train/chosen_equals_rejected"] == 2


@pytest.mark.parametrize(
    ("cls", "columns", "fields"),
    [(PreferenceDataModule, {"chosen": "answer", "rejected": "answer"}, "'chosen' and 'rejected'"),
     (PreferenceDataModule, {"prompt": "chosen"}, "'chosen' and 'prompt'"),
     (BinaryFeedbackDataModule, {"completion": "prompt"}, "'completion' and 'prompt'"),
     (PromptDataModule, {"answer": "prompt"}, "'answer' and 'prompt'")],
)  # fmt: skip
def test_two_fields_from_one_column_are_refused(tiny_tokenizer, built_models, cls, columns, fields):
    with pytest.raises(ValueError, match=rf"--data.columns=.*: {fields} would both be read from the column"):
        cls(tokenizer=tiny_tokenizer, columns=columns)
    assert built_models == []


def test_unknown_field_in_columns_lists_the_fields(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"--data.columns=.*'chosn' is not a field of PreferenceDataModule; the"):
        PreferenceDataModule(tokenizer=tiny_tokenizer, columns={"chosn": "good"})


@pytest.mark.parametrize(
    ("completion", "message"),
    [([{"role": "user", "content": "yes"}], r"field 'chosen': message 1 of the completion has role 'user'"),
     ([*YES, {"role": "system", "content": "x"}], r"field 'chosen': message 2 of the completion has role 'system'")],
    ids=["user-turn", "system-after-answer"],
)  # fmt: skip
def test_chat_completions_must_be_assistant_turns(tmp_path, tiny_tokenizer, completion, message):
    rows = [{"prompt": CHAT, "chosen": YES, "rejected": NO}, {"prompt": CHAT, "chosen": completion, "rejected": NO}]
    with pytest.raises(DataError, match=r"d\.jsonl \[train\], row 2 \(1-based\), " + message):
        prepared(PreferenceDataModule, tiny_tokenizer, rows, tmp_path)


@pytest.mark.parametrize("repeated", ["whole-prompt", "last-user-turn"])
def test_completion_repeating_the_prompt_turns_loses_them_and_is_counted(tmp_path, tiny_tokenizer, repeated):
    system = [{"role": "system", "content": "Be brief."}]
    prompt = system + CHAT
    prefix = prompt if repeated == "whole-prompt" else CHAT
    clean = prepared(PreferenceDataModule, tiny_tokenizer, [{"prompt": prompt, "chosen": YES, "rejected": NO}],
                     tmp_path, name="clean.jsonl")  # fmt: skip
    rows = [{"prompt": prompt, "chosen": prefix + YES, "rejected": prefix + NO}]
    dm = prepared(PreferenceDataModule, tiny_tokenizer, rows, tmp_path)
    assert dm.stats["train/prompt_turns_removed"] == 2
    assert dm.train_dataset[0] == clean.train_dataset[0]  # the user's words are not trained on
    sft_rows = [{"prompt": prompt, "completion": prefix + YES}]
    sft = prepared(SFTDataModule, tiny_tokenizer, sft_rows, tmp_path, name="sft.jsonl")
    assert sft.stats["train/prompt_turns_removed"] == 1


def test_implicit_prompt_needs_a_turn_marker(tmp_path, built_models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    row = {"chosen": "Tell me a joke. Sure: one", "rejected": "Tell me a joke. No"}
    write_jsonl(tmp_path / "nomarker.jsonl", [row])
    expected = (
        r"nomarker\.jsonl \[train\], row 1 \(1-based\): no 'prompt' field, and the text chosen and "
        r"rejected share has no turn marker.*--data.implicit_prompt common_prefix"
    )
    with pytest.raises(DataError, match=expected):
        recipe("dpo", "--data.data_path", "nomarker.jsonl")
    assert built_models == []


@pytest.mark.parametrize(
    ("chosen", "rejected", "mode", "prompt"),
    [("\n\nHuman: hi\n\nAssistant: hello", "\n\nHuman: hi\n\nAssistant: go", "turn_marker",
      "\n\nHuman: hi\n\nAssistant:"),
     ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>"
      "assistant\ngo", "turn_marker", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
     ("Tell me a joke. Sure: one", "Tell me a joke. No", "common_prefix", "Tell me a joke.")],
    ids=["hh-marker", "chatml-marker", "common-prefix-option"],
)  # fmt: skip
def test_implicit_prompt_split_at_a_marker_or_by_option(tmp_path, tiny_tokenizer, chosen, rejected, mode, prompt):
    dm = prepared(PreferenceDataModule, tiny_tokenizer, [{"chosen": chosen, "rejected": rejected}], tmp_path,
                  implicit_prompt=mode)  # fmt: skip
    assert tiny_tokenizer.decode(dm.train_dataset[0]["prompt_ids"]) == prompt


def test_reward_that_never_scores_warns_naming_the_function(tmp_path):
    from lit_align.rewards.reward_set import RewardOptions, RewardSet
    from tests.online_helpers import length_reward, unscorable_reward

    rewards = RewardSet(RewardOptions(reward_funcs=[unscorable_reward, length_reward]))
    nan_and_some = torch.tensor([[float("nan"), 0.3], [float("nan"), 0.0]])
    with pytest.warns(UserWarning, match=r"reward function 'unscorable_reward' gave no usable reward on the first 5 "
                                         r"training rollouts") as record:  # fmt: skip
        for _ in range(RewardSet.DEAD_REWARD_ROLLOUTS + 2):
            rewards._track(nan_and_some, training=True)
    assert not any("length_reward" in str(w.message) for w in record)  # the one that scores is not named
    rewards.start_validation()
    rewards._track(torch.tensor([[float("nan"), 0.0], [float("nan"), 0.0]]), training=False)
    with pytest.warns(UserWarning, match=r"'length_reward' gave no usable reward on a whole validation pass"):
        rewards.end_validation()


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [(DPO, {"beta": -0.1}, r"--model.beta=-0.1: β must be > 0"),
     (DPO, {"beta": 0.0}, r"--model.beta=0.0: β must be > 0 \(0: a constant loss"),
     (IPO, {"beta": 0.0}, r"--model.beta=0.0: β \(the target gap is 1/\(2β\)\) must be > 0"),
     (SimPO, {"beta": -2.0}, r"--model.beta=-2.0"),
     (ORPO, {"beta": 0.0}, r"--model.beta=0.0: λ .*use SFT"),
     (KTO, {"beta": 0.0}, r"--model.beta=0.0"),
     (DPO, {"label_smoothing": 0.5}, r"--model.label_smoothing=0.5: ε must be in \[0, 0.5\)"),
     (SimPO, {"label_smoothing": 0.7}, r"--model.label_smoothing=0.7: ε must be in \[0, 0.5\)"),
     (GRPO, {"num_generations": 1}, r"--model.num_generations=1: at least 2: the advantage is each reward minus"),
     (RLOO, {"num_generations": 1}, r"--model.num_generations=1: at least 2: each completion's baseline"),
     (GRPO, {"sampling": {"temperature": 0.0}}, r"--model.sampling.temperature=0.0: must be > 0"),
     (GRPO, {"beta": -0.04}, r"--model.beta=-0.04: β >= 0"),
     (DPO, {"learning_rate": 0.0}, r"--model.learning_rate=0.0: must be > 0")],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)  # fmt: skip
def test_settings_that_cannot_learn_fail_before_weights_load(built_models, cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(policy="tiny-llama", **kwargs)
    assert built_models == []


def test_bad_model_option_through_the_recipe_fails_before_weights(tmp_path, built_models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"--model.beta=0.0"):
        recipe("simpo", "--model.beta", "0", model=SimPO)
    assert built_models == []


# --- late failures, now at setup --------------------------------------------------------------------------------


def grpo_recipe(tmp_path, rows, *args):
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    return recipe("grpo", "--data.data_path", "prompts.jsonl", "--data.val_size", "0", *args, model=GRPO,
                  data=PromptDataModule)  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "func", "message"),
    [([{"prompt": "2+2?", "solution": "4"}], "needs_answer",
      r"reward function 'needs_answer' needs the argument 'answer', and the data has no column of that name \(its "
      r"columns: solution\); map one to it with --data.columns '\{\"answer\": \"<column>\"\}'"),
     ([{"prompt": "2+2?", "answer": "4"}], "no_kwargs_reward",
      r"reward function 'no_kwargs_reward' takes no argument 'answer' \(a column of the data\) and no \*\*kwargs"),
     ([{"prompt": "2+2?", "answer": "4"}], "crashing_reward",
      r"reward function 'crashing_reward' failed when called at setup on the first 4 rows of prompts\.jsonl.*KeyError"),
     ([{"prompt": "2+2?", "completions": "4"}], "needs_answer",
      r"prompts\.jsonl: the data column 'completions' has the name of an argument every reward function receives")],
    ids=["missing-column", "no-kwargs", "raises", "column-named-like-an-argument"],
)  # fmt: skip
def test_reward_functions_bound_to_the_data_before_the_model(tmp_path, built_models, monkeypatch, rows, func, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        grpo_recipe(tmp_path, rows * 4, "--model.rewards.reward_funcs", f"[tests.online_helpers:{func}]")
    assert built_models == []


def test_a_renamed_column_reaches_the_reward_function(tmp_path, tiny_tokenizer):
    """``--data.columns '{"answer": "completions"}'`` (a column named like an argument, renamed) binds."""
    from lit_align.rewards.reward_set import bind_reward_funcs
    from tests.online_helpers import needs_answer

    rows = [{"prompt": "2+2?", "completions": "4"}]
    dm = prepared(PromptDataModule, tiny_tokenizer, rows, tmp_path, columns={"answer": "completions"})
    bind_reward_funcs([needs_answer], ["needs_answer"], dm)
    assert dm.collate([dm.train_dataset[0]])["answer"] == ["4"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--data.batch_size", "0"], r"--data.batch_size=0: rows per batch must be at least 1"),
     (["--data.max_samples", "0"], r"--data.max_samples=0: use at least 1 row"),
     (["--data.val_size", "500"], r"arithmetic_prompts\.jsonl: --data.val_size=500 leaves no training rows: the data "
                                  r"has 40 usable rows"),
     (["--model.sampling.temperature", "0"], r"--model.sampling.temperature=0.0: must be > 0")],
    ids=["batch_size", "max_samples", "val_size", "temperature"],
)  # fmt: skip
def test_options_fail_before_the_model_through_the_recipe(tmp_path, built_models, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, DataError), match=message):
        recipe("grpo", *args, model=GRPO, data=PromptDataModule)
    assert built_models == []


def test_val_size_two_means_two_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = recipe("dpo", "--data.val_size", "2", "--trainer.max_steps", "1")
    assert len(cli.datamodule.val_dataset) == 2 and len(cli.datamodule.train_dataset) == 38
    assert cli.datamodule is cli.prepared_datamodule  # the run used the DataModule set up before the model


# --- messages that say what to fix ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("dup.jsonl", b'{"prompt": "a", "prompt": "b", "chosen": "c", "rejected": "d"}\n',
      r"dup\.jsonl, line 1: duplicate key 'prompt' in one object"),
     ("dup.json", b'[{"prompt": "a", "chosen": "c", "rejected": "d"}, {"chosen": "c", "chosen": "e"}]',
      r"dup\.json: duplicate key 'chosen' in one object"),
     ("big.jsonl", b'{"prompt": "a", "chosen": "c", "rejected": "d"}\n{"prompt": "a", "margin": 1e400}\n',
      r"big\.jsonl, line 2: field 'margin': the number 1e400 is too large for a 64-bit float"),
     ("nan.jsonl", b'{"prompt": "a", "chosen": "c", "rejected": "d", "margin": NaN}\n',
      r"nan\.jsonl, line 1: NaN is not a JSON value"),
     ("ragged.csv", b"prompt,chosen,rejected\na,b,c\nd,e,f,g\n",
      r"ragged\.csv, line 3: 4 fields, but the header has 3 \(prompt, chosen, rejected\)"),
     ("latin.csv", b"prompt,chosen,rejected\na,b,c\nd,\xe9,f\n", r"latin\.csv, line 3: not UTF-8 text \(byte 0xe9"),
     ("empty.json", b"", r"empty\.json: the file has no rows \(it is empty\)"),
     ("emptyarray.json", b"[]", r"emptyarray\.json: the file has no rows \(an empty array\)"),
     ("array.jsonl", b'[{"prompt": "a", "chosen": "c", "rejected": "d"}]\n',
      r"array\.jsonl: a JSON array, not JSON lines \(one object per line\): rename the file to \.json"),
     ("deep.jsonl", b'{"prompt": "a", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
      r"deep\.jsonl, line 1: nested deeper than a JSON reader allows")],
    ids=lambda v: v if isinstance(v, str) and "." in v and "\\" not in v else None,
)  # fmt: skip
def test_malformed_files_name_the_file_line_and_cause(tmp_path, tiny_tokenizer, built_models, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        PreferenceDataModule(tokenizer=tiny_tokenizer, data_path=str(tmp_path / name), val_size=0).setup("fit")
    assert built_models == []


def test_datasets_errors_keep_their_root_cause(tmp_path, monkeypatch):
    from lit_align.datamodules import sources

    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=r"d\.parquet: not a Parquet file \(ArrowInvalid: "):
        load_rows(str(path), "train")  # our own check, from the file's footer
    monkeypatch.setitem(sources.CHECKS, ".parquet", lambda path: None)  # what datasets says, without it
    with pytest.raises(DataError) as info:
        load_rows(str(path), "train")
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith(f"{path}: could not be read as parquet: ")
    assert "DatasetGenerationError" not in first_line


def test_folders_and_extensionless_paths_get_their_own_messages(tmp_path, tiny_tokenizer):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty: a folder without data files .*it holds: notes\.txt"):
        load_rows(str(tmp_path / "empty"), "train")
    (tmp_path / "rows").mkdir()
    write_jsonl(tmp_path / "rows" / "train.jsonl", [{"prompt": "a", "chosen": " b", "rejected": " c"}] * 3)
    assert len(load_rows(str(tmp_path / "rows"), "train")) == 3
    (tmp_path / "noext").write_text(json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(DataError, match=r"noext: a local file without a known extension \(none\).*rename it to"):
        load_rows(str(tmp_path / "noext"), "train")
    with pytest.raises(FileNotFoundError, match=r"Data file or folder not found: 'data/no/such'"):
        load_rows("data/no/such", "train")


def test_hub_dataset_name_offline_is_refused_without_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = (
        r"'no_such_dataset_xyz': no such local file or folder, and not in the local "
        r"hub cache; HF_HUB_OFFLINE=1 is set, so no download was attempted"
    )
    with pytest.raises(DataError, match=expected):
        load_rows("no_such_dataset_xyz", "train")


def write_checkpoints(tmp_path):
    import os

    class Hostile:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    torch.save({"x": Hostile()}, tmp_path / "hostile.ckpt")
    torch.save(torch.zeros(2), tmp_path / "tensor.ckpt")


@pytest.mark.parametrize(
    ("name", "reason"),
    [("text.ckpt", "not a PyTorch checkpoint file"), ("hostile.ckpt", r"it would run code \(posix.system\), which is "
     "refused"), ("tensor.ckpt", "a PyTorch file, but not a Lightning checkpoint"), ("missing.ckpt", "no such file")],
)  # fmt: skip
def test_a_ckpt_path_that_is_no_checkpoint_names_the_file(tmp_path, built_models, monkeypatch, name, reason):
    monkeypatch.chdir(tmp_path)
    write_checkpoints(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        recipe("dpo", "--ckpt_path", name)
    message = str(info.value)
    assert message.startswith(f"--ckpt_path {name}") and pytest.importorskip("re").search(reason, message), message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert built_models == []


def test_real_checkpoint_passes_the_check(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "global_step": 3}, tmp_path / "ok.ckpt")
    check_checkpoint(str(tmp_path / "ok.ckpt"))
    check_checkpoint("last")  # Lightning's own names are Lightning's business


@pytest.mark.parametrize(
    ("policy", "message"),
    [("smollm3", r"'smollm3' is not a preset \(tiny-llama, smollm2-135m-instruct\).*HF_HUB_OFFLINE=1 is set, so no "
                 r"download was attempted"),
     ("./no/such/dir", r"no such model folder: './no/such/dir' .*a preset \(tiny-llama, smollm2-135m-instruct\)"),
     ("garbage.gguf", r"garbage\.gguf: not a GGUF file \(it starts with b'junk'")],
)  # fmt: skip
def test_unknown_policy_lists_presets_before_any_weights(tmp_path, built_models, monkeypatch, policy, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.gguf").write_bytes(b"junk" * 10)
    with pytest.raises((OSError, ValueError), match=message):
        recipe("dpo", "--model.policy", policy)
    assert built_models == []


def test_no_network_is_detected_without_waiting(monkeypatch):
    """Not offline by environment, but the hub is unreachable: refused at once, no hub client call."""
    from lit_align.models import loading as models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    reason = "huggingface.co cannot be reached: Name or service not known"
    monkeypatch.setattr(models, "hub_unreachable", lambda: reason)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("hub client called"))
    expected = (
        r"'some-org/model' is not a preset .*the hub cannot be reached \(huggingface\.co "
        r"cannot be reached: Name or service not known\), so no download is attempted"
    )
    with pytest.raises(OSError, match=expected):
        models.load_tokenizer("some-org/model")


def test_kto_given_pairs_suggests_unpair(tmp_path, built_models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": " a", "rejected": " b"}] * 4)
    expected = (
        r"pairs\.jsonl \[train\], row 1 \(1-based\): missing field 'completion'; the row has: "
        r"chosen, prompt, rejected; .*read pairs with --data.unpair true"
    )
    with pytest.raises(DataError, match=expected):
        recipe("kto", "--data.data_path", "pairs.jsonl", model=KTO, data=BinaryFeedbackDataModule)
    assert built_models == []


def test_missing_field_suggests_the_columns_option(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "p", "good": " a", "rejected": " b"}]
    expected = (
        r"row 1 \(1-based\): missing field 'chosen'; the row has: good, prompt, rejected; map the "
        r"column that holds it with --data.columns '\{\"chosen\": \"<column>\"\}'"
    )
    with pytest.raises(DataError, match=expected):
        prepared(PreferenceDataModule, tiny_tokenizer, rows, tmp_path)


# --- empty completions are valid data ---------------------------------------------------------------------------


def test_empty_completions_are_eos_only_counted_and_train(tmp_path, tiny_tokenizer):
    """An empty rejected ("") and a whitespace-only chosen (HH-RLHF's " " after "Assistant:") load, count, and give a
    finite loss and a gradient: the empty one is the EOS token alone."""
    rows = [{"prompt": "Q: hi?", "chosen": " hello", "rejected": ""},
            {"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}]  # fmt: skip
    dm = prepared(PreferenceDataModule, tiny_tokenizer, rows, tmp_path, batch_size=2)
    assert dm.stats["train/empty_completions"] == 2 and dm.stats["train/ok"] == 2
    assert dm.train_dataset[0]["rejected_ids"] == [tiny_tokenizer.eos_token_id]
    assert tiny_tokenizer.decode(dm.train_dataset[1]["chosen_ids"]) == " <|im_end|>"
    module = DPO(policy="tiny-llama", learning_rate=1e-3)
    out = module.update(dm.collate([dm.train_dataset[0], dm.train_dataset[1]]))
    assert torch.isfinite(torch.tensor(out["loss"]))
