"""precompute_reference: cached reference log-probs equal the live reference, are reused without loading it, and
are invalidated by a change of data, tokenization setting or reference (tiny models, CPU)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from lit_align.algorithms import DPO, IPO, KTO
from lit_align.algorithms.grpo import GRPO
from lit_align.datamodules import BinaryFeedbackDataModule, PreferenceDataModule
from lit_align.models.loading import load_model
from lit_align.reference.cache import _FREED, ReferenceCache, planned_epochs
from tests.conftest import REPO, write_jsonl
from tests.helpers import tiny_trainer


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("LIT_ALIGN_CACHE", str(path))
    return path / "reference"


class Recorder(L.Callback):
    """Each step's logged train metrics and gradients; the validation metrics; that no reference is held."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.references: list[object] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})
        self.references.append(pl_module.reference)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    def on_validation_end(self, trainer, pl_module) -> None:
        self.val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def preference_data(**kwargs):
    return PreferenceDataModule(tokenizer="tiny-llama", batch_size=2, max_samples=12, val_size=3, **kwargs)


def binary_data(**kwargs):
    # 9 examples in 5 batches of 2 per epoch: 6 steps span 2 epochs, so the second epoch's KL pairs are cached too
    return BinaryFeedbackDataModule(tokenizer="tiny-llama", batch_size=2, max_samples=12, val_size=3, **kwargs)


CASES = {
    "dpo": (DPO, preference_data, {}),
    "dpo_sum_ipo": (IPO, preference_data, {"normalization": "sum"}),
    "ipo": (IPO, preference_data, {}),
    "kto": (KTO, binary_data, {}),
    "apo_zero_unpaired": (KTO, binary_data, {"loss_type": "apo_zero_unpaired"}),
}


def fit(tmp_path, name, cls, data, steps=6, precision="32-true", **kwargs):
    recorder = Recorder()
    torch.manual_seed(0)  # LoRA's A matrices
    module = cls(policy="tiny-llama", learning_rate=1e-2, warmup_ratio=0.0, **kwargs)
    trainer = tiny_trainer(tmp_path / name, max_steps=steps, val_check_interval=3, limit_val_batches=None,
                           callbacks=[recorder], enable_checkpointing=False, precision=precision)  # fmt: skip
    trainer.fit(module, data)
    return module, recorder


@pytest.mark.parametrize("case", CASES)
def test_cached_run_equals_live_reference(tmp_path, cache_dir, case):
    cls, data, kwargs = CASES[case]
    live, live_rec = fit(tmp_path, "live", cls, data(), **kwargs)
    cached, cached_rec = fit(tmp_path, "cached", cls, data(), precompute_reference=True, **kwargs)
    assert cached.reference_source == "cached" and len(list(cache_dir.glob("*.pt"))) == 1
    assert all(ref is None for ref in cached_rec.references)  # no reference model held while training
    assert len(live_rec.steps) == len(cached_rec.steps) == 6
    for live_step, cached_step in zip(live_rec.steps, cached_rec.steps, strict=True):
        assert live_step.keys() == cached_step.keys() and "train/loss" in live_step
        for key, value in live_step.items():
            assert cached_step[key] == pytest.approx(value, abs=1e-6, rel=1e-6, nan_ok=True), key
    for live_grads, cached_grads in zip(live_rec.grads, cached_rec.grads, strict=True):
        for name, grad in live_grads.items():
            torch.testing.assert_close(cached_grads[name], grad, atol=1e-6, rtol=1e-6)
    assert live_rec.val.keys() == cached_rec.val.keys() and "val/loss" in live_rec.val
    for key, value in live_rec.val.items():
        assert cached_rec.val[key] == pytest.approx(value, abs=1e-6, rel=1e-6, nan_ok=True), key


def test_kto_cache_keys_kl_pairs_by_both_rows(tmp_path, cache_dir):
    module, _ = fit(tmp_path, "kto", KTO, binary_data(), precompute_reference=True)
    table = module._reference.cache.table
    rows = set(table.entries["ref_logps"])
    pairs = set(table.entries["ref_kl_logps"])
    assert rows == {(i,) for i in range(12)}  # 9 training rows + 3 validation rows
    assert all(len(p) == 2 for p in pairs) and len(pairs) > 9  # two epochs of shuffled batches: more pairs than rows
    stored = torch.load(table.path, weights_only=True)
    assert stored["ref_kl_logps"][0].shape == (len(pairs), 2)


def compute_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = ReferenceCache._compute

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ReferenceCache, "_compute", counted)
    return calls


