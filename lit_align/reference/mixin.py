"""ReferenceMixin: one question — "reference log-probs for this batch" — several sources, chosen once.

The mixin is the face every algorithm with a reference shares (its options, :meth:`ReferenceMixin.reference_logps`,
:meth:`~ReferenceMixin.reference_forward`, :meth:`~ReferenceMixin.sync_reference`); behind it the module holds a
:class:`Reference` part, whose source is decided once, when the module is built, after the policy exists:

    ``copy``     a frozen deep copy of the policy as loaded (default). Kept OUT of the module tree (the part is
                 not an ``nn.Module``), so it is in neither the optimizer nor the checkpoint; a resumed run
                 rebuilds it from the same pretrained weights, so resume is strict.
    ``model``    a separately loaded ``reference_policy`` (name/path/preset or ``nn.Module``), held the same way.
    ``adapter``  the policy with its LoRA adapters disabled: no second copy in memory.
    ``none``     the module needs none (:meth:`ReferenceMixin.needs_reference`: GRPO with beta=0): asking is an
                 error, so a reference pass can never run by accident. Reference-free algorithms (SFT, the reward
                 model, SimPO, ORPO) do not mix this class in at all.
    ``cached``   ``precompute_reference=True``: nothing is loaded when the module is built; in ``setup`` the
                 values are found on disk or computed once (:class:`~lit_align.reference.cache.ReferenceCache`) and
                 found again by each batch's ``row_index``. Only modules whose reference values are a function of
                 their data rows (``REFERENCE_VALUES``, :meth:`ReferenceMixin.reference_values`) offer the option.

Reference syncing (TR-DPO) is :meth:`ReferenceMixin.sync_reference` (not with a cached reference). SPIN needs no
reference model: its opponent's log-probs of each iteration's pairs are computed when the iteration begins.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import nn

from lit_align.errors import OptionError
from lit_align.models import shared_prefix
from lit_align.models.loading import ModelKind, ModelRef, resolve_model
from lit_align.models.logprobs import preference_logps
from lit_align.models.packing import is_enabled, set_padding_free
from lit_align.reference.cache import ReferenceCache, describe_model

ReferenceSource = Literal["copy", "model", "adapter", "none", "cached"]
T = TypeVar("T")
ROW = ("row_index",)  # a value of one data row
PREFERENCE_VALUES = {"ref_chosen_logps": ROW, "ref_rejected_logps": ROW}  # DPO/IPO: summed completion log-probs
EXTENSION_HOOKS = ("needs_reference", "reference_values", "reference_value_keys")


def preference_reference_values(model: nn.Module, batch: dict[str, Any], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A preference batch's reference values (:data:`PREFERENCE_VALUES`): chosen and rejected in one forward."""
    chosen, rejected = preference_logps(model, batch, pad_token_id)
    return {"ref_chosen_logps": chosen.sum, "ref_rejected_logps": rejected.sum}


class Reference:
    """The reference a module compares against: its source, and the frozen model where it has one.

    Args:
        source: where reference log-probs come from (module docstring).
        model: the frozen model of the ``copy`` and ``model`` sources.
        cache: the cached values of the ``cached`` source.
    """

    def __init__(self, source: ReferenceSource, model: nn.Module | None = None, cache: ReferenceCache | None = None):
        self.source, self.model, self.cache = source, model, cache
        self.synced_at = 0  # the optimizer step of the last sync (checkpointed; 0: never)

    @classmethod
    def build(
        cls, policy: nn.Module, reference_policy: ModelRef | None, *, needed: bool, precompute: bool, kind: ModelKind,
        policy_name: str | None,
    ) -> Reference:  # fmt: skip
        """Decide the source once, after the policy (and its LoRA adapters) exist."""
        if not needed:
            return cls("none")
        if precompute:  # nothing is loaded here: setup() finds the values on disk or loads the reference for one pass
            described = describe_model(reference_policy, seed=1) if reference_policy is not None else (
                describe_model(policy if policy_name is None else policy_name, seed=0))  # fmt: skip
            return cls("cached", cache=ReferenceCache(reference_policy, {"model": described, "kind": kind}))
        if reference_policy is not None:
            return cls("model", frozen(resolve_model(reference_policy, kind, seed=1), policy))
        if is_peft(policy):
            return cls("adapter")
        return cls("copy", frozen(copy.deepcopy(policy), policy))

    def frozen_models(self) -> list[nn.Module]:
        return [] if self.model is None else [self.model]

    def setup(self, module: Any, stage: str) -> None:
        """With a cache: the values of this stage's data, computed where missing."""
        if self.cache is not None and stage in ("fit", "validate"):
            self.cache.setup(module, stage)

    @torch.no_grad()
    def forward(self, policy: nn.Module, compute: Callable[[nn.Module], T], owner: str) -> T:
        """``compute(model)`` under the reference model: no grad, eval mode, the policy's device and dtype."""
        if self.source in ("none", "cached"):
            why = "is reference-free" if self.source == "none" else "uses precomputed reference values"
            raise RuntimeError(f"{owner} {why}; no reference pass should be requested")
        if self.source == "adapter":
            was_training = policy.training
            policy.eval()
            try:
                with policy.disable_adapter():
                    return compute(policy)
            finally:
                policy.train(was_training)
        reference = self.model
        policy_param, reference_param = next(policy.parameters()), next(reference.parameters())
        if reference_param.device != policy_param.device:
            reference.to(policy_param.device)
        if reference_param.is_floating_point() and policy_param.is_floating_point() and (
            reference_param.dtype != policy_param.dtype
        ):  # Trainer(precision="bf16-true") converts the registered policy only: the reference follows it
            reference.to(policy_param.dtype)
        return compute(reference)

    @torch.no_grad()
    def sync(self, policy: nn.Module, alpha: float, step: int = 0) -> None:
        """``reference <- alpha * policy + (1 - alpha) * reference`` (TR-DPO soft update; 1.0 = hard copy), at
        optimizer step ``step``. Entry by entry of the state dicts (under FSDP2 shard by shard: both models are
        sharded alike); a reference whose entries are not the policy's is refused by name."""
        if self.source not in ("copy", "model"):
            raise RuntimeError(f"cannot sync a reference of source {self.source!r}")
        policy_state = policy.state_dict()
        reference_state = self.model.state_dict()
        if missing := sorted(set(reference_state) - set(policy_state))[:3]:
            raise OptionError(f"sync_ref_model: the reference has weights the policy has not ({', '.join(missing)}): "
                              "syncing needs a reference of the policy's architecture")  # fmt: skip
        for name, ref_param in reference_state.items():
            if ref_param.is_floating_point():
                ref_param.lerp_(policy_state[name].to(ref_param.dtype), alpha)
        self.synced_at = step

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.synced_at:
            checkpoint["reference_synced_at"] = self.synced_at

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.synced_at = int(checkpoint.get("reference_synced_at", 0))


