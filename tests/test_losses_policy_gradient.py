"""Hand-computed tests for lit_align.losses.policy_gradient, plus parity with TRL 1.16.

Where TRL's code is a callable function (``trl.trainer.utils.nanstd``) it is called; where the
computation is inline in a trainer method, the formula is transcribed below with the file, method
and line numbers of trl==1.16 so a reader can check it.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

from lit_align.losses.objectives import clip_objective
from lit_align.losses.policy_gradient import (
    adaptive_kl_coef,
    aggregate_loss,
    gae_advantages,
    greedy_baseline_advantages,
    group_normalized_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_k3_importance_weighted,
    leave_one_out_advantages,
    masked_mean,
    token_level_rewards,
    value_loss,
    whiten,
)

ATOL = 1e-6


def _close(actual, expected, atol=ATOL):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def _random_batch(batch_size=6, length=5, seed=0):
    """Random per-token tensors and a right-padded mask with lengths 1..length (one row empty)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch_size,), generator=g)
    lengths[-1] = 0
    mask = (torch.arange(length) < lengths.unsqueeze(1)).long()  # (B, T)
    x = torch.randn(batch_size, length, generator=g)
    return x, mask, g


# ----------------------------------------------------------------------------- GRPO / Dr. GRPO advantages


def test_group_normalized_advantages_by_hand():
    """rewards = [1, 2, 3 | 5, 5, 5], G = 3.

    group 1: mean 2, centred [-1, 0, 1], unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1] / (1 + 1e-4)
    group 2: all equal -> centred 0 -> advantages 0 in every mode.
    batch: mean 3.5, squared deviations 6.25 + 2.25 + 0.25 + 3 * 2.25 = 15.5, unbiased var 15.5 / 5 = 3.1
           -> [-1, 0, 1, 0, 0, 0] / (sqrt(3.1) + 1e-4)   (centring is still per group, as in TRL)
    none (Dr. GRPO): [-1, 0, 1, 0, 0, 0].
    """
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    centred = torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    _close(group_normalized_advantages(rewards, 3), centred / (1 + 1e-4))
    _close(group_normalized_advantages(rewards, 3, "batch"), centred / (math.sqrt(3.1) + 1e-4))
    _close(group_normalized_advantages(rewards, 3, "none"), centred)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_group_normalized_advantages_limits(scale_rewards):
    """Group of size 1: r - mean(r) = 0, std undefined -> advantage 0, no NaN. All-equal group -> 0."""
    single = group_normalized_advantages(torch.tensor([3.0, -2.0]), 1, scale_rewards)
    _close(single, [0.0, 0.0])
    equal = group_normalized_advantages(torch.full((4,), 0.7), 4, scale_rewards)
    _close(equal, torch.zeros(4))


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("num_generations", [1, 4])
def test_group_normalized_advantages_match_trl(scale_rewards, num_generations):
    """TRL 1.16 trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions, l. 2765-2787
    (multi_objective_aggregation="sum_then_normalize", the default), transcribed; nanstd is TRL's own."""
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(1))
    rewards[4:8] = 1.0  # one all-equal group

    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        if num_generations > 1:
            std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
            std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
        else:
            std_rewards = torch.zeros_like(rewards)
    else:
        std_rewards = nanstd(rewards).expand_as(rewards)
    expected = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        expected = expected / (std_rewards + 1e-4)
    expected = torch.nan_to_num(expected, nan=0.0)

    _close(group_normalized_advantages(rewards, num_generations, scale_rewards), expected)


# ----------------------------------------------------------------------------- RLOO, ReMax