def test_second_run_and_resume_reuse_the_cache_without_loading_the_reference(tmp_path, cache_dir, monkeypatch):
    calls = compute_calls(monkeypatch)
    first = DPO(policy="tiny-llama", reference_policy="tiny-llama", precompute_reference=True, learning_rate=1e-3)
    assert first.reference is None  # nothing loaded at construction
    trainer = tiny_trainer(tmp_path / "a", max_steps=2, limit_val_batches=0)
    trainer.fit(first, preference_data())
    assert calls == [1] and first.reference is None
    ckpt = tmp_path / "step2.ckpt"
    trainer.save_checkpoint(ckpt)

    def no_load(*args, **kwargs):
        raise AssertionError("the reference was loaded")

    monkeypatch.setattr("lit_align.reference.mixin.resolve_model", no_load)
    monkeypatch.setattr("lit_align.reference.cache.resolve_model", no_load)
    again = DPO(policy="tiny-llama", reference_policy="tiny-llama", precompute_reference=True, learning_rate=1e-3)
    recorder = Recorder()
    trainer = tiny_trainer(tmp_path / "b", max_steps=2, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(again, preference_data())
    assert calls == [1] and len(recorder.steps) == 2
    resumed = DPO(policy="tiny-llama", reference_policy="tiny-llama", precompute_reference=True, learning_rate=1e-3)
    trainer = tiny_trainer(tmp_path / "c", max_steps=4, limit_val_batches=0)
    trainer.fit(resumed, preference_data(), ckpt_path=str(ckpt))
    assert trainer.global_step == 4 and calls == [1]
    assert len(list(cache_dir.glob("*.pt"))) == 1


def test_cached_values_are_those_of_the_given_reference(tmp_path):
    """reference_policy='tiny-llama' (seed 1) differs from the policy (seed 0): the cache holds the reference's."""
    module = DPO(policy="tiny-llama", reference_policy="tiny-llama", precompute_reference=True)
    dm = preference_data()
    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(module, dm)
    batch = next(iter(dm.val_dataloader()))
    reference, _ = load_model("tiny-llama", seed=1)
    live = DPO(policy="tiny-llama", reference_policy=reference)
    expected = live.reference_values(reference, batch)
    cached = module._reference.cache.table.lookup(batch)
    for name in ("ref_chosen_logps", "ref_rejected_logps"):
        torch.testing.assert_close(cached[name], expected[name], atol=1e-6, rtol=0)


def test_a_reference_module_is_released_after_its_pass(tmp_path):
    """The module lets go of a reference given as an nn.Module once its pass is done (in a plain script it is then
    garbage-collected once the caller drops it too)."""
    reference, _ = load_model("tiny-llama", seed=1)
    module = DPO(policy="tiny-llama", reference_policy=reference, precompute_reference=True)
    assert module._reference.cache.reference_policy is reference
    tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, preference_data())
    assert module._reference.cache.reference_policy is _FREED and module.reference is None


def test_changed_data_setting_or_reference_invalidates(tmp_path, cache_dir, monkeypatch):
    calls = compute_calls(monkeypatch)
    rows = [{"prompt": f"Q{i}?", "chosen": f" yes {i}", "rejected": f" no {i}!"} for i in range(8)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    reference_dir = tmp_path / "reference"

    def save_reference(seed):
        model, tokenizer = load_model("tiny-llama", seed=seed)
        model.save_pretrained(reference_dir)
        tokenizer.save_pretrained(reference_dir)

    save_reference(1)

    def run(max_length=64, name="run"):
        module = DPO(policy="tiny-llama", reference_policy=str(reference_dir), precompute_reference=True)
        dm = PreferenceDataModule(tokenizer="tiny-llama", data_path=str(path), batch_size=2, val_size=2,
                                  max_length=max_length, max_prompt_length=16)  # fmt: skip
        tiny_trainer(tmp_path / name, max_steps=1, limit_val_batches=0).fit(module, dm)
        return len(calls)

    assert run() == 1
    assert run() == 1  # same reference, data and settings: reused
    assert run(max_length=48) == 2  # a tokenization setting
    write_jsonl(path, [*rows[:-1], {"prompt": "Q7?", "chosen": " yes 7", "rejected": " no, 7"}])
    assert run() == 3  # the data
    save_reference(2)
    assert run() == 4  # the reference's files
    assert run() == 4
    assert len(list(cache_dir.glob("*.pt"))) == 4


def test_validate_alone_computes_the_validation_rows_only(tmp_path):
    module = DPO(policy="tiny-llama", precompute_reference=True)
    tiny_trainer(tmp_path).validate(module, preference_data())
    assert set(module._reference.cache.table.entries["ref_chosen_logps"]) == {(9,), (10,), (11,)}


def test_planned_epochs_follow_the_trainers_limits():
    def trainer(max_steps=-1, max_epochs=None, accumulate=1, limit=1.0):
        return SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs, accumulate_grad_batches=accumulate,
                               limit_train_batches=limit)  # fmt: skip

    assert planned_epochs(trainer(max_steps=6), 5) == 2
    assert planned_epochs(trainer(max_steps=6, accumulate=2), 5) == 3
    assert planned_epochs(trainer(max_steps=6, limit=2), 5) == 3  # 2 batches per epoch
    assert planned_epochs(trainer(max_steps=100, max_epochs=2), 5) == 2
    assert planned_epochs(trainer(max_epochs=4), 5) == 4
    with pytest.raises(ValueError, match="finite --trainer.max_epochs or --trainer.max_steps"):
        planned_epochs(trainer(max_epochs=-1), 5)


