"""SamplingMixin: the options and the seeded sampler of a module that generates from its policy.

Mixed in before :class:`~lit_align.algorithms.base.AlignmentModule` (the online algorithms, SPIN). It
declares the sampling options once and holds a :class:`~lit_align.rollout.Sampler` built on first use
(it needs the tokenizer, which the DataModule provides at fit time). Rewards are not its business:
SPIN generates through it without any reward machinery.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_align.rollout import GenerationBackend, HFGenerate, Rollout, Sampler


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
        **kwargs: Any,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        super().__init__(**kwargs)
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
        """The generation backend: Hugging Face ``generate`` with the sampling options unless one was set."""
        if self._backend is None:
            self._backend = HFGenerate(self.tokenizer, **self._sampling)
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