def test_leave_one_out_advantages_by_hand():
    """rewards = [1, 2, 6 | 4, 4, 4], G = 3.

    baselines (mean of the others): (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 -> A = [-3, -1.5, 4.5];
    check: G/(G-1) (r - mean) = 1.5 * ([1, 2, 6] - 3) = [-3, -1.5, 4.5]. Equal group -> 0.
    normalize: A has mean 0, squares 9 + 2.25 + 20.25 = 31.5, unbiased var 31.5 / 5 = 6.3
               -> A / (sqrt(6.3) + 1e-4).
    """
    rewards = torch.tensor([1.0, 2.0, 6.0, 4.0, 4.0, 4.0])
    expected = torch.tensor([-3.0, -1.5, 4.5, 0.0, 0.0, 0.0])
    _close(leave_one_out_advantages(rewards, 3), expected)
    _close(leave_one_out_advantages(rewards, 3, normalize=True), expected / (math.sqrt(6.3) + 1e-4))


@pytest.mark.parametrize("normalize", [False, True])
def test_leave_one_out_group_of_one_is_zero(normalize):
    """G = 1 leaves no other sample to form a baseline: the advantage is defined as 0 (as TRL), no NaN."""
    _close(leave_one_out_advantages(torch.tensor([3.0, -1.0]), 1, normalize=normalize), [0.0, 0.0])


@pytest.mark.parametrize("normalize", [False, True])
def test_leave_one_out_advantages_match_trl(normalize):
    """TRL 1.16 trl/trainer/rloo_trainer.py, RLOOTrainer._generate_and_score_completions, l. 1682-1699,
    transcribed (no unscorable rows, so scorable_counts = G); nanstd is TRL's own."""
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    num_generations = 4
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(2))

    grouped_rewards = rewards.view(-1, num_generations)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)
    baselines = ((grouped_sum - grouped_rewards) / (scorable_counts - 1)).view(-1)
    expected = rewards - baselines
    if normalize:
        expected = (expected - torch.nanmean(expected)) / (nanstd(expected) + 1e-4)

    _close(leave_one_out_advantages(rewards, num_generations, normalize=normalize), expected)


def test_greedy_baseline_advantages_by_hand():
    """ReMax, G = 2: samples [1, 0 | 0.5, 2], greedy [0.5 | 1] -> [1-0.5, 0-0.5, 0.5-1, 2-1]."""
    advantages = greedy_baseline_advantages(torch.tensor([1.0, 0.0, 0.5, 2.0]), torch.tensor([0.5, 1.0]), 2)
    _close(advantages, [0.5, -0.5, -0.5, 1.0])


# ----------------------------------------------------------------------------- GAE, whitening


def test_gae_by_hand():
    """B = 1, T = 3, mask [1, 1, 0]; rewards [0, 1, 9], values [0.5, 0.2, 7] (padding entries ignored).

    gamma = 1, lam = 0.5; V after the last token is 0 (terminal):
      t=1: delta = 1 + 0 - 0.2 = 0.8,              A_1 = 0.8
      t=0: delta = 0 + 0.2 - 0.5 = -0.3,           A_0 = -0.3 + 0.5 * 0.8 = 0.1
      returns R = A + V = [0.6, 1.0], and 0 on padding.
    lam = 1: A_t = sum_{k>=t} r_k - V_t = [1 - 0.5, 1 - 0.2] (Monte Carlo);  lam = 0: A_t = delta_t.
    """
    rewards = torch.tensor([[0.0, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.2, 7.0]])
    mask = torch.tensor([[1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    _close(advantages, [[0.1, 0.8, 0.0]])
    _close(returns, [[0.6, 1.0, 0.0]])
    _close(gae_advantages(rewards, values, mask, lam=1.0)[0], [[0.5, 0.8, 0.0]])
    _close(gae_advantages(rewards, values, mask, lam=0.0)[0], [[-0.3, 0.8, 0.0]])


def test_gae_matches_trl_ppo_loop():
    """TRL's PPOTrainer.train (trl/trainer/ppo_trainer.py, "6. compute advantages and returns"; the
    trainer left TRL before 1.16), transcribed, on inputs already zeroed on padding. TRL zeroes values
    only after one extra position (padding_mask_p1), bootstrapping from it; we treat the step after
    the mask as terminal, so parity holds where values are zero past the mask."""
    rewards, mask, g = _random_batch()
    values = torch.randn(rewards.shape, generator=g) * mask
    rewards = rewards * mask
    gamma, lam = 0.9, 0.95

    lastgaelam = 0
    advantages_reversed = []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    expected = torch.stack(advantages_reversed[::-1], axis=1)
    expected_returns = expected + values

    advantages, returns = gae_advantages(rewards, values, mask, gamma, lam)
    _close(advantages, expected * mask)
    _close(returns, expected_returns * mask)


def test_whiten_by_hand_and_limits():
    """x = [1, 2, 3, 100], mask [1, 1, 1, 0]: mean 2, unbiased var (1 + 0 + 1) / 2 = 1
    -> [-1, 0, 1] / sqrt(1 + 1e-8), padding 0.  shift_mean=False adds the mean back: [1, 2, 3].
    One entry: x - mean = 0 -> 0.  Empty mask -> 0, no NaN."""
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    _close(whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]) / math.sqrt(1 + 1e-8))
    _close(whiten(x, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]])
    _close(whiten(x, torch.tensor([[0, 1, 0, 0]])), [[0.0, 0.0, 0.0, 0.0]])
    _close(whiten(x, torch.zeros_like(mask)), torch.zeros_like(x))


