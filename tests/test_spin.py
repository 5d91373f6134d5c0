"""SPIN: the loss by hand and against DPO's, the pairs' tokenization, a two-iteration fit, the iteration boundary,
and (slow) kill-and-resume across an iteration boundary (``tests/spin_resume_run.py``)."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_align.algorithms import DPO, SPIN
from lit_align.datamodules import SPINDataModule
from lit_align.losses import dpo_loss, spin_loss
from lit_align.models.loading import load_model
from lit_align.training.self_play import generate_responses, pair_logps, rank_batches
from tests.conftest import REPO
from tests.helpers import changed, event_tags, snapshot, tiny_trainer

GEN = {"sampling": {"max_new_tokens": 8}, "generation_batch_size": 4}


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=grad)


def data(**kwargs) -> SPINDataModule:
    options = {"tokenizer": "tiny-llama", "batch_size": 2, "max_samples": 12, "val_size": 4, "max_length": 96,
               "max_prompt_length": 48, **kwargs}  # fmt: skip
    return SPINDataModule(**options)


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the loss --------------------------------------------------------------------------------------
def test_spin_loss_hand_computed():
    """λ = 0.1; real log-ratio −1 − (−1.5) = 0.5, generated −2 − (−1.5) = −0.5: t = 0.1·(0.5 + 0.5) = 0.1,
    ℓ(0.1) = log(1 + e^{−0.1}) = 0.6443967. Second pair, λ = 0.1: real −3 − (−5) = 2, generated −4 − (−2) = −2,
    t = 0.4, ℓ = log(1 + e^{−0.4}) = 0.5130153. Rewards λ·log-ratio: (0.05, −0.05) and (0.2, −0.2)."""
    losses, real, generated = spin_loss(t(-1.0, -3.0), t(-2.0, -4.0), t(-1.5, -5.0), t(-1.5, -2.0), beta=0.1)
    torch.testing.assert_close(losses, t(0.6443967, 0.5130153), atol=1e-6, rtol=0)
    torch.testing.assert_close(real, t(0.05, 0.2)) and torch.testing.assert_close(generated, t(-0.05, -0.2))


def test_spin_loss_limits():
    """Equal log-ratios: ℓ(0) = log 2. A large margin: ℓ → 0 with no overflow; a large negative one: ℓ(t) ≈ −t."""
    losses, _, _ = spin_loss(t(-3.0), t(-7.0), t(-3.0), t(-7.0), beta=0.1)
    assert losses.item() == pytest.approx(math.log(2.0), abs=1e-7)
    big, _, _ = spin_loss(t(0.0), t(-1e4), t(0.0), t(0.0), beta=1.0)
    small, _, _ = spin_loss(t(-1e4), t(0.0), t(0.0), t(0.0), beta=1.0)
    assert big.item() == 0.0 and small.item() == pytest.approx(1e4)


def test_spin_loss_equals_dpo_with_the_opponent_as_reference():
    """ℓ(t) = log(1 + e^{−t}) = −log σ(t): SPIN's loss is DPO's with y_w = ground truth, y_l = the opponent's
    response, π_ref = the opponent; values, rewards and gradients agree."""
    g = torch.Generator().manual_seed(0)
    policy = [(-torch.rand(16, generator=g) * 30).requires_grad_() for _ in range(2)]
    opponent = [-torch.rand(16, generator=g) * 30 for _ in range(2)]
    spin = spin_loss(*policy, *opponent, beta=0.3)
    spin[0].sum().backward()
    spin_grads = [p.grad.clone() for p in policy]
    for p in policy:
        p.grad = None
    dpo = dpo_loss(*policy, *opponent, beta=0.3)
    dpo[0].sum().backward()
    for a, b in zip(spin, dpo, strict=True):
        torch.testing.assert_close(a, b)
    for grad, p in zip(spin_grads, policy, strict=True):
        torch.testing.assert_close(grad, p.grad)


def test_module_loss_equals_dpo_module_with_the_opponent_as_reference():
    """Through the modules: SPIN on pairs carrying the opponent's log-probs (computed as the generation phase does)
    gives DPO's loss, metrics and gradient with the opponent as DPO's reference model."""
    policy, tokenizer = load_model("tiny-llama", seed=0)
    opponent, _ = load_model("tiny-llama", seed=1)
    dm = data(tokenizer=tokenizer, val_size=0, max_samples=4)
    dm.setup("fit")
    lines = [{**item, "rejected": f"I think it is {n}."} for n, item in enumerate(dm.self_play_items())]
    rows = [dm.pair_row(line) for line in lines]
    scores = pair_logps(opponent, rows, dm.collate, batch_size=4, pad_id=tokenizer.pad_token_id, rank=0, world=1,
                        padded=False)  # fmt: skip
    batch = dm.collate_pairs([{**row, **scores[n]} for n, row in enumerate(rows)])
    spin = SPIN(policy=copy.deepcopy(policy), beta=0.5, tokenizer=tokenizer)
    dpo = DPO(policy=copy.deepcopy(policy), reference_policy=opponent, beta=0.5)
    spin_loss_value, spin_values = spin.compute_loss(batch)
    dpo_loss_value, dpo_values = dpo.compute_loss({k: v for k, v in batch.items() if not k.startswith("ref_")})
    torch.testing.assert_close(spin_loss_value, dpo_loss_value, rtol=1e-6, atol=1e-6)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/rejected"):
        torch.testing.assert_close(spin_values[name], dpo_values[name], rtol=1e-5, atol=1e-5)
    spin_loss_value.backward()
    dpo_loss_value.backward()
    for (name, a), b in zip(spin.policy.named_parameters(), dpo.policy.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


# -- the pairs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("chat", [True, False])
def test_response_is_tokenized_like_the_ground_truth(tmp_path, chat):
    """A response with the ground truth's text gets exactly the ground truth's ids (chat: the template's end of turn;
    plain text: EOS), and a prompt of the same ids."""
    from tests.conftest import write_jsonl

    row = ({"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]}
           if chat else {"prompt": "What is 2 + 2?", "completion": " 4."})  # fmt: skip
    dm = data(data_path=str(write_jsonl(tmp_path / "d.jsonl", [row] * 3)), val_size=0)
    dm.setup("fit")
    item = dm.self_play_items()[0]
    text = "4." if chat else " 4."
    pair = dm.pair_row({**item, "rejected": text})
    assert pair["rejected_ids"] == pair["chosen_ids"] and pair["prompt_ids"] == item["prompt_ids"]
    end = dm.tokenizer.decode(pair["rejected_ids"][-2:])  # not the raw generation's ending (EOS alone)
    assert end == ("<|im_end|>\n" if chat else ".<|im_end|>")


def test_rank_batches_cover_every_row_once_in_any_layout():
    rows = 10
    for world in (1, 2, 3):
        for padded in (False, True):
            per_rank = [list(rank_batches(rows, 4, r, world, padded)) for r in range(world)]
            real = sorted(i for batches in per_rank for _, rows_j, is_real in batches if is_real for i in rows_j)
            assert real == list(range(rows))
            if padded:  # FSDP2: every rank makes the same number of calls
                assert len({len(b) for b in per_rank}) == 1


# -- fits ------------------------------------------------------------------------------------------
class Boundary(L.Callback):
    """The policy at each epoch's end; the learning rate and optimizer state at each epoch's first batch."""

    def __init__(self) -> None:
        self.policies, self.first_lr, self.state_sizes = [], [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:
            optimizer = trainer.optimizers[0]
            self.first_lr.append(optimizer.param_groups[0]["lr"])
            self.state_sizes.append(len(optimizer.state))

    def on_train_epoch_end(self, trainer, module) -> None:
        self.policies.append(snapshot(module.policy))


@pytest.fixture(scope="module")
def two_iterations(tmp_path_factory):
    """2 iterations x 1 epoch of 4 steps (8 train rows, 4 held out) on the tiny preset."""
    tmp_path = tmp_path_factory.mktemp("spin_fit")
    module = SPIN(policy="tiny-llama", learning_rate=1e-3, warmup_ratio=0.25, **GEN)
    initial = snapshot(module.policy)
    boundary = Boundary()
    trainer = tiny_trainer(tmp_path, max_steps=-1, callbacks=[boundary])
    trainer.fit(module, data())
    return module, trainer, boundary, initial


def test_two_iteration_fit_logs_and_saves_each_iteration(two_iterations):
    module, trainer, _, initial = two_iterations
    assert trainer.current_epoch == 2 and trainer.global_step == 8 and module.iteration == 1
    assert changed(initial, module.policy)
    spin_dir = module.spin_dir
    assert sorted(p.name for p in spin_dir.iterdir()) == ["iteration_0.jsonl", "iteration_1.jsonl"]
    lines = read(spin_dir / "iteration_0.jsonl")
    assert [line["id"] for line in lines] == [f"train/{i}" for i in range(8)] + [f"val/{i}" for i in range(4)]
    assert all(isinstance(line["rejected"], str) and line["ref_chosen_logps"] < 0 for line in lines)
    tags = event_tags(trainer.log_dir)
    spin = {"spin/iteration", "spin/truncated_ratio", "spin/heldout_margin", "spin/generation_seconds"}
    expected = spin | {"train/loss", "train/rewards/margins",
                       "train/rewards/accuracies", "val/loss", "val/logps/rejected"}
    assert expected <= tags, sorted(expected - tags)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = list(Path(trainer.log_dir).glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(event_file), size_guidance={"tensors": 0})
    acc.Reload()
    tables = acc.Tensors("spin/pairs/text_summary")
    assert len(tables) == 2 and b"ground truth (chosen)" in tables[0].tensor_proto.string_val[0]
    iterations = [(e.step, e.value) for e in acc.Scalars("spin/iteration")]
    assert iterations == [(0, 0.0), (4, 1.0)]  # once per iteration, at the step it begins


def test_iteration_boundary_new_responses_come_from_the_updated_policy(two_iterations):
    """Iteration 1's responses are what the policy that ENDED iteration 0 samples (same seed key), not what the
    initial policy samples; its opponent log-probs are that policy's log-probs of the pairs (the reference equals
    the policy that ended the iteration). The schedule and AdamW's moments restart at the boundary."""
    module, trainer, boundary, initial = two_iterations
    dm = trainer.datamodule
    items = dm.self_play_items()
    prompts = [item["prompt_ids"] for item in items]
    common = {"batch_size": 4, "pad_id": dm.tokenizer.pad_token_id, "rank": 0, "world": 1, "padded": False}
    ended_iteration_0 = load_model("tiny-llama")[0]
    ended_iteration_0.load_state_dict(boundary.policies[0])
    first = load_model("tiny-llama")[0]
    assert not changed(initial, first)

    lines = read(module.spin_dir / "iteration_1.jsonl")
    texts = [line["rejected"] for line in lines]
    updated = generate_responses(module.sampler, ended_iteration_0, dm.tokenizer, prompts, key="spin/1", **common)
    assert [updated[i]["text"] for i in range(len(items))] == texts
    stale = generate_responses(module.sampler, first, dm.tokenizer, prompts, key="spin/1", **common)
    assert [stale[i]["text"] for i in range(len(items))] != texts

    rows = [dm.pair_row(line) for line in lines]
    scores = pair_logps(ended_iteration_0, rows, dm.collate, **common)
    # Summed log-probs of ~170 nats: the module's pass runs padding-free, this one padded, so fp32 summation order
    # differs (3e-5 apart with transformers 5.25, 1.8e-7 relative); the initial policy's differ by whole nats.
    for i, line in enumerate(lines):
        assert line["ref_chosen_logps"] == pytest.approx(scores[i]["ref_chosen_logps"], rel=1e-6, abs=1e-5)
        assert line["ref_rejected_logps"] == pytest.approx(scores[i]["ref_rejected_logps"], rel=1e-6, abs=1e-5)
    # The iteration-0 file was scored by the initial policy, which differs: the check above can fail.
    assert read(module.spin_dir / "iteration_0.jsonl")[0]["ref_chosen_logps"] != lines[0]["ref_chosen_logps"]

    assert boundary.first_lr[0] == boundary.first_lr[1] < module.hparams.learning_rate  # warmup again
    assert boundary.state_sizes == [0, 0]  # AdamW's moments reset before iteration 1's first step


