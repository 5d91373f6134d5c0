"""The installed distribution claims one import name: lit_align (its DataModules are lit_align.datamodules)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO

USER_CODE = r"""
import datamodules  # the user's own package, first on sys.path (the working directory)
assert datamodules.MINE is True, datamodules.__file__
from lit_align.datamodules import PreferenceDataModule
import lit_align.datamodules as ours
assert "user_project" not in ours.__file__, ours.__file__
from lit_align.datamodules.preference import DEMO_PREFERENCES
import pathlib
assert pathlib.Path(DEMO_PREFERENCES).is_file(), DEMO_PREFERENCES
print("ok")
"""


def test_a_user_project_with_its_own_datamodules_imports_both(tmp_path):
    project = tmp_path / "user_project"
    (project / "datamodules").mkdir(parents=True)
    (project / "datamodules" / "__init__.py").write_text("MINE = True\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as an installed user runs it
    result = subprocess.run([sys.executable, "-c", USER_CODE], cwd=project, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_wheel_ships_lit_align_only_with_the_demo_data(tmp_path):
    command = [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q"]
    result = subprocess.run([*command, "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("lit_align-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"lit_align"}, top_level
    for sample in ("preference_demo.jsonl", "binary_demo.jsonl", "sft_demo.jsonl", "arithmetic_prompts.jsonl"):
        assert f"lit_align/datamodules/samples/{sample}" in names
    assert "lit_align/datamodules/preference.py" in names
    shipped = {"lit_align/recipes/dpo.py", "lit_align/recipes/configs/dpo.yaml", "lit_align/recipes/configs/tiny.yaml"}
    assert shipped <= set(names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "lit-align = lit_align.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_lit_align_command_runs_a_recipe_from_its_shipped_config(tmp_path):
    """What a pip-install user without a clone runs: `lit-align <recipe> fit`, configs from the package."""
    script = Path(sys.executable).with_name("lit-align")
    listing = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "dpo" in listing.stdout and "grpo" in listing.stdout
    from lit_align.recipes import __file__ as recipes_init

    tiny = Path(recipes_init).parent / "configs" / "tiny.yaml"
    command = [str(script), "dpo", "fit", "--config", str(tiny), "--trainer.max_steps", "1"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs" / "dpo" / "version_0" / "hf_model").is_dir()