def test_whiten_matches_trl_masked_whiten():
    """TRL trl/trainer/utils.py masked_mean / masked_var(unbiased=True) / masked_whiten (TRL <= 0.2x,
    the PPO utilities), transcribed; compared on the masked entries (TRL leaves padding unmasked)."""
    x, mask, _ = _random_batch(seed=3)
    m = mask.bool()
    mean = (x * m).sum() / m.sum()
    variance = ((x - mean) ** 2 * m).sum() / m.sum() * (m.sum() / (m.sum() - 1))
    expected = (x - mean) * torch.rsqrt(variance + 1e-8)
    _close(whiten(x, mask)[m], expected[m])


def test_whiten_over_ranks_equals_whitening_everything_on_one_process():
    """Two "ranks" (threads meeting in a barrier, summing like all_reduce) whiten their halves of a batch; with
    ``all_reduce`` the result is the single-process whitening of the whole batch, without it each half is
    whitened alone (TRL's per-rank behaviour) and differs."""
    x, mask, _ = _random_batch(batch_size=8, seed=5)
    halves = [(x[:4], mask[:4]), (x[4:], mask[4:])]
    barrier, slots = threading.Barrier(2), [None, None]

    def make_all_reduce(rank):
        def all_reduce(t):
            slots[rank] = t
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()  # both read before the next call overwrites a slot
            return total

        return all_reduce

    def run(rank, shift_mean):
        out[rank] = whiten(*halves[rank], shift_mean=shift_mean, all_reduce=make_all_reduce(rank))

    out = [None, None]
    for shift_mean in (True, False):
        threads = [threading.Thread(target=run, args=(rank, shift_mean)) for rank in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _close(torch.cat(out), whiten(x, mask, shift_mean=shift_mean))
    assert not torch.allclose(torch.cat([whiten(*halves[0]), whiten(*halves[1])]), whiten(x, mask), atol=1e-3)


# ----------------------------------------------------------------------------- PPO rewards and KL control


def test_token_level_rewards_on_a_toy_sequence():
    """beta = 0.1; row 0 ends with EOS at t=2 (mask [1,1,1,0]), row 1 is truncated (mask [1,1,1,1]), row 2 is
    excluded (empty mask). k1 per token: row 0 [0.5, -0.2, 1.0, 9], row 1 [0.1, 0.2, 0.3, 0.4]; scores [2, -1, 5].

      row 0: -0.1 k1 = [-0.05, 0.02, -0.1, 0]; the score 2 lands on t=2 (the EOS): [-0.05, 0.02, 1.9, 0]
      row 1: [-0.01, -0.02, -0.03, -0.04 - 1] = [-0.01, -0.02, -0.03, -1.04] (its last token, t=3)
      row 2: nothing, not even the score: [0, 0, 0, 0]
    """
    kl = torch.tensor([[0.5, -0.2, 1.0, 9.0], [0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    rewards = token_level_rewards(torch.tensor([2.0, -1.0, 5.0]), kl, mask, beta=0.1)
    _close(rewards, [[-0.05, 0.02, 1.9, 0.0], [-0.01, -0.02, -0.03, -1.04], [0.0, 0.0, 0.0, 0.0]])
    # The sum over a row is the sequence reward the RLOO/ReMax penalty gives: score - beta * sum_t k1.
    _close(rewards.sum(1)[:2], torch.tensor([2.0 - 0.1 * 1.3, -1.0 - 0.1 * 1.0]))


def test_adaptive_kl_coef_by_hand():
    """Ziegler et al.'s defaults as in TRL 0.11 (init 0.2, target 6, horizon 10000) and a rollout of 256:
    n / horizon = 0.0256 (K_beta).
      KL 9:   e = clip(9/6 - 1) = clip(0.5) = 0.2     -> 0.2 (1 + 0.2 x 0.0256)  = 0.201024
      KL 3:   e = clip(-0.5) = -0.2                   -> 0.2 (1 - 0.00512)       = 0.198976
      KL 6.6: e = 0.1                                 -> 0.2 (1 + 0.00256)       = 0.200512
      KL 6:   e = 0                                   -> 0.2
    A horizon of 40 with 256 sequences and KL far below target would make beta negative: refused."""
    assert adaptive_kl_coef(0.2, 9.0, 6.0, 10000.0, 256) == pytest.approx(0.201024, abs=1e-12)
    assert adaptive_kl_coef(0.2, 3.0, 6.0, 10000.0, 256) == pytest.approx(0.198976, abs=1e-12)
    assert adaptive_kl_coef(0.2, 6.6, 6.0, 10000.0, 256) == pytest.approx(0.200512, abs=1e-12)
    assert adaptive_kl_coef(0.2, 6.0, 6.0, 10000.0, 256) == pytest.approx(0.2, abs=1e-12)
    beta = 0.2
    for _ in range(3):  # compounding: three rollouts far above target
        beta = adaptive_kl_coef(beta, 100.0, 6.0, 10000.0, 256)
    assert beta == pytest.approx(0.2 * 1.00512**3, abs=1e-12)
    with pytest.raises(ValueError, match="kl_horizon"):
        adaptive_kl_coef(0.2, 0.0, 6.0, 40.0, 256)


# ----------------------------------------------------------------------------- clipped surrogate, value loss


def clipped(logps, old_logps, advantages, mask=None, epsilon=0.2, epsilon_high=None):
    """The clip surrogate with per-token ratios through its one home, :func:`clip_objective`, masked."""
    if advantages.dim() == 1 and logps.dim() == 2:
        advantages = advantages.unsqueeze(1)
    loss, low, high = clip_objective(logps - old_logps, advantages, epsilon, epsilon_high)
    if mask is not None:
        loss, low, high = loss * mask, low & mask.bool(), high & mask.bool()
    return loss, low, high


def test_clip_objective_by_hand():
    """ratios [1.5, 0.5, 1.1] on both rows, A = +1 (row 0) and -1 (row 1), epsilon = 0.2,
    mask [[1, 1, 1], [1, 1, 0]].

    row 0 (A>0): -min(1.5, 1.2) = -1.2 (high-clipped), -min(0.5, 0.8) = -0.5, -min(1.1, 1.1) = -1.1
    row 1 (A<0): -min(-1.5, -1.2) = 1.5, -min(-0.5, -0.8) = 0.8 (low-clipped), third token masked -> 0
    clip_ratio/low_mean = 1/5, high_mean = 1/5, region_mean = 2/5 (over the 5 unmasked tokens).
    Gradient wrt logps: 0 where clipped, else -ratio * A: [[0, -0.5, -1.1], [1.5, 0, 0]].
    epsilon_high = 0.6 (clip-higher): row 0 token 0 is no longer clipped, loss -1.5.
    """
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]])).requires_grad_()
    old_logps = torch.zeros(2, 3)
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, low, high = clipped(logps, old_logps, advantages, mask, epsilon=0.2)
    _close(loss, [[-1.2, -0.5, -1.1], [1.5, 0.8, 0.0]])
    assert low.tolist() == [[False, False, False], [False, True, False]]
    assert high.tolist() == [[True, False, False], [False, False, False]]
    _close(masked_mean(low.float(), mask), 0.2)
    _close(masked_mean(high.float(), mask), 0.2)
    _close(masked_mean((low | high).float(), mask), 0.4)
    loss.sum().backward()
    _close(logps.grad, [[0.0, -0.5, -1.1], [1.5, 0.0, 0.0]])

    loss_high, _, high = clipped(logps, old_logps, advantages, mask, epsilon=0.2, epsilon_high=0.6)
    _close(loss_high[0, 0], -1.5)
    assert not high.any()


