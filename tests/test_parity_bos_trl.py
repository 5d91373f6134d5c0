"""SimPO and ORPO against TRL 1.16's ``CPOTrainer(loss_type="simpo")`` and ``ORPOTrainer`` on a tokenizer WITH a BOS
token, through the DataModule, plain-text rows.

TRL's CPO and ORPO tokenize plain-text prompts without special tokens and then prepend the tokenizer's BOS
(``add_bos_token_if_needed``); its DPO trainer leaves BOS to the tokenizer. The BOS tokenizer here is the tiny
byte tokenizer with ``<|im_start|>`` as BOS, which it never adds itself (SmolLM2's case, where the issue was
seen). With ``prompt_bos=True`` (TRL's CPO/ORPO behaviour) our rows must be TRL's token for token and loss and
metrics agree within 1e-5, TRL's loss computed on TRL's own collated batch; with the default (the tokenizer's
own behaviour: no BOS here) our rows are TRL's less the leading BOS, exactly, and the loss differs.
"""

from __future__ import annotations

import copy

import datasets
import pytest
import torch

from lit_align.algorithms.orpo import ORPO
from lit_align.algorithms.simpo import SimPO
from lit_align.datamodules.preference import PreferenceDataModule
from lit_align.models.loading import build_tiny_llama
from tests.conftest import write_jsonl
from tests.parity import TOL, bos_tokenizer, our_loss_and_metrics, plain_preference_rows, unpadded

trl = pytest.importorskip("trl")
NUM_ROWS = 4
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "nll_loss")  # fmt: skip
ORPO_METRICS = (*METRICS, "log_odds_ratio", "log_odds_chosen")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tokenizer = bos_tokenizer()
    policy = build_tiny_llama(tokenizer, seed=0)
    rows = plain_preference_rows(NUM_ROWS)
    path = write_jsonl(tmp_path_factory.mktemp("bos") / "pairs.jsonl", rows)
    return tokenizer, policy, rows, path


def our_batch(data, prompt_bos):
    tokenizer, _, _, path = data
    dm = PreferenceDataModule(tokenizer=tokenizer, data_path=str(path), val_size=0, batch_size=NUM_ROWS,
                              max_length=1024, max_prompt_length=None, prompt_bos=prompt_bos)  # fmt: skip
    dm.setup("fit")
    assert dm.stats == {"train/ok": NUM_ROWS}, dm.stats  # nothing truncated, dropped or remarked
    return dm.collate([dm.train_dataset[i] for i in range(NUM_ROWS)])


def trl_trainer(data, tmp_path, algorithm, **config):
    tokenizer, policy, rows, _ = data
    if algorithm == "simpo":
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Trainer

        config = {"loss_type": "simpo", **config}
    else:
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer
    args = Config(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, save_strategy="no",
                  per_device_train_batch_size=NUM_ROWS, **config)  # fmt: skip
    return Trainer(model=copy.deepcopy(policy), args=args, train_dataset=datasets.Dataset.from_list(rows),
                   processing_class=tokenizer)  # fmt: skip


def trl_loss_and_metrics(trainer) -> tuple[float, dict[str, float]]:
    """TRL's loss and metrics on TRL's own collated first batch."""
    keys = [k for k in trainer.train_dataset.column_names if k.endswith(("input_ids", "attention_mask", "labels"))]
    batch = trainer.data_collator([{k: trainer.train_dataset[i][k] for k in keys} for i in range(NUM_ROWS)])
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    return float(loss), {k: float(v) for k, v in metrics.items()}


