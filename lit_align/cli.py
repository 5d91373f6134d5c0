"""The LightningCLI every recipe runs: model and DataModule classes, a default YAML, the tokenizer link."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI


class AlignCLI(LightningCLI):
    """LightningCLI that feeds the policy's name to the DataModule as its tokenizer."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.policy", "data.tokenizer")


def run(
    model_class: type[L.LightningModule],
    datamodule_class: type[L.LightningDataModule],
    default_config: str | Path,
    args: list[str] | None = None,
) -> AlignCLI:
    """Run a recipe: ``python recipes/<algo>.py fit [--config extra.yaml] [--model.beta 0.2 ...]``.

    ``default_config`` is layered first (for ``fit``, ``validate``, ``test``); ``--config`` and
    flags override it. Saving the resolved config overwrites an earlier one in the same log dir.
    """
    default = [str(default_config)]
    return AlignCLI(
        model_class,
        datamodule_class,
        args=args,  # None: LightningCLI reads sys.argv
        parser_kwargs={cmd: {"default_config_files": default} for cmd in ("fit", "validate", "test")},
        save_config_kwargs={"overwrite": True},
    )
