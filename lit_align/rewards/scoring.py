"""Scoring a rollout: reward functions -> a (B, F) table with NaN where a function returned None -> one reward.

Pure functions; the online algorithms (``lit_align.training.online``) call them. :func:`check_reward_funcs`
binds the functions to the data once, before training: each is called on the first rows with their real
columns, so a signature that does not fit, a column it needs that the data lacks, or a column named like one
of the arguments every function receives (:data:`REWARD_ARGUMENTS`) fails at setup, with the names.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_align.errors import OptionError
from lit_align.rewards.resolve import RewardFunc

# What every reward function receives besides the data's columns (TRL's convention, plus completion_ids).
REWARD_ARGUMENTS = ("prompts", "completions", "completion_ids")
RENAME = 'rename it with --data.columns \'{{"<new name>": "{0}"}}\''


def reward_columns(batch: dict[str, Any]) -> dict[str, list[Any]]:
    """The data columns a prompt batch passes to the reward functions: every non-tensor field but the raw prompt."""
    return {k: v for k, v in batch.items() if k != "prompt" and not torch.is_tensor(v)}


def check_reward_funcs(
    reward_funcs: Sequence[RewardFunc], names: Sequence[str], prompts: list[Any], columns: dict[str, list[Any]],
    source: str,
    environments: list[Any] | None = None,
) -> None:  # fmt: skip
    """Call each reward function once on the first rows of the data (``prompts`` and their ``columns``) with empty
    completions, as training will call it; raise ``ValueError`` naming the function and the column when they do
    not fit. An empty completion is what a model that stops at once produces, so a function must take it.

    Reward models (objects with a ``model`` attribute) are not called: their signature is lit-align's own.
    """
    for column in columns:
        if column in REWARD_ARGUMENTS:
            raise OptionError(
                f"{source}: the data column {column!r} has the name of an argument every reward function receives "
                f"({', '.join(REWARD_ARGUMENTS)}); {RENAME.format(column)}"
            )
    n = len(prompts)
    completions = [[{"role": "assistant", "content": ""}] if isinstance(p, list) else "" for p in prompts]
    given = {"prompts": prompts, "completions": completions, "completion_ids": [[] for _ in prompts], **columns}
    data_columns = ", ".join(columns) or "none besides the prompt"
    for func, name in zip(reward_funcs, names, strict=True):
        extra = {"environments": environments} if environments is not None and takes(func, "environments") else {}
        _check_signature(func, name, {**given, **extra}, data_columns)
        if hasattr(func, "model"):
            continue
        try:
            values = func(**given, **extra)
        except Exception as err:
            raise OptionError(
                f"reward function {name!r} failed when called at setup on the first {n} rows of {source} (empty "
                f"completions; the data's columns: {data_columns}): {type(err).__name__}: {err}"
            ) from err
        if not isinstance(values, list | tuple) or len(values) != n:
            got = f"{len(values)} values" if isinstance(values, list | tuple) else type(values).__name__
            raise OptionError(f"reward function {name!r} returned {got} for {n} completions; expected a list of {n}")
        bad = next((v for v in values if v is not None and (isinstance(v, bool) or not _is_number(v))), None)
        if bad is not None:
            raise OptionError(
                f"reward function {name!r} returned {type(bad).__name__} {bad!r:.40}; expected a float per completion "
                "(None where it does not apply)"
            )


def _check_signature(func: RewardFunc, name: str, given: dict[str, Any], data_columns: str) -> None:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature (a builtin): the trial call decides
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        accepted = None
    else:
        accepted = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for p in parameters:
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in given:
            raise OptionError(
                f"reward function {name!r} needs the argument {p.name!r}, and the data has no column of that name "
                f'(its columns: {data_columns}); map one to it with --data.columns \'{{"{p.name}": "<column>"}}\''
            )
        if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            raise OptionError(f"reward function {name!r}: argument {p.name!r} is positional-only; reward functions are "
                              "called with keyword arguments (prompts=..., completions=..., <column>=...)")  # fmt: skip
    extra = sorted((k for k in given if accepted is not None and k not in accepted), key=REWARD_ARGUMENTS.__contains__)
    if extra:  # a data column first: that is what the user can act on
        which = "a column of the data" if extra[0] not in REWARD_ARGUMENTS else "an argument every function receives"
        raise OptionError(
            f"reward function {name!r} takes no argument {extra[0]!r} ({which}) and no **kwargs; every data column "
            "reaches every reward function as a keyword argument: give it **kwargs (TRL's signature "
            "f(prompts, completions, **kwargs))"
        )


def takes(func: Any, name: str) -> bool:
    """Whether ``func`` accepts the keyword ``name`` (declared, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY) for p in parameters)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def score_completions(
    reward_funcs: Sequence[RewardFunc],
    prompts: list[Any],
    texts: list[str],
    columns: dict[str, list[Any]],
    completion_ids: list[list[int]],
    num_generations: int,
    conversations: list[list[dict[str, Any]]] | None = None,
    environments: list[Any] | None = None,
) -> Tensor:
    """Rewards (B, F) of B completions under F functions, NaN where a function returned None.

    ``prompts`` and each list in ``columns`` hold one entry per PROMPT and are repeated G times, as
    TRL repeats its inputs. A chat prompt gets its completion as ``[{"role": "assistant", ...}]``, or a multi-turn
    rollout's whole conversation (``conversations``: assistant and tool messages); ``environments`` (one per
    completion) reach the functions that take them (an ``environments`` argument or ``**kwargs``), as in TRL.
    """
    prompts = [p for p in prompts for _ in range(num_generations)]
    columns = {k: [v for v in values for _ in range(num_generations)] for k, values in columns.items()}
    completions = conversations or [
        [{"role": "assistant", "content": t}] if isinstance(p, list) else t for p, t in zip(prompts, texts, strict=True)
    ]
    out = torch.full((len(texts), len(reward_funcs)), math.nan)
    for i, func in enumerate(reward_funcs):
        extra = {"environments": environments} if environments is not None and takes(func, "environments") else {}
        values = func(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns, **extra)
        if len(values) != len(texts):
            name = getattr(func, "__name__", type(func).__name__)
            raise OptionError(f"reward function {name!r} returned {len(values)} rewards for {len(texts)} completions")
        out[:, i] = torch.tensor([math.nan if v is None else float(v) for v in values])
    return out