def test_clip_objective_on_policy_is_minus_advantage():
    """logps == old_logps -> ratio 1, nothing clipped, loss_t = -A_t (per-token advantages (B, T) too)."""
    logps = torch.randn(2, 3)
    advantages = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    loss, low, high = clipped(logps, logps, advantages)
    _close(loss, -advantages)
    assert not (low | high).any()


# TRL 1.16 trl/trainer/grpo_trainer.py, GRPOTrainer._compute_loss, transcribed for
# importance_sampling_level="token", no vLLM correction, no entropy mask, no delta, one process:
#   l. 3100-3105 KL (times coef_1 when use_bias_correction_kl, TRL's default), l. 3112-3120 clipped surrogate,
#   l. 3149-3150 KL added, l. 3153-3174 aggregation (num_items_in_batch = global token count of the generation
#   batch, l. 2498). tests/test_parity_grpo_trl.py calls the trainer itself.
def _trl_grpo_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, advantages, mask, cfg):
    loss_type, beta, eps_low, eps_high = cfg["loss_type"], cfg["beta"], cfg["eps_low"], cfg["eps_high"]
    advantages = advantages.unsqueeze(1)
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    per_token_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
    if cfg["use_bias_correction_kl"]:
        per_token_kl = per_token_kl * coef_1
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    per_token_loss = per_token_loss + beta * per_token_kl
    gradient_accumulation_steps = steps_per_generation = num_processes = 1
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / gradient_accumulation_steps
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0) / gradient_accumulation_steps
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * cfg["max_completion_length"])
        loss = loss / gradient_accumulation_steps
    else:  # dapo
        normalizer = cfg["num_items_in_batch"].clamp(min=1.0) / num_processes
        normalizer = normalizer * gradient_accumulation_steps / steps_per_generation
        loss = (per_token_loss * mask).sum() / normalizer
    is_low_clipped = (coef_1 < 1 - eps_low) & (advantages < 0)
    is_high_clipped = (coef_1 > 1 + eps_high) & (advantages > 0)

    def global_masked_mean(x):  # l. 3259-3265, one process
        return (x * mask).sum() / mask.sum().float().clamp(min=1.0)

    clip = [global_masked_mean(c.float()) for c in (is_low_clipped, is_high_clipped, is_low_clipped | is_high_clipped)]
    return loss, clip


