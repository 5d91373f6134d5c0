"""Callbacks: Hugging Face export of the trained policy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class HFExport(L.Callback):
    """Write the policy with ``save_pretrained`` (safetensors) plus its tokenizer at the end of fit.

    The folder loads with plain ``AutoModelForCausalLM.from_pretrained(folder)`` (or
    ``AutoModelForSequenceClassification`` for a reward model).

    Args:
        dirname: folder name inside the run's log directory (or an absolute path).
        lora: with a LoRA policy, ``merged`` writes full merged weights (default), ``adapter``
            only the adapter (load it with peft on top of the base model).
    """

    def __init__(self, dirname: str = "hf_model", lora: Literal["merged", "adapter"] = "merged") -> None:
        self.dirname = dirname
        self.lora = lora
        self.path: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: call on all ranks
        path = Path(self.dirname) if Path(self.dirname).is_absolute() else Path(log_dir) / self.dirname
        policy = pl_module.policy
        state = None
        if trainer.world_size > 1 or type(trainer.strategy).__name__ == "ModelParallelStrategy":
            state = trainer.strategy.lightning_module_state_dict()  # gathers shards (collective)
        if not trainer.is_global_zero:
            return
        if hasattr(policy, "peft_config"):
            if self.lora == "merged":
                import copy

                policy = copy.deepcopy(policy).merge_and_unload()
            state = None
        elif state is not None:
            state = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
        policy.save_pretrained(path, state_dict=state, safe_serialization=True)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule is not None else None
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        self.path = path
        rank_zero_info(f"Exported the policy in Hugging Face format to {path}")