def test_a_new_run_refuses_another_runs_iterations(tmp_path):
    trainer = tiny_trainer(tmp_path, max_steps=1, logger=False, limit_val_batches=0)
    trainer.fit(SPIN(policy="tiny-llama", **GEN), data(max_samples=4, val_size=0))
    again = tiny_trainer(tmp_path, max_steps=1, logger=False, limit_val_batches=0)
    with pytest.raises(FileExistsError, match="iteration_0.jsonl exists from an earlier run"):
        again.fit(SPIN(policy="tiny-llama", **GEN), data(max_samples=4, val_size=0))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"iterations": 0}, "--model.iterations=0: at least 1"), ({"epochs_per_iteration": 0}, "epochs_per_iteration"),
     ({"beta": 0.0}, "--model.beta=0.0: λ must be > 0")],
)  # fmt: skip
def test_bad_options_name_the_flag(options, message):
    with pytest.raises(ValueError, match=message):
        SPIN(policy="tiny-llama", **options)


def test_needs_its_datamodule_and_completion_loss(tmp_path):
    from lit_align.datamodules import SFTDataModule

    with pytest.raises(TypeError, match="SPIN trains on a SPINDataModule"):
        tiny_trainer(tmp_path, max_steps=1).fit(SPIN(policy="tiny-llama"), SFTDataModule(tokenizer="tiny-llama"))
    with pytest.raises(ValueError, match="completion_only_loss"):
        SPINDataModule(tokenizer="tiny-llama", completion_only_loss=False)


