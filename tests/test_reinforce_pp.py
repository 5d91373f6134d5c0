"""REINFORCE++ and REINFORCE++-baseline: advantages by hand on a small example (OpenRLHF's definitions, commit
3c3be62: ``experience_maker.py`` estimators ``reinforce``/``reinforce_baseline``, ``models/utils.compute_reward``),
the module end to end, its options. DDP/FSDP2 equivalence: tests/test_scaling.py (``reinforce_pp``)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.algorithms.reinforce_pp import ReinforcePP
from lit_align.losses.policy_gradient import whiten
from lit_align.losses.returns import discounted_returns, reinforce_pp_advantages
from lit_align.models.loading import load_model
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.online_helpers import fixed_rollout, length_reward, prompt_batch, prompt_datamodule, tiny_options

# 2 prompts x G = 2 completions, of 3, 2, 1 and 3 tokens.
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
SCORES = torch.tensor([1.0, 0.0, 2.0, 4.0])
KL = torch.tensor([[0.5, -0.5, 1.0], [2.0, 20.0, 9.0], [0.1, 0.0, 0.0], [0.0, 0.0, 12.0]])  # 20, 12: clipped to 10
BETA = 0.1


def by_hand(baseline: bool, gamma: float) -> torch.Tensor:
    """OpenRLHF's steps, written out with Python loops over the rows and tokens."""
    scores = SCORES.tolist()
    if baseline:  # r - mean of the prompt's rewards
        scores = [scores[0] - 0.5, scores[1] - 0.5, scores[2] - 3.0, scores[3] - 3.0]
    returns = torch.zeros(4, 3)
    for i in range(4):
        n = int(MASK[i].sum())
        rewards = [-BETA * max(-10.0, min(10.0, float(KL[i, t]))) for t in range(n)]
        rewards[n - 1] += scores[i]  # the score on the last completion token
        running = 0.0
        for t in reversed(range(n)):
            running = rewards[t] + gamma * running
            returns[i, t] = running
    values = returns[MASK.bool()]
    mean = values.mean()
    std = math.sqrt(max(float(((values - mean) ** 2).mean()), 1e-8))  # population variance, as OpenRLHF
    return (returns - mean) / std * MASK


@pytest.mark.parametrize(("baseline", "gamma"), [(False, 1.0), (False, 0.9), (True, 1.0)])
def test_advantages_by_hand(baseline, gamma):
    advantages, rewards = reinforce_pp_advantages(SCORES, KL, MASK, BETA, 2, baseline, gamma)
    torch.testing.assert_close(advantages, by_hand(baseline, gamma))
    assert rewards[1, 1].item() == pytest.approx(-BETA * 10.0 + (-0.5 if baseline else 0.0))  # clipped KL + score
    assert advantages[MASK.bool()].mean().abs() < 1e-6  # normalized over every token of the batch


def test_returns_and_normalization_literal_values():
    returns = discounted_returns(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1, 1, 0]]), gamma=0.5)
    assert returns.tolist() == [[2.0, 2.0, 0.0]]  # 1 + 0.5·2, 2; the masked 3 is no reward
    normalized = whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]]), convention="openrlhf")
    assert normalized.tolist() == [[-1.0, 1.0, 0.0]]  # mean 2, population std 1


def test_all_reduce_makes_the_normalization_global():
    """Two ranks' halves: with the sums of both ranks (what the all-reduce returns, precomputed here in the order
    whiten asks for them: counts and sums, then squared deviations), each half gets the whole's values."""
    whole = whiten(KL, MASK, convention="openrlhf")
    halves = [(KL[:2], MASK[:2].float()), (KL[2:], MASK[2:].float())]
    first = sum(torch.stack([m.sum(), (x * m).sum()]) for x, m in halves)
    mean = first[1] / first[0]
    second = sum((((x - mean) * m) ** 2).sum() for x, m in halves)
    for rank, (x, m) in enumerate(halves):
        answers = iter([first, second])
        got = whiten(x, m, all_reduce=lambda local, answers=answers: next(answers), convention="openrlhf")
        torch.testing.assert_close(got, whole[2 * rank : 2 * rank + 2])


def test_module_trains_and_logs_trl_metric_names(tmp_path):
    policy, tokenizer = load_model("tiny-llama")
    reference, _ = load_model("tiny-llama", seed=1)
    module = ReinforcePP(policy=policy, reference_policy=reference, **tiny_options(tokenizer))
    assert (module.baseline, module.kl_penalty, module.beta, module.loss_aggregation) == (
        "group_mean", "reward", 0.01, "token_mean")  # fmt: skip
    before = snapshot(module.policy)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, prompt_datamodule(tmp_path, tokenizer))
    assert changed(before, module.policy)
    tags = event_tags(trainer.logger.log_dir)
    assert {"train/reward", "train/kl", "train/clip_ratio/region_mean", "train/entropy", "train/loss"} <= tags


def test_advantages_per_token_in_the_module(tmp_path):
    """One update on a fixed rollout: the module's advantages are reinforce_pp_advantages of its scores and k1."""
    policy, tokenizer = load_model("tiny-llama")
    reference, _ = load_model("tiny-llama", seed=1)
    module = ReinforcePP(policy=policy, reference_policy=reference, baseline="none", gamma=0.95, beta=0.2,
                         **tiny_options(tokenizer, num_generations=2))  # fmt: skip
    batch = prompt_batch(tmp_path, tokenizer, n=2)
    rollout = fixed_rollout(batch, tokenizer, 2, [3, 8, 5, 2])
    module.generate_samples = lambda *args: rollout
    seen = {}
    original = module.compute_advantages
    module.compute_advantages = lambda rewards, exp: seen.setdefault("a", (original(rewards, exp), rewards, exp))[0]
    module.update(batch)
    advantages, scores, exp = seen["a"]
    assert advantages.shape == exp.loss_mask.shape
    token_kl = exp.old_logps - exp.ref_logps
    expected, _ = reinforce_pp_advantages(scores, token_kl, exp.loss_mask, 0.2, 2, False, 0.95)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(scores, torch.tensor(length_reward(None, rollout.texts)))  # scores: no KL folded in


@pytest.mark.parametrize(
    ("options", "message"),
    [({"num_generations": 1}, r"--model.num_generations=1: at least 2 with baseline=group_mean"),
     ({"baseline": "group_mean", "gamma": 0.9}, r"--model.gamma=0.9: 1 with baseline=group_mean"),
     ({"gamma": 0.0, "baseline": "none"}, r"--model.gamma=0.0: a discount in \(0, 1\]"),
     ({"baseline": "leave_one_out"}, r"--model.baseline='leave_one_out': none or group_mean")],
)  # fmt: skip
def test_options_refused_before_any_model_loads(monkeypatch, options, message):
    import lit_align.models.loading

    monkeypatch.setattr(lit_align.models.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match=message):
        ReinforcePP(policy="tiny-llama", rewards={"reward_funcs": [length_reward]}, **options)
    assert ReinforcePP.MIN_GENERATIONS == (1, "")  # the instance's bound does not leak into the class
