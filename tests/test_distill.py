"""The Distill module: fits, whose completions, the teachers (frozen, out of the checkpoint, vocabulary checked, one
per row), accumulation invariance, the seed interface, tool tokens masked, context distillation, refused options."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_align.algorithms.distill import Distill
from lit_align.errors import DataError, OptionError
from lit_align.models.divergence import student_divergence, teacher_pass
from lit_align.models.loading import build_tiny_llama, load_model
from lit_align.rollouts.record import Rollout
from tests.conftest import REPO, write_jsonl
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.online_helpers import fixed_rollout, grads, length_reward, prompt_batch, prompt_datamodule

TRAIN_METRICS = ("completions/mean_length", "completions/clipped_ratio", "distill/divergence", "entropy",
                 "distill/reverse_kl", "distill/teacher/reverse_kl", "distill/teacher/teacher_logps",
                 "distill/student_logps", "distill/on_policy", "learning_rate", "grad_norm", "time/generation")


def tiny_distill(teacher_seeds=(1,), **kwargs) -> Distill:
    policy, tokenizer = load_model("tiny-llama")
    teachers = {f"t{seed}": build_tiny_llama(tokenizer, seed=seed) for seed in teacher_seeds}
    given = {"teacher": teachers.popitem()[1]} if len(teacher_seeds) == 1 else {"teachers": teachers}
    options = {"tokenizer": tokenizer, "learning_rate": 1e-3, "sampling": {"max_new_tokens": 8}, **given, **kwargs}
    return Distill(policy=policy, **options)


def test_fit_smoke_trains_the_student_only_and_logs_the_metrics(tmp_path):
    module = tiny_distill(rewards={"reward_funcs": [length_reward]})
    teacher = module.teachers.models["teacher"]
    dm = prompt_datamodule(tmp_path, module.tokenizer, val_size=2)
    before, teacher_before = snapshot(module.policy), snapshot(teacher)
    trainer = tiny_trainer(tmp_path, max_steps=3, val_check_interval=3, check_val_every_n_epoch=None)
    trainer.fit(module, dm)
    assert changed(before, module.policy) and not changed(teacher_before, teacher)
    assert not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert not [k for k in module.state_dict() if "teacher" in k]  # the teacher is in no checkpoint
    tags = event_tags(trainer.logger.log_dir)
    assert {f"train/{m}" for m in TRAIN_METRICS} <= tags
    assert {"train/reward", "train/rewards/length_reward/mean", "val/distill/reverse_kl",
            "val/distill/teacher/reverse_kl", "val/reward"} <= tags  # fmt: skip
    assert "train/kl" not in tags and module.reference is None


def test_without_rewards_nothing_is_scored(tmp_path):
    module = tiny_distill()
    assert module.rewards.names == []
    batch = prompt_batch(tmp_path, module.tokenizer)
    out = module.update(batch)
    assert "reward" not in out and out["distill/divergence"] > 0 and out["distill/on_policy"] == 1.0


def test_the_divergence_the_module_trains_is_the_passes_token_mean(tmp_path):
    """One update on a fixed rollout: the reported loss is Σ div·mask / Σ mask of the passes, before the step."""
    module = tiny_distill(beta=0.3)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 1, [6, 3])
    inputs = rollout.model_inputs()
    P = rollout.prompt_input_ids.shape[1]
    with torch.no_grad():
        tokens = teacher_pass(module.teachers.models["teacher"], *inputs, P, 1.0)
        divergence, _, _ = student_divergence(module.policy, *inputs, P, tokens, 0.3, 1.0)
    mask = rollout.completion_mask.float()
    expected = float((divergence * mask).sum() / mask.sum())
    out = module.update(outside_batch(rollout, batch))
    assert out["loss"] == pytest.approx(expected, rel=1e-5)


def outside_batch(rollout: Rollout, batch: dict, **extra) -> dict:
    """The seed interface's batch of a rollout made outside: sequences and the sampling log-probs (zeros here)."""
    return {"input_ids": torch.cat([rollout.prompt_input_ids, rollout.completion_ids], 1),
            "attention_mask": torch.cat([rollout.prompt_attention_mask, rollout.completion_mask], 1),
            "old_log_probs": torch.zeros(rollout.completion_ids.shape), "prompt": batch["prompt"], **extra}  # fmt: skip


