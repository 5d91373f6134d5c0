"""ReferenceMixin: one question — "reference log-probs for this batch" — several sources, chosen once.

Sources (``self.reference_source``):
    ``copy``     a frozen deep copy of the policy as loaded (default). Kept OUT of the module tree
                 (not a registered submodule), so it is in neither the optimizer nor the checkpoint;
                 a resumed run rebuilds it from the same pretrained weights, so resume is strict.
    ``model``    a separately loaded ``reference_policy`` (name/path/preset or ``nn.Module``),
                 held the same way as ``copy``.
    ``adapter``  the policy with its LoRA adapters disabled: no second copy in memory.
    ``none``     the module decided it needs none (GRPO with beta=0): asking is an error, so a
                 reference pass can never run by accident. Reference-free algorithms (SFT, the reward
                 model, SimPO, ORPO) do not mix this class in at all.
    ``cached``   ``precompute_reference=True``: in ``setup`` (before a checkpoint is restored) the reference
                 (one of the three above) runs once over the training and validation batches, each rank its
                 share, the values are gathered, written to disk keyed by a reference/data/tokenization
                 fingerprint (:mod:`lit_align.reference_cache`) and the reference is freed; a later run with the
                 same fingerprint (a resumed run included) loads no reference at all. Each batch then carries
                 its rows' ``row_index`` (KTO: also ``kl_row_index``) and :meth:`reference_logps` finds the
                 values by it (a batch that carries the values themselves, e.g. ``ref_chosen_logps``, is
                 used as it is); :meth:`reference_forward` is never called. Only
                 modules whose reference values are a function of their data rows can cache them: they
                 declare ``REFERENCE_VALUES`` and implement :meth:`reference_values`; online modules score
                 completions sampled during training and refuse the option before any weights load. LoRA: the
                 pass runs the policy with its adapters disabled (nothing is loaded or freed; compute is saved).
                 FSDP2: the pass runs in ``setup``, before sharding, with a whole reference on each device.

A module asks :meth:`reference_logps` (its values for a batch, cached or computed) and implements
:meth:`reference_values`; :meth:`reference_forward` runs any computation under the reference. Reference
syncing (TR-DPO) is :meth:`sync_reference` (not with a cached reference). SPIN needs no reference model: its
opponent's log-probs of each iteration's pairs are computed when the iteration begins (``lit_align.algorithms.spin``).
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, ClassVar, Literal, TypeVar

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_align.logprobs import preference_logps
from lit_align.models import ModelRef, resolve_model
from lit_align.packing import is_enabled, set_padding_free
from lit_align.reference_cache import (
    ReferenceTable,
    cache_path,
    data_description,
    describe_model,
    epoch_batches,
    fingerprint,
    gather,
    planned_epochs,
    progress,
)
from lit_align.sharding import fully_shard_model

ReferenceSource = Literal["copy", "model", "adapter", "none", "cached"]
T = TypeVar("T")
ROW = ("row_index",)  # a value of one data row
PREFERENCE_VALUES = {"ref_chosen_logps": ROW, "ref_rejected_logps": ROW}  # DPO/IPO: summed completion log-probs


def preference_reference_values(model: nn.Module, batch: dict[str, Any], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A preference batch's reference values (:data:`PREFERENCE_VALUES`): chosen and rejected in one forward."""
    chosen, rejected = preference_logps(model, batch, pad_token_id)
    return {"ref_chosen_logps": chosen.sum, "ref_rejected_logps": rejected.sum}