CASES = [
    ("simpo", {"beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.5}, ({"beta": 2.0, "gamma": 1.0, "sft_weight": 0.5})),
    ("orpo", {"beta": 0.25}, {"beta": 0.25}),
]


@pytest.mark.slow  # a TRL trainer
@pytest.mark.parametrize(("algorithm", "trl_config", "ours"), CASES, ids=["simpo", "orpo"])
def test_matches_trl_with_prompt_bos(data, tmp_path, algorithm, trl_config, ours):
    tokenizer, policy, _, _ = data
    batch = our_batch(data, prompt_bos=True)
    trainer = trl_trainer(data, tmp_path, algorithm, **trl_config)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for i in range(NUM_ROWS):
        row = trainer.train_dataset[i]
        for side in ("chosen", "rejected"):
            ids, labels = unpadded(batch, side, i)
            assert ids[0] == bos and ids[-1] == eos and ids.count(bos) == 1
            assert (row[f"{side}_input_ids"], row[f"{side}_labels"]) == (ids, labels), (i, side)
    module = (SimPO if algorithm == "simpo" else ORPO)(policy=copy.deepcopy(policy), **ours)
    trl_loss, trl_metrics = trl_loss_and_metrics(trainer)
    our_loss, our_metrics = our_loss_and_metrics(module, batch)
    assert abs(trl_loss - our_loss) <= TOL, (trl_loss, our_loss)
    for name in METRICS if algorithm == "simpo" else ORPO_METRICS:
        assert abs(trl_metrics[name] - our_metrics[name]) <= TOL, (name, trl_metrics[name], our_metrics[name])
    assert abs(our_metrics["rewards/margins"]) > 1e-3  # non-degenerate


@pytest.mark.slow  # a TRL trainer
@pytest.mark.parametrize(("algorithm", "trl_config", "ours"), CASES, ids=["simpo", "orpo"])
def test_default_leaves_bos_to_the_tokenizer_unlike_trl(data, tmp_path, algorithm, trl_config, ours):
    """Default ``prompt_bos`` (the tokenizer's own behaviour, which here adds no BOS): TRL's sequences are ours with
    one BOS in front, exactly; the BOS token is visible in the loss (so the other test's agreement is not vacuous)."""
    tokenizer, policy, _, _ = data
    batch = our_batch(data, prompt_bos=None)
    trainer = trl_trainer(data, tmp_path, algorithm, **trl_config)
    for i in range(NUM_ROWS):
        row = trainer.train_dataset[i]
        for side in ("chosen", "rejected"):
            ids, labels = unpadded(batch, side, i)
            assert tokenizer.bos_token_id not in ids
            assert row[f"{side}_input_ids"] == [tokenizer.bos_token_id, *ids]
            assert row[f"{side}_labels"] == [-100, *labels]
    module = (SimPO if algorithm == "simpo" else ORPO)(policy=copy.deepcopy(policy), **ours)
    trl_loss, _ = trl_loss_and_metrics(trainer)
    our_loss, _ = our_loss_and_metrics(module, batch)
    assert abs(trl_loss - our_loss) > 1e-4, (trl_loss, our_loss)


@pytest.mark.parametrize("prompt_bos", [None, True, False])
def test_prompt_bos_settings_on_a_tokenizer_that_adds_bos(tmp_path, prompt_bos):
    """A tokenizer whose post-processor adds BOS (Llama's case): the default and ``true`` keep one BOS (never two),
    ``false`` removes it; completions never get one. Chat rows are the chat template's, whatever the setting."""
    tokenizer = bos_tokenizer(adds_bos=True)
    rows = [{"prompt": "Hi?", "chosen": " yes", "rejected": " no"},
            {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}]}]  # fmt: skip
    dm = PreferenceDataModule(tokenizer=tokenizer, data_path=str(write_jsonl(tmp_path / "d.jsonl", rows)),
                              val_size=0, prompt_bos=prompt_bos)  # fmt: skip
    dm.setup("fit")
    bos = tokenizer.bos_token_id
    text, chat = dm.train_dataset[0], dm.train_dataset[1]
    expected = [bos] if prompt_bos in (None, True) else []
    assert text["prompt_ids"] == [*expected, *tokenizer("Hi?", add_special_tokens=False)["input_ids"]]
    assert bos not in text["chosen_ids"] and bos not in text["rejected_ids"]
    template = tokenizer.apply_chat_template(rows[1]["prompt"], tokenize=True, add_generation_prompt=True)
    assert chat["prompt_ids"] == list(template["input_ids"] if hasattr(template, "keys") else template)


def test_prompt_bos_true_needs_a_bos_token(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi?", "chosen": " yes", "rejected": " no"}])
    dm = PreferenceDataModule(tokenizer=tiny_tokenizer, data_path=str(path), val_size=0, prompt_bos=True)
    with pytest.raises(ValueError, match=r"--data.prompt_bos=True: the tokenizer has no BOS token"):
        dm.setup("fit")
