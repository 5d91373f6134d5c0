"""SPIN recipe: `python recipes/spin.py fit` runs iterative self-play on the default config (recipes/configs/spin.yaml).

Each iteration the policy answers every prompt of the SFT data and trains to prefer the ground truth over its own
answers; the pairs of iteration k land in `<run dir>/spin/iteration_<k>.jsonl`. Override anything from the command
line (`--model.iterations 3`, `--model.epochs_per_iteration 2`, `--data.data_path my_sft.jsonl`,
`--trainer.devices 2 --trainer.strategy ddp`) or layer a YAML with `--config`. Resume with `--ckpt_path
<run dir>/checkpoints/last.ckpt`: the run continues in the iteration (and with the opponent) the checkpoint was in.
"""

from pathlib import Path

from lit_align.algorithms.spin import SPIN
from lit_align.commands.cli import run
from lit_align.datamodules.spin import SPINDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align spin ...`` and ``python recipes/spin.py ...`` (``args``: the command line after the name)."""
    run(SPIN, SPINDataModule, Path(__file__).parent / "configs" / "spin.yaml", args)


if __name__ == "__main__":
    command(main)
