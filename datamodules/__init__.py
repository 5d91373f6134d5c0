"""LightningDataModules that turn rows into lit-align's batch schemas (see docs/architecture.md)."""

from lit_align.datamodules.binary import BinaryFeedbackDataModule
from lit_align.datamodules.preference import PreferenceDataModule
from lit_align.datamodules.prompt import PromptDataModule
from lit_align.datamodules.sft import SFTDataModule
from lit_align.datamodules.spin import SPINDataModule
from lit_align.datamodules.tokenize import DataError

__all__ = ["BinaryFeedbackDataModule", "DataError", "PreferenceDataModule", "PromptDataModule",
           "SFTDataModule", "SPINDataModule"]
