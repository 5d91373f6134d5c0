"""The models and their forward passes: loading, preparing for training, and the memory-lean passes every module runs.

    loading.py        presets, hub ids, folders and GGUF files -> (model, tokenizer); the policy prepared for training
                      (LoRA, fused layers, checkpointing, padding-free); the tokenizer checked against the model
    files.py          model files checked against what their names claim before a loader reads them
    logprobs.py       per-token and per-sequence completion log-probs from (model, batch), chosen+rejected in one pass
    lm_head.py        the chunked LM head: (tokens x vocabulary) logits never held at once
    divergence.py     the distillation passes: a teacher's and a student's next-token distributions compared per token
                      through the chunked head
    runs.py           a run directory, checkpoint, export or preset -> the model, its tokenizer, its starting model
    packing.py        padding-free passes: a batch's real tokens in one row, attention per sequence
    shared_prefix.py  a pair's or a group's common prefix computed once (SDPA with a block mask, or flex attention)
    fused.py          fused RMSNorm and SwiGLU layers that save only their inputs for backward
    sharding.py       FSDP2 sharding per transformer block; gathering objects over ranks
    host_memory.py    handing the step's freed host memory back to the system (glibc malloc_trim)
"""

import importlib
from typing import Any

# the names lit_align/models.py had (load_model and load_tokenizer: lit_align's own, as they always were too)
_LOADING = {name: "lit_align.models.loading" for name in (
    "CHATML_TEMPLATE", "PRESETS", "OFFLINE_FLAGS", "hub_offline_flag", "hub_unreachable",
    "build_byte_tokenizer", "build_tiny_llama", "check_vocabulary", "resolve_model", "apply_lora",
    "prepare_trainable", "check_model_interface",
)} | {"load_model": "lit_align", "load_tokenizer": "lit_align"}


def __getattr__(name: str) -> Any:
    """The names the flat module had, imported on first use (a submodule import stays as cheap as it was)."""
    if name not in _LOADING:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LOADING[name]), name)
