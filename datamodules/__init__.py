"""LightningDataModules that turn rows into lit-align's batch schemas (``lit_align.batches``).

    base.py        what every DataModule shares: load rows, validate and tokenize once, split, batch
    sources.py     reading rows: local files and folders, shipped demo data, else a ``datasets`` hub name
    tokenize.py    row validation, prompt/completion tokenization, truncation, padding
    remarks.py     what tokenization changed (truncated, dropped), counted and said once
    resumable.py   a training DataLoader that resumes mid-epoch at the checkpoint's batch
    preference.py  PreferenceDataModule: prompt, chosen, rejected
    binary.py      BinaryFeedbackDataModule: prompt, completion, label
    prompt.py      PromptDataModule: prompts (and reward columns) for the online algorithms
    sft.py         SFTDataModule: prompt + completion
    spin.py        SPINDataModule: each iteration pairs the ground truth with the opponent's answer
"""

from lit_align.datamodules.binary import BinaryFeedbackDataModule
from lit_align.datamodules.preference import PreferenceDataModule
from lit_align.datamodules.prompt import PromptDataModule
from lit_align.datamodules.sft import SFTDataModule
from lit_align.datamodules.spin import SPINDataModule
from lit_align.datamodules.tokenize import DataError

__all__ = ["BinaryFeedbackDataModule", "DataError", "PreferenceDataModule", "PromptDataModule",
           "SFTDataModule", "SPINDataModule"]
