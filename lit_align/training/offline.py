"""OfflineModule: the loop of the algorithms that learn from the batches of a dataset (SFT, the reward model, DPO,
IPO, SimPO, ORPO, KTO, SPIN's pairs of an iteration), with Lightning's automatic optimization.

Per batch: :meth:`OfflineModule.compute_loss` (the algorithm's hook) gives the mean loss and the metric values;
non-finite losses stop or are skipped (``nonfinite_loss``); the values are logged as ``train/<name>`` per step and
``val/<name>`` per validation. A loss is a mean over the batch, unless :meth:`OfflineModule.loss_units` counts the
units (tokens) it is a mean over: training then backpropagates their sum and normalizes the gradient by the units of
the whole optimizer step instead, every micro-batch of an accumulation window on every rank (SFT's token mean).
``update(batch)`` is one optimizer step outside a Trainer.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_align.metrics import Value, weighted_mean
from lit_align.rollouts.record import mark_updated
from lit_align.training.base import AlignmentModule

EXTENSION_HOOKS = ("compute_loss", "loss_units")


class OfflineModule(AlignmentModule):
    """Base of the modules that learn from dataset batches; a subclass implements :meth:`compute_loss`."""

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Value]]:
        """The batch's mean loss and the metric values (per-example tensors, or ``(values, weights)``) to log."""
        raise TypeError(f"{type(self).__name__} implements no compute_loss")

    def loss_units(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The units (e.g. trained tokens) the batch's loss is a mean over, when training takes the mean over the
        whole optimizer step instead of each batch. Default ``None``: a mean over the batch."""
        return None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, values = self.compute_loss(batch)
        if not self.loss_is_finite(loss, batch_idx):
            return self.skipped_loss()
        units = self.loss_units(batch)
        if units is not None:  # a sum: on_before_optimizer_step divides the gradient by the step's units
            self.count_window_units(units)
            # The logged loss is the mean over all ranks' units (not the mean of per-rank means), as the gradient is.
            sums = self.all_reduce(torch.stack([loss.detach() * units, units.float()]))
            self.log("train/loss", sums[0] / sums[1].clamp(min=1), prog_bar=True)
            loss = loss * units
        else:
            self.log("train/loss", loss.detach(), prog_bar=True, sync_dist=True)
        self.train_metrics.step(values)
        self.log_dict(self.train_metrics, on_step=True, on_epoch=False)
        self.show_key_metrics(values)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, values = self.compute_loss(batch)
        units = self.loss_units(batch)
        if units is not None:
            loss_value = (loss.detach().reshape(1), units.float().reshape(1))  # weighted by its units
        else:
            loss_value = loss.detach().expand(_batch_size(batch))
        self.val_metrics.step({"loss": loss_value, **values})
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=False)

    def update(self, batch: dict[str, Any], total_steps: int = 1000) -> dict[str, float]:
        """One optimization step outside a Trainer; returns the loss and metric values as floats.

        The optimizer is :meth:`standalone_optimizer`'s: after ``Trainer.fit``, the fit's own optimizer and schedule
        continued; otherwise AdamW and the schedule built on the first call (horizon ``total_steps``).
        """
        optimizer, scheduler = self.standalone_optimizer(total_steps)
        self._window = [0, 0]
        self.train()
        device = next(self.policy.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, values = self.compute_loss(batch)
        if not self.loss_is_finite(loss, None):
            optimizer.zero_grad(set_to_none=True)
            return {"loss": float("nan"), "skipped": 1.0}
        loss.backward()
        if self.hparams.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable(), self.hparams.max_grad_norm)
        optimizer.step()
        mark_updated(self.policy)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach()), **{name: weighted_mean(value) for name, value in values.items()}}


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if torch.is_tensor(value):
            return value.shape[0]
    return 1
