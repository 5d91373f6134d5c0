"""``--help`` is short and complete: every option on one line with its description, forwarded ones included."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout

import pytest

from tests.conftest import REPO
from tests.test_configs import RECIPES, recipe_classes

OPTION = re.compile(r"^  (--(?:model|data)\.[\w.]+)(?: (\S+))?\s+(.*)$")


def fit_help(recipe) -> str:
    from lit_align.commands.cli import run

    model_class, data_class = recipe_classes(recipe)
    default = REPO / "recipes" / "configs" / f"{recipe.stem}.yaml"
    with pytest.raises(SystemExit) as exit_info, redirect_stdout(io.StringIO()) as out:
        run(model_class, data_class, default, args=["fit", "--help"])
    assert exit_info.value.code in (0, None)
    return out.getvalue()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_fit_help_is_short_and_every_option_is_described(recipe):
    text = fit_help(recipe)
    lines = text.splitlines()
    assert len(lines) < 250, len(lines)
    assert "torch.nn.modules" not in text  # policy/reference_policy are shown as strings, not as nn.Module types
    options = {}
    for index, line in enumerate(lines):
        if line.startswith("  --model.") or line.startswith("  --data."):
            match = OPTION.match(line)
            described = match is not None and match.group(3).strip()
            if not described:  # a long option name puts its description on the next line
                described = lines[index + 1].strip()
            name = line.split()[0]
            assert described, f"{name} has no description"
            options[name] = described
    assert "--model.policy" in options and "--data.batch_size" in options


def test_forwarded_options_carry_their_one_declaration():
    """DPO declares none of these; they reach --help from AlignmentModule, ReferenceMixin and the DataModule bases."""
    text = fit_help(REPO / "recipes" / "dpo.py")
    for option, words in [
        ("--model.learning_rate", "AdamW peak learning rate"),
        ("--model.lora_r", "LoRA rank"),
        ("--model.nonfinite_loss", "on a NaN/inf loss"),
        ("--model.reference_policy", "a separate reference model"),
        ("--data.max_length", "longest prompt + completion"),
        ("--data.seed", "seed of the validation split"),
    ]:
        line = next(line for line in text.splitlines() if line.startswith(f"  {option} "))
        assert words in line, line


def test_the_lit_align_command_names_its_recipe_and_does_not_warn_about_args():
    """``lit-align dpo fit ...`` reads its arguments as typed: no LightningCLI warning about ``args`` beside
    ``sys.argv``, and the usage tip names the recipe (``lit-align dpo fit --help``, not ``lit-align fit --help``)."""
    import os
    import subprocess
    import sys

    command = os.path.join(os.path.dirname(sys.executable), "lit-align")
    out = subprocess.run([command, "dpo", "fit", "--model.bta", "3"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "tip: For details of accepted options run: lit-align dpo fit --help" in out.stderr, out.stderr[-2000:]
    assert "--model.bta: did you mean --model.beta?" in out.stderr
    assert "args parameter is intended" not in out.stderr
