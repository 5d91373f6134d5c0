"""KTO module: parity with TRL 1.16 KTOTrainer, weight advice, a 3-step fit, and the cross-rank KL under DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from lit_align.algorithms.kto import KTO, weight_advice
from lit_align.datamodules.binary import BinaryFeedbackDataModule
from lit_align.datamodules.tokenize import IGNORE_INDEX
from lit_align.models.loading import load_model
from tests.conftest import REPO, write_jsonl
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.parity import demo_binary_rows as demo_rows
from tests.parity import plain_binary_rows as plain_rows
from tests.parity import weighted_means

TOL = 1e-5


def truncating_rows() -> list[dict]:
    """Plain-text rows that max_length=64 truncates: long completions (80+ bytes = tokens) after prompts of 8 to 46
    tokens, so a completion cut to fit its own long prompt meets a shorter prompt in its KL pair."""
    rows = plain_rows(8)
    for i, row in enumerate(rows):
        row["prompt"] = (row["prompt"] + " Please explain.")[: 8 + 38 * (i % 2)].ljust(8 + 38 * (i % 2), ".")
        row["completion"] = (row["completion"] * 8)[:80 + 3 * i]
    return rows


# --- parity with TRL ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "policy_seed", "ref_seed", "loss_type", "max_length"),
    [
        (demo_rows(8), 0, 1, "kto", 512),  # conversational; this reference gives a negative KL, clamped to 0
        (plain_rows(8), 1, 0, "kto", 512),  # plain text; swapped seeds give z > 0, so the KL term is live
        (demo_rows(8), 0, 1, "apo_zero_unpaired", 512),
        (truncating_rows(), 1, 0, "kto", 64),  # completions truncated; KL pairs cut once, from the uncut completion
    ],
    ids=["chat-z_clamped", "text-z_positive", "apo_zero_unpaired", "text-truncated"],
)
@pytest.mark.slow  # a TRL trainer
def test_parity_with_trl_kto_trainer(tmp_path, rows, policy_seed, ref_seed, loss_type, max_length):
    """Same tiny policy and reference, the same first batch (token-identical, with TRL's KL pairs): TRL's loss,
    KL, rewards/logps metrics and every parameter gradient match ours within 1e-5 in fp32. At max_length=64 the
    completions are truncated, and a completion cut for its own long prompt makes a longer KL sequence with the
    next, shorter prompt (TRL cuts the KL pair once, from the uncut completion)."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    if trl.__version__ != "1.16.0":
        pytest.skip(f"parity is pinned to TRL 1.16.0, found {trl.__version__}")
    from trl import KTOConfig, KTOTrainer

    beta, weights, batch_size = 0.1, (1.3, 0.8), 4
    trl_policy, tokenizer = load_model("tiny-llama", seed=policy_seed)  # TRL patches its models' forward:
    trl_ref, _ = load_model("tiny-llama", seed=ref_seed)  # ours get their own identical copies
    args = KTOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=batch_size, report_to="none", use_cpu=True,
        max_length=max_length, beta=beta, desirable_weight=weights[0], undesirable_weight=weights[1],
        loss_type=loss_type,
        save_strategy="no", bf16=False,  # transformers 5 defaults to bf16 autocast where supported, CPU included
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = KTOTrainer(trl_policy, trl_ref, args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer)  # fmt: skip
    trl_batch = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer.compute_loss(trainer.model, trl_batch)
    trl_loss.backward()
    mode = "train" if trainer.model.training else "eval"
    trl_metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}

    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    dm = BinaryFeedbackDataModule(
        tokenizer=tokenizer, data_path=str(path), val_size=0, batch_size=batch_size, max_length=max_length,
        max_prompt_length=None,
    )  # fmt: skip
    dm.setup("fit")
    if max_length == 64:
        assert dm.stats["train/completion_truncated"] == len(rows)
        kl_lengths = dm.collate([dm.train_dataset[i] for i in range(batch_size)])["kl_attention_mask"].sum(-1)
        prompt_lengths = [len(dm.train_dataset[i]["prompt_ids"]) for i in range(batch_size)]
        assert kl_lengths.tolist() == [64] * batch_size  # every KL pair fills max_length, as in TRL
        assert min(prompt_lengths) < max(prompt_lengths)  # short prompts meet completions cut for long ones
    batch = dm.collate([dm.train_dataset[i] for i in range(batch_size)])  # TRL samples sequentially
    assert batch["is_desirable"].tolist() == trl_batch["label"].tolist()
    for ours, theirs in (("", ""), ("kl_", "KL_")):
        if loss_type == "apo_zero_unpaired" and ours:
            continue  # TRL builds no KL pairs for this loss
        assert torch.equal(batch[f"{ours}input_ids"], trl_batch[f"{theirs}input_ids"])
        assert torch.equal(batch[f"{ours}attention_mask"], trl_batch[f"{theirs}attention_mask"])
        assert torch.equal((batch[f"{ours}labels"] != IGNORE_INDEX).long(), trl_batch[f"{theirs}completion_mask"])

    policy, _ = load_model("tiny-llama", seed=policy_seed)
    reference, _ = load_model("tiny-llama", seed=ref_seed)
    module = KTO(policy=policy, reference_policy=reference, beta=beta, loss_type=loss_type, desirable_weight=weights[0],
                 undesirable_weight=weights[1])  # fmt: skip
    loss, values = module.compute_loss(batch)
    loss.backward()
    ours = weighted_means(values)
    assert abs(loss.item() - trl_loss.item()) < TOL
    for name in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert abs(ours[name] - trl_metrics[name]) < TOL * max(1.0, abs(trl_metrics[name])), name
    for name in ("logits/chosen", "logits/rejected"):
        assert abs(ours[name] - trl_metrics[name]) < TOL, name
    if loss_type == "kto" and policy_seed == 1:
        assert ours["kl"] > 0.1  # the KL term is really exercised in this case
    grads = dict(trainer.model.named_parameters())
    for name, param in module.policy.named_parameters():
        torch.testing.assert_close(param.grad, grads[name].grad, atol=TOL, rtol=0, msg=name)


