"""SimPO recipe: `python recipes/simpo.py fit` trains on the default config (recipes/configs/simpo.yaml).

Reference-free: only the policy is loaded. Override anything from the command line
(`--model.beta 2.5 --model.gamma 1.4`, `--data.data_path my.jsonl`) or layer a YAML with `--config`.
"""

from pathlib import Path

from lit_align.algorithms.simpo import SimPO
from lit_align.commands.cli import run
from lit_align.datamodules.preference import PreferenceDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align simpo ...`` and ``python recipes/simpo.py ...`` (``args``: the command line after the name)."""
    run(SimPO, PreferenceDataModule, Path(__file__).parent / "configs" / "simpo.yaml", args)


if __name__ == "__main__":
    command(main)
