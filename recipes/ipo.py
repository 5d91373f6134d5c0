"""IPO recipe: `python recipes/ipo.py fit` trains on the default config (recipes/configs/ipo.yaml).

Override anything from the command line (`--model.beta 0.2`, `--data.data_path my.jsonl`,
`--trainer.devices 2 --trainer.strategy ddp`) or layer a YAML with `--config`.
"""

from pathlib import Path

from lit_align.algorithms import IPO
from lit_align.commands.cli import run
from lit_align.datamodules import PreferenceDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align ipo ...`` and ``python recipes/ipo.py ...`` (``args``: the command line after the name)."""
    run(IPO, PreferenceDataModule, Path(__file__).parent / "configs" / "ipo.yaml", args)


if __name__ == "__main__":
    command(main)
