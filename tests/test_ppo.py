"""PPO with a critic: one update's gradient by hand, the critic's initializations, the KL controller and its checkpoint,
minibatch shuffling, refusals, a smoke fit, and the two recipe commands on the tiny preset."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_align.algorithms.ppo import PPO
from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama, load_model
from lit_align.models.logprobs import token_logps
from lit_align.training.critic import token_values
from tests.conftest import REPO
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.online_helpers import fixed_rollout, grads, length_reward, prompt_batch, prompt_datamodule, tiny_options

TRL_METRICS = (
    "objective/kl", "objective/entropy", "objective/rlhf_reward", "objective/non_score_reward", "objective/scores",
    "objective/kl_coef", "policy/approxkl_avg", "policy/clipfrac_avg", "policy/entropy_avg", "loss/policy_avg",
    "loss/value_avg", "val/clipfrac_avg", "val/ratio",
)  # fmt: skip


def tiny_reward_model(path: Path, vocab_extra: int = 0) -> str:
    """A tiny random sequence classifier saved like RewardModel's export; its head scaled so scores spread."""
    if not (path / "config.json").exists():
        tokenizer = build_byte_tokenizer()
        if vocab_extra:
            tokenizer.add_tokens([f"<extra{i}>" for i in range(vocab_extra)])
        model = build_tiny_llama(tokenizer, seed=3, kind="sequence_classification")
        with torch.no_grad():
            model.score.weight.mul_(30.0)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return f"model:{path}"


def tiny_ppo(tmp_path: Path, reward_funcs: list | None = None, sampling: dict | None = None, **kwargs) -> PPO:
    policy, tokenizer = load_model("tiny-llama")
    rewards = {"reward_funcs": reward_funcs or [tiny_reward_model(tmp_path / "rm")], "log_completions_every_n_steps": 0}
    return PPO(policy=policy, **{**tiny_options(tokenizer, sampling, rewards), "num_generations": 1, **kwargs})


def test_fit_smoke_trains_policy_and_critic_checkpoints_them_and_the_adapted_beta(tmp_path):
    """2 rollouts x (2 epochs x 2 minibatches) = 8 optimizer steps; the policy and critic move, the reward model
    and reference do not; the checkpoint holds policy, critic and β only (plain data), and a resume restores β."""
    module = tiny_ppo(tmp_path, num_iterations=2, num_minibatches=2, num_generations=2, kl_target=0.5, kl_horizon=20)
    scorer = module.rewards.models[0]
    before = {name: snapshot(m) for name, m in
              (("policy", module.policy), ("critic", module.critic), ("rm", scorer.model), ("ref", module.reference))}
    dm = prompt_datamodule(tmp_path, module.tokenizer, n=6, val_size=2)
    trainer = tiny_trainer(tmp_path, max_steps=8, val_check_interval=2, check_val_every_n_epoch=None)
    trainer.fit(module, dm)
    assert trainer.global_step == 8 and module._rollouts == 2
    assert changed(before["policy"], module.policy) and changed(before["critic"], module.critic)
    assert not changed(before["rm"], scorer.model) and not changed(before["ref"], module.reference)
    tags = event_tags(trainer.logger.log_dir)
    assert {f"train/{m}" for m in TRL_METRICS} <= tags and {"train/loss", "train/reward", "val/reward"} <= tags
    assert module.beta != 0.05  # the adaptive controller moved β after each rollout

    ckpt_path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt_path)
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"policy", "critic"}
    assert ckpt["kl_coef"] == module.beta
    resumed = tiny_ppo(tmp_path, num_iterations=2, num_minibatches=2, num_generations=2, kl_target=0.5, kl_horizon=20)
    assert resumed.beta == 0.05
    tiny_trainer(tmp_path, max_steps=8, limit_val_batches=0).fit(resumed, dm, ckpt_path=ckpt_path, weights_only=True)
    assert resumed.beta == ckpt["kl_coef"]
    for name, value in module.critic.state_dict().items():
        torch.testing.assert_close(resumed.critic.state_dict()[name], value, rtol=0, atol=0)


