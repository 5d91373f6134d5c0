"""The vLLM rollout backend's plumbing (``lit_align.rollouts.vllm``) against a stand-in ``vllm`` module.

vLLM needs CUDA, which CI does not have: the stand-in records what the backend asks of it (the engine's
arguments, the prompts without padding, the sampling parameters, the weights copied in) and answers with scripted
token ids, one finishing at its stop token, one dropping it from ``token_ids`` as vLLM may, one cut at
``max_tokens``. What is checked: the rollout has the layout ``HFGenerate``'s has (prompt-major, right-padded
completions, masks and truncation flags), the seed comes from the sampler's seeded RNG, the weights are copied
once per change of the policy's weights (after an optimizer step, not before every rollout) and under the
checkpoint's names with LoRA merged, and a missing vLLM fails at construction with the install command.
The real engine is not exercised here: see the module docstring (unverified on GPU).
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from lit_align.algorithms import GRPO
from lit_align.models.loading import build_byte_tokenizer, load_model
from lit_align.rollouts.vllm import VLLMGenerate, named_weights
from tests.online_helpers import length_reward, prompt_batch


def batch_ids(batch):
    return batch["prompt_input_ids"], batch["prompt_attention_mask"]


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.loaded: list[str] = []
        self.loaded_values: dict[str, torch.Tensor] = {}
        self.requests: list = []
        self.resets = 0
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self._load))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=runner)))  # fmt: skip
        FakeLLM.instances.append(self)

    def _load(self, weights) -> None:
        for name, value in weights:
            self.loaded.append(name)
            self.loaded_values[name] = value.clone()

    def reset_prefix_cache(self) -> None:
        self.resets += 1

    def generate(self, prompts, params, use_tqdm=False):
        self.requests.append((prompts, params))
        eos = params.stop_token_ids[0]
        out = []
        for i, _ in enumerate(prompts):
            samples = []
            for g in range(params.n):
                kind = (i + g) % 3
                if kind == 0:  # stopped at EOS, which token_ids keeps
                    tokens, reason = [40 + g, 41, eos], "stop"
                elif kind == 1:  # stopped at EOS, left out of token_ids
                    tokens, reason = [50 + g], "stop"
                else:  # cut at max_tokens
                    tokens, reason = [60 + g] * params.max_tokens, "length"
                # logprobs=0: one dict per position holding the sampled token's Logprob (-0.1, -0.2, ...)
                logprobs = [{t: SimpleNamespace(logprob=-0.1 * (j + 1))} for j, t in enumerate(tokens)]
                samples.append(SimpleNamespace(token_ids=tokens, finish_reason=reason,
                                               logprobs=logprobs if params.logprobs == 0 else None))  # fmt: skip
            out.append(SimpleNamespace(outputs=samples))
        return out


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    FakeLLM.instances = []
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_rollout_layout_prompts_sampling_and_truncation(tmp_path, fake_vllm):
    tokenizer = build_byte_tokenizer()
    model, _ = load_model("tiny-llama")
    model.config._name_or_path = "/weights/tiny"
    batch = prompt_batch(tmp_path, tokenizer, n=2)
    backend = VLLMGenerate(tokenizer, max_new_tokens=5, temperature=0.7, top_p=0.9, top_k=0)
    torch.manual_seed(3)
    rollout = backend(model, batch["prompt_input_ids"], batch["prompt_attention_mask"], num_generations=3)
    (llm,) = FakeLLM.instances
    assert llm.kwargs["model"] == "/weights/tiny" and llm.kwargs["distributed_executor_backend"] == "external_launcher"
    prompts, params = llm.requests[0]
    expected = [ids[m.bool()].tolist() for ids, m in zip(*batch_ids(batch), strict=True)]
    assert [p["prompt_token_ids"] for p in prompts] == expected  # left padding stripped
    assert (params.n, params.max_tokens, params.temperature, params.top_p, params.top_k) == (3, 5, 0.7, 0.9, -1)
    torch.manual_seed(3)
    assert params.seed == int(torch.randint(0, 2**31 - 1, (1,)))  # drawn from the sampler's seeded RNG
    eos = tokenizer.eos_token_id
    assert len(rollout) == 6 and rollout.num_generations == 3
    assert rollout.lengths.tolist() == [3, 2, 5, 2, 5, 3]  # prompt-major: prompt 0's three samples first
    assert rollout.is_truncated.tolist() == [False, False, True, False, True, False]
    assert rollout.completion_ids[1, :2].tolist() == [51, eos]  # the left-out EOS put back
    assert rollout.completion_ids[1, 2:].eq(tokenizer.pad_token_id).all()
    assert torch.equal(rollout.prompt_input_ids, batch["prompt_input_ids"].repeat_interleave(3, 0))
    # vLLM's log-probs of the sampled tokens come along (processed: after its temperature), NaN for the EOS it left
    # out, 0 on padding; greedy decoding needs none
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and params.logprobs == 0
    torch.testing.assert_close(rollout.sampler_logps[0, :3], torch.tensor([-0.1, -0.2, -0.3]))
    assert rollout.sampler_logps[1, 0].item() == pytest.approx(-0.1) and rollout.sampler_logps[1, 1].isnan()
    assert rollout.sampler_logps[1, 2:].eq(0).all()
    greedy = backend(model, batch["prompt_input_ids"], batch["prompt_attention_mask"], greedy=True)
    assert llm.requests[1][1].temperature == 0.0 and len(greedy) == 2 and greedy.sampler_logps is None


def test_weights_are_copied_once_per_update(tmp_path, fake_vllm):
    tokenizer = build_byte_tokenizer()
    batch = prompt_batch(tmp_path, tokenizer, n=2)
    module = GRPO(policy="tiny-llama", tokenizer=tokenizer, beta=0.0, num_generations=2,
                  sampling={"max_new_tokens": 4, "generation_backend": "vllm"},
                  rewards={"reward_funcs": [length_reward]}, learning_rate=1e-2)  # fmt: skip
    assert isinstance(module.sampler.backend_for(tokenizer), VLLMGenerate)
    module.policy.config._name_or_path = "/weights/tiny"  # built in code: vLLM needs a folder to start from
    module.sample(batch["prompt_input_ids"], batch["prompt_attention_mask"], 2)
    module.sample(batch["prompt_input_ids"], batch["prompt_attention_mask"], 2)
    assert module.sampler.backend.syncs == 1  # nothing changed between the two rollouts
    module.update(batch)  # samples (no change yet), then one optimizer step
    assert module.sampler.backend.syncs == 1
    module.sample(batch["prompt_input_ids"], batch["prompt_attention_mask"], 2)
    assert module.sampler.backend.syncs == 2
    (llm,) = FakeLLM.instances
    names = dict(module.policy.named_parameters())
    assert set(llm.loaded) == set(names) and llm.resets == 2
    for name, value in llm.loaded_values.items():
        assert torch.equal(value, names[name].detach())  # the updated weights, not the loaded ones


def test_lora_weights_are_merged_under_the_checkpoint_names():
    peft = pytest.importorskip("peft")
    model, _ = load_model("tiny-llama")
    plain = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = peft.get_peft_model(model, config)
    from lit_align.rollouts.vllm import _Merged

    with _Merged(lora), torch.no_grad():
        copied = {name: value.clone() for name, value in named_weights(lora)}
    assert set(copied) == set(plain)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(copied[q], plain[q])  # the adapter's update is in the copy
    assert torch.equal(copied["model.layers.0.mlp.up_proj.weight"], plain["model.layers.0.mlp.up_proj.weight"])
    base = lora.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    torch.testing.assert_close(base, plain[q], rtol=0, atol=1e-6)  # unmerged again (up to rounding, as PEFT)


def test_missing_vllm_fails_before_any_weights_load(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'lit-align\[vllm\]'"):
        GRPO(policy="no-such-model-would-be-loaded", rewards={"reward_funcs": [length_reward]},
             sampling={"generation_backend": "vllm"})


@pytest.mark.parametrize("mode", ["sequence_mask", "token_truncate", "none"])
def test_the_engines_log_probs_are_corrected_for(tmp_path, fake_vllm, mode):
    """A vLLM rollout: the trainer's own pass gives the sampling log-probs (old), the loss is weighted by
    π_old / π_vllm as rollout_correction says, and TRL's sampling/* metrics are logged; ``none`` leaves the loss
    uncorrected. The stand-in's log-probs (-0.1, -0.2, ...) are far above the tiny model's (about -5.5 per token), so
    every ratio is below C_min = 0.5: sequence_mask zeroes every sequence, token_truncate lifts every token to 0.5."""
    tokenizer = build_byte_tokenizer()
    batch = prompt_batch(tmp_path, tokenizer, n=2)
    module = GRPO(policy="tiny-llama", tokenizer=tokenizer, num_generations=3,
                  sampling={"max_new_tokens": 4, "generation_backend": "vllm", "rollout_correction": mode,
                            "rollout_correction_min": 0.5},
                  rewards={"reward_funcs": [length_reward]}, learning_rate=1e-2)  # fmt: skip
    module.policy.config._name_or_path = "/weights/tiny"
    seen = {}
    original = module.policy_loss
    module.policy_loss = lambda exp, *a: seen.setdefault("exp", exp) and original(exp, *a)
    out = module.update(batch)
    exp = seen["exp"]
    if mode == "none":
        assert exp.rollout_weights is None and "sampling/importance_sampling_ratio/mean" not in out
        return
    assert exp.old_logps is not None  # the trainer's pass, not the engine's log-probs
    weights = exp.rollout_weights
    if mode == "sequence_mask":
        assert weights.shape == (6, 1) and weights.eq(0).all() and out["loss"] == 0.0
        assert out["sampling/importance_sampling_ratio/max"] == 0.0
    else:
        scored = exp.loss_mask.bool() & ~exp.rollout.sampler_logps.isnan()
        assert weights.shape == exp.loss_mask.shape and weights[scored].eq(0.5).all()
        assert weights[exp.rollout.sampler_logps.isnan()].eq(1.0).all()  # an EOS vLLM left out: no correction
        assert 0.5 < out["sampling/importance_sampling_ratio/mean"] < 0.6
    assert out["sampling/sampling_logp_difference/mean"] > 3.0
    assert out["sampling/sampling_logp_difference/max"] >= out["sampling/sampling_logp_difference/mean"]
