"""SFT recipe: `python recipes/sft.py fit` trains on the default config (recipes/configs/sft.yaml).

Override anything from the command line (`--model.learning_rate 1e-5`, `--data.data_path my.jsonl`,
`--data.format alpaca`, `--trainer.accumulate_grad_batches 4`, `--trainer.devices 2 --trainer.strategy ddp`)
or layer a YAML with `--config`.
"""

from pathlib import Path

from lit_align.algorithms.sft import SFT
from lit_align.commands.cli import run
from lit_align.datamodules.sft import SFTDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align sft ...`` and ``python recipes/sft.py ...`` (``args``: the command line after the name)."""
    run(SFT, SFTDataModule, Path(__file__).parent / "configs" / "sft.yaml", args)


if __name__ == "__main__":
    command(main)
