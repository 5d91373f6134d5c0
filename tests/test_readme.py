"""The README's commands run: every recipe, evaluation, generation and example command in its bash blocks,
parsed from the README itself and run in order on the tiny preset, so the README cannot drift from the code.

Setup, TensorBoard, multi-device and multi-node commands are not run here (CI runs the setup, the scaling
tests run 2-process DDP/FSDP2). A fit gets the tiny overlay (``--config recipes/configs/tiny.yaml``) right
after ``fit`` and the command's own ``--config`` files, so the README's own flags still win; evaluation and
generation get short completions. Example scripts run as written (the README gives them ``--tiny``). The installed
spelling (``lit-align <recipe> ...``) runs from an empty directory, as a user without a clone runs it; the wheel
itself is installed and run by ``tests/test_packaging.py``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO

SKIP = ("--trainer.devices", "torchrun", "srun", "tensorboard", "scripts/setup.sh", "pytest", "plot_metric")


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith(("python ", "lit-align ")) and not any(s in line for s in SKIP):
                commands.append(line)
    return commands


def tiny(command: str) -> list[str]:
    args = shlex.split(command, comments=True)
    if args[0] == "python":
        args[0] = sys.executable
    elif args[0] == "lit-align":
        args[0] = str(os.path.join(os.path.dirname(sys.executable), "lit-align"))
    if "fit" in args:  # after the command's own configs (an example's max_steps must not win), before its flags
        at = args.index("fit") + 1
        while at < len(args) - 1 and args[at] == "--config":
            at += 2
        args[at:at] = ["--config", str(REPO / "recipes/configs/tiny.yaml")]
    if args[1:2] == ["recipes/distill.py"] and "--model.teacher" not in args:  # the tiny student's vocabulary
        args += ["--model.teacher", "tiny-llama", "--model.teacher_system_prompt", "null"]
    if any(a.endswith(("evaluate.py", "generate.py")) for a in args):
        args += ["--sampling.max_new_tokens", "4"]
        args += ["--pairs.max_samples" if "evaluate.py" in " ".join(args) else "--batch_size", "4"]
    return args


def test_the_readme_shows_the_headline_and_test_commands():
    text = (REPO / "README.md").read_text()
    assert "bash scripts/setup.sh && .venv/bin/python recipes/orpo.py fit" in text
    assert "bash scripts/setup.sh dev && .venv/bin/python -m pytest -q" in text
    assert "python -m pytest -q" in (REPO / ".ci" / "run").read_text()  # CI runs the README's test command


@pytest.mark.slow
def test_every_readme_command_runs_on_the_tiny_preset(tmp_path):
    commands = readme_commands()
    assert len(commands) >= 15 and any("evaluate.py" in c for c in commands)
    for folder in ("recipes", "datamodules", "examples"):  # the README's relative paths, outputs in tmp_path
        (tmp_path / folder).symlink_to(REPO / folder)
    assert all("--tiny" in c for c in commands if c.startswith("python examples/"))  # seconds, not minutes
    assert any(c.startswith("lit-align ") for c in commands)
    elsewhere = tmp_path / "elsewhere"  # no recipes/, datamodules/ or examples/ here
    elsewhere.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for command in commands:
        cwd = elsewhere if command.startswith("lit-align ") else tmp_path
        result = subprocess.run(tiny(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert (tmp_path / "runs" / "dpo" / "version_0" / "eval" / "eval.json").is_file()
    assert (tmp_path / "completions.jsonl").is_file()
