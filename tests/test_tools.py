"""Tools and environments: calls parsed and run within limits, the tool tokens masked out of every training signal
(a scripted conversation checked token by token), failures counted and never fatal, TRL-shaped environments."""

from __future__ import annotations

import json
import time

import pytest
import torch

from lit_align.algorithms.grpo import GRPO
from lit_align.tools.calculator import calculator
from lit_align.tools.calls import ToolCall, parse_tool_calls, run_tool_call
from lit_align.tools.chat import prompt_ids, tool_turn_ids
from lit_align.tools.games import GuessTheNumber
from lit_align.tools.options import ToolOptions
from tests.online_helpers import ScriptedTurns

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+3"}}\n</tool_call>'


def chat_batch(*questions: str, **columns) -> dict:
    return {"prompt": [[{"role": "user", "content": q}] for q in questions], **columns}


def slow_tool(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: how long.
    """
    time.sleep(seconds)
    return "awake"


def big_tool(n: int) -> str:
    """Write n characters.

    Args:
        n: how many.
    """
    return "x" * n


# -- calls ------------------------------------------------------------------------------------------
def test_calculator_parses_and_never_evaluates():
    assert calculator("(12 + 30) * 4 / 7") == "24"
    assert calculator("1/3") == "0.3333333333"
    assert calculator("2^10") == "1024"
    for code in ("__import__('os').system('true')", "open('x')", "[1] * 10", "9**9**9"):
        with pytest.raises(ValueError):
            calculator(code)
    with pytest.raises(ZeroDivisionError):
        calculator("1/0")


def test_parse_tool_calls_reads_hermes_blocks_and_names_what_is_wrong():
    calls = parse_tool_calls(f"First {CALL} then <tool_call>{{\"name\": \"f\", \"arguments\": \"{{\\\"a\\\": 1}}\"}}"
                             "</tool_call>")  # fmt: skip
    assert [(c.name, c.arguments, c.error) for c in calls] == [("calculator", {"expression": "2+3"}, None),
                                                               ("f", {"a": 1}, None)]  # fmt: skip
    assert "not valid JSON" in parse_tool_calls("<tool_call>{oops</tool_call>")[0].error
    assert "without its" in parse_tool_calls("<tool_call>{\"name\": \"f\"")[0].error
    assert "JSON object" in parse_tool_calls('<tool_call>["f"]</tool_call>')[0].error
    assert parse_tool_calls("no call here") == []


def test_a_failed_call_is_a_message_not_a_crash():
    tools = {"calculator": calculator, "slow_tool": slow_tool, "big_tool": big_tool}
    def run(name, args, timeout=5.0, chars=50):
        return run_tool_call(ToolCall(name, args), tools, timeout, chars)

    ok = run("calculator", {"expression": "6*7"})
    assert (ok.content, ok.failed) == ("42", False)
    unknown = run("search", {})
    assert unknown.failed and "unknown tool 'search'" in unknown.content and "calculator" in unknown.content
    bad = run("calculator", {"expr": "1"})
    assert bad.failed and "bad arguments" in bad.content
    raised = run("calculator", {"expression": "1/0"})
    assert raised.failed and "ZeroDivisionError" in raised.content
    start = time.perf_counter()
    slow = run("slow_tool", {"seconds": 5}, timeout=0.2)
    assert slow.failed and "within 0.2 s" in slow.content and time.perf_counter() - start < 2
    big = run("big_tool", {"n": 500})
    assert not big.failed and big.truncated and big.content.startswith("x" * 50)
    assert "450 more characters" in big.content
    parse_error = run_tool_call(parse_tool_calls("<tool_call>{</tool_call>")[0], tools, 1.0, 50)
    assert parse_error.failed and parse_error.content.startswith("Error:")


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_tool_turn_tokens_follow_the_template(which, tiny_tokenizer, request):
    tok = tiny_tokenizer if which == "tiny" else request.getfixturevalue("smollm2_tokenizer")
    ids = tool_turn_ids(tok, [{"role": "tool", "name": "calculator", "content": "5"}], tok.eos_token)
    assert tok.decode(ids) == "\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n"
    # The prompt shows the tools (in the system message: neither template renders tools= itself).
    text = tok.decode(prompt_ids(tok, [{"role": "user", "content": "2+3?"}], [calculator]))
    assert '"name": "calculator"' in text and "<tool_call>" in text and text.endswith("<|im_start|>assistant\n")


# -- the rollout and its masks ------------------------------------------------------------------------------
def tool_module(tokenizer, script, tools: dict, max_new_tokens: int = 200, **kwargs) -> tuple[GRPO, ScriptedTurns]:
    module = GRPO(policy="tiny-llama", tokenizer=tokenizer, num_generations=2, learning_rate=1e-3,
                  sampling={"max_new_tokens": max_new_tokens},
                  rewards=kwargs.pop("rewards", {"reward_funcs": ["tests.online_helpers:length_reward"]}),
                  tools=tools, **kwargs)  # fmt: skip
    backend = ScriptedTurns(tokenizer, script, max_new_tokens)
    module.sampler.backend = backend
    return module, backend


def calculator_script(context: str, turn: int, g: int) -> str:
    return CALL if turn == 0 else "The answer is 5."


def test_scripted_conversation_masks_tool_tokens_token_by_token(tiny_tokenizer):
    tok = tiny_tokenizer
    module, backend = tool_module(tok, calculator_script, {"functions": [calculator]}, beta=0.1,
                                  rewards={"reward_funcs": ["tests.online_helpers:length_reward"]})  # fmt: skip
    batch = chat_batch("What is 2+3?")
    rollout = module.sample(None, None, 2, batch=batch)
    assert backend.calls == [2, 2]  # turn 1: one prompt, G = 2 from it; turn 2: each conversation on its own
    call_ids = tok(CALL, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    tool_ids = tool_turn_ids(tok, [{"role": "tool", "name": "calculator", "content": "5"}], tok.eos_token)
    for g in range(2):
        answer = tok("The answer is 5.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        expected = call_ids + tool_ids + answer
        n = len(expected)
        assert rollout.completion_ids[g, :n].tolist() == expected
        assert rollout.completion_mask[g].tolist() == [1] * n + [0] * (rollout.completion_mask.shape[1] - n)
        assert rollout.tool_mask[g, :n].tolist() == [1] * len(call_ids) + [0] * len(tool_ids) + [1] * len(answer)
        assert rollout.messages[g] == [{"role": "assistant", "content": CALL},
                                       {"role": "tool", "name": "calculator", "content": "5"},
                                       {"role": "assistant", "content": "The answer is 5."}]  # fmt: skip
    assert rollout.turns.tolist() == [2, 2] and rollout.tool_calls.tolist() == [1, 1]
    assert rollout.tool_failures.tolist() == [0, 0] and not rollout.is_truncated.any()
    # The completions table (and evaluation's samples) show the whole conversation.
    assert rollout.texts[0] == f"[assistant] {CALL}\n[tool calculator] 5\n[assistant] The answer is 5."

    # Every training signal sees the policy's tokens only: the loss's gradient w.r.t. each token's log-prob (policy
    # objective and KL), the entropy and KL metrics.
    batch_ids = {**batch, "prompt_input_ids": rollout.prompt_input_ids[:1], "prompt_attention_mask":
                 rollout.prompt_attention_mask[:1]}  # fmt: skip
    rewards = module.rewards.score(batch_ids, rollout, training=True)
    exp = module.make_experience(batch_ids, rollout, rewards)
    policy = rollout.policy_mask
    assert torch.equal(exp.loss_mask, policy)
    exp.advantages = torch.tensor([1.0, -1.0])
    seen = {}
    real = module.policy_logps

    def watched(exp_, rows):
        logps, entropy = real(exp_, rows)
        seen["logps"], seen["entropy"] = logps, entropy
        logps.retain_grad()
        return logps, entropy

    module.policy_logps = watched
    stats = {"entropy": [], "kl": [], "clip_ratio/region_mean": [], "clip_ratio/low_mean": [],
             "clip_ratio/high_mean": [], "clip_ratio/low_min": [], "clip_ratio/high_max": []}  # fmt: skip
    stats = __import__("collections").defaultdict(list, stats)
    loss = module.policy_loss(exp, torch.arange(2), torch.tensor(float(policy.sum())), stats)
    loss.backward()
    grad = seen["logps"].grad
    assert (grad[policy == 0] == 0).all() and (grad[policy == 1] != 0).all()
    entropy = seen["entropy"]
    expected_entropy = torch.stack([entropy[r][policy[r].bool()].mean() for r in range(2)])
    assert torch.allclose(stats["entropy"][0][0], (expected_entropy * policy.sum(1)).sum() / policy.sum(), atol=1e-6)
    # The completion length metric counts the policy's tokens (TRL's rule).
    values = module.rewards.values(rewards, module.rewards.combine(rewards), rollout, with_std=True)
    assert values["completions/mean_length"].tolist() == policy.sum(1).float().tolist()


def test_calls_past_the_limits_end_the_conversation_and_failures_are_counted(tiny_tokenizer):
    def script(context, turn, g):
        return ['<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
                '<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>',
                "<tool_call>{broken</tool_call>", CALL][min(turn, 3)]

    module, _ = tool_module(tiny_tokenizer, script, {"functions": [calculator], "max_tool_calls": 3, "max_turns": 8},
                            max_new_tokens=1000)  # fmt: skip
    rollout = module.sample(None, None, 2, batch=chat_batch("hi"))
    assert rollout.tool_calls.tolist() == [3, 3] and rollout.tool_failures.tolist() == [3, 3]
    assert rollout.turns.tolist() == [4, 4]  # the 4th turn's call would pass max_tool_calls: not run, the end
    errors = [m["content"] for m in rollout.messages[0] if m["role"] == "tool"]
    assert "unknown tool 'nope'" in errors[0] and "ZeroDivisionError" in errors[1] and "not valid JSON" in errors[2]
    values = module.tool_runner.values(rollout)
    assert values["tools/call_frequency"].tolist() == [3.0, 3.0]
    rate, weight = values["tools/failure_frequency"]
    assert rate.tolist() == [1.0, 1.0] and weight.tolist() == [3.0, 3.0]
    # max_turns: the conversation stops after that many assistant turns, its last call unanswered.
    module, _ = tool_module(tiny_tokenizer, lambda c, t, g: CALL, {"functions": [calculator], "max_turns": 2})
    rollout = module.sample(None, None, 2, batch=chat_batch("hi"))
    assert rollout.turns.tolist() == [2, 2] and rollout.tool_calls.tolist() == [1, 1]


def test_the_token_budget_covers_the_whole_conversation(tiny_tokenizer):
    call_tokens = len(tiny_tokenizer(CALL, add_special_tokens=False)["input_ids"]) + 1
    module, _ = tool_module(tiny_tokenizer, lambda c, t, g: CALL if t == 0 else "x" * 500, {"functions": [calculator]},
                            max_new_tokens=call_tokens + 40)  # fmt: skip
    rollout = module.sample(None, None, 2, batch=chat_batch("hi"))
    assert rollout.lengths.tolist() == [call_tokens + 40] * 2 and rollout.is_truncated.all()
    # No room for the result and an answer: the conversation ends after the call, the result not shown.
    module, _ = tool_module(tiny_tokenizer, lambda c, t, g: CALL, {"functions": [calculator]},
                            max_new_tokens=call_tokens + 3)  # fmt: skip
    rollout = module.sample(None, None, 2, batch=chat_batch("hi"))
    assert rollout.lengths.tolist() == [call_tokens] * 2 and rollout.tool_calls.tolist() == [1, 1]
    assert rollout.tool_mask.sum().item() == 2 * call_tokens


def test_text_prompts_are_refused_with_the_fix(tiny_tokenizer):
    module, _ = tool_module(tiny_tokenizer, calculator_script, {"functions": [calculator]})
    with pytest.raises(ValueError, match="user_template"):
        module.sample(None, None, 2, batch={"prompt": ["2+3?"]})
    with pytest.raises(ValueError, match="no JSON schema"):
        ToolOptions(functions=[lambda x: x]) and tool_module(tiny_tokenizer, calculator_script,
                                                              {"functions": [lambda x: x]})  # fmt: skip
    with pytest.raises(ValueError, match="list of import paths"):
        ToolOptions(functions="lit_align.tools.calculator:calculator")


# -- environments -------------------------------------------------------------------------------------
class TRLCounterEnv:
    """An environment written for TRL 1.16's GRPOTrainer(environment_factory=...), as its documentation shows them;
    used here unchanged."""

    def __init__(self):
        self.counter = 0

    def reset(self, **kwargs) -> str | None:
        self.counter = 0
        return None

    def increment(self, step: int) -> int:
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.

        Returns:
            The updated counter value.
        """
        self.counter += step
        return self.counter

    def get_reward(self) -> float:
        return float(self.counter)


def increment_script(context: str, turn: int, g: int) -> str:
    if turn < 2:
        return f'<tool_call>{{"name": "increment", "arguments": {{"step": {g + 1}}}}}</tool_call>'
    return "done"


def test_a_trl_environment_class_works_unchanged(tiny_tokenizer):
    module, _ = tool_module(tiny_tokenizer, increment_script, {"environment": TRLCounterEnv},
                            rewards={"reward_funcs": []})  # the environment's own reward alone, as TRL allows
    assert module.rewards.names == ["TRLCounterEnv"]
    batch = chat_batch("Count.")
    rollout = module.sample(None, None, 2, batch=batch)
    assert [m["content"] for m in rollout.messages[0] if m["role"] == "tool"] == ["1", "2"]
    assert [m["content"] for m in rollout.messages[1] if m["role"] == "tool"] == ["2", "3"]  # turn 2 is sampled per row
    rewards = module.rewards.score(batch, rollout, training=True)
    assert rewards[:, 0].tolist() == [2.0, 3.0]  # get_reward of each row's own instance
    assert rollout.environments[0] is not rollout.environments[1]


def env_aware_reward(prompts, completions, environments, **kwargs):
    return [float(env.solved) for env in environments]


def test_environment_reward_adds_to_the_reward_functions_and_reset_is_seeded(tiny_tokenizer):
    def script(context, turn, g):
        low, high = 1, 16
        return f'<tool_call>{{"name": "guess", "arguments": {{"number": {(low + high) // 2}}}}}</tool_call>'

    module, _ = tool_module(tiny_tokenizer, script, {"environment": GuessTheNumber, "max_turns": 3},
                            rewards={"reward_funcs": ["tests.test_tools:env_aware_reward"], "reward_weights": [2.0]})
    assert module.rewards.names == ["env_aware_reward", "GuessTheNumber"]
    assert module.rewards.weights.tolist() == [2.0, 1.0]
    batch = chat_batch("Let's play.", "Again.")
    first = module.sample(None, None, 2, batch=batch)
    secrets = [env.secret for env in first.environments]
    assert "I am thinking of a whole number from 1 to 16" in tiny_tokenizer.decode(first.prompt_input_ids[0])
    module.sampler.draws = 0  # the same key again: the same secrets (reset runs under a seeded random)
    again = module.sample(None, None, 2, batch=batch)
    assert [env.secret for env in again.environments] == secrets and len(set(secrets)) > 1
    rewards = module.rewards.score(batch, again, training=True)
    assert torch.allclose(rewards[:, 1], torch.tensor([env.get_reward() for env in again.environments]))
    assert rewards[:, 0].tolist() == [float(env.solved) for env in again.environments]


def test_a_dict_of_environments_is_chosen_per_row(tiny_tokenizer):
    def script(context, turn, g):
        if turn:
            return "ok"
        name = "increment" if "Count" in context else "guess"
        arg = "step" if name == "increment" else "number"
        return f'<tool_call>{{"name": "{name}", "arguments": {{"{arg}": 3}}}}</tool_call>'

    module, _ = tool_module(tiny_tokenizer, script, {"environment": {"counter": TRLCounterEnv,
                                                                     "guess": GuessTheNumber}})  # fmt: skip
    batch = chat_batch("Count.", "Guess.", environment=["counter", "guess"])
    rollout = module.sample(None, None, 2, batch=batch)
    assert [type(e).__name__ for e in rollout.environments] == ["TRLCounterEnv"] * 2 + ["GuessTheNumber"] * 2
    assert rollout.tool_failures.tolist() == [0, 0, 0, 0]
    counter_prompt = tiny_tokenizer.decode(rollout.prompt_input_ids[0])
    assert '"increment"' in counter_prompt and '"guess"' not in counter_prompt
    rewards = module.rewards.score(batch, rollout, training=True)
    assert module.rewards.names == ["length_reward", "TRLCounterEnv", "GuessTheNumber"]
    assert rewards[:2, 1].tolist() == [3.0, 3.0] and rewards[2:, 1].isnan().all()  # each row by its own environment
    assert rewards[:2, 2].isnan().all() and not rewards[2:, 2].isnan().any()
    with pytest.raises(ValueError, match="not one of the configured environments"):
        module.sample(None, None, 2, batch=chat_batch("x", environment=["chess"]))


def test_an_update_trains_from_multi_turn_rollouts(tiny_tokenizer):
    def script(context, turn, g):  # one sample calls the calculator, the other answers at once
        return CALL if turn == 0 and g == 0 else "The answer is 5."

    module, _ = tool_module(tiny_tokenizer, script, {"functions": [calculator]})
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    out = module.update(chat_batch("What is 2+3?", "And 2+3 again?"))
    assert out["tools/call_frequency"] == 0.5 and out["tools/failure_frequency"] == 0.0
    assert out["tools/mean_turns"] == 1.5 and torch.isfinite(torch.tensor(out["loss"]))
    assert any(not torch.equal(p, before[n]) for n, p in module.policy.named_parameters())


def test_tool_options_are_saved_as_plain_data(tiny_tokenizer):
    module, _ = tool_module(tiny_tokenizer, calculator_script, {"functions": [calculator],
                                                                 "environment": GuessTheNumber})  # fmt: skip
    tools = module.hparams["tools"]
    assert tools["functions"] == ["lit_align.tools.calculator:calculator"]
    assert tools["environment"] == "lit_align.tools.games:GuessTheNumber"
    json.dumps(tools)


def test_gae_and_returns_skip_the_tool_tokens():
    """A hole in the mask is no step: GAE and discounted returns over [a, tool, tool, b] equal those over [a, b]."""
    from lit_align.losses.policy_gradient import gae_advantages
    from lit_align.losses.returns import discounted_returns

    rewards, values = torch.tensor([[0.1, 9.0, 9.0, 1.0, 0.0]]), torch.tensor([[0.5, 7.0, 7.0, 0.3, 0.0]])
    mask = torch.tensor([[1, 0, 0, 1, 0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    dense_adv, dense_ret = gae_advantages(rewards[:, [0, 3]], values[:, [0, 3]], torch.ones(1, 2), 0.9, 0.8)
    assert torch.allclose(adv[:, [0, 3]], dense_adv) and torch.allclose(ret[:, [0, 3]], dense_ret)
    assert (adv[:, [1, 2, 4]] == 0).all()
    # by hand: A_b = 1 - 0.3; A_a = 0.1 + 0.9 * 0.3 - 0.5 + 0.9 * 0.8 * A_b
    assert torch.allclose(adv[0, [0, 3]], torch.tensor([0.1 + 0.27 - 0.5 + 0.72 * 0.7, 0.7]))
    returns = discounted_returns(rewards, mask, gamma=0.5)
    assert torch.allclose(returns[0], torch.tensor([0.1 + 0.5 * 1.0, 0, 0, 1.0, 0]))


@pytest.mark.parametrize("algo", ["GRPO", "RLOO", "ReMax", "RLVR", "PPO", "ReinforcePP"])
def test_every_online_algorithm_trains_from_conversations(algo, tiny_tokenizer):
    """One update of each online algorithm from guessing-game conversations: tool tokens out of the loss mask (and
    PPO's critic), the policy moved, the tools metrics logged; ReMax's greedy baseline plays the game too."""
    import lit_align.algorithms as algorithms
    from tests.online_helpers import guessing_script

    options = {"num_generations": 1} if algo == "ReMax" else {"num_generations": 2}
    if algo == "PPO":
        options.update(value_model="tiny-llama", beta=0.05)
    module = getattr(algorithms, algo)(
        policy="tiny-llama", tokenizer=tiny_tokenizer, learning_rate=1e-3, sampling={"max_new_tokens": 300},
        rewards={"reward_funcs": ["tests.online_helpers:length_reward"]},
        tools={"environment": "lit_align.tools.games:GuessTheNumber", "max_turns": 3}, **options,
    )  # fmt: skip
    module.sampler.backend = ScriptedTurns(tiny_tokenizer, guessing_script, 300)
    seen = {}
    make = module.make_experience

    def record(*args):
        seen["exp"] = make(*args)
        return seen["exp"]

    module.make_experience = record
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    out = module.update(chat_batch("Game 1.", "Game 2.", low=[1, 1], high=[16, 16]))
    exp = seen["exp"]
    assert torch.equal(exp.loss_mask.bool(), exp.loss_mask.bool() & exp.rollout.tool_mask.bool())
    assert (exp.rollout.tool_mask == 0).logical_and(exp.rollout.completion_mask == 1).any()  # tool tokens exist
    assert out["tools/call_frequency"] > 0 and torch.isfinite(torch.tensor(out["loss"]))
    assert any(not torch.equal(p, before[n]) for n, p in module.policy.named_parameters())


@pytest.mark.slow
@pytest.mark.parametrize("example", ["grpo_calculator_tool", "grpo_guess_number", "rloo_guess_number"])
def test_tool_examples_run_on_the_tiny_preset(example, tmp_path):
    """The example configs train (2 steps and a validation) from the command line on the tiny preset, logging the
    tools metrics; the tiny random model calls no tool, the scripted tests above cover the calls."""
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import REPO

    recipe = example.split("_")[0]
    cmd = [sys.executable, str(REPO / f"recipes/{recipe}.py"), "fit",
           "--config", str(REPO / f"recipes/configs/examples/{example}.yaml"),
           "--config", str(REPO / "recipes/configs/tiny.yaml"), "--trainer.max_steps", "2",
           "--trainer.val_check_interval", "2", "--trainer.logger.init_args.save_dir", str(tmp_path),
           "--trainer.limit_val_batches", "1", "--model.sampling.max_new_tokens", "48"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    events = EventAccumulator(str(tmp_path / example / "version_0")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/tools/call_frequency", "train/tools/failure_frequency", "val/tools/call_frequency"} <= tags
    if "guess" in example:
        assert "train/rewards/GuessTheNumber/mean" in tags


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["grpo", "rloo", "remax", "rlvr", "reinforce_pp", "ppo"])
def test_every_online_recipe_trains_with_an_environment_in_a_trainer(recipe, tmp_path):
    """Each online recipe, in a Trainer from its command line, plays the shipped guessing game (its sampling replaced
    by a scripted bisecting player, so tools are called): the run trains, validates and logs the tools metrics (PPO
    once failed here: its metric names left the tools' out)."""
    import os
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import REPO

    cmd = [sys.executable, str(REPO / f"recipes/{recipe}.py"), "fit", "--config", "tiny",
           "--model.tools.environment", "lit_align.tools.games:GuessTheNumber", "--model.tools.max_turns", "4",
           "--model.rewards.reward_funcs", "[]", "--data.data_path", "samples/guess_number_prompts.jsonl",
           "--model.sampling.max_new_tokens", "300", "--trainer.callbacks+=tests.online_helpers.ScriptedPlayer",
           "--trainer.max_steps", "2", "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
           *(["--model.value_model", "policy"] if recipe == "ppo" else [])]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    events = EventAccumulator(str(tmp_path / "runs" / recipe / "version_0")).Reload()
    calls = [event.value for event in events.Scalars("train/tools/call_frequency")]
    assert calls and min(calls) > 0, calls  # the player called the guess tool in every rollout
    failures = [event.value for event in events.Scalars("train/tools/failure_frequency")]
    assert all(value == value for value in failures)  # never NaN
    assert "val/tools/call_frequency" in events.Tags()["scalars"]
    assert (tmp_path / "runs" / recipe / "version_0" / "hf_model" / "config.json").is_file()


class BrokenResetEnv:
    def reset(self, **row) -> str:
        return row["level"]  # the data has no such column


def test_the_data_is_checked_against_the_tools_before_training():
    """check_tool_data (the CLI's check before any model loads): chat prompts, known environments, reset per row."""
    from lit_align.tools.multi_turn import check_tool_data

    options = ToolOptions(environment="tests.test_tools:BrokenResetEnv")
    with pytest.raises(ValueError, match=r"data\.jsonl: prompt 1 \(1-based\) .* is text"):
        check_tool_data(options, {"prompt": ["2+3?"]}, "data.jsonl")
    assert len(check_tool_data(options, chat_batch("a", "b", level=["easy", "hard"]), "data.jsonl")) == 2
    broken = r"data\.jsonl: row 1 \(1-based\): BrokenResetEnv.reset\(\*\*row\) failed .*KeyError"
    with pytest.raises(ValueError, match=broken):
        check_tool_data(options, chat_batch("a", "b"), "data.jsonl")
    multi = ToolOptions(environment={"guess": "lit_align.tools.games:GuessTheNumber"})
    with pytest.raises(ValueError, match="environment='chess', not one of the configured environments: guess"):
        check_tool_data(multi, chat_batch("a", environment=["chess"]), "data.jsonl")
    environments = check_tool_data(multi, chat_batch("a", environment=["guess"]), "data.jsonl")
    assert [type(e).__name__ for e in environments] == ["GuessTheNumber"]