def test_one_update_by_hand(tmp_path):
    """One on-policy update (1 epoch, 1 minibatch, ratio 1, V = V_old) on a fixed rollout of 8 completions (two
    truncated), β = 0.3, γ = 0.9, λ = 0.8, missing-EOS penalty 0.5, a critic from the policy. Written out here
    with explicit loops, independent of the module's functions:
        score_i = len(text_i) / 10 − 0.5·[no EOS],  r_it = −β (log π_old − log π_ref)_it  (+ score_i at t = n_i − 1)
        δ_t = r_t + γ V_{t+1} − V_t (V_{n_i} = 0),  A_t = δ_t + γλ A_{t+1},  R_t = A_t + V_t
        Â = (A − mean) / sqrt(var_unbiased + 1e-8) over the 8 rows' tokens
        L = Σ_it m [−Â_it π/π.detach() + 0.1 · ½ (V_it − R_it)²] / Σ m
    and the gradients of L for policy AND critic equal the module's."""
    beta, gamma, lam, vf_coef = 0.3, 0.9, 0.8, 0.1
    reference, _ = load_model("tiny-llama", seed=1)
    module = tiny_ppo(tmp_path, reward_funcs=[length_reward], value_model="policy", reference_policy=reference,
                      beta=beta, gamma=gamma, lam=lam, vf_coef=vf_coef, missing_eos_penalty=0.5, num_iterations=1,
                      num_generations=4, max_grad_norm=None)  # fmt: skip
    policy, critic = copy.deepcopy(module.policy), copy.deepcopy(module.critic)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    lengths = [2, 3, 8, 6, 1, 8, 5, 2]
    rollout = fixed_rollout(batch, module.tokenizer, 4, lengths)
    module.generate_samples = lambda *args: rollout
    seen, recorded = {}, {}
    original = module.compute_advantages

    def probe(rewards, exp):
        seen["rewards"] = rewards.clone()
        return original(rewards, exp)

    module.compute_advantages = probe
    module.step_manual = lambda: recorded.update(grads(module)) or {}
    module.update(batch)

    input_ids, attention_mask, labels = rollout.model_inputs()
    P, B, L = rollout.prompt_input_ids.shape[1], len(lengths), max(lengths)
    mask = rollout.completion_mask.float()
    logps = token_logps(policy, input_ids, attention_mask, labels).logps[:, P:]
    with torch.no_grad():
        ref_logps = token_logps(reference, input_ids, attention_mask, labels).logps[:, P:]
    hidden = critic.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    values = critic.score(hidden)[..., 0][:, P - 1 : -1]  # V(s_t): the position before token t
    n = rollout.lengths.tolist()
    truncated = rollout.is_truncated.tolist()
    assert truncated == [False, False, True, False, False, True, False, False]
    rewards = torch.zeros(B, L)
    for i in range(B):
        for t in range(n[i]):
            rewards[i, t] = -beta * (logps[i, t].item() - ref_logps[i, t].item())
        rewards[i, n[i] - 1] += len(rollout.texts[i]) / 10 - 0.5 * truncated[i]
    torch.testing.assert_close(seen["rewards"], rewards, atol=1e-5, rtol=0)

    v = values.detach()
    advantages, returns = torch.zeros(B, L), torch.zeros(B, L)
    for i in range(B):
        next_value, next_advantage = 0.0, 0.0
        for t in reversed(range(n[i])):
            delta = rewards[i, t] + gamma * next_value - v[i, t]
            next_advantage = delta + gamma * lam * next_advantage
            next_value = v[i, t]
            advantages[i, t], returns[i, t] = next_advantage, next_advantage + v[i, t]
    entries = torch.cat([advantages[i, : n[i]] for i in range(B)])
    whitened = (advantages - entries.mean()) / math.sqrt(entries.var().item() + 1e-8)
    ratio = torch.exp(logps - logps.detach())
    per_token = -whitened * ratio + vf_coef * 0.5 * (values - returns) ** 2
    loss = (per_token * mask).sum() / mask.sum()
    loss.backward()
    expected = {f"policy.{k}": p.grad for k, p in policy.named_parameters() if p.grad is not None}
    expected |= {f"critic.{k}": p.grad for k, p in critic.named_parameters() if p.grad is not None}
    assert recorded.keys() == expected.keys() and any(k.startswith("critic.score") for k in expected)
    for name, grad in expected.items():
        torch.testing.assert_close(recorded[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_critic_initializations_and_values(tmp_path):
    """reward_model: a trainable copy of the reward model (its head too); policy: the policy's backbone and a new
    head; a directory: loaded; a different vocabulary: refused. token_values reads the head at P−1 .. P+L−2."""
    module = tiny_ppo(tmp_path, beta=0.0)
    scorer = module.rewards.models[0]
    rm_state, critic_state = scorer.model.state_dict(), module.critic.state_dict()
    assert rm_state.keys() == critic_state.keys()
    assert all(torch.equal(rm_state[k], critic_state[k]) and rm_state[k] is not critic_state[k] for k in rm_state)
    assert all(p.requires_grad for p in module.critic.parameters())
    assert not any(p.requires_grad for p in scorer.model.parameters())
    assert module.reference is None  # beta = 0: no reference at all

    from_policy = tiny_ppo(tmp_path, beta=0.0, value_model="policy")
    backbone, policy_backbone = from_policy.critic.model.state_dict(), from_policy.policy.model.state_dict()
    assert all(torch.equal(backbone[k], policy_backbone[k]) for k in policy_backbone)
    assert from_policy.critic.score.weight.shape == (1, 64)

    from_dir = tiny_ppo(tmp_path, beta=0.0, value_model=str(tmp_path / "rm"))
    assert torch.equal(from_dir.critic.score.weight, scorer.model.score.weight)

    other = tiny_reward_model(tmp_path / "rm_big_vocab", vocab_extra=5)
    with pytest.raises(ValueError, match="vocabulary"):
        tiny_ppo(tmp_path, beta=0.0, reward_funcs=[other])

    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 1, [3, 5])
    input_ids, attention_mask, _ = rollout.model_inputs()
    P = rollout.prompt_input_ids.shape[1]
    with torch.no_grad():
        values = token_values(module.critic, input_ids, attention_mask, P)
        hidden = module.critic.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        expected = module.critic.score(hidden)[..., 0]
    assert values.shape == (2, 5)
    torch.testing.assert_close(values, expected[:, P - 1 : P + 4])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kl_penalty": "loss", "value_model": "policy"}, ValueError, "kl_penalty"),
        ({"importance_ratio": "sequence", "value_model": "policy"}, ValueError, "importance_ratio"),
        ({"reward_funcs": ["tests.online_helpers:length_reward"]}, ValueError, "value_model"),
        ({"reward_funcs": ["model:runs/reward_model/version_0/hf_model"]}, FileNotFoundError,
         "python recipes/reward_model.py fit"),
        ({"kl_target": 6.0, "beta": 0.0, "value_model": "policy"}, ValueError, "kl_target"),
        ({"gamma": 1.5, "value_model": "policy"}, ValueError, "gamma"),
        ({"cliprange_value": 0.0, "value_model": "policy"}, ValueError, "cliprange_value"),
        ({"lora_dropout": 0.1, "value_model": "policy"}, ValueError, "lora_dropout"),
    ],
)  # fmt: skip
def test_refusals_come_before_any_model_loads(monkeypatch, tmp_path, kwargs, error, match):
    import lit_align.models.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(lit_align.models.loading, "load_model", no_loading)
    monkeypatch.chdir(tmp_path)  # no runs/ here
    rewards = {"reward_funcs": kwargs.pop("reward_funcs", [length_reward])}
    with pytest.raises(error, match=match):
        PPO(policy="tiny-llama", rewards=rewards, **kwargs)


