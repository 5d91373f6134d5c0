"""RLVR recipe: `python recipes/rlvr.py fit` trains on the default config (recipes/configs/rlvr.yaml).

Verifiers (and, optionally, a reward model as `model:<dir>`, z-scored per batch) are the reward functions:
`--model.rewards.reward_funcs '[lit_align.rewards.verifiers:arithmetic_answer_reward, model:runs/rm/hf_model]'`
with `--model.rewards.reward_weights '[1.0, 0.5]'`; `--model.advantage_estimator leave_one_out` switches to RLOO's
baseline. GSM8K: `--config recipes/configs/examples/rlvr_gsm8k.yaml` (from the repo root).
`python recipes/rlvr.py validate` gives the held-out accuracy of the untrained policy. `trainer.max_steps` counts
optimizer steps.
"""

from pathlib import Path

from lit_align.algorithms.rlvr import RLVR
from lit_align.commands.cli import run
from lit_align.datamodules.prompt import PromptDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align rlvr ...`` and ``python recipes/rlvr.py ...`` (``args``: the command line after the name)."""
    run(RLVR, PromptDataModule, Path(__file__).parent / "configs" / "rlvr.yaml", args)


if __name__ == "__main__":
    command(main)
