"""The per-token surrogate of the online modules: its options (the ``objective`` group) and the part that applies it.

:class:`ObjectiveOptions` declares the options once (``--model.objective.name cispo``); :class:`Objective` turns a
micro-batch's log-probs, the sampling policy's, the importance level and the advantages into the per-token loss and
its measures (what the module logs), with the pure functions of :mod:`lit_align.losses.objectives`. The online base
adds the KL term and aggregates; PPO fixes the objective to ``clip``, adds the value loss and logs the clip under its
own name.

TRL 1.16's ``loss_type`` names a surrogate and an aggregation at once; here they are two options:

| TRL ``loss_type`` | ``objective.name`` | ``loss_aggregation`` | ``importance_ratio`` |
| --- | --- | --- | --- |
| grpo | clip | sequence_mean | token |
| dapo | clip | token_mean | token |
| dr_grpo | clip | constant | token |
| cispo | cispo (``cispo_max_weight`` = TRL's ``epsilon_high``) | token_mean | token |
| sapo | sapo | sequence_mean | token |
| vespo | vespo | token_mean | token |
| luspo (+ ``importance_sampling_level="sequence"``) | clip | sequence_sum | sequence_mean |
| grpo + ``importance_sampling_level="sequence"`` (GSPO) | clip | sequence_mean | sequence_mean |
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lit_align.hparams import check_options
from lit_align.losses.objectives import (
    ImportanceLevel,
    cispo_objective,
    clip_objective,
    importance_log_weights,
    rollout_correction_weights,
    sapo_objective,
    vespo_objective,
    vespo_weights,
)

ObjectiveName = Literal["clip", "cispo", "sapo", "vespo"]
ROLLOUT_CORRECTION_METRICS = ("sampling/sampling_logp_difference/mean", "sampling/sampling_logp_difference/max",
                              "sampling/importance_sampling_ratio/min", "sampling/importance_sampling_ratio/mean",
                              "sampling/importance_sampling_ratio/max")  # fmt: skip
Measures = dict[str, tuple[Tensor, Tensor]]  # name -> (values, weights), flat


@dataclass(frozen=True)
class ObjectiveOptions:
    """The per-token surrogate (the ``objective`` group; equations in :mod:`lit_align.losses.objectives`).

    Args:
        name: ``clip`` (PPO/GRPO's clipped ratio, with the module's ``epsilon`` and ``epsilon_high``), ``cispo``
            (the clipped weight detached, every token keeps a gradient), ``sapo`` (a smooth temperature gate
            instead of the clip) or ``vespo`` (a Gamma-shaped weight of the sequence ratio).
        delta: with ``clip``: the upper cap of the unclipped ratio (INTELLECT-2's two-sided clip; > 1 + ε_high);
            null: none.
        cispo_max_weight: with ``cispo``: ε_max, the cap of the importance weight (ScaleRL's recommended 5.0; TRL
            1.16 reads its ``epsilon_high`` here, which defaults to 0.2 there).
        sapo_temperature_pos: with ``sapo``: τ for tokens with a positive advantage (TRL's default 1.0).
        sapo_temperature_neg: with ``sapo``: τ for the others (TRL's default 1.05).
        vespo_k_pos: with ``vespo``: the power k of the weight for advantages >= 0 (TRL's default 2.0).
        vespo_lambda_pos: with ``vespo``: the decay λ for advantages >= 0 (3.0).
        vespo_k_neg: with ``vespo``: k for negative advantages (3.0).
        vespo_lambda_neg: with ``vespo``: λ for negative advantages (2.0).
    """

    name: ObjectiveName = "clip"
    delta: float | None = None
    cispo_max_weight: float = 5.0
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    def __post_init__(self) -> None:
        default = ObjectiveOptions.__dataclass_fields__
        own = {"clip": ("delta",), "cispo": ("cispo_max_weight",),
               "sapo": ("sapo_temperature_pos", "sapo_temperature_neg"),
               "vespo": ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")}
        check_options(
            (self.name in own, "objective.name", self.name, "clip, cispo, sapo or vespo"),
            (self.delta is None or self.delta > 1, "objective.delta", self.delta, "a cap > 1 (above 1 + ε_high)"),
            (self.cispo_max_weight > 0, "objective.cispo_max_weight", self.cispo_max_weight, "> 0"),
            (self.sapo_temperature_pos > 0, "objective.sapo_temperature_pos", self.sapo_temperature_pos, "> 0"),
            (self.sapo_temperature_neg > 0, "objective.sapo_temperature_neg", self.sapo_temperature_neg, "> 0"),
            (min(self.vespo_lambda_pos, self.vespo_lambda_neg) > 0, "objective.vespo_lambda_pos",
             (self.vespo_lambda_pos, self.vespo_lambda_neg), "λ > 0 for both signs"),
        )  # fmt: skip
        for name, fields in own.items():  # a knob of another objective, changed, would be silently ignored
            for field in fields:
                if name != self.name and getattr(self, field) != default[field].default:
                    check_options((False, f"objective.{field}", getattr(self, field), f"applies to objective.name="
                                   f"{name}, not {self.name}"))  # fmt: skip

    def metric_names(self) -> tuple[str, ...]:
        """TRL's names of what this objective reports per token."""
        return {"clip": ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"),
                "cispo": ("cispo_clip_ratio",), "sapo": (), "vespo": ("vespo/phi_seq_mean",)}[self.name]  # fmt: skip


class Objective:
    """The part that computes the per-token surrogate of a micro-batch.

    Args:
        options: the ``objective`` group.
        epsilon: the lower clip range (``clip``).
        epsilon_high: the upper clip range (``clip``; default ``epsilon``).
        level: where the importance weight is taken (:func:`~lit_align.losses.objectives.importance_log_weights`).
    """

    def __init__(self, options: ObjectiveOptions, epsilon: float, epsilon_high: float | None,
                 level: ImportanceLevel) -> None:  # fmt: skip
        self.options, self.epsilon, self.epsilon_high, self.level = options, epsilon, epsilon_high, level

    def loss(
        self, logps: Tensor, old_logps: Tensor, mask: Tensor, advantages: Tensor, rollout_weights: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Measures]:  # fmt: skip
        """``(per_token_loss, log_weights, measures)`` of a micro-batch: the loss and the log importance weights, each
        (b, T) or (b, 1) (broadcast over tokens), and this objective's measures under TRL's names, as (values,
        weights) per token or per sequence (:meth:`ObjectiveOptions.metric_names`).

        ``advantages`` (b,) or (b, T); ``rollout_weights`` (b, T) or (b, 1): the rollout engine's importance
        correction (π_old / π_sampler, truncated or masked), which multiplies the loss (VESPO folds it into its
        sequence weight instead)."""
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        o = self.options
        log_ratio = logps - old_logps
        log_weights = importance_log_weights(log_ratio, mask, self.level)
        per_sequence = log_weights.shape[1] == 1
        weight = torch.ones(mask.shape[0], 1, device=mask.device) if per_sequence else mask.float()
        measures: Measures = {}
        if o.name == "clip":
            loss, low, high = clip_objective(log_weights, advantages, self.epsilon, self.epsilon_high, o.delta)
            for name, flags in (("low", low), ("high", high), ("region", low | high)):
                measures[f"clip_ratio/{name}_mean"] = _flat(flags, weight)
        elif o.name == "cispo":
            loss, clipped = cispo_objective(log_weights, logps, advantages, o.cispo_max_weight)
            measures["cispo_clip_ratio"] = _flat(clipped, weight)
        elif o.name == "sapo":
            loss = sapo_objective(log_weights, advantages, o.sapo_temperature_pos, o.sapo_temperature_neg)
        else:
            rollout_log = None if rollout_weights is None else torch.log(rollout_weights.expand_as(mask)) * mask
            phi = vespo_weights(log_ratio, mask, advantages, o.vespo_k_pos, o.vespo_lambda_pos, o.vespo_k_neg,
                                o.vespo_lambda_neg, rollout_log)  # fmt: skip
            loss = vespo_objective(phi, logps, advantages)
            measures["vespo/phi_seq_mean"] = _flat(phi, torch.ones_like(phi))
            rollout_weights = None
        if rollout_weights is not None:
            loss = loss * rollout_weights
        return loss, log_weights, measures


def _flat(values: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    values, weights = torch.broadcast_tensors(values.float(), weights.float())
    return values.detach().flatten(), weights.flatten()


def rollout_correction(exp: Any, options: Any, reduce: Callable[[Tensor, str], Tensor], device: torch.device) -> Tensor:
    """π_old / π_sampler of a rollout engine's completions (``exp.rollout.sampler_logps``), truncated or masked as the
    ``sampling`` options say (:func:`~lit_align.losses.objectives.rollout_correction_weights`), and TRL's
    ``sampling/*`` metrics of it into ``exp.metrics``: the mean and max |log π_old − log π_sampler| over the
    completion tokens the engine scored, and the min, mean and max weight (per token, or per sequence). Min and max
    are over all ranks (``reduce(tensor, op)``); the means are weighted over all ranks when logged."""
    mask = exp.rollout.policy_mask.bool()  # the policy's own tokens (a multi-turn rollout's tool tokens are not)
    sampler = exp.rollout.sampler_logps.to(exp.old_logps.device)
    weights = rollout_correction_weights(exp.old_logps, sampler, mask, options.rollout_correction,
                                         options.rollout_correction_min, options.rollout_correction_max)  # fmt: skip
    delta = (exp.old_logps - sampler).abs()
    scored = mask & ~delta.isnan()
    flat = weights.flatten() if weights.shape[1] == 1 else weights[mask]
    metrics = exp.metrics
    metrics["sampling/sampling_logp_difference/mean"] = delta[scored]
    metrics["sampling/importance_sampling_ratio/mean"] = flat
    for name, values, op, empty in (("sampling/sampling_logp_difference/max", delta[scored], "max", 0.0),
                                    ("sampling/importance_sampling_ratio/min", flat, "min", math.inf),
                                    ("sampling/importance_sampling_ratio/max", flat, "max", 0.0)):  # fmt: skip
        local = getattr(values, op)() if values.numel() else torch.tensor(empty)
        metrics[name] = reduce(local.float().to(device), op).reshape(1)
    return weights