# --- weight advice --------------------------------------------------------------------------------------


def test_weight_advice_hand_computed():
    """30 desirable, 10 undesirable, λ = 1, 1: ratio 3 > 4/3. λ_D·30/10 ∈ [1, 4/3] ⇔ λ_D ∈ [1/3, 4/9];
    30/(λ_U·10) ∈ [1, 4/3] ⇔ λ_U ∈ [2.25, 3]. In range (λ_U = 2.5, ratio 1.2) or balanced: no advice."""
    advice = weight_advice(30, 10, 1.0, 1.0)
    assert "desirable_weight in [0.333, 0.444]" in advice and "undesirable_weight in [2.25, 3]" in advice
    assert weight_advice(30, 10, 1.0, 2.5) is None
    assert weight_advice(10, 10, 1.0, 1.0) is None
    assert "= 0.500" in weight_advice(10, 10, 1.0, 2.0)  # balanced data, but λ_U = 2 halves the ratio
    assert "no undesirable examples" in weight_advice(5, 0, 1.0, 1.0)


# --- a short fit ----------------------------------------------------------------------------------------


def test_three_step_fit(tmp_path):
    """3 optimizer steps on tiny-llama: policy changes, reference does not, TRL's metric names reach TensorBoard
    for train and val, and the imbalanced demo slice (23 desirable / 13 undesirable) triggers the weight advice."""
    policy, tokenizer = load_model("tiny-llama", seed=0)
    module = KTO(policy=policy, learning_rate=1e-3, warmup_ratio=0.0)
    before, ref_before = snapshot(module.policy), snapshot(module.reference)
    dm = BinaryFeedbackDataModule(
        tokenizer=tokenizer, max_samples=40, val_size=4, batch_size=4, max_length=128, max_prompt_length=64
    )
    trainer = tiny_trainer(tmp_path, max_steps=3, val_check_interval=3, enable_checkpointing=False)
    with pytest.warns(UserWarning, match=r"KTO: with 23 desirable and 13 undesirable"):
        trainer.fit(module, dm)
    assert trainer.global_step == 3
    assert all(not torch.equal(v, before[k]) for k, v in module.policy.state_dict().items())
    assert not changed(ref_before, module.reference)
    tags = event_tags(tmp_path)
    for name in ("loss", *KTO.METRICS):
        assert f"train/{name}" in tags and f"val/{name}" in tags, name
    val = trainer.callback_metrics
    torch.testing.assert_close(val["val/rewards/margins"], val["val/rewards/chosen"] - val["val/rewards/rejected"])


