"""Test helpers: tiny fits and TensorBoard event reading."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


def tiny_trainer(tmp_path: Path, max_steps: int = 3, **kwargs) -> L.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    defaults = dict(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        log_every_n_steps=1,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def event_tags(log_dir: str | Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for event_file in Path(log_dir).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())
