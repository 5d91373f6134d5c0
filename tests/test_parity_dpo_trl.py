"""End-to-end parity of our DPO/IPO modules with TRL 1.16 ``DPOTrainer`` on the same batch.

Policy = tiny-llama seed 0, reference = tiny-llama seed 1 (a DIFFERENT model, so the implicit rewards
are not zero). TRL tokenizes the rows itself, collates them with its own collator (one padded block,
[chosen; rejected]) and computes the loss through its fused LM head (``add_fused_lm_head``: per-token
log-probs from hidden states, logits never built). We tokenize the same rows with
``PreferenceDataModule`` and compute through the model's ordinary forward and ``lit_align.models.logprobs``.
The token ids and completion masks are asserted identical first, then loss and TRL's logged metrics
(batch means; ``logits/*`` token-weighted) must agree within 1e-5 in fp32.

Known, deliberate difference: TRL 1.16's ``loss_type="sigmoid"`` ignores ``label_smoothing`` (we
implement conservative DPO), so sigmoid is compared at ε = 0 and cDPO against its hand formula on
TRL's own per-sequence log-probs.
"""

from __future__ import annotations

import copy
import json

import datasets
import pytest
import torch
import torch.nn.functional as F

from lit_align.algorithms.dpo import DPO
from lit_align.algorithms.ipo import IPO
from lit_align.datamodules.preference import DEMO_PREFERENCES, PreferenceDataModule
from lit_align.models.loading import load_model
from lit_align.models.logprobs import concatenate_pair

pytestmark = pytest.mark.slow  # TRL trainers

trl = pytest.importorskip("trl")
trl_utils = pytest.importorskip("trl.trainer.utils")

NUM_ROWS = 4
BETA = 0.2
ATOL = 1e-5
# Summed log-probs reach ~130 here, where one float32 ulp is 1.5e-5 > ATOL: two summation orders of the same
# values may differ by an ulp or two, so large metrics are compared to ATOL + ULPS * |value|.
ULPS = 2 * torch.finfo(torch.float32).eps
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
)


@pytest.fixture(scope="module")
def setup():
    policy, tokenizer = load_model("tiny-llama", seed=0)
    reference, _ = load_model("tiny-llama", seed=1)
    policy.eval()  # no dropout in tiny-llama either way; TRL also disables it
    reference.eval()
    with open(DEMO_PREFERENCES, encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(NUM_ROWS), f, strict=False)]
    dm = PreferenceDataModule(
        tokenizer=tokenizer, max_samples=NUM_ROWS, val_size=0, batch_size=NUM_ROWS, max_length=1024,
        max_prompt_length=None,
    )
    dm.setup("fit")
    assert not {k: v for k, v in dm.stats.items() if not k.endswith("/ok")}, dm.stats  # nothing truncated
    ours = dm.collate([dm.train_dataset[i] for i in range(NUM_ROWS)])  # dataset order, no shuffling
    return policy, reference, tokenizer, rows, ours


