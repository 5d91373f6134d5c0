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

Planned, with room left here: ``precomputed`` (one pass before training, cached on disk keyed by
a model/data/tokenization fingerprint; the reference is then freed) — the batch would carry the
cached values and :meth:`reference_forward` would not be called. Reference syncing (TR-DPO) is
:meth:`sync_reference`. SPIN needs no reference model: its opponent's log-probs of each iteration's pairs are
computed when the iteration begins (``lit_align.algorithms.spin``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from lit_align.models import ModelRef, resolve_model
from lit_align.sharding import fully_shard_model

ReferenceSource = Literal["copy", "model", "adapter", "none"]
T = TypeVar("T")


class ReferenceMixin:
    """Mixed in before :class:`~lit_align.algorithms.base.AlignmentModule` by the algorithms that compare
    against a reference policy (``class DPO(ReferenceMixin, AlignmentModule)``); it declares the reference's
    options and decides the source once, after the policy (and its LoRA adapters) exist.

    Args:
        reference_policy: a separate reference model (preset, hub id, directory or ``.gguf`` file; from
            Python also an ``nn.Module``). Default: a frozen copy of the policy, or the policy with its
            LoRA adapters disabled. Never loaded when the module needs no reference.
    """

    reference_source: ReferenceSource = "none"
    policy: nn.Module

    def __init__(self, *, reference_policy: ModelRef | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        reference = None
        if self.needs_reference() and reference_policy is not None:
            reference = resolve_model(reference_policy, self.POLICY_KIND, seed=1)
        self.setup_reference(reference, needed=self.needs_reference())

    def needs_reference(self) -> bool:
        """Whether this module compares against a reference at all; asked once, at construction, when every
        constructor argument is already in ``self.hparams`` (an online module answers ``beta > 0``)."""
        return True

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
        # Bypass nn.Module.__setattr__: an unregistered attribute stays out of state_dict(),
        # parameters() (so the optimizer) and DDP's reducer.
        self.__dict__["_reference_model"] = model

    @torch.no_grad()
    def reference_forward(self, compute: Callable[[nn.Module], T]) -> T:
        """Run ``compute(model)`` under the reference model: no grad, eval mode, right device."""
        if self.reference_source == "none":
            raise RuntimeError(f"{type(self).__name__} is reference-free; no reference pass should be requested")
        if self.reference_source == "adapter":
            was_training = self.policy.training
            self.policy.eval()
            try:
                with self.policy.disable_adapter():
                    return compute(self.policy)
            finally:
                self.policy.train(was_training)
        reference = self.reference
        device = next(self.policy.parameters()).device
        if next(reference.parameters()).device != device:
            reference.to(device)
        return compute(reference)

    @torch.no_grad()
    def sync_reference(self, alpha: float = 1.0) -> None:
        """``reference <- alpha * policy + (1 - alpha) * reference`` (TR-DPO soft update; 1.0 = hard copy)."""
        if self.reference_source not in ("copy", "model"):
            raise RuntimeError(f"cannot sync a reference of source {self.reference_source!r}")
        policy_state = self.policy.state_dict()
        for name, ref_param in self.reference.state_dict().items():
            ref_param.lerp_(policy_state[name].to(ref_param.dtype), alpha)


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
