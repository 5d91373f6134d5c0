"""NaN/inf losses: stop naming the step and batch (default), or skip when asked, counting skips.

The decision is taken for all ranks at once, so under DDP a NaN on one rank stops or skips every rank
(no rank is left waiting in a collective), and a skipped batch moves no weight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from lit_align.algorithms import DPO, GRPO
from lit_align.datamodules import PreferenceDataModule
from lit_align.models.loading import load_model
from tests.conftest import REPO
from tests.helpers import tiny_trainer
from tests.online_helpers import ScriptedBackend, length_reward, prompt_datamodule


class NaNAt(DPO):
    """DPO whose loss is NaN at the given (global step, micro-batch index) pairs."""

    nan_at: set = set()

    def compute_loss(self, batch):
        loss, values = super().compute_loss(batch)
        if self.training and (self.global_step, self._micro) in self.nan_at:
            loss = loss * float("nan")
        self._micro += 1
        return loss, values

    def on_train_batch_start(self, batch, batch_idx):
        self._micro = batch_idx


class Weights(L.Callback):
    def __init__(self) -> None:
        self.after: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append({k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()})


def data():
    return PreferenceDataModule(tokenizer="tiny-llama", batch_size=2, max_samples=24, val_size=0)


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_default_stops_with_step_and_batch(tmp_path):
    module = NaNAt(policy="tiny-llama", learning_rate=1e-3)
    module.nan_at = {(1, 1)}
    message = r"non-finite loss at global step 1, batch 1 \(rank 0's loss: nan.*'skip'"
    with pytest.raises(FloatingPointError, match=message):
        tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(module, data())


def test_skip_leaves_the_batch_out_and_counts_it(tmp_path):
    module = NaNAt(policy="tiny-llama", learning_rate=1e-3, warmup_ratio=0.0, nonfinite_loss="skip")
    module.nan_at = {(1, 1)}
    weights = Weights()
    trainer = tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[weights])
    with pytest.warns(UserWarning, match=r"skipped global step 1, batch 1: non-finite loss \(1 skipped so far\)"):
        trainer.fit(module, data())
    assert trainer.global_step == 4 and module.nonfinite_skipped == 1
    after = weights.after
    assert same(after[0], after[1])  # the skipped step moved nothing (not even AdamW momentum or weight decay)
    assert not same(after[1], after[2]) and not same(after[0], after[3])
    assert float(trainer.callback_metrics["train/nonfinite_skipped"]) == 1.0
    ckpt = tmp_path / "skip.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = DPO(policy="tiny-llama", nonfinite_loss="skip")
    tiny_trainer(tmp_path, max_steps=5, limit_val_batches=0).fit(resumed, data(), ckpt_path=str(ckpt))
    assert resumed.nonfinite_skipped == 1  # the count survives a resume


def test_skip_one_micro_batch_keeps_the_other(tmp_path):
    module = NaNAt(policy="tiny-llama", learning_rate=1e-3, warmup_ratio=0.0, nonfinite_loss="skip")
    module.nan_at = {(0, 0)}  # first micro-batch of the first optimizer step
    weights = Weights()
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[weights], accumulate_grad_batches=2)
    with pytest.warns(UserWarning, match="1 skipped so far"):
        trainer.fit(module, data())
    initial = {k: v for k, v in load_model("tiny-llama")[0].state_dict().items()}
    assert not same(initial, weights.after[1])  # the window's valid micro-batch still updated the weights


def test_update_outside_a_trainer_skips_too():
    module = DPO(policy="tiny-llama", learning_rate=1e-3, nonfinite_loss="skip")
    dm = data()
    dm.setup("fit")
    batch = dm.collate([dm.train_dataset[i] for i in range(2)])
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    module.compute_loss = lambda b: (torch.tensor(float("inf"), requires_grad=True), {})
    with pytest.warns(UserWarning, match="standalone update"):
        out = module.update(batch)
    assert out["skipped"] == 1.0 and same(before, module.policy.state_dict())
    with pytest.raises(ValueError, match=r"--model.nonfinite_loss='ignore': stop or skip"):
        DPO(policy="tiny-llama", nonfinite_loss="ignore")


def test_grpo_skips_a_non_finite_update(tmp_path):
    policy, tokenizer = load_model("tiny-llama")

    class NaNGRPO(GRPO):
        def policy_loss(self, *args, **kwargs):
            loss = super().policy_loss(*args, **kwargs)
            return loss * float("nan") if self.global_step == 0 else loss

    module = NaNGRPO(policy=policy, rewards={"reward_funcs": [length_reward], "log_completions_every_n_steps": 0},
                     num_generations=4, sampling={"max_new_tokens": 8},
                     learning_rate=1e-3, tokenizer=tokenizer, nonfinite_loss="skip")  # fmt: skip
    module.sampler.backend = ScriptedBackend(tokenizer)
    weights = Weights()
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[weights])
    with pytest.warns(UserWarning, match="skipped global step 0"):
        trainer.fit(module, prompt_datamodule(tmp_path, tokenizer, n=8))
    initial = load_model("tiny-llama")[0].state_dict()
    assert module.nonfinite_skipped == 1 and same(initial, weights.after[0]) and not same(initial, weights.after[1])


DDP_SCRIPT = r"""
import json, os, sys
import lightning as L
from tests.test_nonfinite import NaNAt, data

if __name__ == "__main__":
    out, mode = sys.argv[1], sys.argv[2]
    module = NaNAt(policy="tiny-llama", learning_rate=1e-3, nonfinite_loss=mode)
    module.nan_at = {(1, 1)} if os.environ.get("LOCAL_RANK", "0") == "1" else set()  # NaN on rank 1 only
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=out)
    trainer.fit(module, data())
    digest = sum(float(p.double().sum()) for p in module.policy.parameters())
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump({"skipped": module.nonfinite_skipped, "digest": digest, "step": trainer.global_step}, f)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_ddp_nan_on_one_rank_is_one_decision(tmp_path, mode):
    script = tmp_path / "ddp_nan.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path), mode], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    if mode == "stop":  # both ranks stop (no hang until the timeout), naming the step and batch
        assert result.returncode != 0 and "global step 1, batch 1" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 1 and ranks[0]["step"] == 3
    assert ranks[0]["digest"] == ranks[1]["digest"]