class ReferenceMixin:
    """Mixed in before the loop class by the algorithms that compare against a reference policy
    (``class DPO(ReferenceMixin, OfflineModule)``); it declares the reference's options and holds the
    :class:`Reference` part. Its hooks are ``needs_reference``, ``reference_values`` and ``reference_value_keys``.

    A module that can cache its reference values declares them in ``REFERENCE_VALUES`` (name -> the batch index
    columns that key it) and computes them in :meth:`reference_values`.

    Args:
        reference_policy: a separate reference model (preset, hub id, directory or ``.gguf`` file; from
            Python also an ``nn.Module``). Default: a frozen copy of the policy, or the policy with its
            LoRA adapters disabled. Never loaded when the module needs no reference.
        precompute_reference: run the reference once over the training and validation data before training,
            cache its log-probs on disk (``$LIT_ALIGN_CACHE/reference/<fingerprint>.pt``, default
            ``~/.cache/lit_align``; keyed by reference, data, tokenization settings and precision), free it, and
            train without it; a later run with the same fingerprint loads no reference at all.
    """

    REFERENCE_VALUES: ClassVar[dict[str, tuple[str, ...]]] = {}  # cacheable values: name -> batch index columns
    policy: nn.Module

    def __init__(
        self, *, reference_policy: ModelRef | None = None, precompute_reference: bool = False, **kwargs: Any
    ) -> None:
        if precompute_reference and not self.REFERENCE_VALUES:
            raise OptionError(
                f"--model.precompute_reference=True: {type(self).__name__} declares no reference values that are a "
                "function of its data rows (REFERENCE_VALUES), so there is nothing to precompute"
            )
        super().__init__(**kwargs)
        self._reference = self.hold(Reference.build(
            self.policy, reference_policy, needed=self.needs_reference(), precompute=precompute_reference,
            kind=self.POLICY_KIND, policy_name=self.policy_name,
        ))  # fmt: skip

    # -- hooks ------------------------------------------------------------------------------------
    def needs_reference(self) -> bool:
        """Whether this module compares against a reference at all; asked once, when the module is built (an
        online module answers ``beta > 0``, decided before its base builds anything). Default: yes."""
        return True

    def reference_values(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The reference's per-row values this module's loss needs for ``batch``, ``{name: (B,)}``, under ``model``
        (called without grad, in eval mode). Implemented by the modules that declare ``REFERENCE_VALUES``."""
        raise TypeError(f"{type(self).__name__} declares no reference values (REFERENCE_VALUES) to compute per row")

    def reference_value_keys(self) -> dict[str, tuple[str, ...]]:
        """The values this run needs (a subset of ``REFERENCE_VALUES``: e.g. KTO without its KL term)."""
        return dict(self.REFERENCE_VALUES)

    # -- the question -----------------------------------------------------------------------------
    def reference_logps(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The reference values of ``batch``: with a cached reference, those the batch carries, else the cached ones
        of its ``row_index``; otherwise :meth:`reference_values` under the reference."""
        cache = self._reference.cache
        if cache is None:
            return self.reference_forward(lambda model: self.reference_values(model, batch))
        return cache.lookup(batch, self.reference_value_keys(), next(self.policy.parameters()).device)

    def reference_forward(self, compute: Callable[[nn.Module], T]) -> T:
        """Run ``compute(model)`` under the reference model: no grad, eval mode, right device."""
        return self._reference.forward(self.policy, compute, type(self).__name__)

    def sync_reference(self, alpha: float = 1.0) -> None:
        """``reference <- alpha * policy + (1 - alpha) * reference`` (TR-DPO soft update; 1.0 = hard copy)."""
        self._reference.sync(self.policy, alpha, getattr(self, "global_step", 0))

    @property
    def reference(self) -> nn.Module | None:
        """The separate reference model (``copy``/``model`` sources), else ``None``."""
        return self._reference.model

    @property
    def reference_source(self) -> ReferenceSource:
        return self._reference.source


def frozen(model: nn.Module, policy: nn.Module) -> nn.Module:
    """``model`` as a reference: no grads, eval mode, padding-free and prefix-sharing like the policy."""
    model.requires_grad_(False)
    model.eval()
    shared_prefix.set_shared_prefix(model, shared_prefix.is_enabled(policy), shared_prefix.kernel_of(policy))
    return set_padding_free(model, is_enabled(policy))


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
