"""The DPO loss family (lit_align/losses/dpo_family.py) against each paper's equation, computed by hand in plain Python
(``math``) on three pairs; TRL parity on SmolLM2: tests/test_parity_dpo_family_trl.py."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.algorithms.dpo import DPO
from lit_align.losses.dpo_family import LOSSES, Pair, mixture

# Three pairs: summed log-probs of chosen / rejected under the policy and the reference, and completion lengths.
CHOSEN, REJECTED = [-10.0, -22.0, -5.0], [-12.0, -18.0, -9.0]
REF_CHOSEN, REF_REJECTED = [-11.0, -21.0, -6.5], [-11.5, -19.0, -8.0]
CHOSEN_TOKENS, REJECTED_TOKENS = [4.0, 8.0, 2.0], [5.0, 6.0, 3.0]
BETA, EPS, TAU = 0.5, 0.1, 0.05
PAIR = Pair(*(torch.tensor(v) for v in (CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS)))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def per_pair(i: int) -> dict[str, float]:
    c, r = CHOSEN[i] - REF_CHOSEN[i], REJECTED[i] - REF_REJECTED[i]
    h, b = c - r, BETA
    hn = c / CHOSEN_TOKENS[i] - r / REJECTED_TOKENS[i]
    x, m = b * h, sig(b * h / TAU)
    return {
        "sigmoid": -logsig(b * h),
        "hinge": max(0.0, 1 - b * h),
        "ipo": (hn - 1 / (2 * b)) ** 2,
        "exo_pair": sig(x) * (logsig(x) - math.log(1 - EPS)) + sig(-x) * (logsig(-x) - math.log(EPS)),
        "nca_pair": -logsig(b * c) - 0.5 * logsig(-b * c) - 0.5 * logsig(-b * r),
        "robust": ((1 - EPS) * -logsig(x) - EPS * -logsig(-x)) / (1 - 2 * EPS),
        "bco_pair": -logsig(b * c) - logsig(-b * r),
        "sppo_hard": (c - 1 / (2 * b)) ** 2 + (r + 1 / (2 * b)) ** 2,
        "apo_zero": (1 - sig(b * c)) + sig(b * r),
        "apo_down": sig(b * c) + (1 - sig(b * (c - r))),
        "discopop": (1 - m) * -logsig(x) + m * math.exp(-x),
        "sigmoid_norm": -logsig(b * hn),
    }


@pytest.mark.parametrize("name", [n for n in LOSSES if n not in ("aot", "aot_unpaired", "sft")])
def test_each_pairwise_loss_by_hand(name):
    knobs = {"label_smoothing": EPS} if name in ("robust", "exo_pair") else {}
    if name == "discopop":
        knobs = {"discopop_tau": TAU}
    expected = [per_pair(i)[name] for i in range(3)]
    torch.testing.assert_close(LOSSES[name](PAIR, BETA, **knobs), torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_aot_sorts_within_the_batch_by_hand():
    """AOT: the i-th smallest policy log-ratio log π(y_w) − log π(y_l) against the i-th smallest reference one."""
    policy = sorted(c - r for c, r in zip(CHOSEN, REJECTED, strict=True))  # [-4, 2, 4]
    ref = sorted(c - r for c, r in zip(REF_CHOSEN, REF_REJECTED, strict=True))  # [-2, 0.5, 1.5]
    deltas = [p - q for p, q in zip(policy, ref, strict=True)]
    expected = [-(1 - EPS) * logsig(BETA * d) - EPS * logsig(-BETA * d) for d in deltas]
    torch.testing.assert_close(LOSSES["aot"](PAIR, BETA, label_smoothing=EPS), torch.tensor(expected))
    chosen = sorted(c - rc for c, rc in zip(CHOSEN, REF_CHOSEN, strict=True))
    rejected = sorted(r - rr for r, rr in zip(REJECTED, REF_REJECTED, strict=True))
    unpaired = [-logsig(BETA * (c - r)) for c, r in zip(chosen, rejected, strict=True)]
    torch.testing.assert_close(LOSSES["aot_unpaired"](PAIR, BETA), torch.tensor(unpaired))


def test_sft_is_the_chosen_token_mean_nll_and_a_mixture_weighs_means():
    nll = -sum(CHOSEN) / sum(CHOSEN_TOKENS)  # 37 / 14
    assert LOSSES["sft"](PAIR, BETA).tolist() == pytest.approx([nll] * 3)
    total, parts = mixture(PAIR, BETA, ["sigmoid", "sft"], [1.0, 0.5])
    sigmoid = sum(per_pair(i)["sigmoid"] for i in range(3)) / 3
    assert float(total) == pytest.approx(sigmoid + 0.5 * nll) and float(parts["sft"]) == pytest.approx(nll)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"loss_type": "kto"}, r"--model.loss_type='kto': one of sigmoid, hinge, ipo"),
     ({"loss_type": ["sigmoid", "sigmoid"]}, r"each loss type once"),
     ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, r"--model.loss_weights=\[1.0\]: one weight per loss"),
     ({"loss_type": "exo_pair"}, r"--model.label_smoothing=0.0: exo_pair needs ε > 0"),
     ({"loss_type": "hinge", "label_smoothing": 0.1}, r"--model.label_smoothing=0.1: applies to sigmoid, robust"),
     ({"discopop_tau": 0.1}, r"--model.discopop_tau=0.1: applies to discopop"),
     ({"sync_ref_model": True, "precompute_reference": True}, r"--model.sync_ref_model=True: a precomputed reference"),
     ({"sync_ref_model": True, "lora_r": 4}, r"--model.sync_ref_model=True: with LoRA the reference is the policy"),
     ({"ref_model_mixup_alpha": 0.0}, r"--model.ref_model_mixup_alpha=0.0: α in \(0, 1\]")],
)  # fmt: skip
def test_options_refused_before_any_model_loads(monkeypatch, options, message):
    import lit_align.models.loading

    monkeypatch.setattr(lit_align.models.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match=message):
        DPO(policy="tiny-llama", **options)
