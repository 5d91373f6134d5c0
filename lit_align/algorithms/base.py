"""AlignmentModule: what every algorithm module shares — policy loading (+ LoRA), optimizer and
scheduler, gradient clipping, metric logging, non-finite losses, FSDP2 sharding and ``update(batch)``
for use outside a Trainer.

Options are declared ONCE. The shared ones are this class's keyword-only ``__init__`` arguments,
documented in its ``Args:``; those of the reference (:class:`~lit_align.reference.ReferenceMixin`) and
of sampling (:class:`~lit_align.algorithms.sampling.SamplingMixin`) are their mixins'. An algorithm's
``__init__`` names only its own options and the shared defaults it changes, and forwards the rest with
``**kwargs`` (LightningCLI follows the forwarding, so ``--help`` and YAML show every option with the
description written here). Nothing shared is passed positionally. An algorithm implements
``compute_loss(batch) -> (loss, metric values)``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_align.console import short_name
from lit_align.fused import log_fused
from lit_align.host_memory import release_host_memory
from lit_align.hparams import save_plain_hyperparameters
from lit_align.metrics import PREFERENCE_METRICS, MetricGroup, Value, weighted_mean
from lit_align.models import ModelKind, ModelRef, resolve_model
from lit_align.packing import set_padding_free
from lit_align.rollout import mark_updated
from lit_align.sharding import fully_shard_model

Scheduler = Literal["constant", "linear", "cosine"]
NonFinite = Literal["stop", "skip"]


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | str) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError("LoRA needs peft: pip install 'lit-align[lora]' (or pip install peft)") from err
    task = "SEQ_CLS" if model.__class__.__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task)
    return get_peft_model(model, config)


def check_model_interface(model: nn.Module, option: str) -> nn.Module:
    """``model`` if it can be called the Hugging Face way, ``model(input_ids=..., attention_mask=...)``, returning an
    output with ``.logits`` (or the reward model's scalar head); otherwise a ValueError that says what is needed."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return model
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [name for name in ("input_ids", "attention_mask") if name not in parameters and not takes_kwargs]
    if missing:
        raise ValueError(
            f"--model.{option}: a {type(model).__name__} cannot be trained here: its "
            f"forward{inspect.signature(model.forward)} takes no {' or '.join(missing)}. An nn.Module policy must "
            "follow the Hugging Face causal-LM call, model(input_ids=..., attention_mask=..., **kwargs) -> an output "
            "with .logits (B, T, vocab); wrap it in a module that does (it needs no .config; save_pretrained is used "
            "for the Hugging Face export if present)."
        )
    return model


def check_option(ok: bool, name: str, value: Any, expected: str) -> None:
    """Raise ``ValueError`` naming the module option by its command-line name (``--model.<name>``) unless ``ok``.

    Called before the ``super().__init__`` that loads weights, so a bad option fails before any model loads.
    """
    if not ok:
        raise ValueError(f"--model.{name}={value!r}: {expected}")


def check_beta(beta: float, what: str = "β") -> None:
    """β > 0 for the losses that scale a log-ratio by it: 0 makes the loss constant (no gradient), < 0 learns to
    prefer the rejected completion."""
    check_option(beta > 0, "beta", beta, f"{what} must be > 0 (0: a constant loss, no gradient; < 0: learns backwards)")


def check_label_smoothing(label_smoothing: float) -> None:
    expected = "ε must be in [0, 0.5): at 0.5 the loss ignores the preference, above it learns backwards"
    check_option(0 <= label_smoothing < 0.5, "label_smoothing", label_smoothing, expected)


def adamw(groups: list[dict[str, Any]], lr: float, fused: bool = True) -> torch.optim.AdamW:
    """AdamW, with torch's fused kernel (``fused``) where every parameter has one (floating point on CPU or CUDA): on
    CPU the default per-parameter loop took ~7 s against ~0.8 s fused for SmolLM2-135M's update on the loaded 2-core
    machine (``bench/README.md``). Same update rule; rounding differs from the loop in the last bits."""
    params = [p for group in groups for p in group["params"]]
    fused = fused and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=True if fused else None)


