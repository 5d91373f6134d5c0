"""Shared-prefix passes (``lit_align.models.shared_prefix``) against unshared padding-free and padded ones.

Each comparison runs the same model and batch with sharing on and off and compares the outputs and every
parameter's gradient (≤1e-5). A spy proves the shared layout really ran (a silent fallback would make the
comparison trivially true). Layouts: pairs whose prompts match, pairs cut differently by truncation (the shared part
is the common prefix only), completions that begin alike (sharing reaches into them), a row that is its pair's
prefix (an empty completion), left-padded rows, rows in no group.
"""

from __future__ import annotations

import pytest
import torch

from lit_align.algorithms import DPO, IPO, ORPO, SimPO
from lit_align.datamodules import PreferenceDataModule
from lit_align.models import shared_prefix
from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama
from lit_align.models.logprobs import IGNORE_INDEX, completion_scores, concatenate_pair, pair_groups
from tests.online_helpers import grads

ATOL = 1e-5


@pytest.fixture
def shared_calls(monkeypatch) -> list:
    """The layout of every shared-prefix attention call."""
    calls, original = [], shared_prefix.shared_prefix_attention_forward

    def spy(module, query, key, value, attention_mask, *args, **kwargs):
        if kwargs.get(shared_prefix.SEGMENTS) is not None:
            calls.append(kwargs[shared_prefix.SEGMENTS])
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    from transformers import AttentionInterface

    monkeypatch.setattr(shared_prefix, "shared_prefix_attention_forward", spy)
    monkeypatch.setitem(AttentionInterface._global_mapping, shared_prefix.SHARED, spy)
    return calls


def pair_batch(seed: int = 0) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    """Four pairs stacked chosen-over-rejected (rows i and 4 + i), T = 24:

    0. the same 8-token prompt, completions of 9 and 5 tokens (right padded);
    1. prompts cut differently (truncation kept the end: the rejected row lost its first 3 prompt tokens);
    2. completions that begin with the same 3 tokens;
    3. an empty rejected completion (the row is its pair's prefix), chosen left padded.
    """
    g = torch.Generator().manual_seed(seed)
    T = 24
    ids = torch.zeros(8, T, dtype=torch.long)
    mask = torch.zeros(8, T, dtype=torch.long)
    labels = torch.full((8, T), IGNORE_INDEX)

    def put(row: int, prompt: torch.Tensor, completion: torch.Tensor, left: int = 0) -> None:
        seq = torch.cat([prompt, completion])
        ids[row, left : left + len(seq)] = seq
        mask[row, left : left + len(seq)] = 1
        labels[row, left + len(prompt) : left + len(seq)] = completion

    def rand(n: int) -> torch.Tensor:
        return torch.randint(3, 250, (n,), generator=g)

    p = rand(8)
    put(0, p, rand(9)), put(4, p, rand(5))
    p = rand(10)
    put(1, p, rand(6)), put(5, p[3:], rand(7))
    p, start = rand(6), rand(3)
    put(2, p, torch.cat([start, rand(4)])), put(6, p, torch.cat([start, rand(8)]))
    p = rand(7)
    put(3, p, rand(6), left=5), put(7, p, rand(0))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}, pair_groups(4)


# -- layout ----------------------------------------------------------------------------------------------
def test_each_pair_runs_its_common_prefix_once_and_every_token_reads_its_own_position():
    batch, groups = pair_batch()
    row = shared_prefix.share(batch["input_ids"], batch["attention_mask"], groups)
    keep = batch["attention_mask"].bool()
    prefixes = [seg.length for seg in row.segments]
    assert prefixes == [8, 0, 9, 7]  # pair 1 shares nothing (cut differently); pair 2 shares 6 + 3 tokens
    assert row.shared_tokens == 8 + 9 + 7
    assert row.input_ids.shape[1] == int(keep.sum()) - row.shared_tokens
    # every real token reads a packed position holding the same token id at the same position
    packed_ids, packed_pos = row.input_ids[0][row.source[keep]], row.position_ids[0][row.source[keep]]
    assert torch.equal(packed_ids, batch["input_ids"][keep])
    positions = torch.cat([torch.arange(n) for n in keep.sum(1).tolist()])
    assert torch.equal(packed_pos, positions)
    assert bool((row.source[~keep] == -1).all())
    assert row.segments[3].suffixes == ((row.segments[3].start + 7, 6),)  # the empty completion has no suffix


