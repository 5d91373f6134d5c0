"""Plot recipe: `python recipes/plot.py runs/orpo/version_0 train/rewards/margins margins.svg` (or `lit-align plot
...`) draws one logged scalar of a run as an SVG (each step and its moving average; lit_align/commands/plot.py)."""

from lit_align.commands.cli import run_function
from lit_align.commands.plot import plot
from lit_align.errors import command


def main(args: list[str] | None = None) -> None:
    """``lit-align plot ...`` and ``python recipes/plot.py ...``."""
    run_function(plot, args)


if __name__ == "__main__":
    command(main)
