"""Distillation: how far a student's next-token distribution is from a teacher's.

Shapes: (..., V) log-probabilities over a vocabulary of V (or over the teacher's top k), (...) per token.

Generalized Jensen-Shannon divergence (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes", GKD, https://arxiv.org/abs/2306.13649, eq. 1), with β as TRL 1.16 defines it:

    m = β·p_teacher + (1 − β)·p_student
    JSD_β = β·KL(p_teacher ‖ m) + (1 − β)·KL(p_student ‖ m)        0 < β < 1
    JSD_0 = KL(p_teacher ‖ p_student)      (forward KL, the limit's direction as TRL takes it: supervised KD)
    JSD_1 = KL(p_student ‖ p_teacher)      (reverse KL, mode-seeking: MiniLLM, on-policy distillation)

(The formula itself is 0 at β = 0 and 1, where m equals one of the two; TRL, and this module, take those two ends as
the KLs written above.) Temperature is applied by the caller, to both models' logits before the log-softmax.

Top-k (``top_k_logps``): both distributions restricted to the teacher's k most likely tokens and renormalized there;
the divergence is then taken over those k. It costs (tokens x k) of teacher memory instead of a second LM head pass,
and drops the tail the teacher gives less than its k-th token.

Sampled reverse KL (on-policy distillation as verl, NeMo-RL and slime run it, Lu & Thinking Machines 2025): per sampled
token ``k1 = log π_student(y_t) − log π_teacher(y_t)``, whose expectation under the student is KL(π_student ‖
π_teacher) of that position; its negative is a per-token advantage for the policy-gradient objectives.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kl(p_logps: Tensor, q_logps: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) over the last dim, with 0·log 0 = 0 (a token p gives no mass)."""
    p = p_logps.exp()
    return torch.where(p > 0, p * (p_logps - q_logps), torch.zeros_like(p)).sum(-1)


def generalized_jsd(student_logps: Tensor, teacher_logps: Tensor, beta: float) -> Tensor:
    """JSD_β of the module docstring per position, from (..., V) log-probs of the student and the teacher."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1] (0: forward KL, 1: reverse KL), got {beta}")
    if beta == 0.0:
        return kl(teacher_logps, student_logps)
    if beta == 1.0:
        return kl(student_logps, teacher_logps)
    mixture = torch.logaddexp(student_logps + torch.log1p(torch.tensor(-beta)), teacher_logps + torch.log(
        torch.tensor(beta)))  # fmt: skip
    return beta * kl(teacher_logps, mixture) + (1 - beta) * kl(student_logps, mixture)


def top_k_logps(student_logps: Tensor, teacher_logps: Tensor, top_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Both (..., V) distributions restricted to ``top_ids`` (..., k), the teacher's k most likely tokens, and
    renormalized over them: ``(student (..., k), teacher (..., k))`` log-probs."""
    student = student_logps.gather(-1, top_ids)
    teacher = teacher_logps.gather(-1, top_ids)
    return renormalized(student), renormalized(teacher)


def renormalized(logps: Tensor) -> Tensor:
    """Log-probs of a subset of tokens renormalized to sum to 1 over the last dim."""
    return logps - torch.logsumexp(logps, dim=-1, keepdim=True)


def sampled_reverse_kl(student_logps: Tensor, teacher_logps: Tensor) -> Tensor:
    """``k1 = log π_student(y_t) − log π_teacher(y_t)`` per sampled token, from both models' log-probs of it."""
    return student_logps - teacher_logps
