"""A vLLM rollout backend (``--model.generation_backend vllm``): the optional ``vllm`` extra, imported lazily.

Colocated, as TRL's ``vllm_mode="colocate"``: each rank holds its own engine in its own process
(``distributed_executor_backend="external_launcher"``) on its own GPU, sharing it with training
(``gpu_memory_utilization``, default 0.3). The engine is built on the first rollout from the policy's weights folder
(``policy.config._name_or_path``; ``vllm_model`` overrides it) and, before every rollout in which the policy's
weights have changed since the last one (counted from the module's optimizer steps and the parameters' version
counters, not assumed), the live weights are copied in (``load_weights``: FSDP2 shards gathered with
``full_tensor``, LoRA adapters merged for the copy and unmerged after) and vLLM's prefix cache is reset.

Sampling: the prompts' real tokens (padding stripped), ``n = num_generations`` per prompt (prompt-major, as
:class:`~lit_align.rollouts.hf.HFGenerate`), the module's temperature / top-p / top-k, the completion ending at the
first EOS of ``eos_ids``; the seed is drawn from torch's RNG, which :class:`~lit_align.rollouts.sampling.Sampler` seeds
per call, so a (sampling.seed, step, rank) key draws the same completions again on the same engine. The training
log-probs are recomputed by the policy as with ``generate``; vLLM's own log-probs of the sampled tokens (after its
temperature: ``logprobs_mode="processed_logprobs"``, as TRL asks) come with the rollout (``sampler_logps``; NaN for
an EOS vLLM left out of its tokens), and the online modules correct for their difference with the trainer's
(``sampling.rollout_correction``).

Status: written against vLLM's ``LLM`` API as TRL 1.16 uses it (``llm_engine.model_executor.driver_worker.
model_runner.model.load_weights``); **unverified on a GPU** in this project (no GPU was lent while it was built).
``tests/test_vllm_backend.py`` checks the plumbing against a stand-in ``vllm`` module.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_align.errors import MissingExtra, OptionError
from lit_align.rollouts.record import Rollout, completion_rollout, updates


def import_vllm() -> Any:
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise MissingExtra(
            "--model.generation_backend=vllm needs vLLM on a CUDA machine: pip install 'lit-align[vllm]' "
            "(or pip install vllm); the default backend, hf, needs nothing more"
        ) from err


def weights_version(model: nn.Module) -> tuple[int, int]:
    """Changes whenever the module steps the optimizer (:func:`~lit_align.rollouts.record.mark_updated`; torch's fused
    AdamW leaves the version counters alone) or a parameter is modified in place or replaced outside it."""
    return updates(model), sum(p._version + id(p) for p in model.parameters())


def named_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """The policy's weights under the names its Hugging Face checkpoint uses (what ``load_weights`` expects):
    FSDP2 shards gathered, LoRA merged into the base weights (call inside :func:`merged`), adapter tensors left out."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    for name, param in base.named_parameters():
        if "lora_" in name or ".original_module." in name:  # adapters (merged in) and the frozen copy of a saved module
            continue
        name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        value = param.full_tensor() if hasattr(param, "full_tensor") else param
        yield name, value.detach()


