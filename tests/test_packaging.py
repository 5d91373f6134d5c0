"""The distribution as users install it.

The wheel is built from the checkout and installed into a fresh virtual environment whose only path to anything
is the test environment's site-packages (for the dependencies: torch, Lightning, ...), never the source tree; every
module of the installed package is imported there, and ``lit-align`` runs a shipped tools example (a config and its
demo data by their short names) on the tiny preset from an empty directory. The editable install the tests run
under cannot show a package, a config or a data file missing from the wheel; this can.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

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

IMPORT_EVERY_MODULE = r"""
import importlib, pathlib, pkgutil, sys
import lit_align
root = pathlib.Path(lit_align.__file__).parent
assert str(root).startswith(sys.prefix), (root, sys.prefix)  # the installed copy, not the checkout
names = [m.name for m in pkgutil.walk_packages(lit_align.__path__, "lit_align.")]
for name in names:
    importlib.import_module(name)
print(len(names), "modules")
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell has: no PYTHONPATH into the checkout, offline, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def build_wheel(folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q"]
    result = subprocess.run([*command, "-w", str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = folder.glob("lit_align-*.whl")
    return wheel


def test_a_user_project_with_its_own_datamodules_imports_both(tmp_path):
    project = tmp_path / "user_project"
    (project / "datamodules").mkdir(parents=True)
    (project / "datamodules" / "__init__.py").write_text("MINE = True\n")
    result = subprocess.run([sys.executable, "-c", USER_CODE], cwd=project, env=clean_env(), capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_wheel_ships_every_package_config_and_demo_file(tmp_path):
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"lit_align"}, top_level
    for folder, installed in (("lit_align", "lit_align"), ("datamodules", "lit_align/datamodules"),
                              ("recipes", "lit_align/recipes")):  # fmt: skip
        for init in (REPO / folder).rglob("__init__.py"):
            assert f"{installed}/{init.relative_to(REPO / folder).as_posix()}" in names, init
        for module in (REPO / folder).rglob("*.py"):
            assert f"{installed}/{module.relative_to(REPO / folder).as_posix()}" in names, module
    for config in (REPO / "recipes" / "configs").rglob("*.yaml"):
        assert f"lit_align/recipes/{config.relative_to(REPO / 'recipes').as_posix()}" in names, config
    for sample in (REPO / "datamodules" / "samples").glob("*.jsonl"):
        assert f"lit_align/datamodules/samples/{sample.name}" in names, sample
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "lit-align = lit_align.__main__:main" in zipfile.ZipFile(build_wheel(tmp_path)).read(entry_points).decode()


def test_the_installed_wheel_imports_every_module_and_runs_a_shipped_example_from_an_empty_directory(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([str(python), "-c", where], text=True).strip())
    # The dependencies come from the test environment. Its lit-align is an editable install, whose import hook is a
    # .pth file there; a folder named in a .pth file is added to sys.path without running the .pth files in it.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    result = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([str(python), "-c", IMPORT_EVERY_MODULE], cwd=empty, env=clean_env(), capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    command = venv / "bin" / "lit-align"
    start = time.perf_counter()
    listing = subprocess.run([str(command), "--help"], cwd=empty, env=clean_env(), capture_output=True, text=True)
    assert listing.returncode == 0 and "grpo" in listing.stdout and "examples/grpo_guess_number" in listing.stdout
    assert time.perf_counter() - start < 10  # imports no algorithm (about 0.05 s; generous for a busy machine)

    fit = [str(command), "grpo", "fit", "--config", "examples/grpo_guess_number", "--config", "tiny",
           "--trainer.max_steps", "2"]  # fmt: skip
    result = subprocess.run(fit, cwd=empty, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = empty / "runs" / "grpo_guess_number" / "version_0"
    assert (run / "hf_model" / "config.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert "tools/call_frequency" in result.stdout  # the environment's conversations ran

    plot = [str(command), "plot", str(run), "train/loss", "loss.svg"]
    result = subprocess.run(plot, cwd=empty, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and (empty / "loss.svg").read_text().startswith("<svg"), result.stderr[-2000:]


@pytest.mark.parametrize("name", ["examples/grpo_guess_number", "examples/grpo_guess_number.yaml", "tiny"])
def test_a_shipped_config_is_found_by_its_short_name(tmp_path, monkeypatch, name):
    from lit_align.shipped import config_path, expand_config_names

    monkeypatch.chdir(tmp_path)
    path = Path(config_path(name))
    assert path.is_file() and path.parent.parent.name in ("configs", "recipes"), path
    assert expand_config_names(["fit", "--config", name, f"--config={name}", "-c", name]) == [
        "fit", "--config", str(path), f"--config={path}", "-c", str(path)]  # fmt: skip
    (tmp_path / "tiny").write_text("trainer: {max_steps: 1}\n")  # a local file of that name wins
    assert config_path("tiny") == "tiny"


def test_an_unknown_config_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    from lit_align.errors import PathNotFound
    from lit_align.shipped import expand_config_names

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PathNotFound, match=r"--config examples/grpo_guess: no such file .* shipped: distill, dpo, "
                                           r"examples/grpo_calculator_tool, examples/grpo_guess_number"):  # fmt: skip
        expand_config_names(["fit", "--config", "examples/grpo_guess"])
    assert expand_config_names(["fit", "--config", "{trainer: {max_steps: 1}}"])[-1].startswith("{")  # inline YAML


def test_a_shipped_demo_file_is_found_from_any_directory(tmp_path, monkeypatch):
    from lit_align.shipped import data_path, samples_folder

    monkeypatch.chdir(tmp_path)
    for spelling in ("samples/preference_heldout.jsonl", "datamodules/samples/preference_heldout.jsonl"):
        assert Path(data_path(spelling)) == samples_folder() / "preference_heldout.jsonl"
    assert data_path("samples/not_shipped.jsonl") == "samples/not_shipped.jsonl"  # the loader says it is missing
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "preference_heldout.jsonl").write_text("{}\n")
    assert data_path("samples/preference_heldout.jsonl") == "samples/preference_heldout.jsonl"  # local wins
