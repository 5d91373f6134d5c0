"""Saying when an online run's reward carries no training signal, instead of training on nothing without a word.

Three cases, each found where it can first be seen:

- before training, a verifier whose reference answers it cannot use (:func:`check_references`): the function
  names, per reference, why it cannot use it (``reference_problem``); the rows are counted and the first named,
  once per function and data;
- at a rollout, no completion scorable at all (:func:`unscorable_message`): every function returned None for
  every completion on every rank; the online module stops with this message or skips the rollout
  (``rewards.unscorable_rollouts``);
- over rollouts, every group's rewards without spread (:class:`SpreadWatch`): for ``rewards.zero_spread_patience``
  consecutive rollouts, every prompt's completions scored alike, so group-relative advantages are all 0; warned
  once, with each function's mean reward over those rollouts (which says why: all 0, the task is out of reach or
  the answers are not parsed; all 1, it is too easy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_align.rewards.scoring import nanstd, reward_columns

FIRST_ROWS = 5  # rows a report names
_REPORTED: set[tuple[str, str, str]] = set()  # (data fingerprint, function, column): reported once per process


def check_references(reward_funcs: Sequence[Callable], names: Sequence[str], datamodule: Any) -> None:
    """Warn once per reward function whose reference answers (its ``reference_column``) it cannot use in some rows
    of the data (its ``reference_problem(value)`` says why), naming the first rows; those rows' completions get
    None (no opinion) from it. Functions without those attributes are not checked."""
    source = str(getattr(datamodule, "data_path", type(datamodule).__name__))
    splits = [("train", getattr(datamodule, "train_dataset", None)), ("val", getattr(datamodule, "val_dataset", None))]
    for func, name in zip(reward_funcs, names, strict=True):
        column, problem = getattr(func, "reference_column", None), getattr(func, "reference_problem", None)
        if column is None or problem is None:
            continue
        bad, total = [], 0
        for _, dataset in splits:
            if dataset is None or column not in dataset.column_names:
                continue
            numbers = dataset["_row"] if "_row" in dataset.column_names else range(len(dataset))
            for row, value in zip(numbers, dataset[column], strict=True):
                total += 1
                if value is not None and (why := problem(value)) is not None:
                    bad.append((row, value, why))
        key = (str([getattr(d, "_fingerprint", id(d)) for _, d in splits]), name, column)
        if not bad or key in _REPORTED:
            continue
        _REPORTED.add(key)
        bad.sort(key=lambda item: item[0])
        reasons: dict[str, list[str]] = {}
        for row, value, why in bad[:FIRST_ROWS]:
            reasons.setdefault(why, []).append(f"row {row} ({value!r:.40})")
        shown = "; ".join(f"{', '.join(rows)}: {why}" for why, rows in reasons.items())
        more = "; ..." if len(bad) > FIRST_ROWS else ""
        none = " It can score NO row: every completion gets None from it." if len(bad) == total else ""
        rank_zero_warn(
            f"reward function {name!r} cannot use the reference answer of {len(bad)} of {total} rows of {source} "
            f"(column {column!r}), so their completions get None (no opinion) from it: {shown}{more}.{none} Fix the "
            f"column's values, or map another column with --data.columns '{{\"{column}\": \"<column>\"}}'."
        )


class UnscorableRollout(RuntimeError):
    """A training rollout none of whose completions could be scored (``rewards.unscorable_rollouts="stop"``)."""


def unscorable_message(names: Sequence[str], batch: dict[str, Any], given: bool) -> str:
    """Why a rollout none of whose completions has a reward cannot train, naming the functions and the columns
    they received (and the first row's values)."""
    advice = ("--model.rewards.unscorable_rollouts skip leaves such rollouts out of the updates (counted as "
              "train/unscorable_skipped)")  # fmt: skip
    if given:
        return f"the rollout given to update() has a NaN reward for every completion, so it teaches nothing; {advice}"
    columns = reward_columns(batch)
    received = ", ".join(f"{k}={v[0]!r:.40}" for k, v in columns.items()) if columns else "none besides the prompt"
    return (
        f"no completion of this rollout could be scored: every reward function ({', '.join(names)}) returned None "
        f"for every completion on every rank, so there is nothing to learn from. Besides prompts and completions "
        f"they received the columns (first row): {received}. A verifier returns None where the row has no reference "
        "it can use: check the column it reads (--data.columns maps another one to its name). " + advice
    )


class SpreadWatch:
    """Counts consecutive training rollouts in which every group's rewards had zero spread, and warns once after
    ``patience`` of them with each function's mean reward over the streak.

    Args:
        patience: consecutive zero-spread rollouts before the warning (0: never).
        names: the reward functions' names, for the message.
        group_relative: whether the algorithm's advantages are relative to the group (GRPO, RLOO, RLVR), so that
            zero spread means zero advantages; otherwise the message only says the reward cannot rank completions.
    """

    def __init__(self, patience: int, names: Sequence[str], group_relative: bool) -> None:
        self.patience, self.names, self.group_relative = patience, list(names), group_relative
        self.streak, self.warned = 0, False
        self.sums = torch.zeros(len(self.names), dtype=torch.float32)
        self.counts = torch.zeros(len(self.names), dtype=torch.float32)

    @property
    def active(self) -> bool:
        return self.patience > 0 and not self.warned

    def observe(self, rewards: Tensor, per_func: Tensor, num_generations: int, reduce: Callable[[Tensor], Tensor]
                ) -> None:  # fmt: skip
        """One rollout's (B,) combined rewards (NaN: unscorable) and (B, F) per-function table, over all ranks
        (``reduce``: a sum over ranks that moves the tensor where the collective needs it; called on every rank while
        :attr:`active`, which changes on every rank at once)."""
        if not self.active or num_generations < 2:
            return
        std = nanstd(rewards.detach().float().cpu().view(-1, num_generations)).nan_to_num(0.0)
        zero = torch.isclose(std, torch.zeros_like(std)).sum()
        table = per_func.detach().float().cpu()
        scored = ~table.isnan()
        stats = torch.cat([torch.stack([zero.float(), torch.tensor(float(std.numel()))]),
                           table.nan_to_num(0.0).sum(0), scored.float().sum(0)])  # fmt: skip
        stats = reduce(stats).cpu()
        zero_groups, groups, rest = stats[0], stats[1], stats[2:]
        if groups == 0 or zero_groups < groups:
            self.streak = 0
            self.sums.zero_()
            self.counts.zero_()
            return
        self.streak += 1
        if rest.numel() == 2 * len(self.names):
            self.sums += rest[: len(self.names)]
            self.counts += rest[len(self.names) :]
        if self.streak >= self.patience:
            self.warned = True
            rank_zero_warn(self.message())

    def message(self) -> str:
        means = ", ".join(
            f"{name} {s / c:.3f}" if c else f"{name} None for every completion"
            for name, s, c in zip(self.names, self.sums.tolist(), self.counts.tolist(), strict=True)
        )
        effect = (
            "so every advantage (each reward against its group's) was 0: the updates carried no reward signal "
            "(only the KL term, when beta > 0)"
            if self.group_relative
            else "so the reward did not tell any prompt's completions apart"
        )
        return (
            f"for {self.streak} consecutive rollout{'s' if self.streak > 1 else ''} every prompt's completions got "
            f"the same reward (frac_reward_zero_std = 1), {effect}. Mean reward per function over those rollouts: "
            f"{means}. All 0: the task is out of the model's reach, or the completions do not give the answer in the "
            "form the verifier parses (say it in the prompt, e.g. --data.user_template); all 1: it is too easy. "
            "--model.rewards.zero_spread_patience sets how many rollouts (0: never warn)."
        )
