"""FSDP2 sharding for ``ModelParallelStrategy`` (each transformer block, then the root), and gathering objects.

The block classes come from the loaded model itself (Hugging Face's ``_no_split_modules``, the
classes it keeps whole when splitting a model across devices), so any architecture works, not just
Llama. The root is always sharded too: sharding only the blocks leaves a mix of plain tensors and
DTensors that breaks gradient-norm clipping and transformers' FSDP detection in ``generate``.

A frozen model (the reference, a reward model) reshards its root after forward too, so that after its
no-grad forward no rank keeps the gathered root group (embeddings, LM head) resident.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import nn

from lit_align.errors import OptionError


def block_class_names(model: nn.Module) -> set[str]:
    """Names of the transformer block classes of ``model`` (PEFT-wrapped or not)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    present = {type(m).__name__ for m in model.modules()}
    found = names & present
    if not found:
        raise OptionError(
            f"cannot find the transformer blocks of {type(model).__name__} to shard with FSDP2: it declares no "
            "`_no_split_modules` that match its submodules. Load a Hugging Face model, or set `_no_split_modules` "
            "on it to the names of its block classes."
        )
    return found


def fully_shard_model(model: nn.Module, mesh, frozen: bool = False) -> nn.Module:
    """Apply FSDP2's ``fully_shard`` to every block of ``model`` and then to ``model`` (idempotent).

    Blocks are resharded after their forward. The root group (embeddings, final norm, heads) of a trained
    model stays gathered until its backward: losses may read a head's output through a hook (the reward
    model does) rather than the root's returned output, where FSDP2 would re-gather before backward. A
    ``frozen`` model (no backward) reshards its root too, so no rank keeps it gathered after a forward.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return model
    names = block_class_names(model)
    for module in list(model.modules()):
        if type(module).__name__ in names:
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=frozen)
    return model


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process; ``[obj]`` when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def is_fsdp2_sharded(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # older torch
        return False
    return isinstance(model, FSDPModule) and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
