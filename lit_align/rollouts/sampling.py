"""The sampler: a part that a module (or the evaluate / generate commands) holds to draw completions.

:class:`SamplingOptions` declares the sampling options once; every module that generates takes them as one group,
``sampling`` (``--model.sampling.temperature``, ``sampling: {max_new_tokens: 64}`` in YAML). :class:`Sampler` holds
them and a generation backend (Hugging Face ``generate``, or a colocated vLLM engine) built on the first call, and
seeds every call from ``(seed, key)``: the same key draws the same completions, so a run resumed from a checkpoint
samples what the uninterrupted run sampled, with no RNG state saved. Rewards are not its business: SPIN generates
through it without any reward machinery.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from lit_align.hparams import as_group, check_option
from lit_align.losses.objectives import RolloutCorrection
from lit_align.rollouts.hf import HFGenerate
from lit_align.rollouts.record import Rollout

GenerationBackendName = Literal["hf", "vllm"]
KVCache = Literal["auto", "static", "dynamic"]


@dataclass(frozen=True)
class GenerationOptions:
    """How completions are sampled, for generation alone (the ``sampling`` group of ``evaluate`` and ``generate``;
    the training modules' group, :class:`SamplingOptions`, adds what only training uses).

    Args:
        max_new_tokens: completion length limit in tokens; a completion without EOS by then is truncated.
        temperature: sampling temperature (> 0; greedy decoding is a separate switch where offered); the online
            algorithms also take their training log-probs, ratios, KL and entropy at it.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: top-k sampling (0 = off).
        seed: sampling is seeded from (seed, global step, rank), so a run and its resume from a checkpoint draw the
            same completions.
        generation_backend: ``hf`` (Hugging Face ``generate``, KV cache; any device) or ``vllm`` (a colocated vLLM
            engine per GPU, weights copied in after each update; the optional ``vllm`` extra, CUDA only,
            :mod:`lit_align.rollouts.vllm`). Greedy validation decodes with the same backend.
        vllm_gpu_memory_utilization: with ``vllm``: the share of each GPU's memory the engine may take.
        kv_cache: with ``hf``: ``static`` (preallocated), ``dynamic`` (grown per token) or ``auto`` (static on CPU,
            where it measured 1.31x faster, dynamic elsewhere); see :class:`~lit_align.rollouts.hf.HFGenerate`.
        shared_prefill: with ``hf``: prefill each prompt once and sample its G completions from copies of that KV
            cache (when the module's ``shared_prefix`` is on too; the same completions as G prefills). Off: each
            sample prefills its own prompt, as ``generate`` does by itself. vLLM shares prompt prefixes by itself
            (automatic prefix caching).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    generation_backend: GenerationBackendName = "hf"
    vllm_gpu_memory_utilization: float = 0.3
    kv_cache: KVCache = "auto"
    shared_prefill: bool = True

    def __post_init__(self) -> None:
        for ok, name, expected in self.checks():
            check_option(ok, f"sampling.{name}", getattr(self, name), expected)
        if self.generation_backend == "vllm":
            from lit_align.rollouts.vllm import import_vllm

            import_vllm()  # before any weights load: a missing extra fails here, with the install command

    def checks(self) -> list[tuple[bool, str, str]]:
        """Each option's ``(ok, name, expected)``."""
        return [
            (self.temperature > 0, "temperature", "must be > 0 (greedy decoding is its own switch)"),
            (self.max_new_tokens >= 1, "max_new_tokens", "at least 1 token"),
            (0 < self.top_p <= 1, "top_p", "in (0, 1] (1: off)"),
            (self.top_k >= 0, "top_k", ">= 0 (0: off)"),
            (self.generation_backend in ("hf", "vllm"), "generation_backend", "hf or vllm"),
            (0 < self.vllm_gpu_memory_utilization < 1, "vllm_gpu_memory_utilization", "a fraction in (0, 1)"),
            (self.kv_cache in ("auto", "static", "dynamic"), "kv_cache", "auto, static or dynamic"),
        ]


@dataclass(frozen=True)
class SamplingOptions(GenerationOptions):
    """How completions are sampled while training (the ``sampling`` group of every module that generates): the
    generation options and the correction of an engine's sampling log-probs.

    Args:
        rollout_correction: when the completions come with the rollout ENGINE's log-probs (``vllm``, or a rollout
            given to ``update`` with ``sampling_log_probs``), the loss is weighted by π_old / π_sampler at the
            ``token`` or ``sequence`` level, ``truncate``-d to the bounds or ``mask``-ed outside them
            (:func:`~lit_align.losses.objectives.rollout_correction_weights`; TRL's ``vllm_importance_sampling_mode``,
            whose default this is); ``none`` trains on the mismatched ratio. With ``hf`` generation the trainer's own
            pass gives the sampling log-probs: nothing to correct, and nothing is.
        rollout_correction_max: C_max, the upper bound (TRL's ``vllm_importance_sampling_clip_max``); null: none.
        rollout_correction_min: C_min, the lower bound; null: none.
    """

    rollout_correction: RolloutCorrection = "sequence_mask"
    rollout_correction_max: float | None = 3.0
    rollout_correction_min: float | None = None

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            *super().checks(),
            (self.rollout_correction in ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
             "rollout_correction", "none, token_truncate, token_mask, sequence_truncate or sequence_mask"),
            (self.rollout_correction_max is None or self.rollout_correction_max > 0, "rollout_correction_max",
             "a bound > 0, or null"),
            (self.rollout_correction_min is None or self.rollout_correction_min >= 0, "rollout_correction_min",
             "a bound >= 0, or null"),
            (None in (self.rollout_correction_min, self.rollout_correction_max)
             or self.rollout_correction_min < self.rollout_correction_max, "rollout_correction_min",
             f"below rollout_correction_max={self.rollout_correction_max}"),
        ]  # fmt: skip


class Sampler:
    """Seeded sampling from prompt batches with the options of a :class:`SamplingOptions` (or, for generation
    alone, :class:`GenerationOptions`) group.

    Args:
        options: the sampling options.
        backend: a generation backend to use instead of the one ``options`` names (tests, custom engines).
    """

    def __init__(self, options: GenerationOptions | dict | None = None, backend: GenerationBackend | None = None,
                 ) -> None:  # fmt: skip
        self.options = options if isinstance(options, GenerationOptions) else as_group(SamplingOptions, options)
        self.backend: GenerationBackend | None = backend
        self.draws = 0  # calls without a key so far (their key: the count)

    def backend_for(self, tokenizer: Any) -> GenerationBackend:
        """The generation backend, built on first use (it needs the tokenizer, which a DataModule may provide)."""
        if self.backend is None:
            o = self.options
            common = {"max_new_tokens": o.max_new_tokens, "temperature": o.temperature, "top_p": o.top_p,
                      "top_k": o.top_k}  # fmt: skip
            if o.generation_backend == "vllm":
                from lit_align.rollouts.vllm import VLLMGenerate

                self.backend = VLLMGenerate(tokenizer, **common, gpu_memory_utilization=o.vllm_gpu_memory_utilization)
            else:
                self.backend = HFGenerate(tokenizer, **common, kv_cache=o.kv_cache, shared_prefill=o.shared_prefill)
        return self.backend

    def eos_ids(self, model: nn.Module, tokenizer: Any) -> list[int]:
        return self.backend_for(tokenizer).eos_ids(model)

    def sample(
        self,
        model: nn.Module,
        prompt_input_ids: Tensor,
        prompt_attention_mask: Tensor,
        tokenizer: Any,
        num_generations: int = 1,
        key: str | None = None,
        greedy: bool = False,
        max_new_tokens: int | None = None,
    ) -> Rollout:
        """``num_generations`` completions per prompt (prompt-major), or one greedy completion, without grad, each of
        at most ``max_new_tokens`` (default: ``sampling.max_new_tokens``; a multi-turn turn asks for what is left).

        ``key`` names the call (e.g. ``"<step>/<rank>"``): the same (seed, key) draws the same completions. Without
        one, a greedy call needs none and a sampled call takes the number of keyless calls before it.
        """
        key = self.call_key(key, greedy)
        backend = self.backend_for(tokenizer)
        with seeded_rng(f"{self.options.seed}/{key}", prompt_input_ids.device):
            return backend(model, prompt_input_ids, prompt_attention_mask, num_generations, greedy=greedy,
                           max_new_tokens=max_new_tokens)  # fmt: skip

    def call_key(self, key: str | None, greedy: bool) -> str:
        """The key a call is seeded by: ``key`` itself; without one, ``greedy`` for a greedy call and the number of
        keyless sampled calls before it for a sampled one."""
        if key is not None:
            return key
        if greedy:
            return "greedy"
        key, self.draws = f"{self.draws}/0", self.draws + 1
        return key


class GenerationBackend(Protocol):
    """Samples ``num_generations`` completions per prompt (or one greedy completion) without grad, each of at most
    ``max_new_tokens`` (the backend's own limit when ``None``; a multi-turn rollout gives each turn the room the
    conversation has left)."""

    max_new_tokens: int

    def __call__(
        self,
        model: nn.Module,
        prompt_input_ids: Tensor,
        prompt_attention_mask: Tensor,
        num_generations: int = 1,
        greedy: bool = False,
        max_new_tokens: int | None = None,
    ) -> Rollout: ...


@contextmanager
def seeded_rng(key: str, device: torch.device) -> Iterator[None]:
    """Run the block with torch's RNG (CPU, and ``device`` if CUDA) seeded from ``key``, restoring it after."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield
