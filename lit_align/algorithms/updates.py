"""The optimizer steps over one rollout of an online module (step 6 of :mod:`lit_align.algorithms.online`).

``num_iterations`` passes x ``num_minibatches`` optimizer steps, each accumulating ``gradient_accumulation_steps``
micro-batches of :meth:`~lit_align.algorithms.online.OnlinePolicyGradient.policy_loss` under ONE normalizer counted
over the whole minibatch (and over ranks for ``token_mean``), so accumulation changes nothing. A non-finite
micro-batch loss is skipped as the base's policy says (``loss_is_finite``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def optimize_rollout(module: Any, exp: Any) -> tuple[list[float], dict[str, list]]:
    """Run the rollout's optimizer steps on ``module``; returns each step's summed micro-batch losses and the
    statistics its hooks collected (``(values, weights)`` per name), the optimizer steps' own (learning rate, grad
    norm) included."""
    losses: list[float] = []
    stats: dict[str, list] = defaultdict(list)
    rows_total = len(exp.rollout)
    for iteration in range(module.num_iterations):
        row_ids = module.minibatch_order(rows_total, iteration)
        for minibatch in row_ids.tensor_split(min(module.num_minibatches, rows_total)):
            normalizer = loss_normalizer(exp.loss_mask[minibatch], module.loss_aggregation,
                                         module.sampler.options.max_new_tokens, module.all_reduce)  # fmt: skip
            module.zero_grad_manual()
            total = 0.0
            for rows in minibatch.tensor_split(min(module.gradient_accumulation_steps, len(minibatch))):
                loss = module.policy_loss(exp, rows, normalizer, stats)
                if not module.loss_is_finite(loss, None):
                    loss = module.skipped_loss()
                module.backward_manual(loss)
                total += float(loss.detach())
            for name, value in module.step_manual().items():
                stats[name].append((torch.tensor([value]), torch.ones(1)))
            losses.append(total)
    return losses, stats


def loss_normalizer(mask: Tensor, aggregation: str, max_new_tokens: int, all_reduce: Callable) -> Tensor:
    """A minibatch's loss normalizer: its rows (``sequence_mean`` / ``sequence_sum``), rows x ``max_new_tokens``
    (``constant``), or its trained tokens counted over ranks (``token_mean``; DDP averages gradients)."""
    rows = torch.tensor(float(mask.shape[0]), device=mask.device)
    if aggregation == "constant":
        return rows * max_new_tokens
    if aggregation in ("sequence_mean", "sequence_sum"):
        return rows
    return all_reduce(mask.sum().float(), "mean")


def to_device(values: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Metric values (tensors or ``(values, weights)`` pairs) on ``device``."""
    return {k: tuple(t.to(device) for t in v) if isinstance(v, tuple) else v.to(device) for k, v in values.items()}
