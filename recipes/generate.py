"""Generation recipe: `python recipes/generate.py runs/dpo/version_0 --prompts prompts.jsonl --output out.jsonl`
(or `lit-align generate ...`); without `--prompts`, type prompts at the terminal.

Samples from a run directory, checkpoint, export or preset with the chat template (lit_align/commands/generation.py);
`--greedy true`, `--sampling.temperature 0.7`, `--sampling.max_new_tokens 256`, `--num_generations 4` shape the
sampling.
"""

from lit_align.commands.cli import run_function
from lit_align.commands.generation import generate
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align generate ...`` and ``python recipes/generate.py ...``."""
    run_function(generate, args)


if __name__ == "__main__":
    command(main)
