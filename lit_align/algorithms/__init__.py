"""The zoo: one LightningModule per algorithm (what they are built on: :mod:`lit_align.training`).

    offline, from data:   sft.py SFT, reward_model.py RewardModel, dpo.py DPO, ipo.py IPO, simpo.py SimPO,
                          orpo.py ORPO, kto.py KTO, spin.py SPIN (self-play: its opponent answers the prompts)
    online, from rollouts: grpo.py GRPO, rloo.py RLOO, remax.py ReMax, rlvr.py RLVR, reinforce_pp.py ReinforcePP,
                          ppo.py PPO (with a learned critic)
    distillation:         distill.py Distill (a student on its own samples against one teacher or several)
"""

from lit_align.algorithms.distill import Distill
from lit_align.algorithms.dpo import DPO
from lit_align.algorithms.grpo import GRPO
from lit_align.algorithms.ipo import IPO
from lit_align.algorithms.kto import KTO
from lit_align.algorithms.orpo import ORPO
from lit_align.algorithms.ppo import PPO
from lit_align.algorithms.reinforce_pp import ReinforcePP
from lit_align.algorithms.remax import ReMax
from lit_align.algorithms.reward_model import RewardModel
from lit_align.algorithms.rloo import RLOO
from lit_align.algorithms.rlvr import RLVR
from lit_align.algorithms.sft import SFT
from lit_align.algorithms.simpo import SimPO
from lit_align.algorithms.spin import SPIN

__all__ = ["DPO", "Distill", "GRPO", "IPO", "KTO", "ORPO", "PPO", "RLOO", "RLVR", "SFT", "SPIN", "ReMax", "ReinforcePP",
           "RewardModel", "SimPO"]
