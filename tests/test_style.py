"""The code base is ruff clean (rules and line length in pyproject.toml)."""

import shutil
import subprocess

import pytest

from tests.conftest import REPO


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(REPO / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff not installed (pip install -e .[dev])")
    out = subprocess.run(
        [ruff, "check", "lit_align", "datamodules", "recipes", "tests", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
