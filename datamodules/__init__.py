"""LightningDataModules that turn rows into lit-align's batch schemas (see docs/architecture.md)."""

from datamodules.binary import BinaryFeedbackDataModule
from datamodules.preference import PreferenceDataModule
from datamodules.prompt import PromptDataModule
from datamodules.sft import SFTDataModule
from datamodules.tokenize import DataError

__all__ = ["BinaryFeedbackDataModule", "DataError", "PreferenceDataModule", "PromptDataModule", "SFTDataModule"]
