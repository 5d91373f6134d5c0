"""Reward-model recipe: `python recipes/reward_model.py fit` (recipes/configs/reward_model.yaml).

Trains a Bradley-Terry reward model (a sequence-classification head on SmolLM2-135M-Instruct) on
preference pairs; the export in `runs/reward_model/version_*/hf_model` loads with
`AutoModelForSequenceClassification.from_pretrained(...)`. Rows may carry a numeric `margin` column.
"""

from pathlib import Path

from lit_align.algorithms.reward_model import RewardModel
from lit_align.commands.cli import run
from lit_align.datamodules.preference import PreferenceDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align reward_model ...`` and ``python recipes/reward_model.py ...`` (``args``: after the name)."""
    run(RewardModel, PreferenceDataModule, Path(__file__).parent / "configs" / "reward_model.yaml", args)


if __name__ == "__main__":
    command(main)