def test_groups_must_be_disjoint_rows_of_the_batch():
    batch, _ = pair_batch()
    with pytest.raises(ValueError, match="disjoint row indices"):
        shared_prefix.share(batch["input_ids"], batch["attention_mask"], [(0, 4), (4, 1)])
    with pytest.raises(ValueError, match="disjoint row indices"):
        shared_prefix.share(batch["input_ids"], batch["attention_mask"], [(0, 9)])


def test_rows_in_no_group_run_alone():
    batch, _ = pair_batch()
    row = shared_prefix.share(batch["input_ids"], batch["attention_mask"], [(0, 4)])
    assert [s.length for s in row.segments] == [8, 0, 0, 0, 0, 0, 0]
    assert row.shared_tokens == 8


# -- values and gradients -------------------------------------------------------------------------------
def _scores_and_grads(model, batch, groups, *, shared: bool, padding_free: bool = True, chunked: bool = True):
    shared_prefix.set_shared_prefix(model, shared)
    model.zero_grad()
    scores = completion_scores(model, **batch, with_entropy=True, with_accuracy=True, temperature=0.7,
                               chunked=chunked, padding_free=padding_free, groups=groups)  # fmt: skip
    weights = torch.randn(batch["labels"].shape, generator=torch.Generator().manual_seed(1))
    (scores.logps * weights).sum().backward()
    return scores, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked_head", "plain_head"])
def test_shared_scores_and_gradients_equal_the_unshared_and_the_padded_ones(chunked, shared_calls):
    model = build_tiny_llama(build_byte_tokenizer(), seed=0)
    batch, groups = pair_batch()
    shared, shared_grads = _scores_and_grads(model, batch, groups, shared=True, chunked=chunked)
    assert len(shared_calls) == model.config.num_hidden_layers
    assert model.config._attn_implementation == "sdpa"  # restored after the shared forward
    for other in ({"shared": False}, {"shared": False, "padding_free": False}):
        ref, ref_grads = _scores_and_grads(model, batch, groups, chunked=chunked, **other)
        assert torch.equal(ref.mask, shared.mask) and torch.equal(ref.correct, shared.correct)
        for name in ("logps", "mean_logits", "entropy"):
            torch.testing.assert_close(getattr(shared, name), getattr(ref, name), rtol=0, atol=ATOL, msg=name)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(shared_grads[name], grad, rtol=0, atol=ATOL, msg=name)
    assert len(shared_calls) == model.config.num_hidden_layers  # the unshared passes did not use it


def test_a_completion_sees_the_prompt_and_itself_only(shared_calls):
    model = shared_prefix.set_shared_prefix(build_tiny_llama(build_byte_tokenizer(), seed=0))
    batch, groups = pair_batch()
    first = completion_scores(model, **batch, padding_free=True, groups=groups).logps
    changed = {k: v.clone() for k, v in batch.items()}
    keep = changed["labels"][4] != IGNORE_INDEX
    changed["input_ids"][4][keep] = (changed["input_ids"][4][keep] + 7) % 250  # pair 0's rejected completion
    changed["labels"][4][keep] = changed["input_ids"][4][keep]
    second = completion_scores(model, **changed, padding_free=True, groups=groups).logps
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=1e-6)  # the chosen row did not see it
    assert not torch.equal(first[4], second[4])


def test_the_option_is_a_mark_that_the_reference_copies():
    from lit_align.reference.mixin import frozen

    policy = shared_prefix.set_shared_prefix(build_tiny_llama(build_byte_tokenizer(), seed=0), False)
    assert not shared_prefix.is_enabled(frozen(build_tiny_llama(build_byte_tokenizer()), policy))
    module = DPO(policy="tiny-llama")
    assert shared_prefix.is_enabled(module.policy) and shared_prefix.is_enabled(module.reference)
    assert not shared_prefix.is_enabled(DPO(policy="tiny-llama", shared_prefix=False).policy)


