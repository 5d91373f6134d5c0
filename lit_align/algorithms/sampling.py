"""SamplingMixin: the options and the seeded sampler of a module that generates from its policy.

Mixed in before :class:`~lit_align.algorithms.base.AlignmentModule` (the online algorithms, SPIN). It
declares the sampling options once and holds a :class:`~lit_align.rollout.Sampler` built on first use
(it needs the tokenizer, which the DataModule provides at fit time). Rewards are not its business:
SPIN generates through it without any reward machinery.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lit_align.rollout import GenerationBackend, HFGenerate, Rollout, Sampler
from lit_align.vllm_backend import VLLMGenerate, import_vllm


class SamplingMixin:
    """Sampling options and a seeded sampler.

    Args:
        max_new_tokens: completion length limit in tokens; a completion without EOS by then is truncated.
        temperature: sampling temperature (> 0; greedy decoding is a separate switch where offered); the online
            algorithms also take their training log-probs, ratios, KL and entropy at it.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: top-k sampling (0 = off).
        sampling_seed: sampling is seeded from (sampling_seed, global step, rank), so a run and its resume
            from a checkpoint draw the same completions.
        tokenizer: tokenizer for decoding completions: by default the DataModule's, else the policy's by
            name; needed when the policy is given as an ``nn.Module`` outside a Trainer.
        generation_backend: ``hf`` (Hugging Face ``generate``, KV cache; any device) or ``vllm`` (a colocated vLLM
            engine per GPU, weights copied in after each update; the optional ``vllm`` extra, CUDA only,
            :mod:`lit_align.vllm_backend`). Greedy validation decodes with the same backend.
        vllm_gpu_memory_utilization: with ``vllm``: the share of each GPU's memory the engine may take.
        kv_cache: with ``hf``: ``static`` (preallocated), ``dynamic`` (grown per token) or ``auto`` (static on CPU,
            where it measured 1.31x faster, dynamic elsewhere); see :class:`~lit_align.rollout.HFGenerate`.
    """

    def __init__(
        self,
        *,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        sampling_seed: int = 0,
        tokenizer: Any = None,
        generation_backend: Literal["hf", "vllm"] = "hf",
        vllm_gpu_memory_utilization: float = 0.3,
        kv_cache: Literal["auto", "static", "dynamic"] = "auto",
        **kwargs: Any,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"--model.temperature={temperature!r}: must be > 0 (validation decodes greedily anyway)")
        if max_new_tokens < 1:
            raise ValueError(f"--model.max_new_tokens={max_new_tokens!r}: at least 1 token")
        if not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"--model.top_p={top_p!r} / --model.top_k={top_k!r}: top_p in (0, 1], top_k >= 0 (0: off)")
        if generation_backend not in ("hf", "vllm"):
            raise ValueError(f"--model.generation_backend={generation_backend!r}: hf or vllm")
        if not 0 < vllm_gpu_memory_utilization < 1:
            raise ValueError(
                f"--model.vllm_gpu_memory_utilization={vllm_gpu_memory_utilization!r}: a fraction in (0, 1)"
            )
        if kv_cache not in ("auto", "static", "dynamic"):
            raise ValueError(f"--model.kv_cache={kv_cache!r}: auto, static or dynamic")
        if generation_backend == "vllm":
            import_vllm()  # before any weights load: a missing extra fails here, with the install command
        super().__init__(**kwargs)
        self.generation_backend = generation_backend
        self.vllm_gpu_memory_utilization = vllm_gpu_memory_utilization
        self.kv_cache = kv_cache
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self._sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k}
        self.sampling_seed = sampling_seed
        self._tokenizer = tokenizer if not isinstance(tokenizer, str) else None
        names = [t for t in (tokenizer, self.hparams.get("policy")) if isinstance(t, str)]
        self._tokenizer_name = names[0] if names else None
        self._backend: GenerationBackend | None = None
        self._samples_drawn = 0  # sampling calls outside a Trainer (the seed key there)

    @property
    def backend(self) -> GenerationBackend:
        """The generation backend (``generation_backend``) with the sampling options, unless one was set."""
        if self._backend is None and self.generation_backend == "vllm":
            self._backend = VLLMGenerate(
                self.tokenizer, **self._sampling, gpu_memory_utilization=self.vllm_gpu_memory_utilization
            )
        elif self._backend is None:
            self._backend = HFGenerate(self.tokenizer, **self._sampling, kv_cache=self.kv_cache)
        return self._backend

    @backend.setter
    def backend(self, backend: GenerationBackend) -> None:
        self._backend = backend

    @property
    def sampler(self) -> Sampler:
        return Sampler(self.backend, self.sampling_seed)

    def sample(
        self, prompt_input_ids: Tensor, prompt_attention_mask: Tensor, num_generations: int = 1, greedy: bool = False
    ) -> Rollout:
        """Completions of the policy (G per prompt, prompt-major), or one greedy completion each, without grad.

        Sampling is seeded by (``sampling_seed``, global step, rank) in a Trainer's fit, and by the number of
        earlier sampling calls outside one.
        """
        if greedy:  # deterministic: consumes no key, so evaluating between updates leaves the samples alone
            key = "greedy"
        elif self._trainer is not None and self.trainer.training:  # in fit: a function of the checkpointed step
            key = f"{self.global_step}/{self.global_rank}"
        else:
            key, self._samples_drawn = f"{self._samples_drawn}/0", self._samples_drawn + 1
        return self.sampler(self.policy, prompt_input_ids, prompt_attention_mask, num_generations, key, greedy)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            if getattr(datamodule, "tokenizer", None) is not None:
                self._tokenizer = datamodule.tokenizer
            elif self._tokenizer_name is not None:
                from lit_align.models import load_tokenizer

                self._tokenizer = load_tokenizer(self._tokenizer_name)
            else:
                raise ValueError("pass tokenizer=... when the policy is given as an nn.Module")
        return self._tokenizer
