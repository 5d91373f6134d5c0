"""RLVR: the reward-model z-score by hand, the combined reward and raw per-verifier metrics, the estimator switch,
held-out accuracy at validation, a smoke fit with a verifier + a reward model, configured verifiers that survive a
checkpoint, and the GSM8K example config."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from lit_align.algorithms.rlvr import RLVR
from lit_align.datamodules.prompt import PromptDataModule
from lit_align.losses.policy_gradient import group_normalized_advantages, leave_one_out_advantages
from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama, load_model
from lit_align.rewards.math_answer import MathAnswerReward
from lit_align.rewards.scoring import batch_zscore
from lit_align.rewards.verifiers import FormatReward, completion_text, format_reward
from tests.conftest import REPO, write_jsonl
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.online_helpers import fixed_rollout, prompt_batch, prompt_datamodule, tiny_options


def even_length(prompts, completions, **kwargs):
    """A 0/1 verifier with spread on a random tiny model: the completion has an even number of characters."""
    return [float(len(completion_text(c)) % 2 == 0) for c in completions]


def tiny_rlvr(**kwargs) -> RLVR:
    policy, tokenizer = load_model("tiny-llama")
    return RLVR(policy=policy, **tiny_options(tokenizer, **{"rewards": {"reward_funcs": [even_length]}, **kwargs}))


@pytest.fixture
def reward_model_dir(tmp_path):
    tokenizer = build_byte_tokenizer()
    model = build_tiny_llama(tokenizer, seed=3, kind="sequence_classification")
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


def test_batch_zscore_by_hand():
    """[1, 2, 3, NaN]: μ = 2, population σ = sqrt((1 + 0 + 1) / 3) = sqrt(2/3), so z = ∓sqrt(3/2), 0; NaN kept.
    One scored entry, or all equal (up to rounding), gives 0; nothing scored stays NaN."""
    z = batch_zscore(torch.tensor([1.0, 2.0, 3.0, math.nan]))
    torch.testing.assert_close(z[:3], torch.tensor([-math.sqrt(1.5), 0.0, math.sqrt(1.5)]))
    assert z[3].isnan()
    scored = z[:3]
    assert scored.mean().abs() < 1e-7 and (scored**2).mean().item() == pytest.approx(1.0)  # unit mean square
    one = batch_zscore(torch.tensor([math.nan, 5.0]))
    assert one[0].isnan() and one[1].item() == 0.0
    assert batch_zscore(torch.full((5,), 0.1)).tolist() == [0.0] * 5  # rounding of equal scores is no spread
    assert batch_zscore(torch.tensor([math.nan, math.nan])).isnan().all()
    torch.testing.assert_close(batch_zscore(torch.tensor([10.0, 30.0])), torch.tensor([-1.0, 1.0]))


def test_combined_reward_normalizes_only_the_reward_model_and_metrics_stay_raw(tmp_path):
    """One update on a fixed rollout with a 0/1 verifier v (weight 1) and a "reward model" s (weight 0.5, listed in
    normalized_rewards): the rewards reaching the advantage are v + 0.5 z(s); rewards/<name>/mean are the raw
    means; reward is the combined mean."""

    def rm(prompts, completions, **kwargs):
        return [100.0 + 7.0 * len(completion_text(c)) for c in completions]  # large raw scale and offset

    module = tiny_rlvr(rewards={"reward_funcs": [even_length, rm], "reward_weights": [1.0, 0.5]},
                       normalized_rewards=["rm"])
    assert module.normalized_columns == [1]
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 4, [2, 3, 4, 6, 1, 6, 5, 2])
    module.generate_samples = lambda *args: rollout
    seen = {}
    original = module.compute_advantages

    def probe(rewards, exp):
        seen["rewards"] = rewards.clone()
        return original(rewards, exp)

    module.compute_advantages = probe
    out = module.update(batch)

    v = torch.tensor(even_length(None, rollout.texts))
    s = torch.tensor(rm(None, rollout.texts))
    z = (s - s.mean()) / s.std(unbiased=False)
    torch.testing.assert_close(seen["rewards"], v + 0.5 * z)
    assert out["rewards/even_length/mean"] == pytest.approx(v.mean().item())  # verifier accuracy, raw
    assert out["rewards/rm/mean"] == pytest.approx(s.mean().item(), rel=1e-6)  # raw reward-model score
    assert out["reward"] == pytest.approx((v + 0.5 * z).mean().item(), abs=1e-6)  # = accuracy: mean z is 0
    assert out["reward"] == pytest.approx(v.mean().item(), abs=1e-6)


def test_no_normalization_without_a_reward_model_and_empty_list_turns_it_off(tmp_path, reward_model_dir):
    assert tiny_rlvr().normalized_columns == []  # verifiers only: used as they are
    module = tiny_rlvr(rewards={"reward_funcs": [even_length, f"model:{reward_model_dir}"]})
    assert module.rewards.names == ["even_length", "reward_model"] and module.normalized_columns == [1]
    per_func = torch.tensor([[1.0, 5.0], [0.0, 7.0], [1.0, math.nan]])
    torch.testing.assert_close(module.combine_rewards(per_func), torch.tensor([0.0, 1.0, 1.0]))  # z = -1, +1
    given = torch.tensor([[0.5], [2.0], [math.nan]])  # rewards of a rollout made outside (update's seed interface)
    torch.testing.assert_close(module.combine_rewards(given), given[:, 0], equal_nan=True)  # as given
    raw = tiny_rlvr(rewards={"reward_funcs": [even_length, f"model:{reward_model_dir}"]}, normalized_rewards=[])
    torch.testing.assert_close(raw.combine_rewards(per_func), torch.tensor([6.0, 7.0, 1.0]))
    with pytest.raises(ValueError, match=r"normalized_rewards names \['rm'\].*even_length"):
        tiny_rlvr(normalized_rewards=["rm"])


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [
        # group 1: mean 1/4, unbiased std sqrt((9/16 + 3/16) / 3) = 1/2; group 2: mean 1/2, std sqrt(1/3)
        ("group_normalized", [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001]
         + [x / (math.sqrt(1 / 3) + 1e-4) for x in (0.5, 0.5, -0.5, -0.5)]),
        # r_i minus the mean of the other three
        ("leave_one_out", [1.0, -1 / 3, -1 / 3, -1 / 3, 2 / 3, 2 / 3, -2 / 3, -2 / 3]),
    ],
)  # fmt: skip
def test_advantage_estimator_switch(estimator, expected):
    module = tiny_rlvr(advantage_estimator=estimator)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    advantages = module.compute_advantages(rewards, None)
    torch.testing.assert_close(advantages, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    function = {"group_normalized": group_normalized_advantages, "leave_one_out": leave_one_out_advantages}[estimator]
    torch.testing.assert_close(advantages, function(rewards, 4))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"advantage_estimator": "greedy"}, "advantage_estimator='greedy': one of"),
        ({"num_generations": 1}, "num_generations=1: at least 2"),
        ({"importance_ratio": "sequence_max"}, "importance_ratio"),
    ],
)
def test_options_refused_before_any_model_loads(monkeypatch, options, message):
    import lit_align.models.loading

    monkeypatch.setattr(lit_align.models.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match=message):
        RLVR(policy="tiny-llama", rewards={"reward_funcs": [even_length]}, **options)


def test_fit_smoke_with_verifier_and_reward_model_and_held_out_accuracy(tmp_path, reward_model_dir):
    """Tiny preset, leave-one-out, a verifier + a reward model: parameters move, the metrics are logged apart, and
    val/rewards/even_length/mean is the accuracy of greedy completions of the held-out prompts, by hand."""
    rewards = {"reward_funcs": [even_length, f"model:{reward_model_dir}"], "reward_weights": [1.0, 0.5]}
    module = tiny_rlvr(rewards=rewards, advantage_estimator="leave_one_out", beta=0.05)
    dm = prompt_datamodule(tmp_path, module.tokenizer, n=12, val_size=4, eval_batch_size=2)
    before = snapshot(module.policy)
    trainer = tiny_trainer(tmp_path, max_steps=2, val_check_interval=2, check_val_every_n_epoch=None)
    trainer.fit(module, dm)
    assert changed(before, module.policy)
    tags = event_tags(trainer.logger.log_dir)
    per_func = {f"rewards/{n}/mean" for n in ("even_length", "reward_model")}
    assert {f"train/{m}" for m in ("reward", "reward_std", "frac_reward_zero_std", "kl", *per_func)} <= tags
    assert {f"val/{m}" for m in ("reward", *per_func)} <= tags

    correct = []
    for batch in dm.val_dataloader():
        greedy = module.sample(batch["prompt_input_ids"], batch["prompt_attention_mask"], greedy=True)
        correct += even_length(None, greedy.texts)
    metrics = trainer.validate(module, dm, verbose=False)[0]
    assert len(correct) == 4
    assert metrics["val/rewards/even_length/mean"] == pytest.approx(sum(correct) / len(correct))
    assert metrics["val/reward"] == pytest.approx(sum(correct) / len(correct), abs=1e-5)  # + 0.5 x mean z = 0


def test_configured_verifiers_survive_a_checkpoint(tmp_path):
    """A configured instance is recorded as class_path + init_args (plain data: the checkpoint loads with
    weights_only=True) and load_from_checkpoint rebuilds the same reward functions."""
    rows = [{"prompt": [{"role": "user", "content": f"{i} + 1?"}], "final_answer": str(i + 1)} for i in range(6)]
    _, tokenizer = load_model("tiny-llama")
    verifier = MathAnswerReward(column="final_answer", require_marker=True, name="gsm8k")
    marker = FormatReward(pattern=r"####\s*\d+", strict=False, name="marker")
    specs = [verifier, marker, format_reward, "lit_align.rewards.verifiers:arithmetic_answer_reward"]
    module = RLVR(policy="tiny-llama", tokenizer=tokenizer, rewards={"reward_funcs": specs,
                  "reward_weights": [1.0, 0.1, 0.1, 0.0]}, num_generations=2, sampling={"max_new_tokens": 4},
                  advantage_estimator="leave_one_out")  # fmt: skip
    path = write_jsonl(tmp_path / "rows.jsonl", [{**r, "answer": r["final_answer"]} for r in rows])
    dm = PromptDataModule(tokenizer=tokenizer, data_path=str(path), val_size=0, batch_size=2)
    trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0, enable_checkpointing=True)
    trainer.fit(module, dm)
    (ckpt,) = (tmp_path / "tb").rglob("*.ckpt")

    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["rewards"]["reward_funcs"] == [
        {"class_path": "lit_align.rewards.math_answer.MathAnswerReward",
         "init_args": {"column": "final_answer", "max_chars": 20000, "require_marker": True, "name": "gsm8k"}},
        {"class_path": "lit_align.rewards.verifiers.FormatReward",
         "init_args": {"tags": None, "pattern": r"####\s*\d+", "strict": False, "name": "marker"}},
        "lit_align.rewards.verifiers:format_reward",
        "lit_align.rewards.verifiers:arithmetic_answer_reward",
    ]  # fmt: skip
    assert hparams["advantage_estimator"] == "leave_one_out"
    assert hparams["rewards"]["reward_weights"] == [1.0, 0.1, 0.1, 0.0]
    loaded = RLVR.load_from_checkpoint(ckpt, weights_only=True)
    assert [repr(f) for f in loaded.rewards.funcs[:2]] == [repr(verifier), repr(marker)]
    assert loaded.rewards.funcs[2] is format_reward and loaded.rewards.names == module.rewards.names
    assert loaded.advantage_estimator == "leave_one_out" and loaded.rewards.weights.tolist() == pytest.approx(
        [1.0, 0.1, 0.1, 0.0]
    )
    for name, value in module.policy.state_dict().items():
        torch.testing.assert_close(loaded.policy.state_dict()[name], value)


def gsm8k_like_rows(n: int) -> list[dict]:
    return [{"id": f"t-{i}", "question": f"Tom has {i} apples and buys 2 more. How many now?",
             "solution": f"{i} + 2 = {i + 2}", "final_answer": str(i + 2)} for i in range(n)]  # fmt: skip


def test_gsm8k_example_config_parses_and_wraps_questions_as_user_turns():
    from tests.test_configs import print_config

    example = REPO / "recipes/configs/examples/rlvr_gsm8k.yaml"
    printed = print_config(REPO / "recipes/rlvr.py", "--config", str(example))
    assert "class_path: lit_align.rewards.math_answer.MathAnswerReward" in printed and "column: final_answer" in printed
    assert "user_template:" in printed and "val_size: 200\n" in printed  # an int, not 200.0 (a fraction to datasets)
    assert "pattern: (?i)final answer is" in printed and "End with: The final answer is <number>." in printed


@pytest.mark.slow
def test_recipe_runs_on_tiny_default_and_gsm8k_example(tmp_path):
    """The recipe end to end on the tiny overlay: the default (arithmetic) config, then the GSM8K example on a small
    GSM8K-shaped file; the checkpoints hold plain data and the held-out accuracy metric is logged."""
    tiny = str(REPO / "recipes/configs/tiny.yaml")
    recipe = str(REPO / "recipes/rlvr.py")
    out = subprocess.run([sys.executable, recipe, "fit", "--config", tiny], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "rlvr" / "version_0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert (run_dir / "hf_model" / "model.safetensors").exists()
    assert {"train/reward", "val/reward", "val/rewards/arithmetic_answer_reward/mean"} <= event_tags(run_dir)

    data = write_jsonl(tmp_path / "gsm8k.jsonl", gsm8k_like_rows(12))
    example = str(REPO / "recipes/configs/examples/rlvr_gsm8k.yaml")
    cmd = [sys.executable, recipe, "fit", "--config", example, "--config", tiny, "--data.data_path", str(data),
           "--data.val_size", "4", "--model.sampling.max_new_tokens", "8"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "rlvr_gsm8k" / "version_0"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["rewards"]["reward_funcs"][0]["init_args"]["column"] == "final_answer"
    assert {"val/rewards/gsm8k_answer/mean", "val/rewards/answer_line/mean", "val/reward"} <= event_tags(run_dir)
    assert RLVR.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True).rewards.names == [
        "gsm8k_answer", "answer_line"
    ]  # fmt: skip

