"""TRL 1.16's DPO loss family (``DPOConfig.loss_type``), one pure function per loss, each with its paper's equation.

Every function takes a :class:`Pair` (the pair's summed completion log-probs under the policy and the reference, and
the completion lengths) and β, and returns the per-pair losses (B,); a mixture is Σ_k w_k · mean(losses_k) (TRL's
``loss_weights``). Notation: c = log π(y_w) − log π_ref(y_w) and r = log π(y_l) − log π_ref(y_l) the chosen and
rejected log-ratios, h = c − r, σ the logistic function, ε = ``label_smoothing``, |y| a completion's token count.
The implicit rewards the module logs are β·c and β·r for every loss type, as TRL logs them.

The batch-level losses (``aot``, ``aot_unpaired``: sorted within the batch; ``sft``: a token mean over the batch)
depend on which pairs share a batch, in TRL as here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_align.losses.preference import dpo_loss, hinge_loss, robust_dpo_loss


@dataclass(frozen=True)
class Pair:
    """A batch of pairs: summed completion log-probs (B,) and completion token counts (B,)."""

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor

    @property
    def chosen_logratios(self) -> Tensor:
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> Tensor:
        return self.rejected - self.ref_rejected


def sigmoid(p: Pair, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): −log σ(β·h); with ε > 0 conservative DPO, −(1−ε)·log σ(βh) − ε·log σ(−βh)
    (TRL 1.16 ignores ε here: :func:`~lit_align.losses.preference.dpo_loss`)."""
    return dpo_loss(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, beta, label_smoothing)[0]


def hinge(p: Pair, beta: float) -> Tensor:
    """SLiC / RSO hinge: max(0, 1 − β·h)."""
    return hinge_loss(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, beta)[0]


def robust(p: Pair, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024): [(1−ε)·(−log σ(βh)) − ε·(−log σ(−βh))] / (1 − 2ε)."""
    return robust_dpo_loss(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, beta, label_smoothing)[0]


def ipo(p: Pair, beta: float, length_normalized: bool = True) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17, β the paper's τ): (h − 1/(2β))², the loss pulling the log-ratio gap toward
    1/(2β). With ``length_normalized`` (TRL's form, which its authors confirmed to TRL) h = c/|y_w| − r/|y_l|, so β's
    scale does not depend on the responses' length; without it the paper's h = c − r of summed log-probs."""
    if length_normalized:
        h = p.chosen_logratios / p.chosen_tokens.clamp(min=1) - p.rejected_logratios / p.rejected_tokens.clamp(min=1)
    else:
        h = p.chosen_logratios - p.rejected_logratios
    return (h - 1 / (2 * beta)) ** 2


def exo_pair(p: Pair, beta: float, label_smoothing: float = 1e-3) -> Tensor:
    """EXO (Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment", eq. 16, K = 2):
    KL(p_θ ‖ p_rh) with p_θ = softmax(β·(c, r)) = (σ(βh), σ(−βh)) and the smoothed labels p_rh = (1 − ε, ε):

        σ(βh)·(log σ(βh) − log(1 − ε)) + σ(−βh)·(log σ(−βh) − log ε)      (ε > 0)
    """
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"exo_pair needs label_smoothing in (0, 1) (its log ε), got {label_smoothing}")
    logits = beta * (p.chosen_logratios - p.rejected_logratios)
    return torch.sigmoid(logits) * (F.logsigmoid(logits) - math.log1p(-label_smoothing)) + torch.sigmoid(-logits) * (
        F.logsigmoid(-logits) - math.log(label_smoothing))  # fmt: skip


def nca_pair(p: Pair, beta: float) -> Tensor:
    """NCA (Chen et al. 2024, "Noise Contrastive Alignment", eq. 12 for K = 2 as TRL): −log σ(βc) − ½·log σ(−βc) −
    ½·log σ(−βr)."""
    c, r = beta * p.chosen_logratios, beta * p.rejected_logratios
    return -F.logsigmoid(c) - 0.5 * F.logsigmoid(-c) - 0.5 * F.logsigmoid(-r)


def bco_pair(p: Pair, beta: float) -> Tensor:
    """BCO on pairs (Jung et al. 2024, "Binary Classifier Optimization", without the reward shift, as TRL):
    −log σ(βc) − log σ(−βr)."""
    return -F.logsigmoid(beta * p.chosen_logratios) - F.logsigmoid(-beta * p.rejected_logratios)