def trl_trainer(setup, tmp_path, loss_type: str, label_smoothing: float = 0.0):
    policy, reference, tokenizer, rows, _ = setup
    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        bf16=False,  # TrainingArguments defaults to bf16 autocast, even on CPU (it wraps the reference's forward)
        per_device_train_batch_size=NUM_ROWS,
        beta=BETA,
        loss_type=[loss_type],
        label_smoothing=label_smoothing,
        save_strategy="no",
    )
    # TRL patches the models' forward in place (fused LM head): give it copies, keep ours untouched.
    trainer = trl.DPOTrainer(
        model=copy.deepcopy(policy),
        ref_model=copy.deepcopy(reference),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    assert trainer.accelerator.mixed_precision == "no"  # fp32 on both sides
    examples = [trainer.train_dataset[i] for i in range(NUM_ROWS)]  # dataset order, no shuffling
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    inputs = trainer.data_collator([{k: e[k] for k in keys} for e in examples])
    return trainer, inputs


class FusedHeadSpy:
    """Stands in for TRL's fused-LM-head kernel and counts its calls (it is looked up at call time)."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        self.kernel = trl_utils._ChunkedLogProbFunction
        monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", self)

    def apply(self, *args):
        self.calls += 1
        return self.kernel.apply(*args)


def trl_loss_and_metrics(trainer, inputs, spy: FusedHeadSpy) -> tuple[float, dict[str, float]]:
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode].clear()
    before = spy.calls
    loss = trainer.compute_loss(trainer.model, inputs)
    assert spy.calls - before == 2  # genuine: TRL scored policy AND reference through its fused head
    return float(loss), {name: values[-1] for name, values in trainer._metrics[mode].items()}


def our_loss_and_metrics(module, batch, spy: FusedHeadSpy) -> tuple[float, dict[str, float]]:
    before = spy.calls
    with torch.no_grad():
        loss, values = module.compute_loss(batch)
    assert spy.calls == before  # genuine: ours went through the models' own forward, not TRL's kernel
    out = {}
    for name, value in values.items():
        data, weight = value if isinstance(value, tuple) else (value, torch.ones_like(value))
        out[name] = float((data.float() * weight).sum() / weight.sum())
    return float(loss), out


def assert_same_layout(trl_inputs, ours, pad_id: int) -> None:
    """TRL's [chosen; rejected] block, split and cut to our widths, is exactly our batch."""
    joint = concatenate_pair(ours, pad_id)
    assert torch.equal(trl_inputs["input_ids"], joint["input_ids"])
    assert torch.equal(trl_inputs["attention_mask"], joint["attention_mask"])
    assert torch.equal(trl_inputs["completion_mask"].bool(), joint["labels"] != -100)
    for half, side in zip(range(2), ("chosen", "rejected"), strict=True):
        rows = slice(half * NUM_ROWS, (half + 1) * NUM_ROWS)
        width = ours[f"{side}_input_ids"].shape[1]
        assert not trl_inputs["attention_mask"][rows, width:].any()  # beyond our width: padding only
        assert torch.equal(trl_inputs["input_ids"][rows, :width], ours[f"{side}_input_ids"])
        assert torch.equal(trl_inputs["completion_mask"][rows, :width].bool(), ours[f"{side}_labels"] != -100)
    assert (joint["labels"] != -100).sum(-1).min() > 0


def assert_parity(trl_result, our_result) -> None:
    (trl_loss, trl_metrics), (our_loss, our_metrics) = trl_result, our_result
    assert abs(trl_loss - our_loss) <= ATOL, (trl_loss, our_loss)
    for name in METRICS:
        bound = ATOL + ULPS * abs(trl_metrics[name])
        assert abs(trl_metrics[name] - our_metrics[name]) <= bound, (name, trl_metrics[name], our_metrics[name])
    # Non-degenerate: the reference differs from the policy, so the rewards are not all zero.
    assert abs(our_metrics["rewards/chosen"]) > 1e-3 and abs(our_metrics["rewards/rejected"]) > 1e-3


@pytest.mark.parametrize(("loss_type", "label_smoothing"), [("sigmoid", 0.0), ("hinge", 0.0), ("robust", 0.1)], ids=str)
def test_dpo_matches_trl(setup, tmp_path, monkeypatch, loss_type, label_smoothing):
    spy = FusedHeadSpy(monkeypatch)
    policy, reference, tokenizer, _, ours = setup
    trainer, inputs = trl_trainer(setup, tmp_path, loss_type, label_smoothing)
    assert_same_layout(inputs, ours, tokenizer.pad_token_id)
    module = DPO(
        policy=policy, reference_policy=reference, beta=BETA, loss_type=loss_type, label_smoothing=label_smoothing
    )
    assert_parity(trl_loss_and_metrics(trainer, inputs, spy), our_loss_and_metrics(module, ours, spy))


def test_ipo_mean_matches_trl(setup, tmp_path, monkeypatch):
    spy = FusedHeadSpy(monkeypatch)
    policy, reference, tokenizer, _, ours = setup
    trainer, inputs = trl_trainer(setup, tmp_path, "ipo")
    assert_same_layout(inputs, ours, tokenizer.pad_token_id)
    module = IPO(policy=policy, reference_policy=reference, beta=BETA, normalization="mean")
    assert_parity(trl_loss_and_metrics(trainer, inputs, spy), our_loss_and_metrics(module, ours, spy))


def test_cdpo_matches_hand_formula_on_trl_logps(setup, tmp_path, monkeypatch):
    """cDPO (Mitchell 2023): loss = mean[−(1−ε)·log σ(β·h) − ε·log σ(−β·h)], h from TRL's fused log-probs.

    TRL 1.16 sigmoid ignores ε: its loss at ε = 0.1 equals its loss at ε = 0 (checked, so that this
    test notices when TRL starts honouring it), while ours moves by ε·(log σ(βh) − log σ(−βh)) = −ε·βh.
    """
    policy, reference, _, _, ours = setup
    spy = FusedHeadSpy(monkeypatch)
    eps = 0.1
    trainer, inputs = trl_trainer(setup, tmp_path, "sigmoid", label_smoothing=eps)
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with torch.no_grad():
        logps = trainer.model(**model_inputs, labels=labels, fused_lm_head=True).log_probs.sum(-1)
        ref_logps = trainer.ref_model(**model_inputs, labels=labels, fused_lm_head=True).log_probs.sum(-1)
    (chosen, rejected), (ref_chosen, ref_rejected) = logps.chunk(2), ref_logps.chunk(2)
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    expected = (-(1 - eps) * F.logsigmoid(BETA * h) - eps * F.logsigmoid(-BETA * h)).mean()
    plain = -F.logsigmoid(BETA * h).mean()
    assert abs(float(expected - plain)) > 1e-4  # ε visibly changes the loss on this batch

    module = DPO(policy=policy, reference_policy=reference, beta=BETA, loss_type="sigmoid", label_smoothing=eps)
    our_loss, _ = our_loss_and_metrics(module, ours, spy)
    assert abs(our_loss - float(expected)) <= ATOL, (our_loss, float(expected))
    trl_loss, _ = trl_loss_and_metrics(trainer, inputs, spy)
    assert abs(trl_loss - float(plain)) <= ATOL  # TRL 1.16: label_smoothing has no effect on sigmoid
