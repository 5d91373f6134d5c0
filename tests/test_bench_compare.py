"""Smoke test of bench/compare.py's harness: tiny model, demo rows, 2 steps per side, in this process.

What it checks is what makes the comparison fair: for DPO, KTO, SFT and GRPO, lit-align and TRL 1.16 train on the
same sequences at every step (same real tokens, same digests of ids and trained positions), from the rows and
order bench/_data.py lines up; plus the FLOP formula, the GEMM probe, the feature detection and the mismatch report.
The real benchmark runs each side in a fresh process (for its peak RSS); here both run in-process, which is enough to
check the batches and that every timed number comes out.
"""

from __future__ import annotations

import pytest
import torch

from bench import _data, _runners, compare

pytest.importorskip("trl")

STEPS, BATCH, MAX_LENGTH = 2, 2, 128


@pytest.fixture(scope="module")
def tiny_model(saved_tiny_llama) -> str:
    return str(saved_tiny_llama)


def spec(algo: str, side: str, model_dir: str, rows: dict, tmp_path) -> dict:
    args = compare.parse_args(["--quick", "--steps", str(STEPS), "--batch-size", str(BATCH)])
    out = compare.spec_for(args, algo, side, model_dir, rows, tmp_path)
    out["max_length"] = MAX_LENGTH
    return out


@pytest.mark.slow  # a TRL trainer
@pytest.mark.parametrize("algo", ["dpo", "kto", "sft", "grpo"])
def test_both_sides_train_on_the_same_batches(algo, tiny_model, tmp_path):
    from lit_align.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    settings = spec(algo, "ours", tiny_model, {"ours": None}, tmp_path)
    rows = _data.prepare(algo, "demo", tmp_path, tokenizer, STEPS * BATCH, settings)
    results = {}
    for side, runner in (("ours", _runners.run_ours), ("trl", _runners.run_trl)):
        steps, notes = _runners.Steps(), []
        facts = runner(spec(algo, side, tiny_model, rows, tmp_path), steps, notes)
        results[side] = {**facts, **steps.result(), "peak_rss_mb": 1.0, "startup_s": 0.0}
        assert facts["steps_done"] == STEPS
        assert facts["param_dtype"] == "torch.float32" and not facts["checkpointing"]
        assert len(steps.batches) == STEPS and len(results[side]["step_s"]) == STEPS - 1  # warm-up not timed
    same, detail = compare.check_batches(algo, results["ours"], results["trl"])
    assert same, detail
    assert "prompt tokens are" in compare.prompt_share(results["ours"])
    if algo in ("dpo", "kto", "sft"):  # the same weights, rows and order: the same loss at every step
        ours, trl = results["ours"]["losses"], results["trl"]["losses"]
        assert len(ours) == len(trl) == STEPS
        torch.testing.assert_close(torch.tensor(ours), torch.tensor(trl), rtol=1e-4, atol=1e-6)
        assert "largest relative difference" in compare.loss_agreement(results["ours"], results["trl"])
    assert results["ours"]["attn_implementation"] == results["trl"]["attn_implementation"]
    for side in ("ours", "trl"):
        summary = compare.run_summary(algo, side, results[side], peak_flops=1e9)
        assert summary["step_s"] > 0 and summary["tokens_per_s"] > 0 and summary["peak_fraction"] > 0
        assert summary["tokens_per_step"] == results[side]["batches"][1]["trained_tokens"]


def test_step_flops():
    """Model FLOPs with N = 10 parameters, T = 3 trained tokens, T_KL = 2 KL-pair tokens.

    DPO: 6NT + 2NT = 240 (cached reference on our side: 6NT = 180); KTO: 240 + 4N·T_KL = 320;
    SFT: 6NT = 180; GRPO: 2NT (generation) + 6NT (update) = 240.
    """
    batch = {"trained_tokens": 3, "forward_only_tokens": 0}
    assert compare.step_flops("dpo", "ours", batch, 10, cached_reference=False) == 240
    assert compare.step_flops("dpo_cached", "ours", batch, 10, cached_reference=True) == 180
    assert compare.step_flops("dpo_cached", "trl", batch, 10, cached_reference=True) == 240
    assert compare.step_flops("kto", "trl", {**batch, "forward_only_tokens": 2}, 10, cached_reference=False) == 320
    assert compare.step_flops("sft", "ours", batch, 10, cached_reference=False) == 180
    assert compare.step_flops("grpo", "ours", batch, 10, cached_reference=False) == 240