@pytest.mark.parametrize("loss_type", ["jsd", "opd"])
def test_gradient_accumulation_changes_nothing(tmp_path, loss_type):
    """The same rollout in 1 or 3 micro-batches (unequal lengths): the same gradient, the normalizer being counted
    over the whole minibatch; with two teachers, a micro-batch's rows split between them change nothing either."""
    batch = prompt_batch(tmp_path, load_model("tiny-llama")[1], n=4)
    batch["teacher_id"] = ["t1", "t2", "t2", "t1"]
    recorded = {}
    for steps in (1, 3):
        module = tiny_distill(teacher_seeds=(1, 2), loss_type=loss_type, gradient_accumulation_steps=steps)
        rollout = fixed_rollout(batch, module.tokenizer, 1, [7, 2, 5, 4])
        module.step_manual = lambda module=module, key=steps: recorded.__setitem__(key, grads(module)) or {}
        module.update(outside_batch(rollout, batch, teacher_id=batch["teacher_id"]))
    assert recorded[1].keys() == recorded[3].keys()
    for name, grad in recorded[1].items():
        assert torch.allclose(grad, recorded[3][name], atol=1e-6), name


def test_opd_advantage_is_the_teachers_log_ratio_plus_the_weighted_group_reward(tmp_path):
    """A_t = −(log π_old − log π_teacher) on the trained tokens + reward_coef · (r − mean_group) / (std_group + ε)."""
    module = tiny_distill(loss_type="opd", num_generations=2, reward_coef=0.5,
                          rewards={"reward_funcs": [length_reward]})  # fmt: skip
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 2, [6, 3, 4, 4])
    exp = module.make_experience(batch, rollout, torch.tensor([[1.0], [3.0], [2.0], [2.0]]))
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0])
    advantages = module.compute_advantages(rewards, exp)
    group = torch.tensor([-1.0, 1.0, 0.0, 0.0]) / (torch.tensor([2.0, 2.0, 0.0, 0.0]).sqrt() + 1e-4)
    expected = -(exp.old_logps - exp.extra["teacher_logps"]) * exp.loss_mask + 0.5 * group[:, None]
    assert torch.allclose(advantages, expected, atol=1e-5)


def test_several_teachers_each_scores_its_own_rows(tmp_path):
    module = tiny_distill(teacher_seeds=(1, 2))
    batch = prompt_batch(tmp_path, module.tokenizer, n=3)
    batch["teacher_id"] = ["t2", "t1", "t2"]
    rollout = fixed_rollout(batch, module.tokenizer, 1, [5, 5, 3])
    exp = module.make_experience(batch, rollout, torch.zeros(3, 0))
    assert exp.extra["teacher_owner"].tolist() == [1, 0, 1]
    P = rollout.prompt_input_ids.shape[1]
    for name, rows in (("t1", [1]), ("t2", [0, 2])):
        own = teacher_pass(module.teachers.models[name], *rollout.model_inputs(torch.tensor(rows)), P, 1.0)
        assert torch.allclose(exp.extra["teacher_logps"][rows], own.logps, atol=1e-6)
    module.update(outside_batch(rollout, batch, teacher_id=batch["teacher_id"]))  # trains, one pass per teacher
    batch["teacher_id"] = ["t2", "t9", "t1"]
    with pytest.raises(DataError, match=r"row 1, field 'teacher_id': 't9' is not a teacher; the teachers are t1, t2"):
        module.make_experience(batch, rollout, torch.zeros(3, 0))
    del batch["teacher_id"]
    with pytest.raises(DataError, match="2 teachers .* need a 'teacher_id' column"):
        module.make_experience(batch, rollout, torch.zeros(3, 0))


def test_a_teacher_of_another_vocabulary_is_refused_before_training():
    policy, tokenizer = load_model("tiny-llama")
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    with pytest.raises(OptionError, match=r"teacher 'teacher' \(LlamaForCausalLM\) predicts 300 tokens but the student "
                       r".* predicts 259"):  # fmt: skip
        Distill(policy=policy, tokenizer=tokenizer, teacher=LlamaForCausalLM(config))


def test_one_source_named_twice_is_loaded_once(tmp_path):
    policy, tokenizer = load_model("tiny-llama")
    module = Distill(policy=policy, tokenizer=tokenizer, teachers={"a": "tiny-llama", "b": "tiny-llama"})
    assert module.teachers.models["a"] is module.teachers.models["b"] and len(module.frozen_models()) == 1


