"""The ``lit-align`` command (also ``python -m lit_align``): ``lit-align <recipe> [fit|validate] [options]``.

It lists the recipes and the shipped configs from the package's files without importing any of them (so
``lit-align --help`` answers at Python's start-up speed), then hands the rest of the command line to the recipe
named, which imports Lightning and the algorithm it runs.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from lit_align.errors import command
from lit_align.shipped import config_names, recipe_names

USAGE = """usage: lit-align <recipe> [fit|validate] [--config CONFIG] [--model.* ...] [--data.* ...] [--trainer.* ...]
       lit-align evaluate RUN [options]    lit-align generate RUN [options]    lit-align plot RUN METRIC OUT

  lit-align dpo fit                                   train DPO on the shipped default config
  lit-align dpo fit --help                            every option of the recipe, with its default
  lit-align grpo fit --config examples/grpo_guess_number --config tiny
                                                      a shipped config by its short name, layered
"""


def main(argv: list[str] | None = None) -> None:
    """``lit-align <recipe> ...``: the recipe's ``main()`` with the rest of the command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    names = recipe_names()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print("recipes: " + ", ".join(names))
        print("shipped configs (--config NAME): " + ", ".join(config_names()))
        return
    name = argv[0]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        sys.exit(f"lit-align: error: no recipe {name!r}.{suggestion} Recipes: {', '.join(names)}")
    # sys.argv stays as typed (Lightning's DDP launcher starts the other ranks with it); the recipe gets the arguments
    # after its name, and its messages name it `lit-align <name>`.
    command(lambda: importlib.import_module(f"lit_align.recipes.{name}").main(argv[1:]), f"lit-align {name}")


if __name__ == "__main__":
    main()