def test_online_modules_refuse_before_any_weights_load(monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("lit_align.training.base.resolve_model", no_load)
    with pytest.raises(ValueError, match=r"precompute_reference=True: GRPO fixes it .* sampled during training"):
        GRPO(policy="tiny-llama", beta=0.1, precompute_reference=True)


def test_mixed_precision_pass_runs_in_the_trainers_autocast(tmp_path, cache_dir):
    """bf16-mixed: the cache pass runs under the Trainer's autocast, as the live reference does; another precision
    is another cache file."""
    live, live_rec = fit(tmp_path, "live", DPO, preference_data(), steps=3, precision="bf16-mixed")
    cached, cached_rec = fit(tmp_path, "cached", DPO, preference_data(), steps=3, precision="bf16-mixed",
                             precompute_reference=True)  # fmt: skip
    for live_step, cached_step in zip(live_rec.steps, cached_rec.steps, strict=True):
        assert cached_step["train/loss"] == pytest.approx(live_step["train/loss"], abs=1e-6)
        assert cached_step["train/rewards/margins"] == pytest.approx(live_step["train/rewards/margins"], abs=1e-6)
    fit(tmp_path, "fp32", DPO, preference_data(), steps=1, precompute_reference=True)
    assert len(list(cache_dir.glob("*.pt"))) == 2


def test_lora_adapter_reference_is_cached(tmp_path):
    pytest.importorskip("peft")
    kwargs = {"lora_r": 4, "lora_target_modules": ["q_proj", "v_proj"]}
    live, live_rec = fit(tmp_path, "live", DPO, preference_data(), steps=3, **kwargs)
    cached, cached_rec = fit(tmp_path, "cached", DPO, preference_data(), steps=3, precompute_reference=True, **kwargs)
    assert cached.reference_source == "cached" and cached.hparams.lora_r == 4
    for live_step, cached_step in zip(live_rec.steps, cached_rec.steps, strict=True):
        assert cached_step["train/loss"] == pytest.approx(live_step["train/loss"], abs=1e-6)


@pytest.mark.slow
def test_ddp_and_fsdp2_with_cache_match_one_process_without(tmp_path):
    """2 CPU processes (DDP, gloo; FSDP2, whose cache pass runs before sharding), each computing its share of the
    cache, gathered, then training on it, give the uncached single-process run (tests/scaling_run.py): every step's
    synced metrics and the final weights."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    script = str(REPO / "tests" / "scaling_run.py")
    cached_algos = ["dpo_cached", "kto_cached"]
    for layout, algos in (("single", ["dpo", "kto"]), ("ddp", cached_algos), ("fsdp2", cached_algos)):
        result = subprocess.run([sys.executable, script, str(tmp_path), layout, *algos], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, f"{layout}:\n{result.stderr[-4000:]}"
    for algo, layout in itertools.product(("dpo", "kto"), ("ddp", "fsdp2")):
        single = torch.load(tmp_path / f"{algo}_single.pt", weights_only=True)
        cached = torch.load(tmp_path / f"{algo}_cached_{layout}.pt", weights_only=True)
        assert len(single["steps"]) == len(cached["steps"]) == 3
        assert cached["cached"][f"ref_{'chosen_' if algo == 'dpo' else ''}logps"] == 16  # each rank computed 8
        assert not cached["reference_held"]
        for step, (a, b) in enumerate(zip(single["steps"], cached["steps"], strict=True), start=1):
            assert "train/loss" in a and a.keys() <= b.keys()
            for name in a:
                assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-5, nan_ok=True), (algo, layout, step, name)
        for name, value in single["weights"].items():
            torch.testing.assert_close(cached["weights"][name], value, rtol=0, atol=1e-5, msg=name)
        assert len(list((tmp_path / "cache" / layout / "reference").glob("*.pt"))) == 2  # DPO's and KTO's
