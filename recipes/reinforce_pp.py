"""REINFORCE++ recipe: `python recipes/reinforce_pp.py fit` trains on the default config
(recipes/configs/reinforce_pp.yaml): REINFORCE++-baseline; `--model.baseline none` is plain REINFORCE++.

Override anything from the command line (`--model.num_generations 8`, `--data.data_path prompts.jsonl`,
`--model.rewards.reward_funcs '[my_pkg.rewards:my_reward]'`, `--trainer.devices 2 --trainer.strategy ddp`)
or layer a YAML with `--config`. `trainer.max_steps` counts optimizer steps.
"""

from pathlib import Path

from lit_align.algorithms.reinforce_pp import ReinforcePP
from lit_align.commands.cli import run
from lit_align.datamodules.prompt import PromptDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align reinforce_pp ...`` and ``python recipes/reinforce_pp.py ...`` (``args``: the command line after the
    name)."""
    run(ReinforcePP, PromptDataModule, Path(__file__).parent / "configs" / "reinforce_pp.yaml", args)


if __name__ == "__main__":
    command(main)
