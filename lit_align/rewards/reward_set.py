"""The reward set: a part that an online module holds — its reward functions, resolved once, their weights, the
scoring of a rollout, TRL's rollout metrics and the TensorBoard table of sample completions.

:class:`RewardOptions` declares the options once (the ``rewards`` group: ``--model.rewards.reward_funcs``);
:class:`RewardSet` resolves them (import paths, ``model:<dir>`` reward models, configured classes or callables) and
scores. The pure pieces (the (B, F) reward table, the weighted sum, unscorable rows) are in
:mod:`lit_align.rewards.scoring`. Reward models are frozen models of the part: the module moves them to its device
and shards them under FSDP2 with its other frozen models (:meth:`RewardSet.frozen_models`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_align.hparams import check_options
from lit_align.metrics import table_cell
from lit_align.rewards.model_scorer import RewardModelScorer
from lit_align.rewards.resolve import recorded_reward_func, resolve_reward_funcs
from lit_align.rewards.scoring import check_reward_funcs, nanstd, reward_columns, score_completions, weighted_rewards
from lit_align.rewards.signal import check_references
from lit_align.rollouts.record import Rollout

ARITHMETIC_REWARD = "lit_align.rewards.verifiers:arithmetic_answer_reward"
TABLE_ROWS = 8
BINDING_ROWS = 4  # rows of the data each reward function is called on at setup
# (batch, source) -> one reset environment per row, or None: the tools group's check_tool_data
MakeEnvironments = Callable[[dict[str, Any], str], list[Any] | None]


@dataclass(frozen=True)
class RewardOptions:
    """The reward of an online module (the ``rewards`` group).

    Args:
        reward_funcs: reward functions by import path (``package.module:function``), ``model:<dir>`` for a
            trained reward model (its folder, or the run directory that exported it), a configured class
            (``class_path`` + ``init_args``), or callables; TRL's signature ``f(prompts, completions, **columns)``.
        reward_weights: one weight per reward function (default 1.0 each); the reward is the weighted sum.
        log_completions_every_n_steps: every N rollouts a table of prompts, completions and rewards goes to
            TensorBoard (0 = never).
        unscorable_rollouts: a training rollout none of whose completions could be scored (every function
            returned None for every completion, on every rank) teaches nothing: ``stop`` raises, naming the
            functions and the columns they received; ``skip`` leaves it out of the updates, warns and counts it
            (``train/unscorable_skipped``).
        zero_spread_patience: warn once when, for this many consecutive training rollouts, every prompt's
            completions got the same reward (``frac_reward_zero_std`` = 1: the group-relative advantages of GRPO,
            RLOO and RLVR are then all 0), with each function's mean reward over them; 0 never warns.
    """

    reward_funcs: Sequence[str | Callable] = (ARITHMETIC_REWARD,)
    reward_weights: Sequence[float] | None = None
    log_completions_every_n_steps: int = 10
    unscorable_rollouts: Literal["stop", "skip"] = "stop"
    zero_spread_patience: int = 10

    def __post_init__(self) -> None:
        check_options(
            (self.unscorable_rollouts in ("stop", "skip"), "rewards.unscorable_rollouts", self.unscorable_rollouts,
             "stop or skip"),
            (self.zero_spread_patience >= 0, "rewards.zero_spread_patience", self.zero_spread_patience,
             "consecutive rollouts, 0 or more (0: never warn)"),
            (self.log_completions_every_n_steps >= 0, "rewards.log_completions_every_n_steps",
             self.log_completions_every_n_steps, "0 or more (0: never)"),
        )  # fmt: skip

    def plain(self) -> dict[str, Any]:
        """As plain data for the hyperparameters (weights-only checkpoints): functions by import path, configured
        instances by ``class_path`` + ``init_args``, which :func:`~lit_align.rewards.resolve.resolve_reward_funcs`
        rebuilds."""
        weights = None if self.reward_weights is None else [float(w) for w in self.reward_weights]
        return {"reward_funcs": [recorded_reward_func(spec) for spec in self.reward_funcs], "reward_weights": weights,
                "log_completions_every_n_steps": self.log_completions_every_n_steps,
                "unscorable_rollouts": self.unscorable_rollouts,
                "zero_spread_patience": self.zero_spread_patience}  # fmt: skip


class RewardSet:
    """Resolved reward functions with their names (``rewards/<name>/mean``) and weights.

    Args:
        options: the ``rewards`` group.
        extra: reward columns besides the configured functions, each weight 1 (the environments' ``get_reward``,
            :class:`~lit_align.tools.environments.EnvironmentReward`, as TRL adds them); with them the configured
            functions may be none.
        optional: a module that trains without rewards (distillation, where they are metrics or an added term):
            no functions and no ``extra`` make an empty set, which scores nothing (``names`` empty).
    """

    DEAD_REWARD_ROLLOUTS: ClassVar[int] = 5  # training rollouts after which an always None/0 function is reported

    def __init__(self, options: RewardOptions, extra: Sequence[Callable] = (), optional: bool = False) -> None:
        self.options = options
        if options.reward_funcs or not (extra or optional):
            self.funcs, self.names, weights = resolve_reward_funcs(options.reward_funcs, options.reward_weights)
        else:
            self.funcs, self.names, weights = [], [], []
        for func in extra:
            self.funcs.append(func)
            self.names.append(func.__name__ if func.__name__ not in self.names else f"{func.__name__}_env")
            weights.append(1.0)
        self.weights = torch.tensor(weights)
        self._watch: dict[str, Any] = {"train": [0, torch.zeros(len(self.funcs), dtype=torch.bool)], "val": None}

    # -- as a part of a module ------------------------------------------------------------------
    @property
    def models(self) -> list[RewardModelScorer]:
        """The reward models among the functions."""
        return [f for f in self.funcs if isinstance(f, RewardModelScorer)]

    def frozen_models(self) -> list[nn.Module]:
        """The reward models, which the module moves to its device (they score where they are) and shards."""
        return [scorer.model for scorer in self.models]

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, batch: dict[str, Any], rollout: Rollout, training: bool) -> Tensor:
        """(B, F) rewards of a rollout of ``batch``'s prompts, NaN where a function returned None; every
        non-tensor column of the batch reaches the functions; (B, 0) for an empty set."""
        if not self.funcs:
            return torch.zeros(len(rollout), 0)
        ids = [r[:n] for r, n in zip(rollout.completion_ids.tolist(), rollout.lengths.tolist(), strict=True)]
        per_func = score_completions(self.funcs, batch["prompt"], rollout.texts, reward_columns(batch), ids,
                                     rollout.num_generations, rollout.messages, rollout.environments)  # fmt: skip
        self._track(per_func, training)
        return per_func

    def combine(self, per_func: Tensor) -> Tensor:
        """(B,) weighted sum of the (B, F) table, NaN where unscorable. A table that is not these functions' (a
        rollout made outside brings its (B, 1) rewards) is summed unweighted."""
        return weighted_rewards(per_func, self.weights if per_func.shape[1] == len(self.names) else None)

    def metric_names(self, with_std: bool = True) -> tuple[str, ...]:
        """The names :meth:`values` returns values for."""
        per_func = tuple(f"rewards/{n}/mean" for n in self.names)
        spread = ("reward_std", "frac_reward_zero_std") if with_std else ()
        return ("reward", *spread, *per_func, "completions/mean_length", "completions/clipped_ratio")

    def values(self, per_func: Tensor, rewards: Tensor, rollout: Rollout, with_std: bool) -> dict[str, Any]:
        """TRL's rollout metrics: ``reward`` (the combined ``rewards``, unscorable excluded), per-function means,
        the spread within groups, completion lengths."""
        scorable = ~rewards.isnan()
        values: dict[str, Any] = {"reward": (rewards.nan_to_num(0.0), scorable.float())}
        for i, name in enumerate(self.names):
            if per_func.shape[1] == len(self.names):
                values[f"rewards/{name}/mean"] = (per_func[:, i].nan_to_num(0.0), (~per_func[:, i].isnan()).float())
        values["completions/mean_length"] = rollout.policy_mask.sum(dim=1).float()  # the policy's tokens (TRL)
        values["completions/clipped_ratio"] = rollout.is_truncated.float()
        if with_std:
            kept = rewards[scorable]
            values["reward_std"] = (kept.std() if kept.numel() > 1 else torch.zeros(())).reshape(1)
            std = nanstd(rewards.view(-1, rollout.num_generations)).nan_to_num(0.0)  # < 2 scorable: zero std
            values["frac_reward_zero_std"] = torch.isclose(std, torch.zeros_like(std)).float()
        return values

    # -- functions that never reward -------------------------------------------------------------
    def _track(self, per_func: Tensor, training: bool) -> None:
        """Track which functions gave a usable reward (not None, not 0); after the first ``DEAD_REWARD_ROLLOUTS``
        training rollouts, warn once about each that never did (a validation pass: at its end)."""
        if per_func.shape[1] != len(self.names):
            return
        usable = (per_func.nan_to_num(0.0) != 0).any(dim=0).cpu()
        if not training:
            watch = self._watch["val"]
            if watch is not None:
                watch[0] += per_func.shape[0]
                watch[1] |= usable
            return
        watch = self._watch["train"]
        if watch[0] >= self.DEAD_REWARD_ROLLOUTS:
            return
        watch[0] += 1
        watch[1] |= usable
        if watch[0] == self.DEAD_REWARD_ROLLOUTS:
            self._warn_dead(watch[1], f"the first {watch[0]} training rollouts")

    def start_validation(self) -> None:
        self._watch["val"] = [0, torch.zeros(len(self.funcs), dtype=torch.bool)]

    def end_validation(self) -> None:
        watch, self._watch["val"] = self._watch["val"], None
        if watch is not None and watch[0] > 0:
            self._warn_dead(watch[1], f"a whole validation pass ({watch[0]} completions)")

    def _warn_dead(self, usable: Tensor, when: str) -> None:
        for name, ok in zip(self.names, usable.tolist(), strict=True):
            if not ok:
                rank_zero_warn(
                    f"reward function {name!r} gave no usable reward on {when}: every value was None (unscorable) or "
                    "0, so it teaches nothing. Check that the data's columns hold what it expects (e.g. answers in "
                    "the form it parses) and that the prompts ask for that form."
                )

    # -- the table of sample completions -----------------------------------------------------------
    def completions_table(self, rollout_index: int, prompts: list[Any], rollout: Rollout,
                          per_func: Tensor) -> str | None:  # fmt: skip
        """Every ``log_completions_every_n_steps`` rollouts (else None): a markdown table of the first prompts, their
        completions and each function's reward, for the module to log."""
        every = self.options.log_completions_every_n_steps
        if not every or rollout_index % every:
            return None
        header = "| prompt | completion | " + " | ".join(self.names) + " |"
        lines = [header, "|" + " --- |" * (2 + len(self.names))]
        for i in range(min(TABLE_ROWS, len(rollout))):
            scores = " | ".join(f"{v:.3g}" for v in per_func[i].tolist())
            prompt = table_cell(prompts[i // rollout.num_generations])
            lines.append(f"| {prompt} | {table_cell(rollout.texts[i])} | {scores} |")
        return "\n".join(lines)


def check_reward_options(datamodule: Any, options: RewardOptions,
                         environments: MakeEnvironments | None = None) -> None:  # fmt: skip
    """Bind the reward functions of ``options`` to ``datamodule``'s data before any model exists (the command line's
    check, :class:`lit_align.commands.cli.AlignCLI`); reward models are not loaded. ``environments(batch, source)``,
    when given, makes and resets the rows' environments as a rollout would (the ``tools`` group's
    :func:`~lit_align.tools.multi_turn.check_tool_data`), for the functions that take them."""
    specs = [s for s in options.reward_funcs if not (isinstance(s, str) and s.startswith("model:"))]
    if specs or environments:  # strings, configured instances ({class_path, init_args}) or callables, as the module
        funcs, names, _ = resolve_reward_funcs(specs) if specs else ([], [], [])
        bind_reward_funcs(funcs, names, datamodule, environments)


def bind_reward_funcs(reward_funcs: Sequence[Callable], names: Sequence[str], datamodule: Any,
                      environments: MakeEnvironments | None = None) -> None:  # fmt: skip
    """:func:`~lit_align.rewards.scoring.check_reward_funcs` on the first rows of ``datamodule``'s training data
    (set up if it was not), with the columns its batches carry and, with ``environments``, the rows' environments."""
    if getattr(datamodule, "train_dataset", None) is None:
        datamodule.setup("fit")
    dataset = datamodule.train_dataset
    batch = datamodule.collate([dataset[i] for i in range(min(BINDING_ROWS, len(dataset)))])
    if "prompt" not in batch:  # not prompt data: nothing the reward functions would see
        return
    source = f"{getattr(datamodule, 'data_path', type(datamodule).__name__)}"
    envs = environments(batch, source) if environments is not None else None
    check_reward_funcs(reward_funcs, names, batch["prompt"], reward_columns(batch), source, envs)
    check_references(reward_funcs, names, datamodule)
