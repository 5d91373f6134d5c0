"""KTO recipe: `python recipes/kto.py fit` trains SmolLM2-135M-Instruct on the demo binary feedback
(recipes/configs/kto.yaml).

Watch `train/rewards/margins` and `train/kl` in TensorBoard (`tensorboard --logdir runs`). Override anything
from the command line (`--model.desirable_weight 1.3`, `--data.data_path my.jsonl`, `--data.unpair true` for
preference pairs) or layer a YAML with `--config`.
"""

from pathlib import Path

from lit_align.algorithms.kto import KTO
from lit_align.commands.cli import run
from lit_align.datamodules.binary import BinaryFeedbackDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align kto ...`` and ``python recipes/kto.py ...`` (``args``: the command line after the name)."""
    run(KTO, BinaryFeedbackDataModule, Path(__file__).parent / "configs" / "kto.yaml", args)


if __name__ == "__main__":
    command(main)
