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

from lit_align.errors import OptionError, UserError
from lit_align.rewards.scoring import nanstd, reward_columns

FIRST_ROWS = 5  # rows a report names
_REPORTED: set[tuple[str, str, str]] = set()  # (data fingerprint, function, column): reported once per process


def check_references(reward_funcs: Sequence[Callable], names: Sequence[str], datamodule: Any) -> None:
    """Warn once per reward function whose reference answers (its ``reference_column``) it cannot use in some rows
    of the data (its ``reference_problem(value)`` says why), naming the first rows; those rows' completions get
    None (no opinion) from it. A function that can use no row's reference is refused (``OptionError``), before any
    model loads. Functions without those attributes are not checked."""
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
            reasons.setdefault(why, []).append(f"row {row + 1} ({value!r:.40})")
        shown = "; ".join(f"{', '.join(rows)}: {why}" for why, rows in reasons.items()) + " (rows 1-based)"
        more = f"; and {len(bad) - FIRST_ROWS} more rows" if len(bad) > FIRST_ROWS else ""
        fix = f"Fix the column's values, or map another column with --data.columns '{{\"{column}\": \"<column>\"}}'."
        if len(bad) == total:  # it would only ever say None: the run could not learn from it
            raise OptionError(
                f"reward function {name!r} cannot use the reference answer of any of the {total} rows of {source} "
                f"(column {column!r}): {shown}{more}. It would score no completion. {fix}"
            )
        rank_zero_warn(
            f"reward function {name!r} cannot use the reference answer of {len(bad)} of {total} rows of {source} "
            f"(column {column!r}), so their completions get None (no opinion) from it: {shown}{more}. {fix}"
        )


class UnscorableRollout(UserError, RuntimeError):
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
        self.sums = torch.zeros(len(self.names))
        self.counts = torch.zeros(len(self.names))

    def local_stats(self, rewards: Tensor, per_func: Tensor, num_generations: int) -> Tensor:
        """This rank's share of one rollout's statistics: [zero-spread groups, groups, per-function sums, per-function
        counts] from its (B,) combined rewards (NaN: unscorable) and (B, F) table; empty when nothing is watched
        (warned already, patience 0, or groups of one), which is the same on every rank."""
        if self.patience == 0 or self.warned or num_generations < 2:
            return torch.zeros(0)
        std = nanstd(rewards.detach().float().cpu().view(-1, num_generations)).nan_to_num(0.0)
        zero = torch.isclose(std, torch.zeros_like(std)).sum().float()
        table = per_func.detach().float().cpu()
        return torch.cat([torch.stack([zero, torch.tensor(float(std.numel()))]), table.nan_to_num(0.0).sum(0),
                          (~table.isnan()).float().sum(0)])  # fmt: skip

    def update(self, stats: Tensor) -> None:
        """Take one rollout's :meth:`local_stats`, summed over the ranks; warn when the streak reaches ``patience``."""
        if stats.numel() < 2:
            return
        zero_groups, groups, rest = stats[0], stats[1], stats[2:]
        if groups == 0 or zero_groups < groups:
            self.streak = 0
            self.sums.zero_()
            self.counts.zero_()
            return
        self.streak += 1
        if rest.numel() == 2 * len(self.names):  # a rollout given with its own (B, 1) rewards has no functions
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


class RewardSignal:
    """A part of the online modules: the training checks of :mod:`this module <lit_align.rewards.signal>`, decided
    over all ranks with ONE all-reduce of a few numbers per rollout (so no rank stops or skips alone).

    Args:
        options: the ``rewards`` group (``unscorable_rollouts``, ``zero_spread_patience``).
        names: the reward functions' names.
        group_relative: whether the module's advantages are relative to the group (see :class:`SpreadWatch`).
    """

    def __init__(self, options: Any, names: Sequence[str], group_relative: bool) -> None:
        self.unscorable_rollouts, self.names = options.unscorable_rollouts, list(names)
        self.spread = SpreadWatch(options.zero_spread_patience, names, group_relative)
        self.unscorable_skipped = 0  # rollouts left out for having no scorable completion (checkpointed)

    def check(self, rewards: Tensor, per_func: Tensor, batch: dict[str, Any], num_generations: int,
              all_reduce: Callable[[Tensor], Tensor], where: str) -> bool:  # fmt: skip
        """Whether the rollout trains: some completion, on some rank, has a reward (``all_reduce`` sums a CPU tensor
        over the ranks). If none has, ``stop`` raises :class:`UnscorableRollout` naming the functions and the columns
        they received; ``skip`` counts it (:attr:`unscorable_skipped`, which the module logs) and warns, naming
        ``where`` (the step). The zero-spread streak is updated with the same reduction."""
        scorable = (~rewards.isnan()).sum().float().reshape(1)
        local = torch.cat([scorable, self.spread.local_stats(rewards, per_func, num_generations)])
        stats = all_reduce(local).cpu()
        if stats[0] > 0:
            self.spread.update(stats[1:])
            return True
        message = unscorable_message(self.names, batch, given="rewards" in batch)
        if self.unscorable_rollouts == "stop":
            raise UnscorableRollout(message)
        self.unscorable_skipped += 1
        rank_zero_warn(f"skipped the rollout at {where}: no completion could be scored ({self.unscorable_skipped} "
                       "skipped so far)")  # fmt: skip
        return False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["unscorable_skipped"] = self.unscorable_skipped

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.unscorable_skipped = int(checkpoint.get("unscorable_skipped", 0))