def test_lmbda_zero_trains_on_the_datas_completions(tmp_path):
    module = tiny_distill(lmbda=0.0)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    batch["completion"] = [" 12.", [{"role": "assistant", "content": " 7"}]]
    rollout, _, _ = module.collect(batch)
    assert rollout.texts == [" 12.", " 7"] and rollout.num_generations == 1
    eos = module.tokenizer.eos_token_id
    assert rollout.completion_ids[0, : int(rollout.lengths[0])].tolist()[-1] == eos
    assert module.update(batch)["distill/on_policy"] == 0.0
    del batch["completion"]
    with pytest.raises(DataError, match="no 'completion' column"):
        module.collect(batch)


def test_lmbda_draws_per_step_and_seq_kd_samples_the_teacher(tmp_path):
    module = tiny_distill(lmbda=0.5, seq_kd=True)
    sources = [module.rollout_source() for module._rollouts in range(40)]
    assert {"student", "teacher"} == set(sources) and 10 < sources.count("student") < 30
    again = [module.rollout_source() for module._rollouts in range(40)]
    assert again == sources  # seeded by the step: a resumed run draws alike
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    module._rollouts = next(i for i, s in enumerate(sources) if s == "teacher")
    rollout, _, _ = module.collect(batch)
    teacher = module.teachers.models["teacher"]
    expected = module.sampler.sample(teacher, batch["prompt_input_ids"], batch["prompt_attention_mask"],
                                     module.tokenizer, 1, f"teacher/{module._rollouts}/teacher")  # fmt: skip
    assert rollout.texts == expected.texts


def test_seed_interface_generate_samples_then_update(tmp_path):
    module = tiny_distill(num_generations=2)
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    samples, log_probs = module.generate_samples(batch["prompt_input_ids"], batch["prompt_attention_mask"])
    before = snapshot(module.policy)
    out = module.update({"input_ids": samples, "old_log_probs": log_probs, "prompt": batch["prompt"]})
    assert changed(before, module.policy) and out["distill/divergence"] > 0


def test_tool_tokens_are_context_not_trained(tmp_path):
    """A rollout with a tool mask: the loss is the divergence's token-mean over the policy's own tokens only."""
    module = tiny_distill()
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 1, [7, 7])
    tool_mask = torch.ones_like(rollout.completion_mask)
    tool_mask[0, 2:5] = 0
    inputs, P = rollout.model_inputs(), rollout.prompt_input_ids.shape[1]
    with torch.no_grad():
        tokens = teacher_pass(module.teachers.models["teacher"], *inputs, P, 1.0)
        divergence, _, _ = student_divergence(module.policy, *inputs, P, tokens, 0.5, 1.0)
    mask = (rollout.completion_mask * tool_mask).float()
    out = module.update(outside_batch(rollout, batch, tool_mask=tool_mask))
    assert out["loss"] == pytest.approx(float((divergence * mask).sum() / mask.sum()), rel=1e-5)


def test_context_distillation_gives_the_teacher_its_system_prompt(tmp_path, smollm2_tokenizer):
    """The teacher reads each prompt with the system message in place of the data's; the completions are the same."""
    policy, _ = load_model("tiny-llama")
    tokenizer = smollm2_tokenizer
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    student, teacher = LlamaForCausalLM(config), LlamaForCausalLM(config)
    module = Distill(policy=student, tokenizer=tokenizer, teacher=teacher, teacher_system_prompt="Be brief.")
    prompts = [[{"role": "system", "content": "Be verbose."}, {"role": "user", "content": "1+1?"}],
               [{"role": "user", "content": "2+2?"}]]  # fmt: skip
    ids = tokenizer.apply_chat_template(prompts[1], add_generation_prompt=True, tokenize=True, return_dict=False)
    completion = torch.tensor([[28, 29, tokenizer.eos_token_id]] * 2)
    rollout = Rollout(torch.tensor([ids, ids]), torch.ones(2, len(ids), dtype=torch.long), completion,
                      torch.ones_like(completion), ["a", "b"], torch.tensor([3, 3]), torch.zeros(2, dtype=torch.bool),
                      1)  # fmt: skip
    view = module.teacher_view({"prompt": prompts}, rollout)
    texts = [tokenizer.decode(row[mask.bool()]) for row, mask in zip(view.prompt_input_ids, view.prompt_attention_mask,
                                                                      strict=True)]  # fmt: skip
    assert all("Be brief." in t and "Be verbose." not in t for t in texts) and "1+1?" in texts[0]
    assert torch.equal(view.completion_ids, rollout.completion_ids)
    with pytest.raises(DataError, match="teacher_system_prompt needs chat prompts"):
        module.teacher_view({"prompt": ["1+1?", "2+2?"]}, rollout)