def sppo_hard(p: Pair, beta: float) -> Tensor:
    """SPPO with hard probabilities (Wu et al. 2024, eq. 4.7 with P = 1 for the winner, 0 for the loser):
    (c − 1/(2β))² + (r + 1/(2β))²."""
    return (p.chosen_logratios - 0.5 / beta) ** 2 + (p.rejected_logratios + 0.5 / beta) ** 2


def _sorted_sigmoid(delta: Tensor, beta: float, label_smoothing: float) -> Tensor:
    return -F.logsigmoid(beta * delta) * (1 - label_smoothing) - F.logsigmoid(-beta * delta) * label_smoothing


def aot(p: Pair, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport"): the
    batch's sorted policy log-ratios log π(y_w) − log π(y_l) against the sorted reference ones, Δ_(i) = sort(ρ)_i −
    sort(ρ_ref)_i, then −(1 − ε)·log σ(βΔ) − ε·log σ(−βΔ)."""
    delta = torch.sort(p.chosen - p.rejected).values - torch.sort(p.ref_chosen - p.ref_rejected).values
    return _sorted_sigmoid(delta, beta, label_smoothing)


def aot_unpaired(p: Pair, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """AOT, unpaired: Δ_(i) = sort(c)_i − sort(r)_i (chosen and rejected log-ratios sorted separately), then as
    :func:`aot`."""
    delta = torch.sort(p.chosen_logratios).values - torch.sort(p.rejected_logratios).values
    return _sorted_sigmoid(delta, beta, label_smoothing)


def apo_zero(p: Pair, beta: float) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization", eq. 7): when the chosen answers are
    better than the model's: (1 − σ(βc)) + σ(βr)."""
    return 1 - torch.sigmoid(beta * p.chosen_logratios) + torch.sigmoid(beta * p.rejected_logratios)


def apo_down(p: Pair, beta: float) -> Tensor:
    """APO-down (eq. 8): when the chosen answers are worse than the model's: σ(βc) + (1 − σ(β(c − r)))."""
    c = p.chosen_logratios
    return torch.sigmoid(beta * c) + 1 - torch.sigmoid(beta * (c - p.rejected_logratios))


def discopop(p: Pair, beta: float, discopop_tau: float = 0.05) -> Tensor:
    """DiscoPOP (Chris Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for LLMs", eq. 5), the
    log-ratio modulated loss: with x = βh and m = σ(x/τ), (1 − m)·(−log σ(x)) + m·e^(−x)."""
    logits = beta * (p.chosen_logratios - p.rejected_logratios)
    modulation = torch.sigmoid(logits / discopop_tau)
    return -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation


def sft(p: Pair, beta: float) -> Tensor:
    """The chosen completions' negative log-likelihood, a token mean over the batch (RPO: Pang et al. 2024, with
    ``sigmoid``): −Σ_i log π(y_w,i) / Σ_i |y_w,i|, returned as B equal per-pair values (their mean is the loss)."""
    nll = -p.chosen.sum() / p.chosen_tokens.sum().clamp(min=1)
    return nll.expand(p.chosen.shape[0])


def sigmoid_norm(p: Pair, beta: float) -> Tensor:
    """DPO on length-normalized log-ratios: −log σ(β·(c/|y_w| − r/|y_l|))."""
    h = p.chosen_logratios / p.chosen_tokens.clamp(min=1) - p.rejected_logratios / p.rejected_tokens.clamp(min=1)
    return -F.logsigmoid(beta * h)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "sigmoid": sigmoid, "hinge": hinge, "ipo": ipo, "exo_pair": exo_pair, "nca_pair": nca_pair, "robust": robust,
    "bco_pair": bco_pair, "sppo_hard": sppo_hard, "aot": aot, "aot_unpaired": aot_unpaired, "apo_zero": apo_zero,
    "apo_down": apo_down, "discopop": discopop, "sft": sft, "sigmoid_norm": sigmoid_norm,
}  # fmt: skip
USES_LABEL_SMOOTHING = ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired")


def mixture(p: Pair, beta: float, loss_types: list[str], weights: list[float], label_smoothing: float = 0.0,
            discopop_tau: float = 0.05) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """Σ_k w_k · mean(losses_k) (TRL's ``loss_weights``), and each loss type's mean (unweighted) by name."""
    total, parts = torch.zeros((), device=p.chosen.device), {}
    for name, weight in zip(loss_types, weights, strict=True):
        knobs = {"label_smoothing": label_smoothing} if name in USES_LABEL_SMOOTHING else {}
        if name == "discopop":
            knobs = {"discopop_tau": discopop_tau}
        parts[name] = LOSSES[name](p, beta, **knobs).mean()
        total = total + weight * parts[name]
    return total, parts