@pytest.mark.parametrize("correction", [True, False], ids=["kl-corrected", "kl-plain"])
@pytest.mark.parametrize(
    ("loss_type", "mode"),
    [("grpo", "sequence_mean"), ("bnpo", "token_mean"), ("dr_grpo", "constant"), ("dapo", "token_mean")],
)
def test_grpo_loss_and_clip_metrics_match_trl(loss_type, mode, correction):
    """Our composition clip_objective + beta * (kl_k3_importance_weighted | kl_k3) -> aggregate_loss equals TRL's
    _compute_loss (off-policy, so the correction changes the value too)."""
    logps, mask, g = _random_batch(batch_size=8, length=6, seed=4)
    logps = logps - 2.0
    old_logps = logps + 0.5 * torch.randn(logps.shape, generator=g)
    ref_logps = logps + 0.3 * torch.randn(logps.shape, generator=g)
    advantages = torch.randn(logps.shape[0], generator=g)
    cfg = dict(loss_type=loss_type, beta=0.04, eps_low=0.2, eps_high=0.28, max_completion_length=8)
    cfg.update(num_items_in_batch=mask.sum(), use_bias_correction_kl=correction)
    expected_loss, expected_clip = _trl_grpo_loss(logps, old_logps, ref_logps, advantages, mask, cfg)

    per_token, low, high = clipped(logps, old_logps, advantages, mask, 0.2, 0.28)
    kl = kl_k3_importance_weighted(logps, ref_logps, logps - old_logps) if correction else kl_k3(logps, ref_logps)
    per_token = per_token + 0.04 * kl
    _close(aggregate_loss(per_token, mask, mode, max_completion_length=8), expected_loss)
    for ours, theirs in zip((low, high, low | high), expected_clip, strict=True):
        _close(masked_mean(ours.float(), mask), theirs)
    assert expected_clip[2] > 0  # the example does exercise clipping