class _Merged:
    """LoRA adapters merged into the base weights for the copy, unmerged after (a no-op without LoRA)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model if callable(getattr(model, "merge_adapter", None)) else None

    def __enter__(self) -> None:
        if self.model is not None:
            self.model.merge_adapter()

    def __exit__(self, *exc: Any) -> None:
        if self.model is not None:
            self.model.unmerge_adapter()


class VLLMGenerate:
    """The :class:`~lit_align.rollouts.sampling.GenerationBackend` on a colocated vLLM engine (see the module
    docstring).

    Args:
        tokenizer: decodes completions and gives the pad and EOS ids.
        max_new_tokens, temperature, top_p, top_k: as :class:`~lit_align.rollouts.hf.HFGenerate`.
        gpu_memory_utilization: the share of the GPU's memory vLLM may take (weights + KV cache).
        vllm_model: the weights folder or hub id to build the engine from (default: the policy's).
        max_model_length: vLLM's ``max_model_len`` (default: the model's).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_ids: Sequence[int] | None = None,
        gpu_memory_utilization: float = 0.3,
        vllm_model: str | None = None,
        max_model_length: int | None = None,
    ) -> None:
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids is not None else None
        self.gpu_memory_utilization, self.vllm_model, self.max_model_length = (
            gpu_memory_utilization, vllm_model, max_model_length)  # fmt: skip
        self.llm: Any = None
        self.synced_version: tuple[int, int] | None = None
        self.syncs = 0  # weight copies made (one per rollout after an update)

    def eos_ids(self, model: nn.Module) -> list[int]:
        from lit_align.rollouts.hf import HFGenerate

        return HFGenerate.eos_ids(self, model)  # the same rule: tokenizer's EOS + the generation config's

    def engine(self, model: nn.Module) -> Any:
        if self.llm is None:
            vllm = import_vllm()
            path = self.vllm_model or getattr(getattr(model, "config", None), "_name_or_path", None)
            if not path:
                raise OptionError(
                    "--model.generation_backend=vllm: the policy has no weights folder (config._name_or_path) to "
                    "build the engine from; save it with save_pretrained and give that folder as the policy"
                )
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self.llm = vllm.LLM(
                model=path, gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_length,
                distributed_executor_backend="external_launcher", seed=rank, dtype=str(_dtype(model)).removeprefix(
                    "torch."), enable_prefix_caching=True, logprobs_mode="processed_logprobs",
            )  # fmt: skip
        return self.llm

    def sync_weights(self, model: nn.Module) -> None:
        """Copy the policy's weights into the engine if they changed since the last copy."""
        version = weights_version(model)
        if version == self.synced_version:
            return
        llm = self.engine(model)
        runner = llm.llm_engine.model_executor.driver_worker.model_runner.model
        with _Merged(model), torch.no_grad():
            for name, value in named_weights(model):
                runner.load_weights([(name, value)])
        llm.reset_prefix_cache()
        self.synced_version, self.syncs = version, self.syncs + 1

    def __call__(
        self,
        model: nn.Module,
        prompt_input_ids: Tensor,
        prompt_attention_mask: Tensor,
        num_generations: int = 1,
        greedy: bool = False,
        max_new_tokens: int | None = None,
    ) -> Rollout:
        vllm = import_vllm()
        llm = self.engine(model)
        self.sync_weights(model)
        eos_ids, pad_id = self.eos_ids(model), self.tokenizer.pad_token_id
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_input_ids, prompt_attention_mask, strict=True)]
        seed = int(torch.randint(0, 2**31 - 1, (1,)))  # from the Sampler's seeded RNG
        sampling = (
            {"temperature": 0.0}
            if greedy
            else {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k if self.top_k > 0 else -1}
        )
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        params = vllm.SamplingParams(n=num_generations, max_tokens=limit, stop_token_ids=eos_ids, seed=seed,
                                     skip_special_tokens=True, logprobs=0, **sampling)  # fmt: skip
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        samples = [sample for request in outputs for sample in request.outputs]  # prompt-major
        # A completion that stopped at an EOS ends with it (vLLM may leave a special stop token out of token_ids).
        rows = [list(s.token_ids) + ([eos_ids[0]] if s.finish_reason == "stop" and (not s.token_ids or s.token_ids[-1]
                not in eos_ids) else []) for s in samples]  # fmt: skip
        if len(rows) != len(prompts) * num_generations:
            raise RuntimeError(f"vLLM returned {len(rows)} completions for {len(prompts)} prompts x {num_generations}")
        width = max(1, max(len(r) for r in rows))
        completion_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=prompt_input_ids.device)
        input_ids = prompt_input_ids.repeat_interleave(num_generations, dim=0)
        attention_mask = prompt_attention_mask.repeat_interleave(num_generations, dim=0)
        rollout = completion_rollout(self.tokenizer, completion_ids, eos_ids, input_ids, attention_mask,
                                     num_generations)  # fmt: skip
        if not greedy:  # the engine's log-probs of the sampled tokens, for the rollout correction
            logps = [sampled_logps(s) for s in samples]
            logps = [lp + [float("nan")] * (len(r) - len(lp)) for lp, r in zip(logps, rows, strict=True)]
            rollout.sampler_logps = torch.tensor([lp + [0.0] * (width - len(lp)) for lp in logps],
                                                 device=prompt_input_ids.device)  # fmt: skip
        return rollout


def sampled_logps(sample: Any) -> list[float]:
    """vLLM's log-prob of each sampled token (``logprobs=0``: each position's dict holds the sampled token; NaN where
    it holds none)."""
    out = []
    for token, position in zip(sample.token_ids, sample.logprobs or [], strict=False):
        entry = position.get(token) if position else None
        value = getattr(entry, "logprob", None)
        out.append(float("nan") if value is None else float(value))
    return out + [float("nan")] * (len(sample.token_ids) - len(out))


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
