"""RewardMixin: the reward functions of an online module — resolved once, scored per rollout, logged.

Mixed in before :class:`~lit_align.algorithms.base.AlignmentModule` by the online algorithms. It owns
the reward functions (import paths, ``model:<dir>`` reward models, or callables), their weights, the
reward models' device and FSDP2 sharding, TRL's rollout metrics, and the TensorBoard table of sample
completions. The pure pieces (the (B, F) reward table, the weighted sum, unscorable rows) are in
:mod:`lit_align.rewards.scoring`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_align.hparams import is_plain
from lit_align.rewards.model_scorer import RewardModelScorer
from lit_align.rewards.resolve import resolve_reward_funcs
from lit_align.rewards.scoring import (
    check_reward_funcs,
    nanstd,
    reward_columns,
    score_completions,
    weighted_rewards,
)
from lit_align.rollout import Rollout
from lit_align.sharding import fully_shard_model

ARITHMETIC_REWARD = "lit_align.rewards.verifiers:arithmetic_answer_reward"
TABLE_ROWS = 8
BINDING_ROWS = 4  # rows of the data each reward function is called on at setup


class RewardMixin:
    """Reward functions and their metrics.

    Args:
        reward_funcs: reward functions by import path (``package.module:function``), ``model:<dir>`` for a
            trained reward model, a configured class (``class_path`` + ``init_args``), or callables; TRL's
            signature ``f(prompts, completions, **columns)``.
        reward_weights: one weight per reward function (default 1.0 each); the reward is the weighted sum.
        log_completions_every_n_steps: every N rollouts a table of prompts, completions and rewards goes to
            TensorBoard (0 = never).
    """

    DEAD_REWARD_ROLLOUTS: ClassVar[int] = 5  # training rollouts after which an always None/0 function is reported

    def __init__(
        self,
        *,
        reward_funcs: Sequence[str | Callable] = (ARITHMETIC_REWARD,),
        reward_weights: Sequence[float] | None = None,
        log_completions_every_n_steps: int = 10,
        **kwargs: Any,
    ) -> None:
        funcs, names, weights = resolve_reward_funcs(reward_funcs, reward_weights)  # before any model loads
        super().__init__(**kwargs)
        # Checkpoints hold only plain data (weights_only loading): functions by import path, configured
        # instances by class_path + init_args, which resolve_reward_funcs rebuilds.
        self.hparams["reward_funcs"] = [recorded_reward_func(spec) for spec in reward_funcs]
        self.reward_funcs, self.reward_names = funcs, names
        self.register_buffer("reward_weights", torch.tensor(weights), persistent=False)
        self.log_completions_every_n_steps = log_completions_every_n_steps
        self._reward_watch = {"train": [0, torch.zeros(len(funcs), dtype=torch.bool)], "val": None}
        self._bound_to: object | None = None  # the DataModule the functions were checked against

    @classmethod
    def check_data(cls, datamodule: Any, options: dict[str, Any]) -> None:
        """Bind the reward functions named in ``options`` (the module's init arguments) to ``datamodule``'s data,
        before any model exists (:class:`lit_align.cli.AlignCLI` calls this). Reward models are not loaded."""
        specs = options.get("reward_funcs") or (ARITHMETIC_REWARD,)
        specs = [s for s in specs if not (isinstance(s, str) and s.startswith("model:"))]
        if specs:  # strings, configured instances ({class_path, init_args}) or callables, built as the module will
            funcs, names, _ = resolve_reward_funcs(specs)
            bind_reward_funcs(funcs, names, datamodule)

    def reward_metric_names(self, with_std: bool = True) -> tuple[str, ...]:
        """The names :meth:`reward_values` returns values for."""
        per_func = tuple(f"rewards/{n}/mean" for n in self.reward_names)
        spread = ("reward_std", "frac_reward_zero_std") if with_std else ()
        return ("reward", *spread, *per_func, "completions/mean_length", "completions/clipped_ratio")

    # -- devices and sharding ------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Bind the functions to the DataModule's data (once); reward models run on this rank's device (not every
        rank's ``cuda:0``)."""
        super().setup(stage)
        datamodule = self.trainer.datamodule
        if datamodule is not None and datamodule is not self._bound_to:
            bind_reward_funcs(self.reward_funcs, self.reward_names, datamodule)
            self._bound_to = datamodule
        device = self.trainer.strategy.root_device
        for scorer in self._reward_models():
            scorer.device = device
            scorer.model.to(device)

    def configure_model(self) -> None:
        """FSDP2: the other models first, then every reward model, frozen like the reference."""
        super().configure_model()
        mesh = self.data_parallel_mesh()
        if mesh is not None:
            for scorer in self._reward_models():
                fully_shard_model(scorer.model, mesh, frozen=True)

    def _reward_models(self) -> list[RewardModelScorer]:
        return [f for f in self.reward_funcs if isinstance(f, RewardModelScorer)]

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, batch: dict[str, Any], rollout: Rollout) -> Tensor:
        """(B, F) rewards of a rollout of ``batch``'s prompts; every non-tensor column reaches the functions."""
        columns = reward_columns(batch)
        ids = [r[:n] for r, n in zip(rollout.completion_ids.tolist(), rollout.lengths.tolist(), strict=True)]
        G = rollout.num_generations
        per_func = score_completions(self.reward_funcs, batch["prompt"], rollout.texts, columns, ids, G)
        self.watch_rewards(per_func)
        return per_func

    def watch_rewards(self, per_func: Tensor) -> None:
        """Track which functions gave a usable reward (not None, not 0); after the first ``DEAD_REWARD_ROLLOUTS``
        training rollouts, warn once about each that never did (a validation pass: at its end)."""
        usable = (per_func.nan_to_num(0.0) != 0).any(dim=0).cpu()
        if not self.training:
            watch = self._reward_watch["val"]
            if watch is not None:
                watch[0] += per_func.shape[0]
                watch[1] |= usable
            return
        watch = self._reward_watch["train"]
        if watch[0] >= self.DEAD_REWARD_ROLLOUTS:
            return
        watch[0] += 1
        watch[1] |= usable
        if watch[0] == self.DEAD_REWARD_ROLLOUTS:
            self._warn_dead(watch[1], f"the first {watch[0]} training rollouts")

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._reward_watch["val"] = [0, torch.zeros(len(self.reward_funcs), dtype=torch.bool)]

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        watch, self._reward_watch["val"] = self._reward_watch["val"], None
        if watch is not None and watch[0] > 0:
            self._warn_dead(watch[1], f"a whole validation pass ({watch[0]} completions)")

    def _warn_dead(self, usable: Tensor, when: str) -> None:
        for name, ok in zip(self.reward_names, usable.tolist(), strict=True):
            if not ok:
                rank_zero_warn(
                    f"reward function {name!r} gave no usable reward on {when}: every value was None (unscorable) or "
                    "0, so it teaches nothing. Check that the data's columns hold what it expects (e.g. answers in "
                    "the form it parses) and that the prompts ask for that form."
                )

    def combine_rewards(self, per_func: Tensor) -> Tensor:
        """(B,) reward of each completion from the (B, F) per-function table, NaN where unscorable; what the
        advantages and the ``reward`` metric see. Default: the weighted sum (RLVR normalizes reward models first).
        A table that is not the reward functions' (a rollout made outside brings its (B, 1) rewards) is summed
        unweighted."""
        weights = self.reward_weights if per_func.shape[1] == len(self.reward_names) else None
        return weighted_rewards(per_func, weights)

    def reward_values(self, per_func: Tensor, rollout: Rollout, with_std: bool) -> dict[str, Any]:
        """TRL's rollout metrics: reward (weighted sum, unscorable excluded), per-function means, lengths."""
        rewards = self.combine_rewards(per_func)  # NaN: unscorable
        scorable = ~rewards.isnan()
        values: dict[str, Any] = {"reward": (rewards.nan_to_num(0.0), scorable.float())}
        for i, name in enumerate(self.reward_names):
            applies = ~per_func[:, i].isnan()
            values[f"rewards/{name}/mean"] = (per_func[:, i].nan_to_num(0.0), applies.float())
        values["completions/mean_length"] = rollout.lengths.float()
        values["completions/clipped_ratio"] = rollout.is_truncated.float()
        if with_std:
            kept = rewards[scorable]
            values["reward_std"] = (kept.std() if kept.numel() > 1 else torch.zeros(())).reshape(1)
            grouped = rewards.view(-1, rollout.num_generations)
            std = nanstd(grouped).nan_to_num(0.0)  # a group with < 2 scorable rewards has zero std
            values["frac_reward_zero_std"] = torch.isclose(std, torch.zeros_like(std)).float()
        return values

    def maybe_log_completions(self, rollout_index: int, prompts: list[Any], rollout: Rollout, per_func: Tensor) -> None:
        """Every ``log_completions_every_n_steps`` rollouts: a table of prompts, completions and rewards."""
        every = self.log_completions_every_n_steps
        logger = self.logger
        if not every or rollout_index % every or logger is None or not self.trainer.is_global_zero:
            return
        if type(logger).__name__ != "TensorBoardLogger":
            return
        header = "| prompt | completion | " + " | ".join(self.reward_names) + " |"
        lines = [header, "|" + " --- |" * (2 + len(self.reward_names))]
        for i in range(min(TABLE_ROWS, len(rollout))):
            prompt = prompts[i // rollout.num_generations]
            text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            scores = " | ".join(f"{v:.3g}" for v in per_func[i].tolist())
            lines.append(f"| {_cell(text)} | {_cell(rollout.texts[i])} | {scores} |")
        logger.experiment.add_text("completions", "\n".join(lines), self.global_step)


def bind_reward_funcs(reward_funcs: Sequence[Callable], names: Sequence[str], datamodule: Any) -> None:
    """:func:`~lit_align.rewards.scoring.check_reward_funcs` on the first rows of ``datamodule``'s training data
    (set up if it was not), with the columns its batches carry."""
    if getattr(datamodule, "train_dataset", None) is None:
        datamodule.setup("fit")
    dataset = datamodule.train_dataset
    batch = datamodule.collate([dataset[i] for i in range(min(BINDING_ROWS, len(dataset)))])
    if "prompt" not in batch:  # not prompt data: nothing the reward functions would see
        return
    source = f"{getattr(datamodule, 'data_path', type(datamodule).__name__)}"
    check_reward_funcs(reward_funcs, names, batch["prompt"], reward_columns(batch), source)
def recorded_reward_func(spec: str | dict[str, Any] | Callable) -> str | dict[str, Any]:
    """A reward function as plain data for the hyperparameters: strings and mappings as given; an instance of a
    module-level class whose every ``__init__`` argument is kept as a plain attribute of the same name (the
    verifier classes) as ``{"class_path", "init_args"}``; anything else by import path (a function's)."""
    if isinstance(spec, str) or (isinstance(spec, dict) and is_plain(spec)):
        return spec
    cls = type(spec)
    if inspect.isroutine(spec) or isinstance(spec, type) or "." in cls.__qualname__:
        return _import_path(spec)
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return _import_path(spec)
    init_args = {}
    for param in parameters:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = getattr(spec, param.name, inspect.Parameter.empty)
        if not is_plain(value):  # not kept (or not plain data): the instance cannot be rebuilt from its config
            return _import_path(spec)
        init_args[param.name] = value
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _import_path(func: Callable) -> str:
    module, name = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    return f"{module}:{name}" if module and name else repr(func)


def _cell(text: str, limit: int = 300) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>")