def test_rloo_sequence_level_surrogate_matches_trl():
    """TRL 1.16 trl/trainer/rloo_trainer.py, RLOOTrainer._compute_loss, l. 1826-1833 and 1850-1851:
    the ratio is per sequence, exp(sum_t m_t logp_t - old_logps), clipped, then averaged over sequences."""
    per_token_logps, mask, g = _random_batch(seed=5)
    logps = (per_token_logps * mask).sum(1)
    old_logps = logps + 0.3 * torch.randn(logps.shape, generator=g)
    advantages = torch.randn(logps.shape, generator=g)
    coef_1 = torch.exp(logps - old_logps)
    coef_2 = torch.clamp(coef_1, 1 - 0.2, 1 + 0.2)
    expected = (-torch.min(coef_1 * advantages, coef_2 * advantages)).mean()
    expected_low = ((coef_1 < 1 - 0.2) & (advantages < 0)).float().mean()

    per_sequence, low, _ = clipped(logps, old_logps, advantages)
    _close(per_sequence.mean(), expected)
    _close(low.float().mean(), expected_low)


def test_value_loss_by_hand():
    """clip_range 0.2, old values 0.5 -> clip window [0.3, 0.7].

    t0: V=1.0, R=2: unclipped (1-2)^2 = 1, clipped (0.7-2)^2 = 1.69 -> 0.5 * 1.69 = 0.845, clipped
    t1: V=0.6, R=0: inside the window, both 0.36 -> 0.18, not clipped
    t2: V=1.0, R=0: unclipped 1, clipped 0.49 -> max 1 -> 0.5, not clipped (the clip would help)
    t3: masked -> 0.
    """
    values = torch.tensor([[1.0, 0.6, 1.0, 5.0]])
    old_values = torch.full((1, 4), 0.5)
    returns = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipped = value_loss(values, old_values, returns, mask, clip_range=0.2)
    _close(loss, [[0.845, 0.18, 0.5, 0.0]])
    assert clipped.tolist() == [[True, False, False, False]]


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_by_hand():
    """p = 0.5, p_ref = 0.25 for the sampled token, log r = log(p_ref / p) = -log 2:
    k1 = log 2, k2 = (log 2)^2 / 2, k3 = r - 1 - log r = 0.5 - 1 + log 2. Equal log-probs -> 0 for all."""
    logps, ref_logps = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    _close(kl_k1(logps, ref_logps), [math.log(2)])
    _close(kl_k2(logps, ref_logps), [0.5 * math.log(2) ** 2])
    _close(kl_k3(logps, ref_logps), [math.log(2) - 0.5])
    same = torch.randn(4)
    for kl in (kl_k1, kl_k2, kl_k3):
        _close(kl(same, same), torch.zeros(4))


