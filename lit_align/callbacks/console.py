"""What a run prints: plain log lines where no terminal watches, validation results, a summary at the end.

:class:`ConsoleSummary` is a Lightning callback (every recipe gets it; add it to your own Trainer too).
When stdout is not a terminal (SLURM, nohup, CI), a progress bar only writes carriage returns into a log
file, so every ``every_n_steps`` optimizer steps it prints one line instead::

    step 20/40 | loss 0.612 | margins 0.187 | accuracies 0.750 | 9.8 s/step

Validation metrics are printed when computed, and ``on_fit_end`` prints one screen: steps and time, the
final train and validation metrics, and where the TensorBoard logs, checkpoints and export are.
:func:`quiet` removes the noise a recipe run would otherwise print (see its docstring).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar

from lit_align.metrics import short_name

TIP_PREFIX = "💡 Tip:"  # Lightning's advertisements for its cloud products


def _fmt(value: Any) -> str:
    value = float(value.item() if torch.is_tensor(value) else value)
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


class ConsoleSummary(L.Callback):
    """Plain-text progress when stdout is not a terminal, validation results, and an end-of-fit summary.

    Args:
        every_n_steps: print a line every N optimizer steps (default: the Trainer's ``log_every_n_steps``).
        plain: print the per-step lines (default: when stdout is not a terminal).
    """

    def __init__(self, every_n_steps: int | None = None, plain: bool | None = None) -> None:
        self.every_n_steps = every_n_steps
        self.plain = plain if plain is not None else not sys.stdout.isatty()
        self._start = 0.0
        self._first_step = 0  # the step training (re)started from: a resumed run's checkpoint step
        self._last = (0, 0.0)  # (step, time) of the last printed line
        self._printed_step = -1
        self._validated_at: int | None = None  # the step of the last validation

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After a checkpoint is restored: a resumed run counts its steps and time from the checkpoint's step."""
        self._start = time.monotonic()
        self._first_step = trainer.global_step
        self._last = (trainer.global_step, self._start)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        every = self.every_n_steps or trainer.log_every_n_steps or 1
        if not self.plain or step == self._printed_step or step % every or not trainer.is_global_zero:
            return
        self._printed_step = step
        now = time.monotonic()
        rate = (now - self._last[1]) / max(step - self._last[0], 1)
        self._last = (step, now)
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        parts = [f"step {step}{total}"] + self._metrics(trainer, pl_module, "train/") + [f"{rate:.3g} s/step"]
        print(" | ".join(parts), flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        values = self._metrics(trainer, pl_module, "val/", every=True)
        if values:
            self._validated_at = trainer.global_step
            print(f"validation at step {trainer.global_step}: " + " | ".join(values), flush=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        elapsed = time.monotonic() - self._start
        steps = trainer.global_step - self._first_step
        done = f"steps {self._first_step}-{trainer.global_step} (resumed)" if self._first_step else f"{steps} steps"
        lines = [f"Finished fit: {done} in {_duration(elapsed)} ({elapsed / max(steps, 1):.3g} s/step)"]
        values = self._metrics(trainer, pl_module, "train/", every=True)
        if values:
            lines.append(f"  final train (step {trainer.global_step}): " + " | ".join(values))
        values = self._metrics(trainer, pl_module, "val/", every=True)
        if values and self._validated_at is not None:
            lines.append(f"  last validation (step {self._validated_at}): " + " | ".join(values))
        # ``trainer.log_dir`` broadcasts from rank 0, a collective the other ranks (which returned above) never
        # join; the logger's own ``log_dir`` is local.
        log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
        if log_dir:
            logger_root = Path(trainer.logger.save_dir or ".") if hasattr(trainer.logger, "save_dir") else None
            lines.append(f"  logs: {log_dir}   (tensorboard --logdir {logger_root or log_dir})")
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and getattr(checkpoint, "dirpath", None):
            last = Path(checkpoint.dirpath) / "last.ckpt"
            resume = f" (resume with --ckpt_path {last})" if last.exists() else ""
            lines.append(f"  checkpoints: {checkpoint.dirpath}{resume}")
        for callback in trainer.callbacks:
            dirname = getattr(callback, "dirname", None)
            if type(callback).__name__ == "HFExport" and dirname and log_dir:
                path = Path(dirname) if Path(dirname).is_absolute() else Path(log_dir) / dirname
                lines.append(f"  export: {path} (AutoModelForCausalLM.from_pretrained)")
        print("\n".join(lines), flush=True)

    @staticmethod
    def _metrics(trainer: L.Trainer, pl_module: L.LightningModule, prefix: str, every: bool = False) -> list[str]:
        """``name value`` of the loss and the module's key metrics (every logged ``prefix`` metric if ``every``)."""
        logged = trainer.callback_metrics
        keys = getattr(pl_module, "KEY_METRICS", ())
        names = [f"{prefix}loss", *(f"{prefix}{k}" for k in keys)]
        if every:
            names += sorted(k for k in logged if k.startswith(prefix) and k not in names and "time/" not in k)
        return [f"{short_name(n) if not every else n.removeprefix(prefix)} {_fmt(logged[n])}" for n in names
                if n in logged]  # fmt: skip


class StepProgressBar(RichProgressBar):
    """Lightning's (rich) progress bar, counting a run that ends at ``max_steps`` in optimizer steps: one bar over
    the whole run, ``step 12/40``, continued from the checkpoint's step on resume. Lightning's own counts each epoch's
    batches under a title of ``Epoch 0/-2`` when only ``max_steps`` is set (and, for the online algorithms, batches
    are rollouts, each several optimizer steps). A run bounded by epochs keeps Lightning's bar."""

    def _by_steps(self) -> bool:
        return self._trainer is not None and bool(self.trainer.max_steps and self.trainer.max_steps > 0)

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._by_steps():
            return super()._get_train_description(current_epoch)
        return f"{'Training':{len(self.validation_description)}}"

    def _initialize_train_progress_bar_id(self) -> None:
        if not self._by_steps():
            return super()._initialize_train_progress_bar_id()
        self.train_progress_bar_id = self._add_task(self.trainer.max_steps, self._get_train_description(0))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._by_steps():
            return super().on_train_epoch_start(trainer, pl_module)
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if not self._by_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:  # resumed mid-epoch
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TIP_PREFIX)


def quiet() -> None:
    """Silence what a recipe run does not need to print: Lightning's advertisements ("💡 Tip: ... try
    installing litlogger"), the deprecation warning Lightning's own pytree utility raises on every step with
    this torch, Lightning's note that a validation loader is empty (lit-align's DataModules return none on purpose
    when there is no validation split), and transformers' one-shard "Writing model shards" bar. Progress bars of
    small tokenization passes are skipped where the DataModule tokenizes. The recipes, ``evaluate``, ``generate``
    and the examples call it; a user's own script may."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_DropTips())
        logging.getLogger(name).addFilter(_DropTips())
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