# -- modules ---------------------------------------------------------------------------------------------
def first_batch(tokenizer: str = "tiny-llama", **data) -> dict:
    dm = PreferenceDataModule(tokenizer=tokenizer, batch_size=4, max_samples=16, val_size=0, **data)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def _loss_values_grads(module, batch):
    module.policy.zero_grad()
    loss, values = module.compute_loss(batch)
    loss.backward()
    flat = {k: (v[0] if isinstance(v, tuple) else v).detach() for k, v in values.items()}
    return loss.detach(), flat, grads(module)


@pytest.mark.parametrize("cls", [DPO, IPO, SimPO, ORPO], ids=lambda c: c.__name__)
@pytest.mark.parametrize("truncation", ["keep_start", "keep_end"])
def test_module_losses_metrics_and_gradients_are_the_same_shared(cls, truncation, shared_calls):
    batch = first_batch(max_length=24, max_prompt_length=8, truncation_mode=truncation)  # cuts prompts and answers
    results = {}
    for shared in (False, True):
        module = cls(policy="tiny-llama", shared_prefix=shared)
        results[shared] = _loss_values_grads(module, batch)
        assert bool(shared_calls) == shared
    (loss0, values0, grads0), (loss1, values1, grads1) = results[False], results[True]
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=ATOL)
    assert values0.keys() == values1.keys()
    for name, value in values0.items():
        torch.testing.assert_close(values1[name].float(), value.float(), rtol=1e-5, atol=ATOL, msg=name)
    assert grads0.keys() == grads1.keys() and grads0
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=0, atol=ATOL, msg=name)


def test_a_real_chat_template_shares_the_whole_prompt(smollm2_tokenizer):
    """SmolLM2's template renders the prompt the same way in both rows, so the shared prefix covers it (and
    nothing of a completion that differs from its first token)."""
    batch = first_batch(smollm2_tokenizer)
    joint = concatenate_pair(batch, smollm2_tokenizer.pad_token_id)
    n = batch["chosen_input_ids"].shape[0]
    row = shared_prefix.share(joint["input_ids"], joint["attention_mask"], pair_groups(n))
    for i, seg in enumerate(row.segments):
        real = joint["attention_mask"][i].bool()
        prompt = int((joint["labels"][i][real] == IGNORE_INDEX).sum())
        assert prompt > 10 and seg.length >= prompt, (i, seg.length, prompt)


def test_gradient_checkpointing_recomputes_the_shared_layout(shared_calls):
    batch = first_batch()
    results = {}
    for shared in (False, True):
        module = DPO(policy="tiny-llama", shared_prefix=shared, gradient_checkpointing=True)
        results[shared] = _loss_values_grads(module, batch)
    layers = build_tiny_llama(build_byte_tokenizer()).config.num_hidden_layers
    assert len(shared_calls) == 3 * layers  # the policy's forward, its recomputation in backward, the reference
    (loss0, _, grads0), (loss1, _, grads1) = results[False], results[True]
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=ATOL)
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=0, atol=ATOL, msg=name)


@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforce_pp", "ppo"])
def test_online_update_is_the_same_with_each_prompt_once(algo, tmp_path, shared_calls):
    """β > 0 (reference pass), two passes over the rollout (old log-probs) and two minibatches, so the policy,
    old and reference passes (and PPO's critic, old values and values with grad) all run grouped; rewards,
    advantages, metrics and the update's gradients."""
    from lit_align.algorithms import GRPO, PPO, RLOO, ReinforcePP
    from lit_align.models.loading import load_model
    from tests.online_helpers import fixed_rollout, length_reward, prompt_batch
    from tests.test_packing import _with_logps
    from tests.test_ppo import tiny_reward_model

    cls = {"grpo": GRPO, "rloo": RLOO, "reinforce_pp": ReinforcePP, "ppo": PPO}[algo]
    reward_funcs = [tiny_reward_model(tmp_path / "rm")] if algo == "ppo" else [length_reward]
    tokenizer = build_byte_tokenizer()
    batch = prompt_batch(tmp_path, tokenizer, n=2)
    rollout = fixed_rollout(batch, tokenizer, 4, [2, 3, 4, 6, 1, 6, 5, 2])
    results = {}
    for shared in (False, True):
        policy, _ = load_model("tiny-llama")
        reference, _ = load_model("tiny-llama", seed=1)
        module = cls(policy=policy, reference_policy=reference, tokenizer=tokenizer, beta=0.1, num_generations=4,
                     sampling={"max_new_tokens": 8}, rewards={"reward_funcs": reward_funcs}, max_grad_norm=None,
                     learning_rate=1e-3, num_iterations=2, num_minibatches=2, shared_prefix=shared)  # fmt: skip
        module.generate_samples = lambda *args, m=module: _with_logps(m, rollout)
        recorded = []
        module.step_manual = lambda m=module, r=recorded: r.append(grads(m)) or {}
        out = module.update(batch)
        results[shared] = out, recorded
        assert bool(shared_calls) == shared
    (out0, grads0), (out1, grads1) = results[False], results[True]
    assert out0.keys() == out1.keys() and len(grads0) == len(grads1) == 4  # 2 passes x 2 minibatches
    for name, value in out0.items():
        if not name.startswith("time/"):
            assert out1[name] == pytest.approx(value, rel=1e-5, abs=ATOL), name
    for step0, step1 in zip(grads0, grads1, strict=True):
        for name, grad in step0.items():
            torch.testing.assert_close(step1[name], grad, rtol=0, atol=ATOL, msg=name)


