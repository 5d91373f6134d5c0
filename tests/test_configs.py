"""Every recipe YAML parses against the module and DataModule signatures; recipes run on the tiny config."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from tests.conftest import REPO

CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))
# Training recipes (a LightningCLI over a module and a DataModule); evaluate.py and generate.py are plain CLIs.
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.py") if not p.name.startswith("_") and "run(" in p.read_text())


def recipe_classes(recipe: Path):
    spec = importlib.util.spec_from_file_location(f"recipe_{recipe.stem}", recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the recipes only call run() under __main__
    source = recipe.read_text()
    model = next(v for k, v in vars(module).items() if isinstance(v, type) and f"run({k}," in source)
    data = next(v for k, v in vars(module).items() if isinstance(v, type) and k.endswith("DataModule"))
    return model, data


def print_config(recipe: Path, *extra: str) -> str:
    """Parse the recipe's default YAML (plus ``extra`` args) against the signatures, without instantiating."""
    from lit_align.commands.cli import run

    model_class, data_class = recipe_classes(recipe)
    default = REPO / "recipes" / "configs" / f"{recipe.stem}.yaml"
    assert default.exists(), f"{recipe.name} has no default config {default.name}"
    with pytest.raises(SystemExit) as exit_info, redirect_stdout(io.StringIO()) as out:
        run(model_class, data_class, default, args=["fit", *extra, "--print_config"])
    assert exit_info.value.code in (0, None)
    return out.getvalue()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_default_config_parses(recipe):
    printed = print_config(recipe)
    assert "policy: smollm2-135m-instruct" in printed
    assert "TensorBoardLogger" in printed and "HFExport" in printed


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_checkpoints_every_n_steps_by_default(recipe):
    """A killed default run loses at most N steps: periodic checkpoints and a last.ckpt to resume from."""
    import yaml

    config = yaml.safe_load((REPO / "recipes" / "configs" / f"{recipe.stem}.yaml").read_text())
    checkpoint = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))
    args = checkpoint["init_args"]
    assert args["every_n_train_steps"] >= 1 and args["save_last"] in (True, "link")
    assert config["trainer"]["max_steps"] % args["every_n_train_steps"] == 0  # the last step is checkpointed


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_tiny_overlay_parses_with_each_recipe(recipe):
    assert "policy: tiny-llama" in print_config(recipe, "--config", str(REPO / "recipes/configs/tiny.yaml"))


def test_every_yaml_belongs_to_a_recipe_or_is_an_overlay():
    names = {r.stem for r in RECIPES} | {"tiny"}
    assert {c.stem for c in CONFIGS} <= names


def test_dpo_recipe_runs_end_to_end_on_tiny(tmp_path):
    cmd = [sys.executable, str(REPO / "recipes/dpo.py"), "fit", "--config", str(REPO / "recipes/configs/tiny.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "dpo" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "hf_model" / "model.safetensors").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "hf_model")
    import torch

    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3  # plain data
    resume = [*cmd, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--trainer.max_steps", "4"]
    out = subprocess.run(resume, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # the resumed run continues its own version (its curves and checkpoints), it does not start version_1
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not (tmp_path / "runs" / "dpo" / "version_1").exists()
