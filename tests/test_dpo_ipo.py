"""DPO and IPO end to end on the tiny preset: fit, logging, reference handling, resume, update()."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lit_align.algorithms import DPO, IPO
from lit_align.datamodules import PreferenceDataModule
from tests.helpers import changed, event_tags, snapshot, tiny_trainer


def data(batch_size=2, **kwargs):
    return PreferenceDataModule(tokenizer="tiny-llama", batch_size=batch_size, max_samples=24, **kwargs)


@pytest.mark.parametrize("cls", [DPO, IPO])
def test_three_step_fit_trains_policy_not_reference(tmp_path, cls):
    module = cls(policy="tiny-llama", learning_rate=1e-3, warmup_ratio=0.0)
    policy_before, ref_before = snapshot(module.policy), snapshot(module.reference)
    trainer = tiny_trainer(tmp_path, val_check_interval=3)
    trainer.fit(module, data())
    assert trainer.global_step == 3
    assert changed(policy_before, module.policy)
    assert not changed(ref_before, module.reference)
    tags = event_tags(trainer.log_dir)
    assert {"train/rewards/margins", "train/rewards/accuracies", "train/logps/chosen", "train/loss"} <= tags
    assert {"val/rewards/margins", "val/loss", "val/logits/chosen"} <= tags


def test_checkpoint_excludes_reference_and_resumes_strictly(tmp_path):
    module = DPO(policy="tiny-llama", learning_rate=1e-3)
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, data())
    ckpt = tmp_path / "step2.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state and all(k.startswith("policy.") for k in state)  # no reference, no metric state
    assert set(state) == set(module.state_dict())
    resumed = DPO(policy="tiny-llama", learning_rate=1e-3)
    trainer2 = tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0)
    trainer2.fit(resumed, data(), ckpt_path=str(ckpt))  # strict loading is Lightning's default
    assert trainer2.global_step == 4
    # The reference is rebuilt from the same pretrained weights, not from the trained policy.
    fresh = DPO(policy="tiny-llama")
    assert not changed(snapshot(fresh.reference), resumed.reference)


def test_separate_reference_policy_is_used():
    module = DPO(policy="tiny-llama", reference_policy="tiny-llama")
    assert module.reference_source == "model"
    assert not torch.equal(module.reference.lm_head.weight, module.policy.lm_head.weight)  # seed 1 vs seed 0
    assert all(not p.requires_grad for p in module.reference.parameters())
    assert len(list(module.parameters())) == len(list(module.policy.parameters()))  # not registered


def test_lora_uses_adapter_disabled_policy_as_reference():
    pytest.importorskip("peft")
    module = DPO(policy="tiny-llama", lora_r=4, lora_target_modules=["q_proj", "v_proj"], learning_rate=1e-2)
    assert module.reference_source == "adapter" and module.reference is None
    dm = data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    first = module.update(batch)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # B = 0 at init: policy == reference
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    second = module.update(batch)
    assert second["rewards/margins"] != pytest.approx(0.0, abs=1e-6)  # adapters moved the policy away


def test_update_returns_metrics_and_steps():
    module = DPO(policy="tiny-llama", learning_rate=1e-2, warmup_ratio=0.0)
    dm = data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    before = snapshot(module.policy)
    out = module.update(batch)
    assert set(out) >= {"loss", "rewards/chosen", "rewards/margins", "logps/rejected", "logits/chosen"}
    assert out["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)  # policy == reference
    assert changed(before, module.policy)
    assert module.update(batch)["rewards/margins"] > 0


def test_sync_reference_soft_and_hard():
    module = DPO(policy="tiny-llama")
    with torch.no_grad():
        module.policy.lm_head.weight.add_(1.0)
    ref_w = module.reference.lm_head.weight.clone()
    module.sync_reference(alpha=0.25)
    expected = ref_w + 0.25 * (module.policy.lm_head.weight - ref_w)
    assert torch.allclose(module.reference.lm_head.weight, expected)
    module.sync_reference(alpha=1.0)
    assert torch.equal(module.reference.lm_head.weight, module.policy.lm_head.weight)


def test_ipo_normalizations_differ_as_documented():
    dm = data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    mean, total = IPO(policy="tiny-llama", normalization="mean"), IPO(policy="tiny-llama", normalization="sum")
    # At init policy == reference, so h = 0 in both and the loss is (1/(2β))² = 25 for β=0.1.
    assert mean.compute_loss(batch)[0].item() == pytest.approx(25.0)
    assert total.compute_loss(batch)[0].item() == pytest.approx(25.0)


def test_non_finite_loss_stops_with_step_and_batch(monkeypatch):
    module = DPO(policy="tiny-llama")
    dm = data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    monkeypatch.setattr(module, "compute_loss", lambda b: (torch.tensor(float("nan")), {}))
    with pytest.raises(FloatingPointError, match=r"non-finite loss at a standalone update\(\) \(rank 0's loss: nan"):
        module.update(batch)


class PlainPolicy(torch.nn.Module):
    """A policy that is not a Hugging Face model: no .config, no save_pretrained, no get_output_embeddings."""

    def __init__(self) -> None:
        super().__init__()
        from lit_align.models.loading import load_model

        self.inner = load_model("tiny-llama")[0]

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


def test_an_nn_module_policy_without_config_trains_and_exports(tmp_path, tiny_tokenizer):
    from lit_align.callbacks.export import HFExport

    module = DPO(policy=PlainPolicy(), learning_rate=1e-3)
    dm = PreferenceDataModule(
        tokenizer=tiny_tokenizer, max_samples=12, val_size=0, batch_size=2, max_length=64, max_prompt_length=32
    )
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=[HFExport()])
    with pytest.warns(UserWarning, match="has no save_pretrained"):
        trainer.fit(module, dm)
    assert (Path(trainer.log_dir) / "hf_model" / "policy_state_dict.pt").exists()


def test_an_nn_module_that_cannot_take_the_hugging_face_call_is_refused_with_what_to_do():
    class Bare(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match=r"--model.policy: a Bare cannot be trained here.*takes no input_ids"):
        DPO(policy=Bare())


def test_bf16_true_puts_the_reference_in_the_policys_precision(tmp_path):
    """Lightning's bf16-true converts the registered policy only; the unregistered reference follows it, so at the
    first step policy = reference in value AND precision: margins exactly 0, and no fp32 reference in memory."""
    seen = []

    class FirstStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append(float(trainer.callback_metrics["train/rewards/margins"]))

    module = DPO(policy="tiny-llama", learning_rate=1e-3, warmup_ratio=0.0)
    trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0, precision="bf16-true", callbacks=[FirstStep()])
    trainer.fit(module, data())
    assert next(module.reference.parameters()).dtype == torch.bfloat16
    assert seen == [0.0]


@pytest.mark.parametrize("normalization", ["mean", "sum"])
def test_ipo_is_dpos_ipo_loss(normalization):
    """IPO is the DPO family's ``ipo`` (one equation, :func:`lit_align.losses.dpo_family.ipo`): on the same batch,
    ``IPO()`` and ``DPO(loss_type="ipo")`` give the same loss, metrics and gradients (token-mean, TRL's form); the
    paper's summed form differs."""
    dm = data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    results = {}
    ref = {"reference_policy": "tiny-llama"}  # another seed than the policy's: log-ratios are not 0
    for name, module in (("ipo", IPO(policy="tiny-llama", beta=0.2, normalization=normalization, **ref)),
                         ("dpo", DPO(policy="tiny-llama", beta=0.2, loss_type="ipo", **ref))):  # fmt: skip
        loss, values = module.compute_loss(batch)
        loss.backward()
        results[name] = loss.detach(), values, {n: p.grad.clone() for n, p in module.policy.named_parameters()}
    (ipo_loss, ipo_values, ipo_grads), (dpo_loss, dpo_values, dpo_grads) = results["ipo"], results["dpo"]
    if normalization == "sum":
        assert not torch.allclose(ipo_loss, dpo_loss)
        return
    torch.testing.assert_close(ipo_loss, dpo_loss, rtol=0, atol=1e-6)
    for key in ("rewards/margins", "rewards/chosen", "logps/rejected"):
        torch.testing.assert_close(ipo_values[key], dpo_values[key])
    for key, grad in ipo_grads.items():
        torch.testing.assert_close(grad, dpo_grads[key], rtol=0, atol=1e-6)