def test_reward_model_scores_each_pair_prompt_once(shared_calls):
    """The reward model reads the last token of chosen and rejected; with its pairs shared, loss, metrics and
    gradients equal the padded pass."""
    from lit_align.algorithms import RewardModel

    batch = first_batch()
    results = {}
    for shared in (False, True):
        module = RewardModel(policy="tiny-llama", shared_prefix=shared, padding_free=shared)
        results[shared] = _loss_values_grads(module, batch)
        assert bool(shared_calls) == shared
    (loss0, values0, grads0), (loss1, values1, grads1) = results[False], results[True]
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=ATOL)
    for name, value in values0.items():
        torch.testing.assert_close(values1[name].float(), value.float(), rtol=1e-5, atol=ATOL, msg=name)
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=0, atol=ATOL, msg=name)


# -- generation --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_generation_prefills_each_prompt_once_and_samples_the_same(kv_cache, monkeypatch):
    """A prompt's G samples start from one prefill repeated G times: the same completions as G prefills, sampled
    (same seed) and greedy, left-padded prompts of different lengths; a one-token prompt prefills nothing."""
    from lit_align.rollouts.hf import HFGenerate

    model, tokenizer = build_tiny_llama(build_byte_tokenizer(), seed=0), build_byte_tokenizer()
    tokenizer.padding_side = "left"
    enc = tokenizer(["hello there, how", "ab", "what is seven times six? answer"], return_tensors="pt", padding=True)
    backend = HFGenerate(tokenizer, max_new_tokens=12, kv_cache=kv_cache)
    prefills = []
    original = HFGenerate.prompt_cache
    monkeypatch.setattr(HFGenerate, "prompt_cache", lambda self, m, ids, *a: prefills.append(ids.shape) or
                        original(self, m, ids, *a))  # fmt: skip
    out = {}
    for shared in (False, True):
        shared_prefix.set_shared_prefix(model, shared)
        torch.manual_seed(0)
        sampled = backend(model, enc["input_ids"], enc["attention_mask"], num_generations=4)
        greedy = backend(model, enc["input_ids"], enc["attention_mask"], num_generations=3, greedy=True)
        out[shared] = sampled, greedy
    assert prefills == [(3, enc["input_ids"].shape[1])] * 2  # the shared runs only, one row per prompt
    for a, b in zip(out[False], out[True], strict=True):
        assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_mask, b.completion_mask)
    assert not backend.shares_prompts(model, 4, 1) and not backend.shares_prompts(model, 1, 10)
    assert backend.shares_prompts(model, 4, 10)
    assert not HFGenerate(tokenizer, kv_cache=kv_cache, shared_prefill=False).shares_prompts(model, 4, 10)


def test_sampling_options_reach_the_generation_backend():
    """``sampling.shared_prefill`` is the HF backend's switch (on by default)."""
    from lit_align.rollouts.sampling import Sampler

    tokenizer = build_byte_tokenizer()
    assert Sampler().backend_for(tokenizer).shared_prefill is True
    assert Sampler({"shared_prefill": False}).backend_for(tokenizer).shared_prefill is False