# --- DDP: the KL reference point is the cross-rank mean -----------------------------------------------


DDP_SCRIPT = r'''
import json, os, sys
import lightning as L
import torch
from lit_align.datamodules.binary import BinaryFeedbackDataModule
from lit_align.algorithms.kto import KTO
from lit_align.models.logprobs import sequence_logps
from lit_align.models.loading import load_model
from tests.conftest import REPO, write_jsonl
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.parity import demo_binary_rows as demo_rows
from tests.parity import plain_binary_rows as plain_rows
from tests.parity import weighted_means

class Probe(KTO):
    """Records, per step, this rank's own KL mean (computed directly here) and the z the loss used."""
    def kl_estimate(self, batch, ref_kl):
        z = super().kl_estimate(batch, ref_kl)
        args = batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"]
        with torch.no_grad():
            local = (sequence_logps(self.policy, *args).sum - sequence_logps(self.reference, *args).sum).mean()
        self.records.append({"local": local.item(), "z": z.item(), "training": self.training})
        return z

if __name__ == "__main__":
    data, out = sys.argv[1], sys.argv[2]
    policy, tokenizer = load_model("tiny-llama", seed=1)
    reference, _ = load_model("tiny-llama", seed=0)
    module = Probe(policy=policy, reference_policy=reference, learning_rate=1e-3, warmup_ratio=0.0)
    module.records = []
    dm = BinaryFeedbackDataModule(tokenizer=tokenizer, data_path=data, val_size=0, batch_size=2, max_length=128,
                                  max_prompt_length=64)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=out)
    trainer.fit(module, dm)
    logged = {k: v.item() for k, v in trainer.callback_metrics.items()}
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump({"records": module.records, "logged": logged}, f)
'''


@pytest.mark.slow
def test_ddp_kl_is_cross_rank_mean(tmp_path):
    """2 CPU processes (gloo), different rows on each rank: at every step the z both ranks use equals
    max(0, mean of the two ranks' local KL means), each local mean computed on its own rank directly; the local
    means differ, z > 0 at some step, and train/kl logs that z. One undesirable row in 8 means some rank batch has no
    undesirable example while the other rank's has one: the step-synced metrics must not hang on it."""
    rows = demo_rows(8)
    for i, row in enumerate(rows):
        row["label"] = i != 3
    data = write_jsonl(tmp_path / "ddp.jsonl", rows)
    script = tmp_path / "ddp_kto.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(script), str(data), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    steps = list(zip(ranks[0]["records"], ranks[1]["records"], strict=True))
    assert len(steps) == 2 and all(a["training"] and b["training"] for a, b in steps)
    for a, b in steps:
        expected = max(0.0, (a["local"] + b["local"]) / 2)
        assert abs(a["local"] - b["local"]) > 1e-3
        assert abs(a["z"] - expected) < 1e-5 and abs(b["z"] - expected) < 1e-5
    assert any(a["z"] > 1e-3 for a, _ in steps)  # the clamp at 0 does not make the comparison vacuous
    assert abs(ranks[0]["logged"]["train/kl"] - steps[-1][0]["z"]) < 1e-5