def test_kl_k3_importance_weighted_by_hand():
    """p = 0.5, p_ref = 0.25, p_old = 0.4 for the sampled token: rho = 0.5 / 0.4 = 1.25, k3 = log 2 - 0.5, so
    kl = 1.25 (log 2 - 0.5). Its derivative in log p is rho (k3 + 1 - r) = rho (log p - log p_ref) = 1.25 log 2.

    On-policy (old = logps.detach()): the value is k3 itself, but the derivative is log p - log p_ref = log 2, where
    plain k3's is 1 - r = 0.5: the correction changes the gradient, not the value."""
    logps = torch.log(torch.tensor([0.5])).requires_grad_()
    ref_logps, old_logps = torch.log(torch.tensor([0.25])), torch.log(torch.tensor([0.4]))
    kl = kl_k3_importance_weighted(logps, ref_logps, logps - old_logps)
    _close(kl.detach(), [1.25 * (math.log(2) - 0.5)])
    (grad,) = torch.autograd.grad(kl.sum(), logps)
    _close(grad, [1.25 * math.log(2)])

    on_policy = kl_k3_importance_weighted(logps, ref_logps, logps - logps.detach())
    _close(on_policy.detach(), kl_k3(logps, ref_logps).detach())
    (grad,) = torch.autograd.grad(on_policy.sum(), logps)
    _close(grad, [math.log(2)])
    (plain,) = torch.autograd.grad(kl_k3(logps, ref_logps).sum(), logps)
    _close(plain, [0.5])
    same = torch.randn(4)  # policy = reference: 0 whatever the ratio
    _close(kl_k3_importance_weighted(same, same, torch.full((4,), -0.3)), torch.zeros(4))


def test_corrected_k3_gradient_is_the_reverse_kl_gradient():
    """Over a full categorical support, tokens drawn from p_old: E_old[grad_theta (rho k3)] = grad_theta KL(p || q),
    the reverse KL; E_p[grad_theta k3] (plain k3, on-policy) = grad_theta KL(q || p), the forward one. theta: logits."""
    g = torch.Generator().manual_seed(8)
    theta = torch.randn(7, generator=g, dtype=torch.float64).requires_grad_()
    logq = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)
    logp_old = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)
    logp = torch.log_softmax(theta, 0)

    def grad(x):
        return torch.autograd.grad(x, theta, retain_graph=True)[0]

    corrected = (logp_old.exp() * kl_k3_importance_weighted(logp, logq, logp - logp_old)).sum()  # E_old, all tokens
    reverse = (logp.exp() * (logp - logq)).sum()
    torch.testing.assert_close(grad(corrected), grad(reverse))
    plain_on_policy = (logp.exp().detach() * kl_k3(logp, logq)).sum()  # E_p of grad k3: sampling weights fixed
    forward = (logq.exp() * (logq - logp)).sum()
    torch.testing.assert_close(grad(plain_on_policy), grad(forward))
    assert not torch.allclose(grad(reverse), grad(forward))


def test_kl_k1_k3_are_unbiased_and_k3_nonnegative():
    """Expectations under p over a full categorical support: E_p[k1] = E_p[k3] = KL(p || q)
    (E_p[r] = sum q = 1, so E_p[r - 1 - log r] = E_p[-log r]); k3 >= 0 pointwise."""
    g = torch.Generator().manual_seed(6)
    logp, logq = (
        torch.log_softmax(torch.randn(7, generator=g), 0),
        torch.log_softmax(torch.randn(7, generator=g), 0),
    )
    kl = (logp.exp() * (logp - logq)).sum()
    _close((logp.exp() * kl_k1(logp, logq)).sum(), kl)
    _close((logp.exp() * kl_k3(logp, logq)).sum(), kl)
    assert (kl_k3(logp, logq) >= 0).all()


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_loss_by_hand():
    """per-token loss [[1, 2, 3], [4, 5, 6]], mask [[1, 1, 0], [1, 0, 0]]:
    sequence_mean = ((1+2)/2 + 4/1) / 2 = 2.75; token_mean = (1+2+4)/3 = 7/3;
    constant (L = 4) = 7 / (2 * 4) = 0.875; token_mean with normalizer 10 = 0.7."""
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    _close(aggregate_loss(loss, mask, "sequence_mean"), 2.75)
    _close(aggregate_loss(loss, mask, "token_mean"), 7 / 3)
    _close(aggregate_loss(loss, mask, "constant", max_completion_length=4), 0.875)
    _close(aggregate_loss(loss, mask, "token_mean", normalizer=10), 0.7)
    with pytest.raises(ValueError):
        aggregate_loss(loss, mask, "constant")