def fill_unscorable(rewards: Tensor, num_generations: int) -> Tensor:
    """NaN rewards replaced by their group's mean scorable reward (0 when the whole group is NaN)."""
    grouped = rewards.view(-1, num_generations)
    means = grouped.nanmean(dim=1, keepdim=True).nan_to_num(0.0).expand_as(grouped)
    return torch.where(grouped.isnan(), means, grouped).view(-1)


def weighted_rewards(per_func: Tensor, weights: Tensor | None) -> Tensor:
    """(B,) weighted sum of the (B, F) per-function rewards (``None``: weights of 1); NaN where every function
    returned None (an unscorable completion), else NaN entries count as 0 (TRL's ``nansum``)."""
    total = (per_func if weights is None else per_func * weights.to(per_func.device)).nansum(dim=1)
    return total.masked_fill(per_func.isnan().all(dim=1), math.nan)


def nanstd(grouped: Tensor) -> Tensor:
    """Unbiased std of each row over its non-NaN entries (NaN with fewer than two), as TRL's ``nanstd``."""
    count = (~grouped.isnan()).sum(dim=1)
    variance = ((grouped - grouped.nanmean(dim=1, keepdim=True)) ** 2).nansum(dim=1) / (count - 1)
    return variance.masked_fill(count < 2, math.nan).sqrt()


def batch_zscore(scores: Tensor, min_std: float = 1e-6) -> Tensor:
    """(B,) scores standardized over their non-NaN entries: z = (s − μ) / σ, μ and σ the mean and the
    POPULATION standard deviation (÷ n) of the n scored entries, so the z's have mean 0 and mean square 1.

    NaN entries (not scored) stay NaN. Fewer than two scored entries, or zero spread (σ < ``min_std``, which
    absorbs the rounding of equal scores), give z = 0 for every scored entry: the batch then says nothing
    about which completion is better.
    """
    scored = ~scores.isnan()
    n = int(scored.sum())
    if n < 2:
        return torch.where(scored, torch.zeros_like(scores), scores)
    values = scores[scored]
    mean = values.mean()
    std = ((values - mean) ** 2).mean().sqrt()
    z = (scores - mean) / std if std >= min_std else torch.zeros_like(scores)
    return torch.where(scored, z, scores)
