"""Distillation recipe: `python recipes/distill.py fit` trains on the default config (recipes/configs/distill.yaml).

The default distills SmolLM2-135M-Instruct, prompted with a system message, into itself unprompted (context
distillation) on the project's arithmetic prompts. Name your own teacher with `--model.teacher <run directory,
hf_model folder, .ckpt, preset or hub id>` (drop the system prompt: `--model.teacher_system_prompt null`), several
with `--model.teachers '{math: runs/sft/version_0, games: runs/grpo/version_3}' --model.teacher null` and a
`teacher_id` column.
`--model.loss_type opd` trains the sampled reverse KL as an advantage (add `--model.reward_coef 0.5` and reward
functions for GRPO with a teacher). `trainer.max_steps` counts optimizer steps.
"""

from pathlib import Path

from lit_align.algorithms.distill import Distill
from lit_align.commands.cli import run
from lit_align.datamodules.prompt import PromptDataModule
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align distill ...`` and ``python recipes/distill.py ...`` (``args``: the command line after the name)."""
    run(Distill, PromptDataModule, Path(__file__).parent / "configs" / "distill.yaml", args)


if __name__ == "__main__":
    command(main)
