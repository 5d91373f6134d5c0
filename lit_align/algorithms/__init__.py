"""The zoo: one LightningModule per algorithm."""

from lit_align.algorithms.dpo import DPO
from lit_align.algorithms.ipo import IPO

__all__ = ["DPO", "IPO"]
