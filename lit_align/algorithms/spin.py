"""Self-Play Fine-Tuning (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong Language
Models", https://arxiv.org/abs/2401.01335), iterated.

Iteration t (``iterations`` of them, ``epochs_per_iteration`` epochs each) trains p_θ on SFT data against the
opponent p_θt, the policy as it stood when the iteration began:

    1. the opponent answers every prompt: y' ~ p_θt(·|x) (seeded, spread over ranks)
    2. pairs (x, y = ground truth, y'), tokenized alike; the opponent's log-probs log p_θt(y|x), log p_θt(y'|x)
    3. epochs of  ℓ(λ·log(p_θ(y|x)/p_θt(y|x)) − λ·log(p_θ(y'|x)/p_θt(y'|x))),  ℓ(t) = log(1 + e^{−t})
    4. the opponent of t+1 is the policy that ended t

Steps 1-2 are run by :class:`~lit_align.datamodules.SPINDataModule` when an iteration begins: Lightning asks it for
the loaders on every rank before each epoch (it sets ``reload_dataloaders_every_n_epochs=1``; the epochs of one
iteration reuse its pairs), and it asks this module, the opponent, to answer the prompts (:meth:`SPIN.answer`) and
to score the pairs (:meth:`SPIN.opponent_logps`). The calls go one way, data to model: the module never calls the
DataModule back.

No second model. The opponent enters the loss only through its log-probs of the iteration's fixed pairs, and when
the iteration begins the policy IS the opponent: those log-probs are computed then, by the policy, and kept with the
pairs in ``<run dir>/spin/iteration_<t>.jsonl`` (:mod:`lit_align.training.self_play`). Training then holds one
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
from pathlib import Path
from typing import Any

import torch

from lit_align.batches import SelfPlayBatch
from lit_align.errors import OptionError
from lit_align.hparams import as_group, check_option
from lit_align.losses import spin_loss
from lit_align.metrics import Value, preference_values
from lit_align.models.logprobs import preference_logps
from lit_align.models.sharding import gather_objects, is_fsdp2_sharded
from lit_align.rollouts.sampling import Sampler, SamplingOptions
from lit_align.training.offline import OfflineModule
from lit_align.training.self_play import generate_responses, pair_logps, pairs_table


class SPIN(OfflineModule):
    """Iterative SPIN as a LightningModule; train it with :class:`~lit_align.datamodules.SPINDataModule`.

    Metrics: TRL's DPO names with chosen = ground truth and rejected = the opponent's response (``rewards/margins``,
    ``rewards/accuracies``, ...), and per iteration ``spin/iteration``, ``spin/truncated_ratio`` (opponent responses
    without EOS), ``spin/generation_seconds`` (the generation phase, when this process ran it) and
    ``spin/heldout_margin``: over the held-out prompts, the opponent's mean of log p_θt(y|x) − log p_θt(y'|x)
    (summed log-probs), ground truth over its own samples. A TensorBoard text table (``spin/pairs``) shows prompts,
    ground truths and responses of each iteration.

    The shared options are :class:`AlignmentModule`'s (policy, optimizer, LoRA, ...); the opponent samples with the
    ``sampling`` options (:class:`~lit_align.rollouts.sampling.SamplingOptions`), whose ``max_new_tokens`` SPIN sets to
    256.

    Args:
        beta: λ (β), the scale of the log-ratios inside the logistic loss.
        iterations: self-play iterations; the run ends after the last (``--trainer.max_epochs`` or ``max_steps`` can
            only end it sooner).
        epochs_per_iteration: epochs over the iteration's pairs before the opponent is replaced.
        generation_batch_size: prompts per generation call (per rank) and pairs per log-prob pass in the generation
            phase.
        log_pairs: rows of the (prompt, ground truth, generated) table logged to TensorBoard per iteration (0 = none).
        sampling: how the opponent samples its responses (a group: ``--model.sampling.<option>``).
    """

    def __init__(
        self,
        *,
        beta: float = 0.1,
        iterations: int = 2,
        epochs_per_iteration: int = 1,
        generation_batch_size: int = 16,
        log_pairs: int = 8,
        sampling: SamplingOptions = SamplingOptions(max_new_tokens=256),
        **kwargs: Any,
    ) -> None:
        for name, value in (("iterations", iterations), ("epochs_per_iteration", epochs_per_iteration),
                            ("generation_batch_size", generation_batch_size)):  # fmt: skip
            check_option(value >= 1, name, value, "at least 1")
        check_option(beta > 0, "beta", beta, "λ must be > 0")
        sampling = as_group(SamplingOptions, sampling)  # saved as a group
        super().__init__(**kwargs)
        self.beta, self.iterations, self.epochs_per_iteration = beta, iterations, epochs_per_iteration
        self.generation_batch_size, self.log_pairs = generation_batch_size, log_pairs
        self.sampler = self.hold(Sampler(sampling))
        self.iteration = 0  # the iteration being trained (checkpointed)
        self._resumed = False  # restored from a checkpoint and not yet past an iteration boundary
        self._spin_dir: Path | None = None  # the run's SPIN directory (checkpointed: a resumed run keeps it)

    def forward(self, batch: SelfPlayBatch) -> Any:
        """Policy completion log-probs (ground truth, generated) of a batch of pairs."""
        return preference_logps(self.policy, batch, self.pad_token_id)

    def compute_loss(self, batch: SelfPlayBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        real, generated = self(batch)
        losses, real_rewards, generated_rewards = spin_loss(
            real.sum, generated.sum, batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta=self.beta
        )
        return losses.mean(), preference_values(real_rewards, generated_rewards, real, generated)

    # -- hooks of the base ------------------------------------------------------------------------
    @classmethod
    def check_data(cls, datamodule: Any, options: dict[str, Any]) -> None:
        from lit_align.datamodules.spin import SPINDataModule

        if not isinstance(datamodule, SPINDataModule):
            raise TypeError(f"SPIN trains on a SPINDataModule, got {type(datamodule).__name__}")

    def planned_optimizer_steps(self) -> int:
        """One iteration's optimizer steps: the schedule restarts when an iteration begins (:meth:`begin_iteration`)."""
        trainer = self.trainer
        batches = trainer.datamodule.batches_per_epoch()  # counted without generating anything
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))
        return math.ceil(batches / trainer.accumulate_grad_batches) * self.epochs_per_iteration

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["spin"] = {"iteration": self.iteration, "dir": str(self.spin_dir)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("spin")
        if state is None:
            raise OptionError("the checkpoint was not written by SPIN: it names no iteration")
        self.iteration, self._spin_dir, self._resumed = int(state["iteration"]), Path(state["dir"]), True

    # -- the opponent, asked by SPINDataModule when an iteration begins ----------------------------------
    @property
    def spin_dir(self) -> Path:
        """``<log dir>/spin`` of the run (a resumed run keeps its checkpoint's); a collective under DDP."""
        if self._spin_dir is None:
            self._spin_dir = (Path(self.trainer.log_dir or self.trainer.default_root_dir) / "spin").absolute()
        return self._spin_dir

    def iteration_of(self, epoch: int) -> int:
        return epoch // self.epochs_per_iteration

    def begin_iteration(self, iteration: int) -> bool:
        """Move to ``iteration``; returns whether the policy is its opponent (its start, not a resume inside it).

        A new iteration is a fresh fine-tuning run from the last iteration's weights, as in the paper: AdamW's moments
        and the learning-rate schedule (warmup + decay) restart. The opponent is the policy as it stands now.
        """
        if iteration == self.iteration:
            return not self._resumed
        if iteration != self.iteration + 1:
            raise RuntimeError(f"SPIN cannot go from iteration {self.iteration} to {iteration}")
        for optimizer in self.trainer.optimizers:
            optimizer.state.clear()
        for config in self.trainer.lr_scheduler_configs:
            config.scheduler.last_epoch = -1
            config.scheduler.step()  # the schedule's first step again (its learning rate set, its counter 0)
        self.iteration, self._resumed = iteration, False
        return True

    def answer(self, prompts: list[list[int]], key: str, pad_id: int) -> dict[int, dict[str, Any]]:
        """One sampled response per prompt (token ids), ``{row: {"text", "truncated", "tokens"}}`` on every rank: the
        work spread over the ranks in fixed global batches (:mod:`lit_align.training.self_play`), a collective."""
        layout = self._layout(pad_id)
        local = generate_responses(self.sampler, self.policy, self.tokenizer, prompts, key=key, **layout)
        return {row: value for part in gather_objects(local) for row, value in part.items()}

    def opponent_logps(self, rows: list[dict[str, Any]], collate: Any, pad_id: int) -> dict[int, dict[str, float]]:
        """The policy's summed log-probs of each tokenized pair (``ref_chosen_logps``, ``ref_rejected_logps`` and the
        token counts) on every rank: no grad, eval mode, spread over the ranks like :meth:`answer`."""
        layout = self._layout(pad_id)
        local = pair_logps(self.policy, rows, collate, **layout)
        return {row: value for part in gather_objects(local) for row, value in part.items()}

    def log_iteration(self, iteration: int, lines: list[dict[str, Any]], seconds: float | None) -> None:
        """The iteration's statistics to the logger (``spin/*``) and its table of pairs to TensorBoard."""
        train = [line for line in lines if line["id"].startswith("train/")]
        heldout = [line for line in lines if not line["id"].startswith("train/")]
        stats = {"iteration": float(iteration),
                 "truncated_ratio": sum(line["truncated"] for line in train) / max(1, len(train))}  # fmt: skip
        if heldout:
            margins = [line["ref_chosen_logps"] - line["ref_rejected_logps"] for line in heldout]
            stats["heldout_margin"] = sum(margins) / len(margins)
        if seconds is not None:
            stats["generation_seconds"] = seconds
        logger = self.logger
        if logger is not None and self.trainer.is_global_zero:
            logger.log_metrics({f"spin/{k}": v for k, v in stats.items()}, step=self.global_step)
            if self.log_pairs and type(logger).__name__ == "TensorBoardLogger":
                logger.experiment.add_text("spin/pairs", pairs_table(train, self.log_pairs), self.global_step)

    def _layout(self, pad_id: int) -> dict[str, Any]:
        trainer = self.trainer
        return {"batch_size": self.generation_batch_size, "pad_id": pad_id, "rank": trainer.global_rank,
                "world": trainer.world_size,
                "padded": is_fsdp2_sharded(self.policy)}  # every forward is a collective: each rank as many calls