def test_minibatches_are_reshuffled_every_epoch_and_global_step_counts_updates(tmp_path):
    """4 rows, 3 epochs x 2 minibatches: each epoch a permutation of its own (TRL reshuffles per epoch), two minibatches
    of 2 rows each, 6 optimizer steps per rollout; the orders are a function of the seed alone."""

    def orders(seed):
        module = tiny_ppo(tmp_path, num_iterations=3, num_minibatches=2, sampling={"seed": seed})
        seen, steps = [], []
        original = module.minibatch_order
        module.minibatch_order = lambda n, it: seen.append(original(n, it).tolist()) or torch.tensor(seen[-1])
        step = module.step_manual
        module.step_manual = lambda: steps.append(1) or step()
        module.update(prompt_batch(tmp_path, module.tokenizer, n=4))
        assert len(steps) == 6
        return seen

    first = orders(0)
    assert len(first) == 3 and all(sorted(o) == [0, 1, 2, 3] for o in first) and len({tuple(o) for o in first}) > 1
    assert orders(0) == first and orders(1) != first
    single = tiny_ppo(tmp_path, num_minibatches=1)
    assert single.minibatch_order(4, 0).tolist() == [0, 1, 2, 3]  # one minibatch: no shuffle needed


def test_adaptive_kl_follows_the_formula_and_fixed_kl_stays(tmp_path):
    """After each rollout β ← β (1 + clip(KL/target − 1, ±0.2) · n / horizon), KL the rollout's mean summed k1."""
    reference, _ = load_model("tiny-llama", seed=1)  # policy ≠ reference: KL ≠ 0 from the first rollout
    module = tiny_ppo(tmp_path, reference_policy=reference, num_generations=2, kl_target=0.5, kl_horizon=40)
    fixed = tiny_ppo(tmp_path, reference_policy=copy.deepcopy(reference), num_generations=2)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    for _ in range(2):
        beta = module.beta
        out = module.update(batch)
        assert out["objective/kl_coef"] == pytest.approx(beta)
        error = min(max(out["objective/kl"] / 0.5 - 1, -0.2), 0.2)
        assert abs(error) > 0 and module.beta == pytest.approx(beta * (1 + error * 4 / 40), rel=1e-6)
        fixed.update(batch)
        assert fixed.beta == 0.05


