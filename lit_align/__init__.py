"""lit-align: LLM alignment algorithms as PyTorch Lightning modules.

The names below are imported when first used (``from lit_align import DPO`` imports the DPO module, and Lightning
and transformers with it), so ``import lit_align`` and the ``lit-align`` command's listing of its recipes cost no
more than Python's start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from lit_align import moved  # noqa: E402  (the flat modules' import paths, forwarded with a warning)

moved.install()

_WHERE = {
    **{name: "lit_align.algorithms" for name in ("DPO", "Distill", "GRPO", "IPO", "KTO", "ORPO", "PPO", "RLOO", "RLVR",
                                                 "SFT", "SPIN", "ReMax", "ReinforcePP", "RewardModel", "SimPO")},
    "load_model": "lit_align.models.loading",
    "load_tokenizer": "lit_align.models.loading",
}  # fmt: skip
__all__ = sorted(_WHERE)

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from lit_align.algorithms import (  # noqa: F401
        DPO,
        GRPO,
        IPO,
        KTO,
        ORPO,
        PPO,
        RLOO,
        RLVR,
        SFT,
        SPIN,
        Distill,
        ReinforcePP,
        ReMax,
        RewardModel,
        SimPO,
    )
    from lit_align.models.loading import load_model, load_tokenizer  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lit_align' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