# -- kill and resume -------------------------------------------------------------------------------
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def resume_run(out, *args):
    return subprocess.run([sys.executable, str(REPO / "tests" / "spin_resume_run.py"), str(out), *args], cwd=out,
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_kill_and_resume_across_an_iteration_boundary_equals_the_uninterrupted_run(tmp_path):
    """2 iterations x 4 steps, checkpoints every 2 steps, SIGKILL after step 7. Resumed from step 6 (inside iteration
    1: the pairs and the opponent's log-probs come back from the run's file, the policy has moved on) and from step 4
    (the end of iteration 0, with iteration 1's file deleted: the resumed run crosses the boundary and generates it
    again): every resumed step sees the same batch and loss, and the final weights are the uninterrupted run's."""
    for args in (["full"], ["kill"]):
        result = resume_run(tmp_path, *args)
        expected = -signal.SIGKILL if args == ["kill"] else 0
        assert result.returncode == expected, result.stderr[-3000:]
    full = {s["step"]: s for s in read(tmp_path / "full.jsonl")}
    assert sorted(full) == list(range(1, 9)) and [full[s]["iteration"] for s in (4, 5)] == [0, 1]
    pairs = tmp_path / "kill" / "spin" / "iteration_1.jsonl"
    assert pairs.read_text() == (tmp_path / "full" / "spin" / "iteration_1.jsonl").read_text()
    for step, regenerate in ((6, False), (4, True)):
        if regenerate:
            pairs.unlink()
        result = resume_run(tmp_path, "resume", str(step))
        assert result.returncode == 0, result.stderr[-3000:]
        after = read(tmp_path / f"resume_{step}.jsonl")
        assert [s["step"] for s in after] == list(range(step + 1, 9))
        for s in after:
            expected = full[s["step"]]
            assert (s["batch"], s["iteration"]) == (expected["batch"], expected["iteration"]), s["step"]
            assert s["loss"] == pytest.approx(expected["loss"], rel=1e-6, abs=1e-7), s["step"]
        final = torch.load(tmp_path / "full.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"resume_{step}.pt", weights_only=True)
        for name, value in final.items():
            torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
        assert pairs.read_text() == (tmp_path / "full" / "spin" / "iteration_1.jsonl").read_text()
    pairs.unlink()  # inside iteration 1 the policy has moved on: it must not answer for the opponent
    result = resume_run(tmp_path, "resume", "6")
    assert result.returncode != 0 and "iteration_1.jsonl is missing" in result.stderr


@pytest.mark.slow
def test_recipe_resumes_into_its_own_version_dir_from_the_checkpoints_spin_dir(tmp_path):
    """The CLI path (18 train rows: 9 steps per iteration; the recipe checkpoints every 8): stop at step 16, inside
    iteration 1, resume with --ckpt_path (the run's own logger version again): the resumed run reads the iteration
    file named in the checkpoint, generates no pairs anew, and ends after 2 iterations."""
    base = [sys.executable, str(REPO / "recipes/spin.py"), "fit", "--config", str(REPO / "recipes/configs/tiny.yaml"),
            "--model.sampling.max_new_tokens", "8", "--data.max_samples", "20", "--data.val_size", "0.1"]  # fmt: skip
    first = subprocess.run([*base, "--trainer.max_steps", "16"], cwd=tmp_path, env=ENV, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp_path / "runs" / "spin"
    ckpt = runs / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 16 and state["spin"] == {"iteration": 1, "dir": str(runs / "version_0" / "spin")}
    pairs = runs / "version_0" / "spin" / "iteration_1.jsonl"
    written = pairs.stat().st_mtime_ns
    resumed = subprocess.run([*base, "--trainer.max_steps", "-1", "--ckpt_path", str(ckpt)], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(ckpt, weights_only=True)["global_step"] == 18
    assert not (runs / "version_1").exists() and pairs.stat().st_mtime_ns == written
    assert (runs / "version_0" / "hf_model" / "model.safetensors").exists()