def test_unscorable_completions_take_no_part(tmp_path):
    """A reward function returning None for prompt 0: its rows leave the loss, the whitening and the value targets
    (mask 0, advantage 0, reward 0) and the objective metrics."""

    def only_second_prompt(prompts, completions, answer, **kwargs):
        return [None if a == "0" else len(c[0]["content"]) / 10 for c, a in zip(completions, answer, strict=True)]

    module = tiny_ppo(tmp_path, reward_funcs=[only_second_prompt], value_model="policy", num_generations=2)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 2, [3, 4, 2, 5])
    module.generate_samples = lambda *args: rollout
    captured = {}
    original = module.compute_advantages

    def probe(rewards, exp):
        advantages = original(rewards, exp)
        captured.update(exp=exp, rewards=rewards)
        return advantages

    module.compute_advantages = probe
    out = module.update(batch)
    exp = captured["exp"]
    assert exp.loss_mask[:2].sum() == 0 and exp.loss_mask[2:].sum() == 7
    assert (captured["rewards"][:2] == 0).all() and (exp.advantages[:2] == 0).all()
    assert (exp.extra["returns"][:2] == 0).all()
    expected = torch.tensor([len(t) / 10 for t in rollout.texts[2:]]).mean().item()
    assert out["objective/scores"] == pytest.approx(expected, abs=1e-6) and math.isfinite(out["loss"])


def test_lora_policy_and_critic(tmp_path):
    """With LoRA the critic gets adapters too (its score head trained in full); the reference is the policy with its
    adapters off; one update moves only adapter and head weights."""
    pytest.importorskip("peft")
    module = tiny_ppo(tmp_path, lora_r=4, value_model="policy")
    assert module.reference_source == "adapter" and hasattr(module.critic, "peft_config")
    trainable = [n for n, p in module.critic.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    before = snapshot(module.critic)
    out = module.update(prompt_batch(tmp_path, module.tokenizer, n=2))
    assert math.isfinite(out["loss"]) and changed(before, module.critic)


@pytest.mark.slow
def test_the_two_recipe_commands_on_tiny_and_fsdp2_resume(tmp_path):
    """`python recipes/reward_model.py fit` then `python recipes/ppo.py fit` (tiny overlay) in one directory: the
    second scores with the first's export and starts its critic from it; checkpoint (plain data, with the critic
    and β) and the Hugging Face export of the policy are written. Then PPO under FSDP2 on 2 CPU processes with an
    adaptive β: a sharded (DCP) checkpoint after one rollout (8 steps), and a resume to 16 steps that continues
    from the saved β (the controller's factor with these settings is 1 − 0.2 x 4 / 10 = 0.92 per rollout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    tiny = ["--config", str(REPO / "recipes/configs/tiny.yaml")]

    def fit(recipe, *args):
        cmd = [sys.executable, str(REPO / f"recipes/{recipe}.py"), "fit", *tiny, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
        assert out.returncode == 0, out.stderr[-3000:]

    fit("reward_model")
    fit("ppo")
    run_dir = tmp_path / "runs" / "ppo" / "version_0"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"policy", "critic"} and ckpt["kl_coef"] == 0.05
    assert (run_dir / "hf_model" / "model.safetensors").exists()
    assert {"train/objective/rlhf_reward", "train/loss/value_avg", "train/objective/kl"} <= event_tags(run_dir)

    fsdp2 = ["--trainer.devices", "2", "--trainer.strategy", "ModelParallelStrategy",
             "--trainer.strategy.data_parallel_size", "2", "--trainer.strategy.tensor_parallel_size", "1",
             "--model.kl_target", "1000", "--model.kl_horizon", "10"]  # fmt: skip  # KL far below target: β x 0.92
    fit("ppo", *fsdp2)
    first = tmp_path / "runs" / "ppo" / "version_1" / "checkpoints" / "last.ckpt"
    meta = torch.load(first / "meta.pt", weights_only=True)
    assert (first / ".metadata").exists() and meta["global_step"] == 8
    assert meta["kl_coef"] == pytest.approx(0.05 * 0.92)
    fit("ppo", *fsdp2, "--trainer.max_steps", "16", "--ckpt_path", str(first))
    resumed = first  # a resumed run logs and checkpoints into its own version
    meta = torch.load(resumed / "meta.pt", weights_only=True)
    assert meta["global_step"] == 16 and meta["kl_coef"] == pytest.approx(0.05 * 0.92**2)