def test_gemm_peak_and_machine():
    peak = compare.gemm_peak("fp32", n=64, min_seconds=0.0, min_reps=2)
    assert peak["reps"] >= 2 and peak["best_flops"] >= peak["median_flops"] > 0
    info = compare.machine()
    assert info["cores"] >= 1 and info["torch_threads"] >= 1


def test_mismatch_is_reported():
    ours = {"batches": [{"trained_tokens": 5, "forward_only_tokens": 0, "digest": "a"}] * 2}
    trl = {"batches": [{"trained_tokens": 5, "forward_only_tokens": 0, "digest": "a"},
                       {"trained_tokens": 6, "forward_only_tokens": 0, "digest": "b"}]}  # fmt: skip
    same, detail = compare.check_batches("dpo", ours, trl)
    assert not same and "MISMATCH" in detail and "[5, 5] vs TRL [5, 6]" in detail and "steps [1]" in detail


def test_unsupported_options_are_skipped_with_a_note():
    class Module:
        def __init__(self, beta: float = 0.1, precompute_reference: bool = False) -> None: ...

    notes, used = [], {}
    kept = _runners.supported(Module, {"precompute_reference": True, "padding_free": True}, notes, used)
    assert kept == used == {"precompute_reference": True}
    assert notes == ["Module has no `padding_free` argument yet: lit-align runs without it"]


def test_sequences_ignore_layout():
    """The same two sequences padded into one block, or packed into one row, give the same digest."""
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    trained = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    padded = _runners.sequences(ids, mask, trained)
    packed = _runners.sequences(
        torch.tensor([[8, 9, 5, 6, 7]]), None, torch.tensor([[0, 1, 0, 1, 1]]), torch.tensor([[0, 1, 0, 1, 2]])
    )
    assert padded == [((5, 6, 7), (0, 1, 1)), ((8, 9), (0, 1))]
    assert _runners.digest(padded) == _runners.digest(packed)


def test_quick_settings_and_bad_arguments():
    args = compare.parse_args(["--quick", "--algos", "dpo,grpo"])
    assert (args.steps, args.repeats, args.max_length, args.algos) == (3, 1, 128, ["dpo", "grpo"])
    with pytest.raises(SystemExit):
        compare.parse_args(["--algos", "ppo"])
    with pytest.raises(SystemExit):
        compare.parse_args(["--steps", "1"])


def test_kto_rows_must_fit_untruncated(tiny_tokenizer):
    """A row whose completion would be cut is kept for DPO/SFT (both sides cut it alike) but not for KTO."""
    row = {"prompt": "Q: hi?", "completion": "A: " + "x" * 50, "label": True}
    pair = {"prompt": "Q: hi?", "chosen": "A: " + "x" * 50, "rejected": "no"}
    assert _data.fits("kto", row, tiny_tokenizer, max_length=200)
    assert not _data.fits("kto", row, tiny_tokenizer, max_length=20)
    assert _data.fits("dpo", pair, tiny_tokenizer, max_length=20)
    assert not _data.fits("dpo", pair, tiny_tokenizer, max_length=6)  # the prompt alone fills it


def test_busy_machine_warning():
    """Other jobs' load above half the cores warns; the benchmark's own threads do not count against it."""
    assert compare.busy_warning([0.9], cores=2) is None
    assert "WARNING" in compare.busy_warning([1.5], cores=2)
    assert compare.busy_warning([2.8], cores=2, own=2) is None
    assert "WARNING" in compare.busy_warning([5.0], cores=2, own=2)


def test_options_forwarded_to_base_classes_count_as_supported():
    """The modules declare each shared option once (a base class or mixin) and forward it with **kwargs."""
    from lit_align import DPO, GRPO, KTO, SFT

    for cls in (DPO, KTO, SFT, GRPO):
        assert {"padding_free", "fused_layers", "release_host_memory", "policy"} <= _runners.init_options(cls)
    assert "precompute_reference" in _runners.init_options(DPO)
    assert "precompute_reference" not in _runners.init_options(SFT)
