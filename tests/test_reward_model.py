"""Reward model: parity with TRL 1.16 ``RewardTrainer``, last-token reading with pad == EOS, margins, a smoke fit.

Parity: tiny-llama (sequence classification, seed 0), the first demo pairs tokenized by TRL (chat
template over prompt + completion) and by ``PreferenceDataModule``; TRL's collated [chosen; rejected]
block is asserted identical to ours first, then the loss and TRL's metrics must agree within 1e-5.
tiny-llama's pad token differs from EOS, so Hugging Face's pooling and ours read the same token there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import datasets
import pytest
import torch

from lit_align.algorithms.reward_model import RewardModel, last_token_rewards
from lit_align.commands.cli import run
from lit_align.datamodules.preference import DEMO_PREFERENCES, PreferenceDataModule
from lit_align.datamodules.tokenize import DataError
from lit_align.models.loading import load_model
from lit_align.models.logprobs import concatenate_pair
from lit_align.reference.mixin import ReferenceMixin

REPO = Path(__file__).resolve().parents[1]
NUM_ROWS = 4
ATOL = 1e-5
COMPARED = ("accuracy", "margin", "mean_reward", "min_reward", "max_reward")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup():
    model, tokenizer = load_model("tiny-llama", kind="sequence_classification", seed=0)
    with open(DEMO_PREFERENCES, encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(NUM_ROWS), f, strict=False)]
    for i, row in enumerate(rows):
        row["margin"] = 0.5 * i - 0.25
    return model, tokenizer, rows


def our_batch(tokenizer, rows, tmp_path) -> dict[str, torch.Tensor]:
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    dm = PreferenceDataModule(
        tokenizer=tokenizer, data_path=str(path), val_size=0, batch_size=NUM_ROWS, max_length=1024,
        max_prompt_length=None,
    )
    dm.setup("fit")
    return dm.collate([dm.train_dataset[i] for i in range(len(rows))])


@pytest.mark.slow  # a TRL trainer
@pytest.mark.parametrize(("with_margin", "center"), [(False, None), (True, 0.01)], ids=str)
def test_reward_model_matches_trl(setup, tmp_path, with_margin, center):
    trl = pytest.importorskip("trl")
    model, tokenizer, rows = setup
    rows = rows if with_margin else [{k: v for k, v in r.items() if k != "margin"} for r in rows]
    ours = our_batch(tokenizer, rows, tmp_path)
    assert ("margin" in ours) == with_margin
    args = trl.RewardConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=NUM_ROWS,
        center_rewards_coefficient=center, save_strategy="no",
    )  # fmt: skip
    trainer = trl.RewardTrainer(
        model=copy.deepcopy(model),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    keys = ("chosen_ids", "rejected_ids", "margin") if with_margin else ("chosen_ids", "rejected_ids")
    inputs = trainer.data_collator([{k: trainer.train_dataset[i][k] for k in keys} for i in range(NUM_ROWS)])
    joint = concatenate_pair(ours, tokenizer.pad_token_id)
    assert torch.equal(inputs["input_ids"], joint["input_ids"])  # identical tokens, same [chosen; rejected] layout
    assert torch.equal(inputs["attention_mask"], joint["attention_mask"])
    if with_margin:
        torch.testing.assert_close(inputs["margin"], ours["margin"])
    trainer.model.train()
    trainer._metrics["train"].clear()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, dict(inputs)))
    trl_metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    module = RewardModel(policy=model, center_rewards_coefficient=center)
    with torch.no_grad():
        loss, values = module.compute_loss(ours)
    assert abs(trl_loss - float(loss)) <= ATOL, (trl_loss, float(loss))
    for name in COMPARED:
        assert abs(trl_metrics[name] - float(values[name].mean())) <= ATOL, (name, trl_metrics[name])
    assert float(values["margin"].abs().mean()) > 1e-4  # non-degenerate


def test_reward_read_at_last_attention_position_when_pad_is_eos(tmp_path):
    """With pad == EOS and completions ending in EOS (SmolLM2's case), HF's pooling reads the token BEFORE
    the EOS; ours reads the EOS, the last attention-mask position, checked against the head applied by hand."""
    model, tokenizer = load_model("tiny-llama", kind="sequence_classification")
    tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.eos_token_id
    rows = [{"prompt": "2+2=", "chosen": " 4", "rejected": " five, I think"}, {"prompt": "Hi", "chosen": " hello"}]
    rows[1]["rejected"] = " go away"
    batch = our_batch(tokenizer, rows, tmp_path)
    ids, mask = batch["chosen_input_ids"], batch["chosen_attention_mask"]
    last = mask.sum(-1) - 1
    assert (ids[torch.arange(2), last] == tokenizer.eos_token_id).all()  # EOS appended to text completions
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        per_position = model.score(hidden)[..., 0]
        ours = last_token_rewards(model, ids, mask)
        hf = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(ours, per_position[torch.arange(2), last])
    torch.testing.assert_close(hf, per_position[torch.arange(2), last - 1])  # HF's pick: one too early
    assert not torch.allclose(ours, hf)


def test_bad_margin_is_a_data_error(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "high"}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    dm = PreferenceDataModule(tokenizer=tiny_tokenizer, data_path=str(path), val_size=0)
    with pytest.raises(DataError, match=r"row 1 \(1-based\), field 'margin': expected a number"):
        dm.setup("fit")


def test_reward_model_is_reference_free(setup):
    model, *_ = setup
    module = RewardModel(policy=model)
    # no reference mixin, so no reference model and no way to run a reference pass
    assert not isinstance(module, ReferenceMixin) and not hasattr(module, "reference_forward")


def test_reward_model_recipe_smoke_fit(tmp_path, monkeypatch):
    """The recipe's YAML + tiny.yaml: 3 steps on tiny-llama change the weights, log TRL's RM metrics, export."""
    monkeypatch.chdir(tmp_path)
    cli = run(
        RewardModel,
        PreferenceDataModule,
        REPO / "recipes" / "configs" / "reward_model.yaml",
        args=["fit", "--config", str(REPO / "recipes" / "configs" / "tiny.yaml")],
    )
    assert cli.trainer.global_step == 3
    initial, _ = load_model("tiny-llama", kind="sequence_classification")
    trained = cli.model.policy.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in initial.state_dict().items())
    logged = cli.trainer.logged_metrics
    for name in ("train/loss", "train/accuracy", "train/margin", "train/mean_reward", "val/accuracy", "val/loss"):
        assert name in logged and torch.isfinite(logged[name]), name
    assert not isinstance(cli.model, ReferenceMixin)  # reference-free: no reference model loaded
    assert list((tmp_path / "runs" / "reward_model").glob("version_*/events.out.tfevents.*"))
    from transformers import AutoModelForSequenceClassification

    export = AutoModelForSequenceClassification.from_pretrained(Path(cli.trainer.log_dir) / "hf_model")
    assert export.config.num_labels == 1


def test_reward_model_with_lora_reads_the_trained_head(setup, tmp_path):
    """Under PEFT the score head is a ModulesToSaveWrapper: rewards still come from the adapted head (they
    equal HF's pooled output here, pad != EOS), and an update moves the head's trainable copy."""
    pytest.importorskip("peft")
    model, tokenizer, rows = setup
    batch = our_batch(tokenizer, rows, tmp_path)
    module = RewardModel(policy=copy.deepcopy(model), lora_r=4, learning_rate=1e-2)
    joint = concatenate_pair(batch, tokenizer.pad_token_id)
    before = module(joint["input_ids"], joint["attention_mask"]).detach()
    module.update(batch)
    with torch.no_grad():
        after = module(joint["input_ids"], joint["attention_mask"])
        hf = module.policy(input_ids=joint["input_ids"], attention_mask=joint["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(after, hf)
    assert not torch.allclose(before, after)