@pytest.mark.parametrize("options,message", [
    ({"loss_type": "opd", "lmbda": 0.5}, "lmbda=0.5: 1 with loss_type=opd"),
    ({"reward_coef": 0.5}, "reward_coef=0.5: applies to loss_type=opd"),
    ({"loss_type": "opd", "top_k": 5}, "top_k=5: applies to loss_type=jsd"),
    ({"seq_kd": True}, "seq_kd=True: needs lmbda < 1"),
    ({"beta": 1.5}, r"beta=1.5: in \[0, 1\]"),
    ({"loss_type": "opd", "reward_coef": 1.0, "num_generations": 2}, "reward_coef=1.0: needs reward functions"),
    ({"objective": {"name": "cispo"}}, "objective=.*: applies to loss_type=opd"),
    ({"kl_penalty": "reward"}, "Distill fixes it to 'loss'"),
])  # fmt: skip
def test_options_that_do_not_apply_are_refused(options, message):
    with pytest.raises(OptionError, match=message):
        tiny_distill(**options)


def test_no_teacher_is_an_error_that_says_how_to_give_one():
    policy, tokenizer = load_model("tiny-llama")
    with pytest.raises(OptionError, match="distillation needs a teacher: --model.teacher"):
        Distill(policy=policy, tokenizer=tokenizer)


def test_recipe_fits_on_the_tiny_config(tmp_path):
    rows = [{"prompt": f"Count to {i}.", "completion": " " + " ".join(map(str, range(1, i + 2)))} for i in range(12)]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    cmd = [sys.executable, str(REPO / "recipes/distill.py"), "fit", "--config", str(REPO / "recipes/configs/tiny.yaml"),
           "--model.teacher", "tiny-llama", "--model.teacher_system_prompt", "null", "--model.lmbda", "0.5",
           "--model.rewards.reward_funcs", "[]", "--data.data_path", str(data), "--data.val_size", "2",
           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "distill" / "version_0" / "hf_model" / "config.json").is_file()


def test_multi_turn_rollouts_with_an_environment_distill_on_the_policys_tokens(tmp_path):
    """GuessTheNumber games played by a scripted bisecting player: the conversations carry tool tokens, which the
    teacher reads as context and the loss leaves out; the tools' metrics are logged."""
    from tests.online_helpers import ScriptedTurns, game_rows, guessing_script

    module = tiny_distill(tools={"environment": "lit_align.tools.games:GuessTheNumber", "max_turns": 6},
                          sampling={"max_new_tokens": 400})  # fmt: skip
    module.sampler.backend = ScriptedTurns(module.tokenizer, guessing_script, 400)
    path = write_jsonl(tmp_path / "games.jsonl", game_rows(6))
    from lit_align.datamodules.prompt import PromptDataModule

    dm = PromptDataModule(tokenizer=module.tokenizer, data_path=str(path), val_size=2, batch_size=2)
    captured = []
    original = module.make_experience
    module.make_experience = lambda *a: captured.append(original(*a)) or captured[-1]
    trainer = tiny_trainer(tmp_path, max_steps=2, val_check_interval=2, check_val_every_n_epoch=None)
    trainer.fit(module, dm)
    exp = captured[0]
    assert exp.rollout.tool_mask is not None and (exp.rollout.tool_mask == 0).any()
    assert torch.equal(exp.loss_mask, exp.rollout.completion_mask * exp.rollout.tool_mask)
    tags = event_tags(trainer.logger.log_dir)
    assert {"train/tools/call_frequency", "train/distill/divergence", "val/distill/reverse_kl"} <= tags


def test_a_missing_teacher_is_named_by_its_option(tmp_path):
    policy, tokenizer = load_model("tiny-llama")
    with pytest.raises(FileNotFoundError, match=r"--model\.teachers\.games: no such model folder: '/nope'"):
        Distill(policy=policy, tokenizer=tokenizer, teachers={"math": "tiny-llama", "games": "/nope"})
