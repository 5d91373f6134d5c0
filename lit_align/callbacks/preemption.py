"""Stops that keep the work: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 during ``fit`` save a checkpoint at the step the
run reached, say how to resume, and exit non-zero on every rank.

SLURM and Kubernetes send SIGTERM before they kill a preempted job (SLURM also SIGUSR1 ahead of the time limit when
the job asks with ``--signal=USR1@120``); a person presses Ctrl-C. Lightning alone lets SIGTERM end the run with
exit status 0 and no checkpoint, and Ctrl-C with nothing saved since the last periodic checkpoint.
:class:`StopOnSignal` (every recipe's Trainer has it; add it to your own) replaces Lightning's handlers for the
training loop. The first signal is only recorded (a handler must not touch the model mid-step); at the end of the
training step in progress every rank agrees on it (one all-reduce of a flag per step: a signal that reached one rank
only stops all of them at the same step), the checkpoint is written where the run's checkpoints go
(``checkpoints/last.ckpt``, all ranks taking part as in any checkpoint), the event files are flushed, and the
process exits with ``128 + signal`` (143 for SIGTERM, 130 for Ctrl-C). That checkpoint is the state the periodic
ones hold at a step's end, so ``--ckpt_path <it>`` resumes to the uninterrupted run's losses and weights
(``tests/test_signals.py``). A second signal while the step finishes stops at once without saving.

What it waits for: the step in progress (an online step includes its rollout) or a validation in progress
(validation is not cut short: its checkpoint then follows it). With SIGUSR1 under SLURM (``SLURM_JOB_ID`` set) and
``requeue=True`` (the default), rank 0 then asks ``scontrol requeue`` for the job; the requeued job resumes with
``--ckpt_path last`` and a fixed logger version (README, "Scaling out").
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class Stopped(SystemExit):
    """The run stopped on a signal after saving its checkpoint; its exit status is ``128 + signal``."""

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        super().__init__(128 + signum)
        self.signum, self.checkpoint = signum, checkpoint


class StopOnSignal(L.Callback):
    """Save a checkpoint at the step and exit non-zero on SIGTERM, SIGINT or SIGUSR1 during training.

    Args:
        signals: the signals that stop the run this way (names: ``SIGTERM``, ``SIGINT``, ``SIGUSR1``).
        requeue: after a SIGUSR1 under SLURM, ask ``scontrol requeue $SLURM_JOB_ID`` (rank 0).
        command: the command line that started the run, shown with ``--ckpt_path`` as the way to resume (the
            recipes pass theirs; without it the message names the checkpoint only).
    """

    def __init__(self, signals: list[str] | tuple[str, ...] = SIGNALS, requeue: bool = True,
                 command: list[str] | None = None) -> None:  # fmt: skip
        unknown = [name for name in signals if name not in SIGNALS]
        if unknown:
            from lit_align.errors import OptionError

            raise OptionError(f"StopOnSignal(signals={list(signals)}): {unknown} not among {', '.join(SIGNALS)}")
        self.signals = [getattr(signal, name) for name in signals if hasattr(signal, name)]
        self.requeue, self.command = requeue, command
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    # -- the handlers: installed for the training loop only -------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After Lightning registered its own handlers (just before the loop starts), so these replace them."""
        self.received = None
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._record)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second one: stop now, without a checkpoint
            self._restore()
            signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        sys.stderr.write(f"\nReceived {signal.Signals(signum).name}: stopping after the current step, with a "
                         "checkpoint (send it again to stop at once, without one)\n")  # fmt: skip
        sys.stderr.flush()

    # -- the decision, at the end of each training step ---------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        signum = self._agreed_signal(trainer)
        if signum:
            self._stop(trainer, signum)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        signum = self._agreed_signal(trainer)
        if signum:
            self._stop(trainer, signum)

    def _agreed_signal(self, trainer: L.Trainer) -> int:
        """The signal any rank received (0: none); every rank calls this at the same point of every step."""
        local = self.received or 0
        if trainer.world_size == 1:
            return local
        flag = torch.tensor([local], device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(flag, reduce_op="max").item())

    def _stop(self, trainer: L.Trainer, signum: int) -> None:
        path = checkpoint_path(trainer)
        if path.is_symlink():  # ModelCheckpoint(save_last="link") points last.ckpt at a periodic checkpoint
            path.unlink()
        trainer.save_checkpoint(str(path), weights_only=False)  # the whole state: resume continues from it
        for logger in trainer.loggers:
            logger.save()
        name = signal.Signals(signum).name
        resume = resume_command(self.command, path)
        if trainer.is_global_zero:
            print(f"Stopped by {name} at step {trainer.global_step}: checkpoint {path}\n  resume with: {resume}",
                  file=sys.stderr, flush=True)  # fmt: skip
        if signum == getattr(signal, "SIGUSR1", None) and self.requeue and trainer.is_global_zero:
            requeue_slurm_job()
        raise Stopped(signum, str(path))


def checkpoint_path(trainer: L.Trainer) -> Path:
    """``last.ckpt`` in the folder the run's checkpoints go to (its ModelCheckpoint's, else ``<log dir>/checkpoints``,
    as Lightning's default ModelCheckpoint would place them)."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None) if isinstance(callback, ModelCheckpoint) else None
    if folder is None:
        base = trainer.log_dir if trainer.loggers else trainer.default_root_dir  # log_dir: a collective, every rank
        folder = os.path.join(base or ".", "checkpoints")
    return Path(folder) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


def resume_command(command: list[str] | None, checkpoint: Path) -> str:
    """The run's command line with ``--ckpt_path checkpoint`` (an earlier ``--ckpt_path`` replaced)."""
    if not command:
        return f"fit(..., ckpt_path={str(checkpoint)!r})"
    args, skip = [], False
    for arg in command[1:]:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            args.append(arg)
    program = command[0]
    program = f"python {program}" if program.endswith(".py") else program  # `lit-align dpo` stays as it is
    return " ".join([program, *map(shlex.quote, args), "--ckpt_path", shlex.quote(str(checkpoint))])


def requeue_slurm_job() -> None:
    """``scontrol requeue`` the SLURM job this process runs in (an array task by its array id)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    outcome = "requeued" if result.returncode == 0 else f"requeue failed ({result.stderr.strip() or result.returncode})"
    print(f"SLURM job {job}: {outcome}", file=sys.stderr, flush=True)
