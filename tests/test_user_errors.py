"""Errors as a person reads them: a user error is one message (where, what was expected, the fix) with no
traceback unless ``LIT_ALIGN_DEBUG=1``; a closed set's bad value lists its values and the nearest one; a keyword
at the wrong level in Python names its right spelling; a tokenizer that does not fit the policy is refused before
training; the command line starts without importing what it does not need."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from tests.conftest import REPO, write_jsonl

CLI = str(Path(sys.executable).with_name("lit-align"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ENV.pop("LIT_ALIGN_DEBUG", None)


def lit_align(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, env={**ENV, **env}, capture_output=True, text=True, timeout=300)


def parse_error(args: list[str]) -> str:
    from lit_align.algorithms import DPO, GRPO
    from lit_align.commands.cli import run
    from lit_align.datamodules import PreferenceDataModule, PromptDataModule

    model, data, recipe = (GRPO, PromptDataModule, "grpo") if "grpo" in args else (DPO, PreferenceDataModule, "dpo")
    err = io.StringIO()
    with pytest.raises(SystemExit), redirect_stderr(err), redirect_stdout(io.StringIO()):
        run(model, data, REPO / "recipes" / "configs" / f"{recipe}.yaml", args=[a for a in args if a != "grpo"])
    return err.getvalue()


@pytest.mark.parametrize(
    ("args", "rows", "expected"),
    [
        (["--model.beta", "-1"], None, "--model.beta=-1.0: β must be > 0"),
        (["--data.data_path", "pairs.jsonl"], [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a2",
         "chosen": "b2"}], "pairs.jsonl [train], row 2 (1-based), field 'rejected': expected a non-empty string"),
        (["--data.data_path", "nothere.jsonl"], None, "nothere.jsonl: data file not found"),
        (["--ckpt_path", "nothere.ckpt"], None, "--ckpt_path nothere.ckpt: no such file"),
        (["--model.policy", "tiny-lama"], None, "'tiny-lama' is not a preset (tiny-llama, smollm2-135m-instruct)"),
        (["--config", "examples/nothere"], None, "--config examples/nothere: no such file"),
    ],
    ids=["option", "row", "data path", "checkpoint", "model", "config"],
)
def test_a_user_error_is_one_message_without_a_traceback(tmp_path, args, rows, expected):
    if rows is not None:
        write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = lit_align("dpo", "fit", "--config", "tiny", *args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "File \"" not in result.stderr, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert line.startswith("lit-align dpo: error: ") and expected in line, line
    assert "LIT_ALIGN_DEBUG=1" in result.stderr


def test_the_debug_switch_shows_the_traceback(tmp_path):
    result = lit_align("dpo", "fit", "--config", "tiny", "--model.beta", "-1", cwd=tmp_path, LIT_ALIGN_DEBUG="1")
    assert result.returncode == 1 and "Traceback" in result.stderr and "OptionError: --model.beta" in result.stderr


def test_a_script_recipe_names_itself_in_its_errors(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "recipes" / "dpo.py"), "fit", "--config", "tiny",
                             "--model.beta", "-1"], cwd=tmp_path, env=ENV, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1 and "dpo.py: error: --model.beta=-1.0" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fit", "--model.loss_type", "sigmoidd"], ["--model.loss_type: 'sigmoidd' is not one of sigmoid, hinge, ipo,",
                                                    "(or a list of them)", "'sigmoidd': did you mean 'sigmoid'?"]),
        (["fit", "--model.loss_type", "[sigmoid, sftt]"], ["'sftt' is not one of", "did you mean 'sft'?"]),
        (["fit", "--model.scheduler", "cosin"], ["--model.scheduler: 'cosin' is not one of constant, linear, cosine",
                                                 "did you mean 'cosine'?"]),
        (["grpo", "fit", "--model.sampling.kv_cache", "statc"], ["'statc' is not one of auto, static, dynamic"]),
        (["fit", "--model.beta", "abc"], ["--model.beta: expected a float, got 'abc'"]),
    ],
)
def test_a_closed_set_or_type_error_is_said_in_a_line_or_two(args, expected):
    message = parse_error(args)
    error = message[message.index("error:"):]
    for words in expected:
        assert words in error, error
    assert "Union subtypes" not in error and "typing.Literal" not in error and len(error.splitlines()) <= 3


def test_fit_help_lists_the_values_of_a_closed_set_its_metavar_does_not_show():
    from tests.test_cli_help import fit_help

    text = fit_help(REPO / "recipes" / "dpo.py")
    (line,) = [line for line in text.splitlines() if line.startswith("  --model.loss_type ")]
    assert "{sigmoid, hinge, ipo, exo_pair" in line and "sigmoid_norm}" in line
    (line,) = [line for line in text.splitlines() if line.startswith("  --model.scheduler ")]
    assert line.split()[1] == "{constant,linear,cosine}" and "{constant, linear, cosine}" not in line  # once


def test_a_keyword_at_the_wrong_level_names_its_right_spelling():
    from lit_align.algorithms import DPO, GRPO
    from lit_align.datamodules import PreferenceDataModule
    from lit_align.errors import KeywordError

    wrong_level = (r"""GRPO\(\) got an unexpected keyword argument 'max_new_tokens'; it is an option of the sampling """
                   r"""group: GRPO\(sampling=\{"max_new_tokens": 4\}\)""")
    with pytest.raises(KeywordError, match=wrong_level):
        GRPO(policy="tiny-llama", max_new_tokens=4)
    with pytest.raises(TypeError, match="'learning_rat'; did you mean 'learning_rate'"):
        DPO(policy="tiny-llama", learning_rat=1e-3)
    with pytest.raises(TypeError, match="SamplingOptions has no option 'max_new_token'; did you mean 'max_new_tokens'"):
        GRPO(policy="tiny-llama", sampling={"max_new_token": 4})
    with pytest.raises(TypeError, match="PreferenceDataModule\\(\\) got an unexpected keyword argument 'max_len'; did "
                                        "you mean 'max_length'"):
        PreferenceDataModule(tokenizer="tiny-llama", max_len=64)
    assert GRPO(policy="tiny-llama", sampling={"max_new_tokens": 4}).sampler.options.max_new_tokens == 4


def test_a_tokenizer_that_does_not_fit_the_policy_is_refused_before_training(tmp_path, smollm2_tokenizer):
    import lightning as L

    from lit_align.algorithms import DPO
    from lit_align.datamodules import PreferenceDataModule
    from lit_align.errors import OptionError

    rows = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(4)]
    dm = PreferenceDataModule(tokenizer=smollm2_tokenizer, data_path=str(write_jsonl(tmp_path / "p.jsonl", rows)),
                              val_size=0, batch_size=2)  # fmt: skip
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(OptionError, match=r"the DataModule's tokenizer .* has 49152 tokens, but the policy "
                                          r"'tiny-llama' has \d+ embedding rows: its ids would index past them"):
        trainer.fit(DPO(policy="tiny-llama"), dm)
    assert trainer.global_step == 0


def test_import_and_the_recipe_listing_start_without_lightning():
    probe = ("import sys, time; t = time.perf_counter(); import lit_align; import lit_align.__main__ as m; "
             "m.main(['--help']); assert 'lightning' not in sys.modules and 'torch' not in sys.modules, "
             "sorted(k for k in sys.modules if k.split('.')[0] in ('lightning', 'torch'))[:5]")
    result = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "recipes: distill, dpo, evaluate, generate, grpo" in result.stdout
    assert "examples/grpo_guess_number" in result.stdout
    start = time.perf_counter()
    listing = subprocess.run([CLI, "--help"], env=ENV, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and time.perf_counter() - start < 5  # about 0.05 s on a quiet machine


def test_an_unknown_recipe_says_what_was_meant():
    result = subprocess.run([CLI, "dop", "fit"], env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no recipe 'dop'. Did you mean 'dpo'?" in result.stderr
