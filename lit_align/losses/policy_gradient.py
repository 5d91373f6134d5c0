"""Policy-gradient losses: advantages, per-token KL rewards, whitening, value loss, KL estimators, aggregation.

Pure functions for the online algorithms (GRPO, Dr. GRPO, DAPO, RLOO, ReMax, REINFORCE++, PPO). An algorithm
composes them: rewards -> ``*_advantages`` -> a surrogate of :mod:`lit_align.losses.objectives` (+ ``beta *
kl_k3_importance_weighted`` or ``beta * kl_k3``) -> ``aggregate_loss`` under ``loss_normalizer``; PPO:
``token_level_rewards`` -> ``gae_advantages`` -> ``whiten`` -> the clip surrogate + ``value_loss`` ->
``aggregate_loss``, with ``adaptive_kl_coef`` between rollouts.

Shapes: B sequences (B = prompts x G generations, prompt-major: the G completions of a prompt are
contiguous, as TRL orders them), G = ``num_generations``, T = completion length (right-padded),
``mask`` (B, T) is 1 on completion tokens and 0 on padding.

Left out on purpose: NaN rewards (TRL's "unscorable" completions, handled there with nanmean and
nan_to_num) are the caller's to fill. The importance weights at other levels (GSPO) and the CISPO, SAPO and VESPO
surrogates are in :mod:`lit_align.losses.objectives`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1; 0 (not NaN) for an empty mask."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def group_normalized_advantages(
    rewards: Tensor,
    num_generations: int,
    scale_rewards: Literal["group", "batch", "none"] = "group",
    eps: float = 1e-4,
) -> Tensor:
    """GRPO advantages (Shao et al. 2024, "DeepSeekMath", eq. 3; Dr. GRPO: Liu et al. 2025).

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)     scale_rewards="group"  (GRPO)
    A_i = (r_i - mean(r_group)) / (std(r_batch) + eps)     scale_rewards="batch"
    A_i =  r_i - mean(r_group)                             scale_rewards="none"   (Dr. GRPO)

    std is the unbiased (Bessel-corrected) standard deviation and eps is added to it, not to the
    variance: both as TRL 1.16 (``trl/trainer/grpo_trainer.py``,
    ``GRPOTrainer._generate_and_score_completions``, lines 2765-2787, ``trl.trainer.utils.nanstd``).
    A group of size 1 or a group of equal rewards gets zero advantage (r_i - mean = 0 exactly).

    Args:
        rewards: (B,) with B = prompts x ``num_generations``, prompt-major.
        num_generations: G, completions per prompt.
        scale_rewards: which standard deviation divides the centred rewards.
        eps: added to the standard deviation.

    Returns:
        (B,) advantages.
    """
    grouped = rewards.view(-1, num_generations)  # (B/G, G)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)  # (B,)
    if scale_rewards == "none":
        return centred
    if scale_rewards == "group":
        if num_generations > 1:
            std = grouped.std(dim=1).repeat_interleave(num_generations)
        else:  # std of one sample is undefined; TRL uses 0 (and the numerator is 0 anyway)
            std = torch.zeros_like(rewards)
    elif scale_rewards == "batch":
        std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    else:
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return centred / (std + eps)


def leave_one_out_advantages(
    rewards: Tensor, num_generations: int, normalize: bool = False, eps: float = 1e-4
) -> Tensor:
    """RLOO advantages (Ahmadian et al. 2024, "Back to Basics", eq. 5; Kool et al. 2019).

    A_i = r_i - 1/(G-1) sum_{j != i} r_j  =  G/(G-1) (r_i - mean_j r_j)

    With ``normalize=True`` the advantages are then whitened over the whole batch,
    A <- (A - mean(A)) / (std(A) + eps), std unbiased, as TRL 1.16 does when
    ``RLOOConfig.normalize_advantages=True`` (TRL's default is False; ``trl/trainer/rloo_trainer.py``,
    ``RLOOTrainer._generate_and_score_completions``, lines 1682-1696). A group of size 1 has no
    "other" samples: its advantage is defined as 0, as in TRL.

    Args:
        rewards: (B,) prompt-major, B = prompts x ``num_generations``.
        num_generations: G.
        normalize: whiten the advantages over the batch afterwards.
        eps: added to the standard deviation when normalizing.

    Returns:
        (B,) advantages.
    """
    if num_generations == 1:
        return torch.zeros_like(rewards)
    grouped = rewards.view(-1, num_generations)  # (B/G, G)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (num_generations - 1)
    advantages = (grouped - baseline).view(-1)  # (B,)
    if normalize:
        std = advantages.std() if advantages.numel() > 1 else advantages.new_zeros(())
        advantages = (advantages - advantages.mean()) / (std + eps)
    return advantages


def greedy_baseline_advantages(sample_rewards: Tensor, greedy_rewards: Tensor, num_generations: int) -> Tensor:
    """ReMax advantages (Li et al. 2023, "ReMax", Algorithm 1): A_i = r(x, y_i) - r(x, y_greedy(x)).

    Args:
        sample_rewards: (B,) rewards of the sampled completions, prompt-major.
        greedy_rewards: (B/G,) reward of each prompt's greedy completion.
        num_generations: G sampled completions per prompt.

    Returns:
        (B,) advantages.
    """
    return sample_rewards - greedy_rewards.repeat_interleave(num_generations)


def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) for token-level PPO.

    delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lam A_{t+1},   R_t = A_t + V_t

    Rewards and values are zeroed outside ``mask`` first, so the step after a completion's last
    token is terminal (V = 0). A hole in the mask (a multi-turn rollout's tool tokens) is not a step:
    V_{t+1} and A_{t+1} are those of the next masked token, the environment's tokens being part of
    the transition. Returns are computed from the raw advantages; whiten the advantages afterwards
    with :func:`whiten` if wanted.

    Args:
        rewards: (B, T) per-token rewards (e.g. -kl_coef * KL, plus the score on the last token).
        values: (B, T) value-head estimates V_t.
        mask: (B, T) completion mask.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, each (B, T), zero outside ``mask``.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    next_advantage = values.new_zeros(values.shape[0])
    next_value = values.new_zeros(values.shape[0])
    reversed_advantages = []
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        step = mask[:, t].bool()
        next_advantage = torch.where(step, delta + gamma * lam * next_advantage, next_advantage)
        next_value = torch.where(step, values[:, t], next_value)
        reversed_advantages.append(next_advantage)
    advantages = torch.stack(reversed_advantages[::-1], dim=1) * mask  # (B, T)
    return advantages, (advantages + values) * mask


def token_level_rewards(scores: Tensor, token_kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """PPO's per-token rewards for RLHF (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022, eq. 2):

    r_t = -beta kl_t                      on every completion token t < T_i
    r_T = -beta kl_T + score_i            on the row's LAST completion token T_i (its EOS, or its last
                                          token when truncated)

    with kl_t a per-token estimate of KL(pi_old || pi_ref) (k1 = log pi_old - log pi_ref: Ziegler's
    and TRL's). A row whose mask is all zero gets no reward at all.

    Args:
        scores: (B,) sequence scores (the reward model's, after any penalty).
        token_kl: (B, T) per-token KL estimate.
        mask: (B, T) completion mask (right-padded).
        beta: KL coefficient.

    Returns:
        (B, T) rewards, 0 outside ``mask``.
    """
    mask = mask.to(token_kl.dtype)
    rewards = -beta * token_kl * mask
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask.bool()).argmax(dim=1, keepdim=True)  # (B, 1) index of each row's last token
    score = (scores.to(rewards.dtype) * mask.any(dim=1)).unsqueeze(1)  # (B, 1), 0 for an empty row
    return rewards.scatter_add(1, last, score)


def adaptive_kl_coef(beta: float, kl: float, target: float, horizon: float, n_steps: int) -> float:
    """The adaptive KL controller (Ziegler et al. 2019, section 2.2), after one rollout of ``n_steps`` episodes:

    e = clip(kl / target - 1, -0.2, 0.2),    beta <- beta (1 + e n_steps / horizon)

    As ``lm-human-preferences`` (``AdaptiveKLController``) and TRL 0.11's ``AdaptiveKLController``, with
    ``kl`` the mean over the rollout of each sequence's summed KL and ``n_steps`` the rollout's sequences
    over all ranks. The paper's K_beta = 0.1 is ``n_steps / horizon``.

    Raises:
        ValueError: when the step would make beta <= 0 (``n_steps >= 5 horizon``).
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    factor = 1.0 + error * n_steps / horizon
    if factor <= 0:
        raise ValueError(f"kl_horizon {horizon} is too short for rollouts of {n_steps} sequences (beta would be <= 0)")
    return beta * factor


def whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
    convention: Literal["trl", "openrlhf"] = "trl",
) -> Tensor:
    """Masked whitening, over the masked entries of every rank together (``all_reduce`` sums a tensor over the
    data-parallel ranks; two passes, as on one process); 0 outside ``mask``. Two conventions:

        trl        (x − μ) / sqrt(var + eps),     var unbiased (n − 1; 0 for fewer than two entries)
                   TRL's ``masked_whiten`` (``trl/trainer/utils.py`` up to 0.2x, its PPOTrainer's)
        openrlhf   (x − μ) / sqrt(max(var, eps)), var the population variance (n)
                   OpenRLHF's REINFORCE++ advantage normalization (``experience_maker.py``)

    ``shift_mean=False`` adds the mean back, (x − μ) / std + μ: the spread is rescaled, the mean kept (TRL's reward
    whitening, ``whiten_rewards``). Where TRL raises for fewer than two entries this uses var = 0, and where TRL
    whitens each rank's entries alone this whitens them together.
    """

    def total(t: Tensor) -> Tensor:
        return t if all_reduce is None else all_reduce(t)

    mask = mask.to(x.dtype)
    count, summed = total(torch.stack([mask.sum(), (x * mask).sum()])).unbind()
    mean = summed / count.clamp(min=1.0)
    squares = total((((x - mean) * mask) ** 2).sum())
    if convention == "trl":
        scale = torch.rsqrt(squares / (count - 1).clamp(min=1.0) + eps)
    else:
        scale = (squares / count.clamp(min=1.0)).clamp(min=eps).rsqrt()
    whitened = (x - mean) * scale
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def loss_normalizer(mask: Tensor, aggregation: str, max_completion_length: int, all_reduce: Callable) -> Tensor:
    """A minibatch's N for :func:`aggregate_loss`, decided once for all its micro-batches: its rows
    (``sequence_mean`` / ``sequence_sum``), rows x ``max_completion_length`` (``constant``), or its trained tokens
    averaged over ranks (``token_mean``: DDP averages the gradients, so global tokens / world size)."""
    rows = torch.tensor(float(mask.shape[0]), device=mask.device)
    if aggregation == "constant":
        return rows * max_completion_length
    if aggregation in ("sequence_mean", "sequence_sum"):
        return rows
    return all_reduce(mask.sum().float(), "mean")


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float = 0.2
) -> tuple[Tensor, Tensor]:
    """Clipped PPO value loss (as in OpenAI baselines / TRL's PPOTrainer; not in the PPO paper).

    loss_t = 0.5 max((V_t - R_t)^2, (clip(V_t, V_old_t - c, V_old_t + c) - R_t)^2)

    Args:
        values: (B, T) current value estimates (with grad).
        old_values: (B, T) value estimates at rollout time.
        returns: (B, T) GAE returns.
        mask: (B, T) completion mask.
        clip_range: c.

    Returns:
        ``(per_token_loss, is_clipped)``, (B, T), 0 outside ``mask``; ``masked_mean(is_clipped)`` is
        TRL's ``val/clipfrac``. Aggregate the loss with :func:`aggregate_loss` (TRL: token mean).
    """
    clipped = torch.clamp(values, old_values - clip_range, old_values + clip_range)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped - returns) ** 2
    mask = mask.to(values.dtype)
    per_token_loss = 0.5 * torch.max(unclipped_loss, clipped_loss) * mask
    return per_token_loss, (clipped_loss > unclipped_loss) & mask.bool()


