"""ORPO: parity with TRL 1.16 ``ORPOTrainer`` on one batch, reference-freeness, the NLL variants, a smoke fit.

Parity: tiny-llama seed 0, the first rows of the demo pairs (chat messages) tokenized by TRL (chat
template rendered to text, then ``build_tokenized_answer``) and by ``PreferenceDataModule``. The one
tokenization difference is asserted exactly: TRL's CPO/ORPO append an EOS token after the chat
template's closing ``<|im_end|>\n`` (``add_eos_token_if_needed`` sees ``\n`` last), we do not (the
template already closes the turn; DPOTrainer 1.16 does not either). Both then get OUR token ids, and
loss and TRL's logged metrics must agree within 1e-5 in fp32. Plain-text rows, where TRL prepends the
tokenizer's BOS token, are compared on a tokenizer that has one in ``tests/test_parity_bos_trl.py``.
``logits/*`` are left out: TRL's ORPO averages the logits over every position of the padded block
(prompt and padding included), we over completion tokens (DPOTrainer 1.16's definition).
"""

from __future__ import annotations

import copy
from pathlib import Path

import datasets
import pytest
import torch

from lit_align.algorithms.orpo import ORPO, orpo_logps
from lit_align.commands.cli import run
from lit_align.datamodules.preference import PreferenceDataModule
from lit_align.models.loading import load_model
from lit_align.reference.mixin import ReferenceMixin
from tests.parity import assert_tokens_differ_only_by_trl_eos, demo_preference_rows, our_loss_and_metrics

REPO = Path(__file__).resolve().parents[1]
NUM_ROWS = 4
ATOL = 1e-5
COMPARED = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "nll_loss",
    "log_odds_ratio",
    "log_odds_chosen",
)


@pytest.fixture(scope="module")
def setup():
    policy, tokenizer = load_model("tiny-llama", seed=0)
    rows = demo_preference_rows(NUM_ROWS)
    dm = PreferenceDataModule(
        tokenizer=tokenizer, max_samples=NUM_ROWS, val_size=0, batch_size=NUM_ROWS, max_length=1024,
        max_prompt_length=None,
    )
    dm.setup("fit")
    ours = dm.collate([dm.train_dataset[i] for i in range(NUM_ROWS)])
    return policy, tokenizer, rows, ours


@pytest.mark.slow  # a TRL trainer
def test_orpo_matches_trl(setup, tmp_path):
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    policy, tokenizer, rows, ours = setup
    beta = 0.25
    args = ORPOConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=NUM_ROWS, beta=beta,
        save_strategy="no",
    )  # fmt: skip
    trainer = ORPOTrainer(
        model=copy.deepcopy(policy),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    assert_tokens_differ_only_by_trl_eos(trainer, ours, tokenizer.eos_token_id, NUM_ROWS)
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(trainer.model, dict(ours))
    module = ORPO(policy=policy, beta=beta)
    our_loss, our_metrics = our_loss_and_metrics(module, ours)
    assert abs(float(trl_loss) - our_loss) <= ATOL, (float(trl_loss), our_loss)
    for name in COMPARED:
        assert abs(trl_metrics[name] - our_metrics[name]) <= ATOL, (name, trl_metrics[name], our_metrics[name])
    assert abs(our_metrics["log_odds_chosen"]) > 1e-3  # non-degenerate


def test_orpo_is_reference_free(setup):
    policy, *_ = setup
    module = ORPO(policy=policy)
    # no reference mixin, so no reference model and no way to run a reference pass
    assert not isinstance(module, ReferenceMixin) and not hasattr(module, "reference_forward")


def test_orpo_nll_definitions(setup):
    """NLL = Σ −log p / #tokens over the chosen rows' full sequence (TRL) or their completions (paper),
    computed here from a plain forward and log_softmax; odds-ratio inputs are completion means either way."""
    policy, tokenizer, _, ours = setup
    ids, mask, labels = ours["chosen_input_ids"], ours["chosen_attention_mask"], ours["chosen_labels"]
    with torch.no_grad():
        logps = torch.log_softmax(policy(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        token = logps.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # scores ids[:, 1:]
        full, completion = mask[:, 1:].bool(), labels[:, 1:] != -100
        expected_full = -(token * full).sum() / full.sum()
        expected_completion = -(token * completion).sum() / completion.sum()
        for nll_on_prompt, expected in ((True, expected_full), (False, expected_completion)):
            chosen, _, nll_sum, nll_tokens = orpo_logps(policy, ours, tokenizer.pad_token_id, nll_on_prompt)
            torch.testing.assert_close(nll_sum.sum() / nll_tokens.sum(), expected)
            torch.testing.assert_close(chosen.mean, (token * completion).sum(-1) / completion.sum(-1))
    assert full.sum() > completion.sum()  # the prompt really is in the TRL-style NLL


def test_orpo_recipe_smoke_fit(tmp_path, monkeypatch):
    """The recipe's YAML + tiny.yaml: 3 steps on tiny-llama change the weights and log ORPO's metrics."""
    monkeypatch.chdir(tmp_path)
    cli = run(
        ORPO,
        PreferenceDataModule,
        REPO / "recipes" / "configs" / "orpo.yaml",
        args=["fit", "--config", str(REPO / "recipes" / "configs" / "tiny.yaml")],
    )
    assert cli.trainer.global_step == 3
    initial, _ = load_model("tiny-llama")
    trained = cli.model.policy.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in initial.state_dict().items())
    logged = cli.trainer.logged_metrics
    names = ("train/loss", "train/rewards/margins", "train/nll_loss", "train/log_odds_ratio", "val/log_odds_chosen")
    for name in names:
        assert name in logged and torch.isfinite(logged[name]), name
    assert not isinstance(cli.model, ReferenceMixin)  # reference-free: no reference model loaded
    assert list((tmp_path / "runs" / "orpo").glob("version_*/events.out.tfevents.*"))
    assert (Path(cli.trainer.log_dir) / "hf_model" / "model.safetensors").exists()
