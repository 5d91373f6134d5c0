"""Callbacks: Hugging Face export of the trained policy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn


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
        if type(trainer.strategy).__name__ == "ModelParallelStrategy":  # FSDP2: gather full tensors (collective)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        elif trainer.world_size > 1:
            state = trainer.strategy.lightning_module_state_dict()  # gathers FSDP1 shards (collective)
            state = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
        if not trainer.is_global_zero:
            return
        if _is_fsdp2(policy):  # save_pretrained needs a plain module: rebuild one around the gathered weights
            policy, state = _unsharded_copy(policy, state), None
        if hasattr(policy, "peft_config"):
            if self.lora == "merged":
                import copy

                policy = copy.deepcopy(policy).merge_and_unload()
            state = None
        if not hasattr(policy, "save_pretrained"):  # a plain nn.Module policy: its weights, as torch saves them
            path.mkdir(parents=True, exist_ok=True)
            torch.save(state if state is not None else policy.state_dict(), path / "policy_state_dict.pt")
            rank_zero_warn(
                f"the policy ({type(policy).__name__}) has no save_pretrained: saved its state_dict to "
                f"{path / 'policy_state_dict.pt'} instead of a Hugging Face folder"
            )
            self.path = path
            return
        policy.save_pretrained(path, state_dict=state, safe_serialization=True)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule is not None else None
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        self.path = path
        rank_zero_info(f"Exported the policy in Hugging Face format to {path}")


def _is_fsdp2(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _plain_class(model: nn.Module) -> type:
    """The model's own class under FSDP2's dynamic ``FSDP<Class>`` wrapper class."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def _unsharded_copy(policy: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain copy of an FSDP2-sharded policy (PEFT-wrapped or not) holding the gathered full ``state``."""
    peft = hasattr(policy, "peft_config")
    inner = policy.base_model.model if peft else policy
    with torch.device("meta"):
        plain = _plain_class(inner)(inner.config)
    if peft:
        from peft import get_peft_model

        plain = get_peft_model(plain, policy.peft_config[policy.active_adapter])
    plain.load_state_dict(state, strict=True, assign=True)
    (plain.get_base_model() if peft else plain).tie_weights()
    return plain
