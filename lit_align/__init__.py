"""lit-align: LLM alignment algorithms as PyTorch Lightning modules."""

from lit_align.algorithms import (
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
    ReinforcePP,
    ReMax,
    RewardModel,
    SimPO,
)
from lit_align.models import load_model, load_tokenizer

__all__ = [
    "DPO",
    "GRPO",
    "IPO",
    "KTO",
    "ORPO",
    "PPO",
    "RLOO",
    "RLVR",
    "SFT",
    "SPIN",
    "ReMax",
    "ReinforcePP",
    "RewardModel",
    "SimPO",
    "load_model",
    "load_tokenizer",
]
__version__ = "0.1.0"