@pytest.mark.parametrize("mode", ["sequence_mean", "token_mean", "constant"])
def test_empty_mask_gives_zero_loss_and_finite_grad(mode):
    """All-zero mask: every sum is 0 and every count clamps to 1 -> loss 0, gradient 0, no NaN."""
    logps = torch.randn(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3)
    per_token, low, _ = clipped(logps, logps.detach() + 1.0, torch.tensor([1.0, -1.0]), mask)
    loss = aggregate_loss(per_token + kl_k3(logps, torch.zeros(2, 3)) * mask, mask, mode, max_completion_length=3)
    loss.backward()
    _close(loss, 0.0)
    _close(logps.grad, torch.zeros(2, 3))
    _close(masked_mean(low.float(), mask), 0.0)


def _grads(policy, features, tokens, old_logps, ref_logps, advantages, mask, mode, normalizer):
    """One micro-batch through a tiny linear "policy": logps -> surrogate + KL -> aggregate -> grads."""
    logps = torch.log_softmax(policy(features), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (b, T)
    per_token, _, _ = clipped(logps, old_logps, advantages, mask, epsilon=0.2, epsilon_high=0.28)
    per_token = per_token + 0.1 * kl_k3(logps, ref_logps)
    loss = aggregate_loss(per_token, mask, mode, max_completion_length=mask.shape[1], normalizer=normalizer)
    return torch.autograd.grad(loss, list(policy.parameters()))


@pytest.mark.parametrize("mode", ["token_mean", "constant", "sequence_mean"])
def test_gradient_accumulation_matches_full_batch(mode):
    """Micro-batches of sizes [3, 1, 2] with uneven token counts, each divided by the GLOBAL count
    (tokens / sequences x L / sequences), sum to the full-batch gradient. Dividing token_mean by each
    micro-batch's own token count (TRL "bnpo" before its / accumulation steps) does not."""
    torch.manual_seed(7)
    batch, length, dim, vocab = 6, 5, 4, 11
    policy = torch.nn.Linear(dim, vocab)
    features = torch.randn(batch, length, dim)
    tokens = torch.randint(vocab, (batch, length))
    mask = (torch.arange(length) < torch.tensor([5, 1, 3, 2, 5, 4]).unsqueeze(1)).long()
    with torch.no_grad():
        logps = torch.log_softmax(policy(features), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    old_logps = logps + 0.3 * torch.randn(batch, length)
    ref_logps = logps + 0.3 * torch.randn(batch, length)
    advantages = torch.randn(batch)
    normalizer = {"token_mean": mask.sum(), "constant": batch * length, "sequence_mean": batch}[mode]

    def run(rows, norm):
        return _grads(policy, features[rows], tokens[rows], old_logps[rows], ref_logps[rows],
                      advantages[rows], mask[rows], mode, norm)  # fmt: skip

    full = run(slice(None), None)
    micro = [run(rows, normalizer) for rows in (slice(0, 3), slice(3, 4), slice(4, 6))]
    for full_grad, *micro_grads in zip(full, *micro, strict=True):
        torch.testing.assert_close(sum(micro_grads), full_grad, atol=ATOL, rtol=0)

    if mode == "token_mean":
        local = [run(rows, None) for rows in (slice(0, 3), slice(3, 4), slice(4, 6))]
        assert not torch.allclose(sum(g[0] for g in local) / 3, full[0], atol=1e-4)
