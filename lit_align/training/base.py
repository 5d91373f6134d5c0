"""AlignmentModule: what every algorithm module shares — the policy, optimizer and schedule, clipping and gradient
statistics, non-finite losses, the parts a module holds, FSDP2 sharding, cross-rank reductions, metric groups. Two
loops build on it: :class:`~lit_align.training.offline.OfflineModule` and
:class:`~lit_align.training.online.OnlinePolicyGradient`.

Options are declared ONCE: the shared ones here; a part's (the sampler, the reward set) in its options group; an
algorithm's ``__init__`` names only its own options and the shared defaults it changes, and forwards the rest with
``**kwargs`` (LightningCLI follows the forwarding). Parts are plain objects a module registers with :meth:`hold`; a
part may define ``setup(module, stage)`` and ``frozen_models()``, and this class's Lightning hooks reach every part
held, so no algorithm or mixin overrides ``setup`` or ``configure_model`` to wire one in. Subclasses extend only the
:data:`EXTENSION_HOOKS`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_align.errors import OptionError
from lit_align.hparams import ChecksKeywords, check_options, save_plain_hyperparameters, upgraded_checkpoint
from lit_align.metrics import (
    PREFERENCE_METRICS,
    MetricGroup,
    Value,
    log_hyperparameters,
    short_name,
    trainer_options,
    weighted_mean,
)
from lit_align.models.host_memory import release_host_memory
from lit_align.models.loading import (
    ModelKind,
    ModelRef,
    check_model_interface,
    check_vocabulary,
    prepare_trainable,
    resolve_model,
)
from lit_align.models.sharding import fully_shard_model
from lit_align.models.shared_prefix import Kernel as SharedPrefixKernel
from lit_align.optim import NoSchedule, Scheduler, optimizer_and_schedule
from lit_align.rollouts.record import mark_updated

NonFinite = Literal["stop", "skip"]
ReduceOp = Literal["sum", "mean", "max", "min"]
# The methods a subclass may define again along its chain (each has its default in the class that declares it).
EXTENSION_HOOKS = ("metric_names", "check_data", "planned_optimizer_steps", "on_save_checkpoint", "on_load_checkpoint")


class AlignmentModule(L.LightningModule, metaclass=ChecksKeywords):
    """Base of every algorithm module.

    Args:
        policy: the model to train: a preset (``smollm2-135m-instruct``, ``tiny-llama``), hub id, local
            directory or ``.gguf`` file; from Python also an ``nn.Module``.
        tokenizer: pads and decodes: by default the DataModule's, else the policy's by name; give it when the
            policy is an ``nn.Module`` used outside a Trainer by a module that generates.
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay on matrices (not on norms and biases).
        warmup_ratio: fraction of the total optimizer steps spent warming up linearly.
        scheduler: after warmup, ``linear`` or ``cosine`` decay to 0, or ``constant``.
        max_grad_norm: gradient-norm clip per optimizer step (``None`` disables it); a Trainer
            ``gradient_clip_val`` wins.
        lora_r: LoRA rank; 0 trains all weights.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: LoRA dropout.
        lora_target_modules: modules to adapt (``all-linear`` or a list of names).
        gradient_checkpointing: recompute activations in backward to save memory.
        padding_free: run the log-prob passes of the policy and the reference over the batch's real tokens
            only, packed into one row with per-sequence positions and attention (:mod:`lit_align.models.packing`):
            the same losses and gradients as padding every row to the longest, without the padding's compute
            and activation memory. Models that cannot run packed (not an in-library transformers model, an
            unknown attention implementation) run padded, with a warning naming the reason.
        shared_prefix: in padding-free passes over pairs (chosen and rejected of one prompt), compute the rows'
            common prefix (the prompt) once, each completion attending to it and to itself only
            (:mod:`lit_align.models.shared_prefix`): the same losses and gradients with the prompt's compute and
            activations paid once per pair instead of twice. Needs ``padding_free``.
        shared_prefix_kernel: the shared-prefix attention: ``auto`` (flex attention, compiled, on CUDA with
            triton; SDPA with a block mask elsewhere), ``sdpa`` or ``flex`` (no backward on CPU in torch 2.13).
        fused_layers: run the trained models' RMSNorms and SwiGLU MLPs as fused layers that save only their
            inputs for backward and recompute the elementwise rest (:mod:`lit_align.models.fused`): the same outputs and
            gradients with about a third less activation memory on Llama-style models, no GEMM recomputed.
            Layers that do not match (other norms or activations) keep their own forward.
        release_host_memory: on CPU, give the step's freed host memory back to the system after each training
            step and validation (glibc ``malloc_trim``, :mod:`lit_align.models.host_memory`), so retained heap does not
            raise the next step's peak resident memory (0.1–0.4 GB less for a SmolLM2 DPO step, no slower).
        nonfinite_loss: on a NaN/inf loss, ``stop`` raises naming the step and batch; ``skip`` leaves the
            batch out of the update, warns and counts it (``train/nonfinite_skipped``).
    """

    METRICS: ClassVar[tuple[str, ...]] = PREFERENCE_METRICS  # names compute_loss returns values for
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("rewards/margins", "rewards/accuracies")  # progress bar and console
    POLICY_KIND: ClassVar[ModelKind] = "causal_lm"  # what a policy given by name is loaded as

    def __init__(
        self,
        *,
        policy: ModelRef = "smollm2-135m-instruct",
        tokenizer: Any = None,
        learning_rate: float = 5e-7,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
        scheduler: Scheduler = "linear",
        max_grad_norm: float | None = 1.0,
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | str = "all-linear",
        gradient_checkpointing: bool = False,
        padding_free: bool = True,
        shared_prefix: bool = True,
        shared_prefix_kernel: SharedPrefixKernel = "auto",
        fused_layers: bool = True,
        release_host_memory: bool = True,
        nonfinite_loss: NonFinite = "stop",
    ) -> None:
        check_options(
            (learning_rate > 0, "learning_rate", learning_rate, "must be > 0 (0 trains nothing)"),
            (weight_decay >= 0, "weight_decay", weight_decay, "must be >= 0"),
            (0 <= warmup_ratio <= 1, "warmup_ratio", warmup_ratio, "a fraction of the steps, in [0, 1]"),
            (scheduler in ("constant", "linear", "cosine"), "scheduler", scheduler, "constant, linear or cosine"),
            (max_grad_norm is None or max_grad_norm > 0, "max_grad_norm", max_grad_norm, "> 0, or null (no clip)"),
            (lora_r >= 0, "lora_r", lora_r, "a LoRA rank >= 0 (0: train every weight)"),
            (0 <= lora_dropout < 1, "lora_dropout", lora_dropout, "a probability in [0, 1)"),
            (nonfinite_loss in ("stop", "skip"), "nonfinite_loss", nonfinite_loss, "stop or skip"),
        )
        super().__init__()
        self.__dict__["_options"] = save_plain_hyperparameters(self)  # as given: objects (callables) included
        self.__dict__["_parts"] = self.__dict__.get("_parts", [])  # parts a subclass held before this ran stay
        self.policy_name = policy if isinstance(policy, str) else None
        self._tokenizer = tokenizer if not isinstance(tokenizer, str) else None
        self._tokenizer_name = tokenizer if isinstance(tokenizer, str) else self.policy_name
        self.policy = self.prepare(check_model_interface(resolve_model(policy, self.POLICY_KIND), "policy"), "policy")
        train_names, val_names = self.metric_names()
        self.train_metrics = MetricGroup(train_names, "train/")
        self.val_metrics = MetricGroup(val_names, "val/", dist_sync_on_step=False)
        self._standalone: tuple[torch.optim.Optimizer, Any] | None = None
        self.nonfinite_loss: NonFinite = nonfinite_loss
        self.release_host_memory = release_host_memory
        self.nonfinite_skipped = 0  # batches left out of an update for a NaN/inf loss (checkpointed)
        self._window = [0, 0]  # micro-batches in this optimizer step: seen, skipped
        self._window_units: torch.Tensor | int = 0  # loss units of this optimizer step, this rank (count_window_units)
        self._log_hyperparams = False  # logged by on_fit_start: model and data, plain values, no internal keys

    # -- hooks ------------------------------------------------------------------------------------
    def metric_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The names of the training and of the validation metrics (fixed once: Lightning maps logged metrics to
        attributes). Default: ``METRICS``, and the loss besides them in validation."""
        return self.METRICS, ("loss", *self.METRICS)

    @classmethod
    def check_data(cls, datamodule: Any, options: dict[str, Any]) -> None:
        """Check the module's ``options`` against ``datamodule``'s data, before any model is built
        (:class:`lit_align.commands.cli.AlignCLI` calls it; so does :meth:`setup`, for runs built in Python). Default:
        nothing to check."""

    def planned_optimizer_steps(self) -> int | float:
        """The optimizer steps the learning-rate schedule spans (its horizon). Default: the Trainer's estimate."""
        return self.trainer.estimated_stepping_batches

    # -- parts ------------------------------------------------------------------------------------
    def hold(self, part: Any) -> Any:
        """Register ``part`` (returned): the Lightning hooks here reach it (``setup``, its frozen models, its
        ``on_save_checkpoint`` / ``on_load_checkpoint``)."""
        self.__dict__.setdefault("_parts", []).append(part)
        return part

    def frozen_models(self) -> list[nn.Module]:
        """The frozen models of the parts held (reference, reward models): moved and sharded here, never trained."""
        return [model for part in self._parts for model in getattr(part, "frozen_models", list)()]

    def prepare(self, model: nn.Module, role: str) -> nn.Module:
        """:func:`~lit_align.models.loading.prepare_trainable` with this module's options (LoRA, fused layers, ...)."""
        return prepare_trainable(model, role, self.hparams)

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """The parts' frozen models on this rank's device (not every rank's ``cuda:0``), each part set up, the
        DataModule's tokenizer checked against the policy (:func:`~lit_align.models.loading.check_vocabulary`) and the
        data against the options (:meth:`check_data`)."""
        device = self.trainer.strategy.root_device
        for model in self.frozen_models():
            model.to(device)
        for part in self._parts:
            if hasattr(part, "setup"):
                part.setup(self, stage)
        datamodule = self.trainer.datamodule
        if datamodule is not None and getattr(datamodule, "tokenizer", None) is not None:
            source = getattr(datamodule, "tokenizer_source", None)
            source = source if isinstance(source, str) else None
            check_vocabulary(self.policy, self.policy_name, datamodule.tokenizer, source)
        if stage == "fit" and datamodule is not None:
            self.check_data(datamodule, self._options)

    def on_fit_start(self) -> None:
        """Hyperparameters to the logger (TensorBoard's HParams tab): ``model/<option>``, ``data/<option>`` and
        ``trainer/<option>``, plain values only, without LightningCLI's internal keys; the tab's metrics are the
        validation metrics (and the training loss), read from their curves, so it shows their latest values
        (:func:`~lit_align.metrics.log_hyperparameters`)."""
        if self.logger is None:
            return
        params = {f"model/{k}": v for k, v in self.hparams.items() if not k.startswith("_")}
        datamodule = getattr(self.trainer, "datamodule", None)
        data = getattr(datamodule, "hparams", {}) if datamodule is not None else {}
        params.update({f"data/{k}": v for k, v in data.items() if not k.startswith("_")})
        params.update({f"trainer/{k}": v for k, v in trainer_options(self.trainer).items()})
        plain = {k: v if isinstance(v, int | float | bool | str) else str(v) for k, v in params.items()}
        metrics = ["train/loss", *(f"val/{name}" for name in self.metric_names()[1])]
        log_hyperparameters(self.logger, plain, metrics, self.trainer.is_global_zero)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = self._optimizer_and_scheduler(self.planned_optimizer_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy(data_parallel_size=N)``: FSDP2-shard every trained model (the policy, a
        critic) and, resharded after their forward, the parts' frozen models."""
        mesh = self.data_parallel_mesh()
        if mesh is None:
            return
        for model in self.children():
            if any(p.requires_grad for p in model.parameters()):
                fully_shard_model(model, mesh)
        for model in self.frozen_models():
            fully_shard_model(model, mesh, frozen=True)

    def data_parallel_mesh(self):
        """The FSDP2 mesh to shard over (``None`` unless the strategy made one); tensor parallelism is refused."""
        mesh = self.device_mesh
        if mesh is None:
            return None
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
            raise OptionError(
                "lit-align shards with FSDP2 only: use ModelParallelStrategy(data_parallel_size=<devices>, "
                "tensor_parallel_size=1)"
            )
        return mesh["data_parallel"] if "data_parallel" in names else mesh

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Trainer flags win; otherwise the module's max_grad_norm (so recipes need no trainer flag).
        clip = gradient_clip_val if gradient_clip_val is not None else self.hparams.max_grad_norm
        if not clip:
            return
        if isinstance(self.trainer.strategy, FSDPStrategy):
            # Lightning's FSDP precision plugin refuses norm clipping; FSDP1 clips through its root module.
            self.trainer.model.clip_grad_norm_(clip)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Before each optimizer step: the gradient normalized over the step's loss units (when counted), the step's
        learning rate and gradient norm logged, a window whose every micro-batch was skipped dropped."""
        mark_updated(self.policy)  # the step follows: a generation backend's copy of the weights is then stale
        self._normalize_window(optimizer)
        if self.automatic_optimization:  # manual loops log their steps' statistics with the rollout's metrics
            for name, value in self.step_statistics(optimizer).items():
                self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        self.close_window(optimizer)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._release_host_memory()

    def on_validation_end(self) -> None:
        self._release_host_memory()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_skipped"] = self.nonfinite_skipped
        for part in self._parts:  # a part's own counters (the online modules' skipped rollouts)
            if hasattr(part, "on_save_checkpoint"):
                part.on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_skipped = int(checkpoint.get("nonfinite_skipped", 0))
        for part in self._parts:
            if hasattr(part, "on_load_checkpoint"):
                part.on_load_checkpoint(checkpoint)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's, for checkpoints of earlier lit-align versions too: their flat sampling and reward options
        are nested into this version's groups first (:func:`~lit_align.hparams.upgraded_checkpoint`)."""
        return super().load_from_checkpoint(upgraded_checkpoint(checkpoint_path, cls), *args, **kwargs)

    # -- tokenizer --------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The tokenizer given, else the DataModule's, else the policy's (loaded by name)."""
        if self._tokenizer is None:
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            if getattr(datamodule, "tokenizer", None) is not None:
                self._tokenizer = datamodule.tokenizer
            elif self._tokenizer_name is not None:
                from lit_align.models.loading import load_tokenizer

                self._tokenizer = load_tokenizer(self._tokenizer_name)
            else:
                raise OptionError("pass tokenizer=... when the policy is given as an nn.Module")
        return self._tokenizer

    @property
    def pad_token_id(self) -> int:
        """The id that pads concatenated chosen/rejected rows: the model config's, else the DataModule tokenizer's,
        else 0 (padded positions are masked out of attention and labels, so any id is correct)."""
        pad = getattr(getattr(self.policy, "config", None), "pad_token_id", None)
        if pad is None and self._trainer is not None:
            tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
            pad = getattr(tokenizer, "pad_token_id", None)
        return pad or 0

    # -- logging ----------------------------------------------------------------------------------
    def show_key_metrics(self, values: dict[str, Value]) -> None:
        """This batch's value of each ``KEY_METRICS`` name on the progress bar (this rank; the logged curves are
        the synced ones): the algorithm's own signal, not only a loss that may read 0.000."""
        for name in self.KEY_METRICS:
            if name in values:
                self.log(short_name(name), weighted_mean(values[name]), prog_bar=True, logger=False)

    def step_statistics(self, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """The learning rate and the gradient norm (before clipping) of the optimizer step about to be taken."""
        return {"learning_rate": float(optimizer.param_groups[0]["lr"]), "grad_norm": float(self.grad_norm())}

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the trainable parameters' gradients (every rank the same value)."""
        if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            return self.trainer.model.clip_grad_norm_(float("inf"))  # FSDP1's flat shards: its own collective norm
        grads = [p.grad for p in self.trainable() if p.grad is not None]
        if not grads:
            return torch.zeros(())
        norm = torch.nn.utils.get_total_norm(grads)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor over the shards

    # -- optimization ---------------------------------------------------------------------------
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def in_fit(self) -> bool:
        """Whether a Trainer is running this module's training loop now (``update`` after fit is not)."""
        return self._trainer is not None and self.trainer.training

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        """``tensor`` reduced over the ranks through the Trainer's strategy; itself outside a Trainer or on one
        process. Every cross-rank quantity (token counts, KTO's reference point, PPO's whitening) goes through it."""
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.trainer.strategy.reduce(tensor, reduce_op=op)

    def standalone_optimizer(self, total_steps: int | float | None) -> tuple[torch.optim.Optimizer, Any]:
        """The (optimizer, scheduler) of ``update``: after ``Trainer.fit`` the fit's, whose moments and schedule
        position continue where training stopped (not a fresh AdamW at the first warmup step); without a Trainer,
        new ones on the first call, with a schedule horizon of ``total_steps`` optimizer steps."""
        if self._standalone is None:
            trainer = self._trainer
            if trainer is not None and trainer.optimizers:
                configs = trainer.lr_scheduler_configs
                self._standalone = (trainer.optimizers[0], configs[0].scheduler if configs else NoSchedule())
            else:
                self._standalone = self._optimizer_and_scheduler(total_steps)
        return self._standalone

    def _optimizer_and_scheduler(self, total_steps: int | float | None) -> tuple[torch.optim.Optimizer, Any]:
        hp = self.hparams
        # Lightning's mixed-precision plugins refuse to clip a fused optimizer's gradients (it unscales internally)
        mixed = self._trainer is not None and not str(self.trainer.precision).endswith("-true")
        return optimizer_and_schedule(self.trainable(), hp.learning_rate, hp.weight_decay, hp.warmup_ratio,
                                      hp.scheduler, total_steps, fused=not mixed)  # fmt: skip

    # -- manual optimization (the online loop), in a Trainer or standalone --------------------------
    def zero_grad_manual(self) -> None:
        optimizer = self.optimizers() if self.in_fit() else self._standalone[0]
        optimizer.zero_grad(set_to_none=True)

    def backward_manual(self, loss: torch.Tensor) -> None:
        if self.in_fit():
            self.manual_backward(loss)  # under DDP this re-arms the reducer: gradients are all-reduced
        else:
            loss.backward()

    def step_manual(self) -> dict[str, float]:
        """Clip, step the optimizer and the scheduler; returns the step's learning rate and gradient norm."""
        trainer = self.in_fit()
        optimizer, scheduler = (self.optimizers(), self.lr_schedulers()) if trainer else self._standalone
        self.close_window(optimizer)  # a step whose micro-batches were all non-finite moves nothing
        statistics = self.step_statistics(optimizer)
        clip = self.hparams.max_grad_norm
        if clip and trainer:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        elif clip:
            torch.nn.utils.clip_grad_norm_(self.trainable(), clip)
        optimizer.step()  # under a Trainer: counts one global_step (and marks the policy updated, in the hook)
        if not trainer:
            mark_updated(self.policy)
        scheduler.step()
        return statistics

    # -- non-finite losses and the optimizer step's window ----------------------------------------
    def loss_is_finite(self, loss: torch.Tensor, batch_idx: int | None) -> bool:
        """Whether ``loss`` is finite on every rank (one decision for all, so no rank waits on another).

        If not: ``nonfinite_loss="stop"`` raises ``FloatingPointError`` naming the step and batch; ``"skip"``
        counts it, warns and returns False, and the caller backpropagates :meth:`skipped_loss` instead.
        """
        self._window[0] += 1
        finite = bool(torch.isfinite(loss.detach()).all())
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return True
        where = f"global step {self.global_step}, batch {batch_idx}" if trainer is not None else "a standalone update()"
        if self.nonfinite_loss == "stop":
            value = loss.detach().flatten()[0].item()
            raise FloatingPointError(
                f"non-finite loss at {where} (rank {self.global_rank}'s loss: {value}; a NaN/inf on any rank stops "
                "all). Lower the learning rate or check the data; nonfinite_loss='skip' leaves such batches out of "
                "the update and counts them."
            )
        self.nonfinite_skipped += 1
        self._window[1] += 1
        rank_zero_warn(f"skipped {where}: non-finite loss ({self.nonfinite_skipped} skipped so far)")
        if trainer is not None:
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, on_epoch=False)
        return False

    def skipped_loss(self) -> torch.Tensor:
        """A loss whose gradient is exactly zero for every trainable parameter: under DDP/FSDP every rank still
        runs its backward (the collectives line up), and nothing of the bad batch reaches the weights."""
        return torch.stack([p.sum() for p in self.trainable()]).sum() * 0.0

    def count_window_units(self, count: torch.Tensor) -> None:
        """Add a micro-batch's loss units (it backpropagated their summed loss) to this optimizer step's."""
        self._window_units = self._window_units + count

    def _normalize_window(self, optimizer: torch.optim.Optimizer) -> None:
        """Summed losses (:meth:`count_window_units`): each micro-batch contributed ∇(sum)/k and the ranks' gradients
        were averaged (/W); multiplying by k·W/N_window leaves ∇ of the mean over the whole optimizer step, its N
        units all-reduced once."""
        if isinstance(self._window_units, int) and self._window_units == 0:
            return
        units = self.all_reduce(torch.as_tensor(self._window_units, device=self.device).float())
        trainer = self.trainer
        scale = trainer.accumulate_grad_batches * trainer.world_size / max(float(units), 1.0)
        for param in self.trainable():
            if param.grad is not None:
                param.grad.mul_(scale)
        self._window_units = 0

    def close_window(self, optimizer: torch.optim.Optimizer) -> None:
        """End of an optimizer step's micro-batches: if every one was skipped, drop the gradients so the step
        moves nothing (AdamW skips parameters whose grad is None)."""
        seen, skipped = self._window
        self._window = [0, 0]
        if seen and skipped == seen:
            optimizer.zero_grad(set_to_none=True)

    def _release_host_memory(self) -> None:
        if self.release_host_memory and self.device.type == "cpu":
            release_host_memory()
