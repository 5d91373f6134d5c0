"""DPO recipe: `python recipes/dpo.py fit` trains on the default config (recipes/configs/dpo.yaml).

Override anything from the command line (`--model.beta 0.2`, `--data.data_path my.jsonl`,
`--trainer.devices 2 --trainer.strategy ddp`) or layer a YAML with `--config`.
"""

from pathlib import Path

from lit_align.algorithms import DPO
from lit_align.commands.cli import run
from lit_align.datamodules import PreferenceDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align dpo ...`` and ``python recipes/dpo.py ...`` (``args``: the command line after the name)."""
    run(DPO, PreferenceDataModule, Path(__file__).parent / "configs" / "dpo.yaml", args)


if __name__ == "__main__":
    command(main)