class ReferenceMixin:
    """Mixed in before :class:`~lit_align.algorithms.base.AlignmentModule` by the algorithms that compare
    against a reference policy (``class DPO(ReferenceMixin, AlignmentModule)``); it declares the reference's
    options and decides the source once, after the policy (and its LoRA adapters) exist.

    A module that can cache its reference values declares them in ``REFERENCE_VALUES`` (name -> the batch index
    columns that key it) and computes them in :meth:`reference_values`.

    Args:
        reference_policy: a separate reference model (preset, hub id, directory or ``.gguf`` file; from
            Python also an ``nn.Module``). Default: a frozen copy of the policy, or the policy with its
            LoRA adapters disabled. Never loaded when the module needs no reference.
        precompute_reference: run the reference once over the training and validation data before training,
            cache its log-probs on disk (``$LIT_ALIGN_CACHE/reference/<fingerprint>.pt``, default
            ``~/.cache/lit_align``; keyed by reference, data, tokenization settings and precision), free it, and
            train without it; a later run with the same fingerprint loads no reference at all. Offline
            algorithms only (DPO, IPO, KTO).
    """

    REFERENCE_VALUES: ClassVar[dict[str, tuple[str, ...]]] = {}  # cacheable values: name -> batch index columns
    reference_source: ReferenceSource = "none"
    policy: nn.Module

    def __init__(
        self, *, reference_policy: ModelRef | None = None, precompute_reference: bool = False, **kwargs: Any
    ) -> None:
        if precompute_reference and not self.REFERENCE_VALUES:
            raise ValueError(
                f"--model.precompute_reference=True: {type(self).__name__} compares against the reference on "
                "completions it samples during training, which do not exist before training starts, so there is "
                "nothing to precompute; leave --model.precompute_reference false"
            )
        super().__init__(**kwargs)
        needed = self.needs_reference()
        if needed and precompute_reference:
            # Nothing is loaded here: setup() finds the values on disk or loads the reference for one pass.
            policy = kwargs.get("policy", self.hparams.get("policy"))
            described = describe_model(reference_policy, seed=1) if reference_policy is not None else (
                describe_model(self.policy if isinstance(policy, nn.Module) else policy, seed=0))  # fmt: skip
            self.__dict__["_reference_plan"] = (reference_policy, {"model": described, "kind": self.POLICY_KIND})
            self.__dict__["_reference_table"] = None
            self.reference_source = "cached"
            self._set_reference(None)
            return
        reference = None
        if needed and reference_policy is not None:
            reference = resolve_model(reference_policy, self.POLICY_KIND, seed=1)
        self.setup_reference(reference, needed=needed)

    def needs_reference(self) -> bool:
        """Whether this module compares against a reference at all; asked once, at construction, when every
        constructor argument is already in ``self.hparams`` (an online module answers ``beta > 0``)."""
        return True

    def reference_values(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The reference's per-row values this module's loss needs for ``batch``, ``{name: (B,)}``, under ``model``
        (called without grad, in eval mode). Implemented by the modules that declare ``REFERENCE_VALUES``."""
        raise TypeError(f"{type(self).__name__} declares no reference values (REFERENCE_VALUES) to compute per row")

    def reference_value_keys(self) -> dict[str, tuple[str, ...]]:
        """The values this run needs (a subset of ``REFERENCE_VALUES``: e.g. KTO without its KL term)."""
        return dict(self.REFERENCE_VALUES)

    def reference_logps(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The reference values of ``batch``: when the reference was precomputed, those the batch carries, else the
        cached ones of its ``row_index``; otherwise :meth:`reference_values` under the reference."""
        if self.reference_source != "cached":
            return self.reference_forward(lambda model: self.reference_values(model, batch))
        names = self.reference_value_keys()
        if all(name in batch for name in names):
            return {name: batch[name] for name in names}
        table = self.__dict__.get("_reference_table")
        if table is None:
            raise RuntimeError(
                "--model.precompute_reference=True: the reference log-probs are computed in setup() of a Trainer run "
                "(trainer.fit / validate); this batch carries none and no reference is loaded"
            )
        device = next(self.policy.parameters()).device
        return {name: value.to(device) for name, value in table.lookup(batch).items()}

    def setup(self, stage: str) -> None:
        """With ``precompute_reference``: the cached values of this stage's data, computed where missing."""
        super().setup(stage)
        if self.reference_source == "cached" and stage in ("fit", "validate"):
            self._precompute_reference(stage)

    def configure_model(self) -> None:
        """FSDP2: the policy (base class), then the frozen reference, resharded after its forward."""
        super().configure_model()
        mesh = self.data_parallel_mesh()
        if mesh is not None and self.reference is not None:
            fully_shard_model(self.reference, mesh, frozen=True)

    def setup_reference(self, reference_policy: nn.Module | None, needed: bool = True) -> None:
        """Decide the source once. ``needed=False`` declares the algorithm reference-free."""
        if not needed:
            self.reference_source = "none"
            self._set_reference(None)
        elif reference_policy is not None:
            self.reference_source = "model"
            self._set_reference(reference_policy)
        elif _is_peft(self.policy):
            self.reference_source = "adapter"
            self._set_reference(None)
        else:
            self.reference_source = "copy"
            self._set_reference(copy.deepcopy(self.policy))

    @property
    def reference(self) -> nn.Module | None:
        """The separate reference model (``copy``/``model`` sources), else ``None``."""
        return self.__dict__.get("_reference_model")

    def _set_reference(self, model: nn.Module | None) -> None:
        if model is not None:
            model.requires_grad_(False)
            model.eval()
            set_padding_free(model, is_enabled(self.policy))
        # Bypass nn.Module.__setattr__: an unregistered attribute stays out of state_dict(),
        # parameters() (so the optimizer) and DDP's reducer.
        self.__dict__["_reference_model"] = model

    @torch.no_grad()
    def reference_forward(self, compute: Callable[[nn.Module], T]) -> T:
        """Run ``compute(model)`` under the reference model: no grad, eval mode, right device."""
        if self.reference_source in ("none", "cached"):
            why = "is reference-free" if self.reference_source == "none" else "uses precomputed reference values"
            raise RuntimeError(f"{type(self).__name__} {why}; no reference pass should be requested")
        if self.reference_source == "adapter":
            was_training = self.policy.training
            self.policy.eval()
            try:
                with self.policy.disable_adapter():
                    return compute(self.policy)
            finally:
                self.policy.train(was_training)
        reference = self.reference
        policy_param, reference_param = next(self.policy.parameters()), next(reference.parameters())
        if reference_param.device != policy_param.device:
            reference.to(policy_param.device)
        if reference_param.is_floating_point() and policy_param.is_floating_point() and (
            reference_param.dtype != policy_param.dtype
        ):  # Trainer(precision="bf16-true") converts the registered policy only: the reference follows it
            reference.to(policy_param.dtype)
        return compute(reference)

    @torch.no_grad()
    def sync_reference(self, alpha: float = 1.0) -> None:
        """``reference <- alpha * policy + (1 - alpha) * reference`` (TR-DPO soft update; 1.0 = hard copy)."""
        if self.reference_source not in ("copy", "model"):
            raise RuntimeError(f"cannot sync a reference of source {self.reference_source!r}")
        policy_state = self.policy.state_dict()
        for name, ref_param in self.reference.state_dict().items():
            ref_param.lerp_(policy_state[name].to(ref_param.dtype), alpha)

    # -- precomputed reference -----------------------------------------------------------------
    def _precompute_reference(self, stage: str) -> None:
        trainer = self.trainer
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "index_rows"):
            raise ValueError(
                "--model.precompute_reference=True needs a lit-align DataModule passed to the Trainer "
                "(trainer.fit(module, datamodule=...)): its rows are indexed to find their cached values again"
            )
        value_keys = self.reference_value_keys()
        data = data_description(datamodule)  # before index_rows, which changes the datasets' fingerprints
        datamodule.index_rows()
        reference_policy, described = self.__dict__["_reference_plan"]
        # The pass runs in the Trainer's precision context, as the live reference would: part of the key.
        path = cache_path(fingerprint({**described, "precision": str(trainer.precision)}, data, value_keys))
        table = self.__dict__["_reference_table"]
        if table is None or table.path != path:
            table = ReferenceTable(value_keys, path)
            self.__dict__["_reference_table"] = table
        loaders = []
        if stage == "fit":
            train = datamodule.train_dataloader()
            by_pair = any(len(columns) > 1 for columns in value_keys.values())  # KTO's KL pairs change every epoch
            loaders.append((train, planned_epochs(trainer, len(train)) if by_pair else 1))
        val = datamodule.val_dataloader() if trainer.limit_val_batches != 0 else []
        if not isinstance(val, list):
            loaders.append((val, 1))
        todo = sum(table.missing(batch) for batch in epoch_batches(loaders))
        strategy = trainer.strategy
        if not strategy.reduce_boolean_decision(todo > 0, all=False):
            rank_zero_info(f"Reference log-probs: reused {path} (no reference loaded)")
            return
        if reference_policy is _FREED:
            raise RuntimeError(
                f"--model.precompute_reference=True: {path} lacks values this run needs and the reference_policy "
                "given as an nn.Module was released after the first pass; build the module again with it"
            )
        new = self._compute_reference(table, loaders, todo, reference_policy)
        if isinstance(reference_policy, nn.Module):  # ours released: memory is the caller's to keep or free
            self.__dict__["_reference_plan"] = (_FREED, described)
        gather(strategy, table, new)
        if trainer.is_global_zero:
            table.save()
        strategy.barrier("reference_cache")
        rank_zero_info(f"Reference log-probs: computed, cached in {path}; the reference is freed")

    def _compute_reference(self, table: ReferenceTable, loaders: list, todo: int, reference_policy: Any) -> dict:
        """Load the reference, compute this rank's missing batches, free it. Returns the new entries."""
        device = self.trainer.strategy.root_device
        if reference_policy is not None:
            model = resolve_model(reference_policy, self.POLICY_KIND, seed=1)
            set_padding_free(model, is_enabled(self.policy))
        elif _is_peft(self.policy):
            model = None  # the policy with its adapters disabled: nothing to load or free
        else:
            model = copy.deepcopy(self.policy)  # setup() runs before a checkpoint is restored: still pretrained
        runner = self.policy if model is None else model.requires_grad_(False)
        was_training = runner.training
        runner.to(device).eval()
        new: dict[str, list] = {name: [] for name in table.value_keys}
        precision = self.trainer.precision_plugin.forward_context()  # autocast under mixed precision, as live
        try:
            with progress(todo, self.trainer.is_global_zero) as bar, torch.no_grad(), precision:
                for batch in epoch_batches(loaders):
                    if not table.missing(batch):
                        continue
                    on_device = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    with self.policy.disable_adapter() if model is None else nullcontext():
                        values = self.reference_values(runner, on_device)
                    for name in table.value_keys:
                        keys = table.batch_keys(batch, name)
                        table.add(name, keys, values[name])  # later batches of this pass skip what is known
                        new[name].append((keys, values[name]))
                    bar.update()
        finally:
            runner.train(was_training)
            del model, runner
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return new


_FREED = "<released nn.Module>"  # _reference_plan's model once an nn.Module reference has served its pass


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
