"""ORPO recipe: `python recipes/orpo.py fit` trains SmolLM2-135M-Instruct on the demo pairs (recipes/configs/orpo.yaml).

Reference-free and monolithic (SFT + preference in one loss): only the policy is loaded. Watch
`train/rewards/margins` in TensorBoard (`tensorboard --logdir runs`). Override anything from the command
line (`--model.beta 0.2`, `--data.data_path my.jsonl`) or layer a YAML with `--config`.
"""

from pathlib import Path

from lit_align.algorithms import ORPO
from lit_align.commands.cli import run
from lit_align.datamodules import PreferenceDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align orpo ...`` and ``python recipes/orpo.py ...`` (``args``: the command line after the name)."""
    run(ORPO, PreferenceDataModule, Path(__file__).parent / "configs" / "orpo.yaml", args)


if __name__ == "__main__":
    command(main)
