"""The Hugging Face ``generate`` backend of the sampler: G completions per prompt with the KV cache (static on CPU),
one prefill per prompt repeated for its G samples when the policy shares prefixes, ``synced_gpus`` under FSDP2."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lit_align.models.sharding import is_fsdp2_sharded
from lit_align.rollouts.record import Rollout, completion_rollout


class HFGenerate:
    """Sampling with Hugging Face ``generate`` (KV cache on), in eval mode, restoring train mode after.

    Args:
        tokenizer: decodes completions and gives the pad and EOS ids.
        max_new_tokens: completion length limit; a completion without EOS by then is truncated.
        temperature: sampling temperature.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (0 = off).
        eos_token_ids: tokens that end a completion (default: the tokenizer's EOS and the model's
            ``generation_config.eos_token_id``).
        kv_cache: ``static`` preallocates the KV cache for prompt + ``max_new_tokens`` (no growth per token; 1.31x
            the tokens/s of the dynamic cache for SmolLM2-135M on the 2-core CPU, ``bench/generation.py``),
            ``dynamic`` grows it token by token (transformers' default), ``auto`` is static on CPU and dynamic
            elsewhere (on GPU transformers would compile a static-cache forward, not measured here). Never
            compiled: ``torch.compile`` made CPU decoding slower here after a 4-minute compilation.
        shared_prefill: prefill each prompt once for its samples where :meth:`shares_prompts` allows.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_ids: Sequence[int] | None = None,
        kv_cache: Literal["auto", "static", "dynamic"] = "auto",
        shared_prefill: bool = True,
    ) -> None:
        if kv_cache not in ("auto", "static", "dynamic"):
            raise ValueError(f"kv_cache must be auto, static or dynamic, got {kv_cache!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive (use greedy=True for greedy decoding), got {temperature}")
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids is not None else None
        self.kv_cache = kv_cache
        self.shared_prefill = shared_prefill

    def cache_options(self, model: nn.Module) -> dict[str, Any]:
        """``generate``'s cache settings for ``model`` (``kv_cache``)."""
        device = next(model.parameters()).device
        static = self.kv_cache == "static" or (self.kv_cache == "auto" and device.type == "cpu")
        return {"cache_implementation": "static", "disable_compile": True} if static else {}

    def eos_ids(self, model: nn.Module) -> list[int]:
        if self.eos_token_ids is not None:
            return self.eos_token_ids
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    def shares_prompts(self, model: nn.Module, num_generations: int, prompt_length: int) -> bool:
        """Whether a prompt's G samples start from one prefill (:meth:`prompt_cache`): ``shared_prefill``, G > 1, a
        policy marked for shared prefixes (the modules' ``shared_prefix`` option) that is an in-library transformers
        model taking a ``cache`` (transformers 5's cache API; older versions prefill each sample)."""
        from lit_align.models import packing, shared_prefix

        if not self.shared_prefill or num_generations < 2 or prompt_length < 2 or not shared_prefix.is_enabled(model):
            return False
        if packing.unsupported_reason(model) is not None:
            return False
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return "cache" in inspect.signature(type(base).forward).parameters

    def prompt_cache(self, model: nn.Module, prompt_input_ids: Tensor, prompt_attention_mask: Tensor, repeats: int,
                     max_new_tokens: int):  # fmt: skip
        """The KV cache of every prompt but its last token, computed once per prompt and repeated for its ``repeats``
        samples (static or dynamic, as ``kv_cache`` picks; static, it holds the prompt and ``max_new_tokens``);
        ``generate`` then runs the last prompt token and samples. Positions as ``generate`` makes them for
        left-padded rows."""
        from transformers import DynamicCache, StaticCache

        ids, mask = prompt_input_ids[:, :-1], prompt_attention_mask[:, :-1]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        config = model.config
        prefill = DynamicCache(config=config)
        model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=prefill, use_cache=True,
              logits_to_keep=1)  # fmt: skip
        if self.cache_options(model):
            cache = StaticCache(config=config, max_cache_len=prompt_input_ids.shape[1] + max_new_tokens)
        else:
            cache = DynamicCache(config=config)
        for source, target in zip(prefill.layers, cache.layers, strict=True):
            target.update(source.keys.repeat_interleave(repeats, 0), source.values.repeat_interleave(repeats, 0))
        return cache

    def __call__(
        self,
        model: nn.Module,
        prompt_input_ids: Tensor,
        prompt_attention_mask: Tensor,
        num_generations: int = 1,
        greedy: bool = False,
        max_new_tokens: int | None = None,
    ) -> Rollout:
        eos_ids = self.eos_ids(model)
        pad_id = self.tokenizer.pad_token_id
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        sampling = {} if greedy else {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        config = GenerationConfig(
            max_new_tokens=limit, do_sample=not greedy, eos_token_id=eos_ids, pad_token_id=pad_id,
            use_cache=True, **sampling, **self.cache_options(model),
        )  # fmt: skip
        # Prompt-major order: row i*G + g is the g-th sample of prompt i.
        input_ids = prompt_input_ids.repeat_interleave(num_generations, dim=0)
        attention_mask = prompt_attention_mask.repeat_interleave(num_generations, dim=0)
        was_training = model.training
        model.eval()  # dropout off; HF also disables the KV cache under gradient checkpointing in train mode
        try:
            with torch.no_grad():
                cache = None
                if self.shares_prompts(model, num_generations, prompt_input_ids.shape[1]):
                    cache = self.prompt_cache(model, prompt_input_ids, prompt_attention_mask, num_generations, limit)
                    config.cache_implementation = None  # the cache is given
                sequences = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                    **({} if cache is None else {"cache": cache}),
                    synced_gpus=is_fsdp2_sharded(model),  # FSDP2: ranks that finish early must keep all-gathering
                )  # fmt: skip
        finally:
            model.train(was_training)
        completion_ids = sequences[:, input_ids.shape[1] :]
        return completion_rollout(self.tokenizer, completion_ids, eos_ids, input_ids, attention_mask, num_generations)
