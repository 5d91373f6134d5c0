"""torchmetrics aggregation of the values every algorithm logs, under TRL's metric names.

Each name is a weighted :class:`torchmetrics.MeanMetric`. Step values are synced across ranks
(``dist_sync_on_step``) so ``train/*`` step curves are global, not rank 0's; epoch values are
synced by torchmetrics at compute time. Token-weighted values (``logits/*``) carry their token
counts as weights, so they aggregate over batches and ranks exactly as TRL's gathered sums do.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torchmetrics import MeanMetric, MetricCollection

from lit_align.models.logprobs import SequenceLogps

PREFERENCE_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
)

Value = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # values, or (values, weights)
# Rates over a count that can be zero (failed calls per call): 0 when nothing was counted, as TRL logs them, where a
# weighted mean with no weight is NaN. Other means with no weight stay NaN (nothing was measured: a batch with no
# desirable example has no ``rewards/chosen``).
ZERO_WHEN_EMPTY = frozenset({"tools/failure_frequency"})


class RateMetric(MeanMetric):
    """A weighted mean that is 0, not NaN, when its weights sum to 0 (see :data:`ZERO_WHEN_EMPTY`)."""

    def compute(self) -> torch.Tensor:
        return torch.where(self.weight > 0, self.mean_value / self.weight.clamp(min=1e-30), 0.0)


class MetricGroup(MetricCollection):
    """Weighted means keyed by name; logged with ``self.log_dict(group)``.

    The names are fixed at construction: Lightning maps logged metrics to module attributes once.
    """

    def __init__(self, names: tuple[str, ...], prefix: str, dist_sync_on_step: bool = True) -> None:
        metrics = {_key(n): (RateMetric if n in ZERO_WHEN_EMPTY else MeanMetric)(dist_sync_on_step=dist_sync_on_step)
                   for n in names}  # fmt: skip
        super().__init__(metrics, prefix=prefix)

    def step(self, values: dict[str, Value]) -> None:
        """Update each metric with its own values (forward, so the step value is this batch's), in name order: a
        step-synced update is a collective, so every rank must update the same metrics in the same order."""
        for name, value in sorted(values.items()):
            metric = self[_key(name)]
            if isinstance(value, tuple):
                data, weight = value
                # A step-synced metric is a collective: every rank must call it, even with zero weight here.
                if weight.sum() > 0 or metric.dist_sync_on_step:
                    metric(data.detach().float(), weight.float())
                else:  # nothing measured here: counted as an update (no "compute before update" warning), sums kept
                    metric.update(torch.zeros(0, device=data.device), torch.zeros(0, device=data.device))
            elif value.numel():
                metric(value.detach().float())


def to_device(values: dict[str, Value], device: torch.device) -> dict[str, Value]:
    """Metric values (tensors or ``(values, weights)`` pairs) on ``device``."""
    return {k: tuple(t.to(device) for t in v) if isinstance(v, tuple) else v.to(device) for k, v in values.items()}


def weighted_mean(value: Value) -> float:
    """One batch's value of a metric as a float: the plain mean, or sum(values * weights) / sum(weights)
    (NaN when every weight is 0, e.g. a side of the batch with no examples)."""
    data, weight = value if isinstance(value, tuple) else (value, torch.ones_like(value))
    total = weight.float().sum()
    return float((data.float() * weight.float()).sum() / total) if total > 0 else float("nan")


def _key(name: str) -> str:
    # MetricCollection keys may not contain '.'; '/' is kept (TRL's names use it).
    return name.replace(".", "_")


def preference_values(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen: SequenceLogps,
    rejected: SequenceLogps,
) -> dict[str, Value]:
    """TRL's preference metrics for one batch: implicit rewards, margins, accuracies, logps, logits."""
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "logps/chosen": chosen.sum.detach(),
        "logps/rejected": rejected.sum.detach(),
        "logits/chosen": (chosen.logits_sum / chosen.num_tokens.clamp(min=1), chosen.num_tokens),
        "logits/rejected": (rejected.logits_sum / rejected.num_tokens.clamp(min=1), rejected.num_tokens),
    }


def trainer_options(trainer: Any) -> dict[str, Any]:
    """The Trainer's options that shape a run, for the HParams tab (``trainer/<option>``)."""
    return {
        "max_steps": trainer.max_steps,
        "max_epochs": trainer.max_epochs,
        "precision": str(trainer.precision),
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "strategy": type(trainer.strategy).__name__,
        "val_check_interval": trainer.val_check_interval,
        "gradient_clip_val": trainer.gradient_clip_val,
        "seed": os.environ.get("PL_GLOBAL_SEED"),  # what seed_everything set
    }


def log_hyperparameters(logger: Any, params: dict[str, Any], metrics: list[str], rank_zero: bool) -> None:
    """``params`` to ``logger``. For TensorBoard, the HParams summaries are written here with ``metrics`` as the
    tab's metric columns: TensorBoard fills them with each tag's latest logged value (the validation curves as they
    go, the final ones when the run ends). Lightning's ``log_hyperparams`` would declare only ``hp_metric`` and log
    it as -1, or, given the metrics, write a value for each at step 0 into the very curves it names."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if not isinstance(logger, TensorBoardLogger):
        logger.log_hyperparams(params)
        return
    logger.hparams.update(params)  # hparams.yaml, as Lightning's call keeps it
    if not rank_zero:
        return
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    writer = logger.experiment._get_file_writer()
    for summary in hparams_summaries(params, dict.fromkeys(metrics, 0.0)):  # the values are not written
        writer.add_summary(summary)


def short_name(name: str) -> str:
    """``train/rewards/margins`` -> ``margins``: the progress bar's label for a metric."""
    return name.rsplit("/", 1)[-1]


def table_cell(value: Any, limit: int = 300) -> str:
    """``value`` (text, or the last message's content) as a cell of a markdown table (TensorBoard's text tab)."""
    text = value[-1]["content"] if isinstance(value, list) and value else str(value)
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>")
