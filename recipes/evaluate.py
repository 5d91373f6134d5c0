"""Evaluation recipe: `python recipes/evaluate.py runs/dpo/version_0 --rewards.reward_funcs
'[model:runs/reward_model/version_0]' --pairs held_out.jsonl` (or `lit-align evaluate ...`).

Compares a trained policy with the model it started from on held-out prompts: win rate (ties half, 95%
interval), reward and length of each, perplexity of held-out preferred responses and implicit-reward accuracy
(see lit_align/commands/evaluation.py). `--help` lists every option, `--config my.yaml` takes them from a file.
"""

import sys

from lit_align.commands.cli import run_function
from lit_align.commands.evaluation import command_line, evaluate
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align evaluate ...`` and ``python recipes/evaluate.py ...``."""
    run_function(evaluate, command_line(sys.argv[1:] if args is None else args))


if __name__ == "__main__":
    command(main)
