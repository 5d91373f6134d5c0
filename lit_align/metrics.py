"""torchmetrics aggregation of the values every algorithm logs, under TRL's metric names.

Each name is a weighted :class:`torchmetrics.MeanMetric`. Step values are synced across ranks
(``dist_sync_on_step``) so ``train/*`` step curves are global, not rank 0's; epoch values are
synced by torchmetrics at compute time. Token-weighted values (``logits/*``) carry their token
counts as weights, so they aggregate over batches and ranks exactly as TRL's gathered sums do.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, MetricCollection

from lit_align.logprobs import SequenceLogps

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


class MetricGroup(MetricCollection):
    """Weighted means keyed by name; logged with ``self.log_dict(group)``.

    The names are fixed at construction: Lightning maps logged metrics to module attributes once.
    """

    def __init__(self, names: tuple[str, ...], prefix: str, dist_sync_on_step: bool = True) -> None:
        metrics = {_key(n): MeanMetric(dist_sync_on_step=dist_sync_on_step) for n in names}
        super().__init__(metrics, prefix=prefix)

    def step(self, values: dict[str, Value]) -> None:
        """Update each metric with its own values (forward, so the step value is this batch's)."""
        for name, value in values.items():
            metric = self[_key(name)]
            if isinstance(value, tuple):
                data, weight = value
                # A step-synced metric is a collective: every rank must call it, even with zero weight here.
                if weight.sum() > 0 or metric.dist_sync_on_step:
                    metric(data.detach().float(), weight.float())
            elif value.numel():
                metric(value.detach().float())


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
