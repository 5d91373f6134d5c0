"""Self-Play Fine-Tuning (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong Language
Models", https://arxiv.org/abs/2401.01335), iterated.

Iteration t (``iterations`` of them, ``epochs_per_iteration`` epochs each) trains p_θ on SFT data against the
opponent p_θt, the policy as it stood when the iteration began:

    1. the opponent answers every prompt: y' ~ p_θt(·|x) (seeded, spread over ranks)
    2. pairs (x, y = ground truth, y'), tokenized alike; the opponent's log-probs log p_θt(y|x), log p_θt(y'|x)
    3. epochs of  ℓ(λ·log(p_θ(y|x)/p_θt(y|x)) − λ·log(p_θ(y'|x)/p_θt(y'|x))),  ℓ(t) = log(1 + e^{−t})
    4. the opponent of t+1 is the policy that ended t

Steps 1-2 run in :meth:`SPIN.self_play`, which :class:`~lit_align.datamodules.SPINDataModule` calls from
``train_dataloader()`` (and ``val_dataloader()``) when an iteration begins: Lightning asks for the loader on every
rank before the epoch (this module sets ``reload_dataloaders_every_n_epochs=1``; the epochs of one iteration reuse
its pairs).

No second model. The opponent enters the loss only through its log-probs of the iteration's fixed pairs, and when
the iteration begins the policy IS the opponent: those log-probs are computed then, by the policy, and kept with the
pairs in ``<run dir>/spin/iteration_<t>.jsonl`` (:mod:`lit_align.algorithms.self_play`). Training then holds one
model (DPO holds two), the opponent costs one no-grad pass over the pairs per iteration (DPO: one per step), and a
resumed run reads the iteration's file, which holds all the opponent contributes: nothing else is saved, and the
checkpoint says which iteration and which run directory.

As in the paper's code, each iteration is a fresh fine-tuning run from the previous iteration's weights: the learning
rate schedule (warmup + decay) restarts and the AdamW moments are reset at each iteration's start. Deliberately left
out: the paper's later-iteration learning-rate decay (set ``learning_rate`` per run), mixing in earlier iterations'
responses, and generation with vLLM. Truncated responses (no EOS within ``max_new_tokens``) are kept as rejected
responses and counted (``spin/truncated_ratio``); tokenized like the ground truth, they end with the template's end of
turn.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from lit_align.algorithms.base import AlignmentModule
from lit_align.algorithms.sampling import SamplingMixin
from lit_align.algorithms.self_play import gather, generate_responses, pair_logps, pairs_table, read_lines, write_lines
from lit_align.batches import SelfPlayBatch
from lit_align.logprobs import preference_logps
from lit_align.losses import spin_loss
from lit_align.metrics import Value, preference_values
from lit_align.rollout import is_fsdp2_sharded


class SPIN(SamplingMixin, AlignmentModule):
    """Iterative SPIN as a LightningModule; train it with :class:`~lit_align.datamodules.SPINDataModule`.

    Metrics: TRL's DPO names with chosen = ground truth and rejected = the opponent's response (``rewards/margins``,
    ``rewards/accuracies``, ...), and per iteration ``spin/iteration``, ``spin/truncated_ratio`` (opponent responses
    without EOS), ``spin/generation_seconds`` (the generation phase, when this process ran it) and
    ``spin/heldout_margin``: over the held-out prompts, the opponent's mean of log p_θt(y|x) − log p_θt(y'|x)
    (summed log-probs), ground truth over its own samples. A TensorBoard text table (``spin/pairs``) shows prompts,
    ground truths and responses of each iteration.

    The shared options are :class:`AlignmentModule`'s (policy, optimizer, LoRA, ...) and
    :class:`~lit_align.algorithms.sampling.SamplingMixin`'s (how the opponent samples); SPIN changes the default of
    ``max_new_tokens`` (256).

    Args:
        beta: λ (β), the scale of the log-ratios inside the logistic loss.
        iterations: self-play iterations; the run ends after the last (``--trainer.max_epochs`` or ``max_steps`` can
            only end it sooner).
        epochs_per_iteration: epochs over the iteration's pairs before the opponent is replaced.
        generation_batch_size: prompts per generation call (per rank) and pairs per log-prob pass in the generation
            phase.
        log_pairs: rows of the (prompt, ground truth, generated) table logged to TensorBoard per iteration (0 = none).
    """

    def __init__(
        self,
        *,
        beta: float = 0.1,
        iterations: int = 2,
        epochs_per_iteration: int = 1,
        generation_batch_size: int = 16,
        log_pairs: int = 8,
        max_new_tokens: int = 256,
        **kwargs: Any,
    ) -> None:
        for name, value in (("iterations", iterations), ("epochs_per_iteration", epochs_per_iteration),
                            ("generation_batch_size", generation_batch_size)):  # fmt: skip
            if value < 1:
                raise ValueError(f"--model.{name} must be >= 1, got {value}")
        if beta <= 0:
            raise ValueError(f"--model.beta must be > 0, got {beta}")
        super().__init__(max_new_tokens=max_new_tokens, **kwargs)
        self.beta, self.iterations, self.epochs_per_iteration = beta, iterations, epochs_per_iteration
        self.generation_batch_size, self.log_pairs = generation_batch_size, log_pairs
        self.iteration = 0  # the iteration being trained (checkpointed)
        self._resumed = False  # restored from a checkpoint and not yet past an iteration boundary
        self._spin_dir: Path | None = None  # the run's SPIN directory (checkpointed: a resumed run keeps it)
        self._pairs: tuple[int, list[dict[str, Any]]] | None = None  # (iteration, its tokenized pairs)
        self._iteration_stats: dict[str, float] = {}

    def forward(self, batch: SelfPlayBatch) -> Any:
        """Policy completion log-probs (ground truth, generated) of a batch of pairs."""
        return preference_logps(self.policy, batch, self.pad_token_id)

    def compute_loss(self, batch: SelfPlayBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        real, generated = self(batch)
        losses, real_rewards, generated_rewards = spin_loss(
            real.sum, generated.sum, batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta=self.beta
        )
        return losses.mean(), preference_values(real_rewards, generated_rewards, real, generated)

    def training_step(self, batch: SelfPlayBatch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        # The same value on every rank (computed from gathered data): no sync needed.
        self.log_dict({f"spin/{k}": v for k, v in self._iteration_stats.items()}, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with the schedule restarting each iteration (its horizon: one iteration's optimizer steps)."""
        trainer = self.trainer
        batches = trainer.datamodule.batches_per_epoch()  # counted without generating anything
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))
        per_iteration = math.ceil(batches / trainer.accumulate_grad_batches) * self.epochs_per_iteration
        optimizer, scheduler = self._optimizer_and_scheduler(per_iteration)
        scheduler.lr_lambdas = [_restarting(factor, per_iteration) for factor in scheduler.lr_lambdas]
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        from lit_align.datamodules.spin import SPINDataModule

        if not isinstance(self.trainer.datamodule, SPINDataModule):
            raise TypeError(f"SPIN trains on a SPINDataModule, got {type(self.trainer.datamodule).__name__}")
        self.trainer.reload_dataloaders_every_n_epochs = 1  # self_play() is asked each epoch; a new iteration's
        loop = self.trainer.fit_loop  # pairs come in the first epoch of the iteration, the others reuse them
        total = self.iterations * self.epochs_per_iteration
        if loop.max_epochs is None or loop.max_epochs < 0 or loop.max_epochs > total:
            loop.max_epochs = total

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["spin"] = {"iteration": self.iteration, "dir": str(self.spin_dir)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("spin")
        if state is None:
            raise ValueError("the checkpoint was not written by SPIN: it names no iteration")
        self.iteration, self._spin_dir, self._resumed = int(state["iteration"]), Path(state["dir"]), True
        self._pairs = None

    # -- self-play ------------------------------------------------------------------------------
    @property
    def spin_dir(self) -> Path:
        """``<log dir>/spin`` of the run (a resumed run keeps its checkpoint's); a collective under DDP."""
        if self._spin_dir is None:
            self._spin_dir = (Path(self.trainer.log_dir or self.trainer.default_root_dir) / "spin").absolute()
        return self._spin_dir

    def self_play(self, epoch: int, datamodule: Any) -> list[dict[str, Any]]:
        """The tokenized pairs of the iteration that ``epoch`` belongs to (train and held-out rows, each with ``id``
        and the opponent's log-probs); called on every rank. The first call of an iteration starts it."""
        iteration = epoch // self.epochs_per_iteration
        if self._pairs is not None and self._pairs[0] == iteration:
            return self._pairs[1]
        fresh = self._enter(iteration)  # True: the policy is the iteration's opponent
        items = datamodule.self_play_items()
        ids = [item["id"] for item in items]
        path = self.spin_dir / f"iteration_{iteration}.jsonl"
        exists = self.trainer.strategy.broadcast(path.exists())
        if exists and fresh and iteration == 0 and not self._resumed:
            raise FileExistsError(
                f"{path} exists from an earlier run; a new run starts its own iterations: use a new log dir (logger "
                "version) or move the old spin/ folder away"
            )
        if exists:  # resume (or the same boundary crossed again): these pairs were made by this iteration's opponent
            lines = read_lines(path, ids)
            rows = [{**datamodule.pair_row(line), **_opponent(line), "id": line["id"]} for line in lines]
        elif fresh:
            start = time.perf_counter()
            lines, rows = self.generate_pairs(iteration, items, datamodule)
            seconds = time.perf_counter() - start
            if self.trainer.is_global_zero:
                write_lines(path, lines)
            self.trainer.strategy.barrier("spin_pairs_written")
        else:
            raise FileNotFoundError(
                f"{path} is missing: it is written when iteration {iteration} begins, and this resumed run's policy "
                "is no longer that iteration's opponent, so it cannot make it again"
            )
        self._log_iteration(iteration, lines)
        if not exists:
            self._iteration_stats["generation_seconds"] = seconds
        self._pairs = (iteration, rows)
        return rows

    def _enter(self, iteration: int) -> bool:
        """Move to ``iteration``; whether the policy is its opponent (its start, not a resume inside it)."""
        if iteration == self.iteration:
            return not self._resumed
        if iteration != self.iteration + 1:
            raise RuntimeError(f"SPIN cannot go from iteration {self.iteration} to {iteration}")
        # A fresh fine-tuning run from the last iteration's weights, as in the paper: AdamW's moments restart (and
        # the schedule, see configure_optimizers). The opponent is the policy as it stands now.
        for optimizer in self.trainer.optimizers:
            optimizer.state.clear()
        self.iteration, self._resumed = iteration, False
        return True

    def generate_pairs(self, iteration: int, items: list[dict[str, Any]], datamodule: Any) -> tuple[list, list]:
        """The policy (the opponent, when an iteration begins) answers every prompt of ``items`` and scores every pair:
        the file's lines and the tokenized rows, on every rank (a collective). Seeded by ``iteration``."""
        trainer = self.trainer
        rank, world = trainer.global_rank, trainer.world_size
        padded = is_fsdp2_sharded(self.policy)  # every forward is a collective: each rank makes as many calls
        common = {"batch_size": self.generation_batch_size, "pad_id": datamodule.tokenizer.pad_token_id,
                  "rank": rank, "world": world, "padded": padded}  # fmt: skip
        prompts = [item["prompt_ids"] for item in items]
        local = generate_responses(self.sampler, self.policy, prompts, key=f"spin/{iteration}", **common)
        responses = gather(local, world)
        lines = [
            {"id": item["id"], "prompt": item["prompt"], "chosen": item["chosen"], "rejected": responses[i]["text"],
             "truncated": responses[i]["truncated"], "tokens": responses[i]["tokens"]}
            for i, item in enumerate(items)
        ]  # fmt: skip
        rows = [datamodule.pair_row(line) for line in lines]
        scores = gather(pair_logps(self.policy, rows, datamodule.collate, **common), world)
        for i, (line, row) in enumerate(zip(lines, rows, strict=True)):
            line.update(scores[i])
            row.update(_opponent(line), id=line["id"])
        return lines, rows

    def _log_iteration(self, iteration: int, lines: list[dict[str, Any]]) -> None:
        train = [line for line in lines if line["id"].startswith("train/")]
        heldout = [line for line in lines if not line["id"].startswith("train/")]
        self._iteration_stats = {
            "iteration": float(iteration),
            "truncated_ratio": sum(line["truncated"] for line in train) / max(1, len(train)),
        }
        if heldout:
            margins = [line["ref_chosen_logps"] - line["ref_rejected_logps"] for line in heldout]
            self._iteration_stats["heldout_margin"] = sum(margins) / len(margins)
        logger = self.logger
        if self.log_pairs and self.trainer.is_global_zero and type(logger).__name__ == "TensorBoardLogger":
            logger.experiment.add_text("spin/pairs", pairs_table(train, self.log_pairs), self.global_step)


def _restarting(factor: Any, period: int) -> Any:
    return lambda step: factor(step % period)


def _opponent(line: dict[str, Any]) -> dict[str, float]:
    return {"ref_chosen_logps": line["ref_chosen_logps"], "ref_rejected_logps": line["ref_rejected_logps"]}
