"""SimPO: parity with TRL 1.16 ``CPOTrainer(loss_type="simpo")`` on one batch, reference-freeness, a smoke fit.

Parity: tiny-llama seed 0, the first rows of the demo pairs (chat messages) tokenized by TRL (chat
template rendered to text, then ``build_tokenized_answer``) and by ``PreferenceDataModule``. The one
tokenization difference is asserted exactly: TRL's CPO/ORPO append an EOS token after the chat
template's closing ``<|im_end|>\n`` (``add_eos_token_if_needed`` sees ``\n`` last), we do not (the
template already closes the turn; DPOTrainer 1.16 does not either). Both then get OUR token ids, and
loss and TRL's logged metrics must agree within 1e-5 in fp32. Plain-text rows, where TRL prepends the
tokenizer's BOS token, are compared on a tokenizer that has one in ``tests/test_parity_bos_trl.py``.
``logits/*`` are left out: TRL's CPO averages the logits over every position of the padded block
(prompt and padding included), we over completion tokens (DPOTrainer 1.16's definition).
"""

from __future__ import annotations

import copy
from pathlib import Path

import datasets
import pytest
import torch

from lit_align.algorithms.simpo import SimPO
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
@pytest.mark.parametrize(("sft_weight", "label_smoothing"), [(0.0, 0.0), (0.5, 0.1)], ids=str)
def test_simpo_matches_trl_cpo(setup, tmp_path, sft_weight, label_smoothing):
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    policy, tokenizer, rows, ours = setup
    beta, gamma = 2.0, 1.0
    args = CPOConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=NUM_ROWS,
        loss_type="simpo", beta=beta, simpo_gamma=gamma, cpo_alpha=sft_weight, label_smoothing=label_smoothing,
        save_strategy="no",
    )  # fmt: skip
    trainer = CPOTrainer(
        model=copy.deepcopy(policy),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    assert_tokens_differ_only_by_trl_eos(trainer, ours, tokenizer.eos_token_id, NUM_ROWS)
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(trainer.model, dict(ours))
    module = SimPO(policy=policy, beta=beta, gamma=gamma, sft_weight=sft_weight, label_smoothing=label_smoothing)
    our_loss, our_metrics = our_loss_and_metrics(module, ours)
    assert abs(float(trl_loss) - our_loss) <= ATOL, (float(trl_loss), our_loss)
    for name in COMPARED:
        if name == "nll_loss" and sft_weight == 0:
            assert trl_metrics[name] == 0.0  # TRL skips the NLL when cpo_alpha is 0; we still log it
            continue
        assert abs(trl_metrics[name] - our_metrics[name]) <= ATOL, (name, trl_metrics[name], our_metrics[name])
    assert abs(our_metrics["rewards/margins"]) > 1e-3  # non-degenerate


def test_simpo_is_reference_free(setup):
    policy, *_ = setup
    module = SimPO(policy=policy)
    # no reference mixin, so no reference model and no way to run a reference pass
    assert not isinstance(module, ReferenceMixin) and not hasattr(module, "reference_forward")


def test_simpo_hand_computed_loss(setup):
    """loss = −log σ(β·(mean_c − mean_r) − γ) + w·NLL, from the module's own token-mean log-probs."""
    policy, _, _, ours = setup
    module = SimPO(policy=policy, beta=2.5, gamma=1.25, sft_weight=0.3)
    with torch.no_grad():
        loss, _ = module.compute_loss(ours)
        chosen, rejected = module(ours)
    expected = -torch.nn.functional.logsigmoid(2.5 * (chosen.mean - rejected.mean) - 1.25).mean()
    expected = expected + 0.3 * (-chosen.sum.sum() / chosen.num_tokens.sum())
    torch.testing.assert_close(loss, expected)


def test_simpo_recipe_smoke_fit(tmp_path, monkeypatch):
    """The recipe's YAML + tiny.yaml: 3 steps on tiny-llama change the weights and log SimPO's metrics."""
    monkeypatch.chdir(tmp_path)
    cli = run(
        SimPO,
        PreferenceDataModule,
        REPO / "recipes" / "configs" / "simpo.yaml",
        args=["fit", "--config", str(REPO / "recipes" / "configs" / "tiny.yaml")],
    )
    assert cli.trainer.global_step == 3
    initial, _ = load_model("tiny-llama")
    trained = cli.model.policy.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in initial.state_dict().items())
    logged = cli.trainer.logged_metrics
    for name in ("train/loss", "train/rewards/margins", "train/nll_loss", "val/loss", "val/rewards/accuracies"):
        assert name in logged and torch.isfinite(logged[name]), name
    assert not isinstance(cli.model, ReferenceMixin)  # reference-free: no reference model loaded
    assert list((tmp_path / "runs" / "simpo").glob("version_*/events.out.tfevents.*"))
    assert (Path(cli.trainer.log_dir) / "hf_model" / "model.safetensors").exists()