# KL estimators of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating KL divergence"),
# per token, with log r = ref_logps - logps.
def kl_k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k1 = -log r = logps - ref_logps. Unbiased, high variance, can be negative (TRL RLOO's penalty)."""
    return logps - ref_logps


def kl_k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k2 = (log r)^2 / 2. Biased, low variance, >= 0."""
    return 0.5 * (logps - ref_logps) ** 2


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 = r - 1 - log r = exp(ref - logps) - (ref - logps) - 1. Unbiased, >= 0.

    The GRPO paper's KL term (eq. 4) and TRL 1.16 GRPO's (``GRPOTrainer._compute_loss``, l. 3100-3102).
    """
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - log_ratio - 1


def kl_k3_importance_weighted(logps: Tensor, ref_logps: Tensor, log_weights: Tensor) -> Tensor:
    """k3 times the importance weight: the KL term of DeepSeek-V3.2 (2025, "Unbiased KL Estimate",
    https://arxiv.org/abs/2512.02556) and of TRL 1.16 GRPO with ``use_bias_correction_kl=True``, its default
    (``GRPOTrainer._compute_loss``, l. 3100-3105).

        kl_t = w_t * k3_t,   k3_t = r_t - 1 - log r_t,   r_t = exp(ref_t - logps_t)

    with w = exp(``log_weights``) the importance weight at the level the objective takes it
    (:func:`~lit_align.losses.objectives.importance_log_weights`): per token rho_t = exp(logps_t - old_logps_t),
    or a sequence's weight broadcast over its tokens (GSPO).

    Value: the tokens were sampled by pi_old, so rho_t k3_t estimates KL(pi || pi_ref) at the CURRENT policy
    (E_{pi_old}[rho k3] = E_pi[k3]); on-policy rho_t = 1 and kl_t = k3_t.

    Gradient: rho_t carries gradient even where its value is 1 (on-policy ``old_logps = logps.detach()``), so

        d kl_t / d logps_t = rho_t (k3_t + 1 - r_t) = rho_t (logps_t - ref_t)

    whose expectation over y_t ~ pi_old is the score-function gradient of the reverse KL(pi || pi_ref) the
    objective names (per token, given the prefix). Plain :func:`kl_k3` has d k3_t / d logps_t = 1 - r_t, whose
    expectation under pi is the gradient of the FORWARD KL(pi_ref || pi) instead (E_pi[(1 - r) grad log pi] =
    -sum_y pi_ref grad log pi). The two agree in value on-policy and differ in gradient.

    Args:
        logps: (B, T) policy log-probs (with grad).
        ref_logps: (B, T) reference log-probs.
        log_weights: (B, T) or (B, 1) log importance weights (with grad); ``logps - logps.detach()`` on-policy.

    Returns:
        (B, T) per-token KL term; mask it (or aggregate with a mask) like the surrogate.
    """
    return torch.exp(log_weights) * kl_k3(logps, ref_logps)


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    mode: Literal["sequence_mean", "token_mean", "constant", "sequence_sum"],
    max_completion_length: int | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar; the one place loss normalization is decided.

    sequence_mean: sum_i [sum_t m_it l_it / sum_t m_it] / N,  N = B         (GRPO paper; TRL "grpo")
    token_mean:    sum_it m_it l_it / N,                       N = sum m_it  (DAPO; TRL "dapo")
    constant:      sum_it m_it l_it / N,                       N = B * L     (Dr. GRPO; TRL "dr_grpo"),
                   L = ``max_completion_length``
    sequence_sum:  sum_i [sum_t m_it l_it] / N,                N = B         (LUSPO; TRL "luspo": a sequence-level
                   loss broadcast over its tokens, so times its length)

    ``normalizer`` replaces the default N. Under gradient accumulation pass the count over the
    whole accumulation window (sequences, tokens, or window sequences x L); the micro-batch losses
    then sum to exactly the full-batch loss, in all three modes. With the local default N they
    do not (except for equal-size micro-batches in "sequence_mean"/"constant" divided by the number
    of micro-batches, which is TRL's "grpo"/"dr_grpo" scaling; "token_mean" so divided is TRL's "bnpo",
    which therefore changes with accumulation, and is not offered). Under DDP, whose gradients are
    averaged over ranks, pass global count / world size (TRL "dapo" does so with ``num_items_in_batch``).

    N is clamped to at least 1, so an all-zero mask gives 0, not NaN.
    """
    mask = mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask
    if mode == "sequence_mean":
        numerator = (masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)).sum()
        default = per_token_loss.shape[0]
    elif mode == "sequence_sum":
        numerator, default = masked.sum(), per_token_loss.shape[0]
    elif mode == "token_mean":
        numerator, default = masked.sum(), mask.sum()
    elif mode == "constant":
        if max_completion_length is None and normalizer is None:
            raise ValueError("mode='constant' needs max_completion_length (or an explicit normalizer)")
        numerator = masked.sum()
        default = per_token_loss.shape[0] * (max_completion_length or 0)
    else:
        raise ValueError(f"mode must be 'sequence_mean', 'token_mean', 'constant' or 'sequence_sum', got {mode!r}")
    n = default if normalizer is None else normalizer
    return numerator / torch.as_tensor(n, dtype=masked.dtype, device=masked.device).clamp(min=1.0)
