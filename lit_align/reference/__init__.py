"""The reference model: the one mixin every algorithm with a reference shares, and its cached source.

    mixin.py  ReferenceMixin (the reference_policy and precompute_reference options; reference_logps(batch),
              reference_forward, sync_reference) and its Reference part (copy, model, adapter, none or cached)
    cache.py  ReferenceCache: the reference's log-probs computed once before training, cached on disk by a fingerprint
"""

import importlib
from typing import Any

# the names lit_align/reference.py had
_MIXIN = {name: "lit_align.reference.mixin" for name in (
    "PREFERENCE_VALUES", "EXTENSION_HOOKS", "preference_reference_values", "Reference", "ReferenceMixin",
    "frozen", "is_peft",
)}


def __getattr__(name: str) -> Any:
    """The names the flat module had, imported on first use (a submodule import stays as cheap as it was)."""
    if name not in _MIXIN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MIXIN[name]), name)
