"""AdamW and the learning-rate schedule every module trains with (its options are AlignmentModule's)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

Scheduler = Literal["constant", "linear", "cosine"]


def adamw(groups: list[dict[str, Any]], lr: float, fused: bool = True) -> torch.optim.AdamW:
    """AdamW, with torch's fused kernel (``fused``) where every parameter has one (floating point on CPU or CUDA): on
    CPU the default per-parameter loop took ~7 s against ~0.8 s fused for SmolLM2-135M's update on the loaded 2-core
    machine (``bench/README.md``). Same update rule; rounding differs from the loop in the last bits."""
    params = [p for group in groups for p in group["params"]]
    fused = fused and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=True if fused else None)


def optimizer_and_schedule(
    params: list[nn.Parameter], lr: float, weight_decay: float, warmup_ratio: float, scheduler: Scheduler,
    total_steps: int | float | None, fused: bool,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:  # fmt: skip
    """AdamW (weight decay on matrices, not on norms and biases) and a linear warmup over ``warmup_ratio`` of
    ``total_steps`` (1000 when unknown) followed by a linear or cosine decay to 0, or a constant rate."""
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # fmt: skip
    optimizer = adamw([g for g in groups if g["params"]], lr, fused=fused)
    total = int(total_steps) if total_steps and math.isfinite(total_steps) else 1000
    warmup = int(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if scheduler == "linear":
            return 1.0 - progress
        if scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class NoSchedule:
    """A fit without a scheduler: ``update`` steps nothing."""

    def step(self) -> None:
        pass
