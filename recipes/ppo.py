"""PPO recipe: `python recipes/ppo.py fit` trains on the default config (recipes/configs/ppo.yaml).

The default reward model (and the critic's initial weights) is the export of the reward-model recipe, so run
the two commands in order, from the same directory:

    python recipes/reward_model.py fit    # writes runs/reward_model/version_0/hf_model
    python recipes/ppo.py fit             # scores with it (--model.rewards.reward_funcs '[model:<dir>]' for another)

Override anything from the command line (`--model.kl_target 6`, `--model.value_model policy`,
`--data.data_path prompts.jsonl`, `--trainer.devices 2 --trainer.strategy ddp`) or layer a YAML with
`--config`. `trainer.max_steps` counts optimizer steps: `num_iterations x num_minibatches` per batch of prompts.
"""

from pathlib import Path

from lit_align.algorithms.ppo import PPO
from lit_align.commands.cli import run
from lit_align.datamodules.prompt import PromptDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align ppo ...`` and ``python recipes/ppo.py ...`` (``args``: the command line after the name)."""
    run(PPO, PromptDataModule, Path(__file__).parent / "configs" / "ppo.yaml", args)


if __name__ == "__main__":
    command(main)
