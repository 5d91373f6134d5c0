"""ReferenceMixin: one question — "reference log-probs for this batch" — several sources, chosen once.

Sources (``self.reference_source``):
    ``copy``     a frozen deep copy of the policy as loaded (default). Kept OUT of the module tree
                 (not a registered submodule), so it is in neither the optimizer nor the checkpoint;
                 a resumed run rebuilds it from the same pretrained weights, so resume is strict.
    ``model``    a separately loaded ``reference_policy`` (name/path/preset or ``nn.Module``),
                 held the same way as ``copy``.
    ``adapter``  the policy with its LoRA adapters disabled: no second copy in memory.
    ``none``     reference-free algorithms (SimPO, ORPO, GRPO with beta=0): asking is an error,
                 so a reference pass can never run by accident.

Planned, with room left here: ``precomputed`` (one pass before training, cached on disk keyed by
a model/data/tokenization fingerprint; the reference is then freed) — the batch would carry the
cached values and :meth:`reference_forward` would not be called. Reference syncing (TR-DPO,
SPIN iterations) is :meth:`sync_reference`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal, TypeVar

import torch
from torch import nn

ReferenceSource = Literal["copy", "model", "adapter", "none"]
T = TypeVar("T")


class ReferenceMixin:
    """Mixed into a LightningModule that has ``self.policy``; call :meth:`setup_reference` in ``__init__``."""

    reference_source: ReferenceSource = "none"
    policy: nn.Module

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