class AlignmentModule(L.LightningModule):
    """Base of every algorithm module.

    Args:
        policy: the model to train: a preset (``smollm2-135m-instruct``, ``tiny-llama``), hub id, local
            directory or ``.gguf`` file; from Python also an ``nn.Module``.
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
            only, packed into one row with per-sequence positions and attention (:mod:`lit_align.packing`):
            the same losses and gradients as padding every row to the longest, without the padding's compute
            and activation memory. Models that cannot run packed (not an in-library transformers model, an
            unknown attention implementation) run padded, with a warning naming the reason.
        fused_layers: run the trained models' RMSNorms and SwiGLU MLPs as fused layers that save only their
            inputs for backward and recompute the elementwise rest (:mod:`lit_align.fused`): the same outputs and
            gradients with about a third less activation memory on Llama-style models, no GEMM recomputed.
            Layers that do not match (other norms or activations) keep their own forward.
        release_host_memory: on CPU, give the step's freed host memory back to the system after each training
            step and validation (glibc ``malloc_trim``, :mod:`lit_align.host_memory`), so retained heap does not
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
        fused_layers: bool = True,
        release_host_memory: bool = True,
        nonfinite_loss: NonFinite = "stop",
    ) -> None:
        check_option(learning_rate > 0, "learning_rate", learning_rate, "must be > 0 (0 trains nothing)")
        check_option(weight_decay >= 0, "weight_decay", weight_decay, "must be >= 0")
        check_option(0 <= warmup_ratio <= 1, "warmup_ratio", warmup_ratio, "a fraction of the steps, in [0, 1]")
        check_option(
            scheduler in ("constant", "linear", "cosine"), "scheduler", scheduler, "constant, linear or cosine"
        )
        check_option(
            max_grad_norm is None or max_grad_norm > 0, "max_grad_norm", max_grad_norm, "> 0, or null (no clip)"
        )
        check_option(lora_r >= 0, "lora_r", lora_r, "a LoRA rank >= 0 (0: train every weight)")
        check_option(0 <= lora_dropout < 1, "lora_dropout", lora_dropout, "a probability in [0, 1)")
        check_option(nonfinite_loss in ("stop", "skip"), "nonfinite_loss", nonfinite_loss, "stop or skip")
        super().__init__()
        save_plain_hyperparameters(self)
        # from_pretrained returns eval mode and Lightning keeps each module's mode through fit; train
        # mode is what gradient checkpointing (and any dropout) needs.
        self.policy = check_model_interface(resolve_model(policy, self.POLICY_KIND), "policy").train()
        if gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
        if fused_layers:  # before LoRA: the adapters then wrap the same projections inside the fused MLPs
            log_fused(self.policy, "policy")
        if lora_r > 0:
            self.policy = apply_lora(self.policy, lora_r, lora_alpha, lora_dropout, lora_target_modules)
        set_padding_free(self.policy, padding_free)
        self.train_metrics = MetricGroup(self.METRICS, "train/")
        self.val_metrics = MetricGroup(("loss", *self.METRICS), "val/", dist_sync_on_step=False)
        self._standalone: tuple[torch.optim.Optimizer, Any] | None = None
        self.nonfinite_loss: NonFinite = nonfinite_loss
        self.release_host_memory = release_host_memory
        self.nonfinite_skipped = 0  # batches left out of an update for a NaN/inf loss (checkpointed)
        self._window = [0, 0]  # micro-batches in this optimizer step: seen, skipped
        self._log_hyperparams = False  # logged by on_fit_start: model and data, plain values, no internal keys

    @property
    def pad_token_id(self) -> int:
        """The id that pads concatenated chosen/rejected rows: the model config's, else the DataModule tokenizer's,
        else 0 (padded positions are masked out of attention and labels, so any id is correct)."""
        pad = getattr(getattr(self.policy, "config", None), "pad_token_id", None)
        if pad is None and self._trainer is not None:
            tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
            pad = getattr(tokenizer, "pad_token_id", None)
        return pad or 0

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Value]]:
        """Mean loss over the batch and the metric values (per-example tensors) to log."""
        raise NotImplementedError  # abstract

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, values = self.compute_loss(batch)
        if not self.loss_is_finite(loss, batch_idx):
            return self.skipped_loss()
        self.train_metrics.step(values)
        self.log("train/loss", loss.detach(), prog_bar=True, sync_dist=True)
        self.log_dict(self.train_metrics, on_step=True, on_epoch=False)
        self.show_key_metrics(values)
        return loss

    def show_key_metrics(self, values: dict[str, Value]) -> None:
        """This batch's value of each ``KEY_METRICS`` name on the progress bar (this rank; the logged curves are
        the synced ones): the algorithm's own signal, not only a loss that may read 0.000."""
        for name in self.KEY_METRICS:
            if name in values:
                self.log(short_name(name), weighted_mean(values[name]), prog_bar=True, logger=False)

    def on_fit_start(self) -> None:
        """Hyperparameters to the logger (TensorBoard's HParams tab): ``model/<option>`` and ``data/<option>``,
        plain values only, without LightningCLI's internal keys."""
        if self.logger is None:
            return
        params = {f"model/{k}": v for k, v in self.hparams.items() if not k.startswith("_")}
        datamodule = getattr(self.trainer, "datamodule", None)
        data = getattr(datamodule, "hparams", {}) if datamodule is not None else {}
        params.update({f"data/{k}": v for k, v in data.items() if not k.startswith("_")})
        plain = {k: v if isinstance(v, int | float | bool | str) else str(v) for k, v in params.items()}
        self.logger.log_hyperparams(plain)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, values = self.compute_loss(batch)
        self.val_metrics.step({"loss": loss.detach().expand(_batch_size(batch)), **values})
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=False)

    def configure_optimizers(self) -> dict[str, Any]:
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else None
        optimizer, scheduler = self._optimizer_and_scheduler(total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy(data_parallel_size=N)``: FSDP2-shard the policy (mixins add their models)."""
        mesh = self.data_parallel_mesh()
        if mesh is not None:
            fully_shard_model(self.policy, mesh)

    def data_parallel_mesh(self):
        """The FSDP2 mesh to shard over (``None`` unless the strategy made one); tensor parallelism is refused."""
        mesh = self.device_mesh
        if mesh is None:
            return None
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
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

    def update(self, batch: dict[str, Any], total_steps: int = 1000) -> dict[str, float]:
        """One optimization step outside a Trainer; returns the loss and metric values as floats.

        The optimizer is :meth:`standalone_optimizer`'s: after ``Trainer.fit``, the fit's own optimizer and schedule
        continued; otherwise AdamW and the schedule built on the first call (horizon ``total_steps``).
        """
        optimizer, scheduler = self.standalone_optimizer(total_steps)
        self._window = [0, 0]
        self.train()
        device = next(self.policy.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, values = self.compute_loss(batch)
        if not self.loss_is_finite(loss, None):
            optimizer.zero_grad(set_to_none=True)
            return {"loss": float("nan"), "skipped": 1.0}
        loss.backward()
        if self.hparams.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self._trainable(), self.hparams.max_grad_norm)
        optimizer.step()
        mark_updated(self.policy)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach()), **{name: weighted_mean(value) for name, value in values.items()}}

    def standalone_optimizer(self, total_steps: int | float | None) -> tuple[torch.optim.Optimizer, Any]:
        """The (optimizer, scheduler) of :meth:`update`: after ``Trainer.fit`` the fit's, whose moments and
        schedule position continue where training stopped (not a fresh AdamW at the first warmup step); without a
        Trainer, new ones on the first call, with a schedule horizon of ``total_steps`` optimizer steps."""
        if self._standalone is None:
            trainer = self._trainer
            if trainer is not None and trainer.optimizers:
                configs = trainer.lr_scheduler_configs
                self._standalone = (trainer.optimizers[0], configs[0].scheduler if configs else _NoSchedule())
            else:
                self._standalone = self._optimizer_and_scheduler(total_steps)
        return self._standalone

    def in_fit(self) -> bool:
        """Whether a Trainer is running this module's training loop now (``update`` after fit is not)."""
        return self._trainer is not None and self.trainer.training

    # -- helpers --------------------------------------------------------------------------------
    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _optimizer_and_scheduler(self, total_steps: int | float | None) -> tuple[torch.optim.Optimizer, Any]:
        hp = self.hparams
        decay = [p for p in self._trainable() if p.ndim >= 2]
        no_decay = [p for p in self._trainable() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # Lightning's mixed-precision plugins refuse to clip a fused optimizer's gradients (it unscales internally)
        mixed = self._trainer is not None and not str(self.trainer.precision).endswith("-true")
        optimizer = adamw([g for g in groups if g["params"]], hp.learning_rate, fused=not mixed)
        total = int(total_steps) if total_steps and math.isfinite(total_steps) else 1000
        warmup = int(hp.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            if hp.scheduler == "linear":
                return 1.0 - progress
            if hp.scheduler == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * progress))
            return 1.0

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # -- non-finite losses ----------------------------------------------------------------------
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
        return torch.stack([p.sum() for p in self._trainable()]).sum() * 0.0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        mark_updated(self.policy)  # the step follows: a generation backend's copy of the weights is then stale
        for name, value in self.step_statistics(optimizer).items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        self.close_window(optimizer)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._release_host_memory()

    def on_validation_end(self) -> None:
        self._release_host_memory()

    def _release_host_memory(self) -> None:
        if self.release_host_memory and self.device.type == "cpu":
            release_host_memory()

    def step_statistics(self, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """The learning rate and the gradient norm (before clipping) of the optimizer step about to be taken."""
        return {"learning_rate": float(optimizer.param_groups[0]["lr"]), "grad_norm": float(self.grad_norm())}

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the trainable parameters' gradients (every rank the same value)."""
        if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            return self.trainer.model.clip_grad_norm_(float("inf"))  # FSDP1's flat shards: its own collective norm
        grads = [p.grad for p in self._trainable() if p.grad is not None]
        if not grads:
            return torch.zeros(())
        norm = torch.nn.utils.get_total_norm(grads)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor over the shards

    def close_window(self, optimizer: torch.optim.Optimizer) -> None:
        """End of an optimizer step's micro-batches: if every one was skipped, drop the gradients so the step
        moves nothing (AdamW skips parameters whose grad is None)."""
        seen, skipped = self._window
        self._window = [0, 0]
        if seen and skipped == seen:
            optimizer.zero_grad(set_to_none=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_skipped"] = self.nonfinite_skipped

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_skipped = int(checkpoint.get("nonfinite_skipped", 0))


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if torch.is_tensor(value):
            return value.shape[0]
    return 1


class _NoSchedule:
    """A fit without a scheduler: ``update`` steps nothing."""

    def step(self) -> None:
        pass
