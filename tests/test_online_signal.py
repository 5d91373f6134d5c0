"""Issue 21, the online side: a rollout with no scorable completion stops (or is skipped, counted); rollouts whose
groups all score alike are warned about once, with each function's mean; a verifier that cannot use a reference
answer says so once before training, naming the rows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

from lit_align.algorithms.grpo import GRPO
from lit_align.algorithms.ppo import PPO
from lit_align.models.loading import load_model
from lit_align.rewards.reward_set import RewardOptions, check_reward_options
from lit_align.rewards.signal import SpreadWatch, UnscorableRollout
from lit_align.rewards.verifiers import arithmetic_answer_reward
from tests.conftest import REPO, write_jsonl
from tests.helpers import changed, event_tags, snapshot, tiny_trainer
from tests.online_helpers import fixed_rollout, length_reward, prompt_batch, prompt_datamodule, tiny_options


def no_opinion_reward(prompts, completions, **kwargs):
    """None for every completion: a verifier whose rows all lack a usable reference."""
    return [None] * len(completions)


def constant_reward(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def tiny_grpo(**kwargs) -> GRPO:
    policy, tokenizer = load_model("tiny-llama")
    return GRPO(policy=policy, **tiny_options(tokenizer, **kwargs))


# -- a rollout with no scorable completion -----------------------------------------------------------------------
def test_a_rollout_without_any_reward_stops_naming_functions_and_columns(tmp_path):
    module = tiny_grpo(rewards={"reward_funcs": [no_opinion_reward, length_reward], "reward_weights": [1.0, 0.0]})
    module.rewards.funcs[1] = no_opinion_reward  # both None: nothing scorable
    with pytest.raises(UnscorableRollout, match=r"no completion of this rollout could be scored: every reward function "
                                                r"\(no_opinion_reward, length_reward\) returned None for every "
                                                r"completion on every rank.*columns \(first row\): answer='\d'.*"
                                                r"--model.rewards.unscorable_rollouts skip"):  # fmt: skip
        tiny_trainer(tmp_path, max_steps=2).fit(module, prompt_datamodule(tmp_path, module.tokenizer))


def test_skipped_rollouts_are_counted_logged_and_leave_the_weights_alone(tmp_path):
    module = tiny_grpo(rewards={"reward_funcs": [no_opinion_reward], "unscorable_rollouts": "skip"})
    before = snapshot(module.policy)
    trainer = tiny_trainer(tmp_path, max_steps=5, max_epochs=1, limit_train_batches=3)
    with pytest.warns(UserWarning, match=r"skipped the rollout at global step 0: no completion could be scored "
                                         r"\(3 skipped so far\)"):  # fmt: skip
        trainer.fit(module, prompt_datamodule(tmp_path, module.tokenizer))
    assert module.signal.unscorable_skipped == 3 and trainer.global_step == 0 and not changed(before, module.policy)
    assert "train/unscorable_skipped" in event_tags(trainer.logger.log_dir)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["unscorable_skipped"] == 3
    module.signal.unscorable_skipped = 0
    module.on_load_checkpoint(checkpoint)  # the core reaches its parts' counters
    assert module.signal.unscorable_skipped == 3


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_update_with_a_given_rollout_of_nan_rewards(tmp_path, mode):
    module = tiny_grpo(rewards={"unscorable_rollouts": mode})
    batch = prompt_batch(tmp_path, module.tokenizer, n=2)
    rollout = fixed_rollout(batch, module.tokenizer, 4, [3, 5, 8, 2, 4, 6, 7, 8])
    given = {"input_ids": torch.cat([rollout.prompt_input_ids, rollout.completion_ids], 1),
             "attention_mask": torch.cat([rollout.prompt_attention_mask, rollout.completion_mask], 1),
             "rewards": torch.full((8,), math.nan),
             "old_log_probs": torch.zeros_like(rollout.completion_ids, dtype=torch.float)}  # fmt: skip
    before = snapshot(module.policy)
    if mode == "stop":
        with pytest.raises(UnscorableRollout, match=r"the rollout given to update\(\) has a NaN reward for every "):
            module.update(given)
        return
    with pytest.warns(UserWarning, match=r"skipped the rollout at a standalone update\(\)"):
        assert module.update(given) == {"unscorable_skipped": 1.0}
    assert not changed(before, module.policy)


def test_some_unscorable_completions_still_train(tmp_path):
    def half_reward(prompts, completions, **kwargs):
        return [None if i % 2 else 1.0 + i for i in range(len(completions))]

    module = tiny_grpo(rewards={"reward_funcs": [half_reward]})
    before = snapshot(module.policy)
    tiny_trainer(tmp_path, max_steps=1).fit(module, prompt_datamodule(tmp_path, module.tokenizer))
    assert changed(before, module.policy) and module.signal.unscorable_skipped == 0


def test_unscorable_options_are_checked():
    with pytest.raises(ValueError, match=r"--model.rewards.unscorable_rollouts='ignore': stop or skip"):
        RewardOptions(unscorable_rollouts="ignore")
    with pytest.raises(ValueError, match=r"--model.rewards.zero_spread_patience=-1: consecutive rollouts, 0 or more"):
        RewardOptions(zero_spread_patience=-1)


# -- rewards without spread -----------------------------------------------------------------------------------------
def test_zero_spread_is_warned_once_with_each_functions_mean(tmp_path):
    module = tiny_grpo(rewards={"reward_funcs": [constant_reward, no_opinion_reward], "zero_spread_patience": 2})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_trainer(tmp_path, max_steps=4).fit(module, prompt_datamodule(tmp_path, module.tokenizer))
    spread = [str(w.message) for w in caught if "consecutive rollouts" in str(w.message)]
    assert len(spread) == 1, spread
    assert spread[0].startswith("for 2 consecutive rollouts every prompt's completions got the same reward "
                                "(frac_reward_zero_std = 1), so every advantage (each reward against its group's) "
                                "was 0")  # fmt: skip
    assert "Mean reward per function over those rollouts: constant_reward 1.000, no_opinion_reward None for every " \
           "completion." in spread[0]  # fmt: skip
    assert "--model.rewards.zero_spread_patience" in spread[0]


@pytest.mark.parametrize("patience", [0, 3])
def test_zero_spread_is_not_warned_with_patience_0_or_spread(tmp_path, patience):
    """Patience 0 never warns; a rollout with spread every third resets the streak before 3."""
    calls = []

    def sometimes_spread(prompts, completions, **kwargs):
        calls.append(1)
        return [float(i) if len(calls) % 3 == 0 else 1.0 for i in range(len(completions))]

    funcs = [constant_reward] if patience == 0 else [sometimes_spread]
    module = tiny_grpo(rewards={"reward_funcs": funcs, "zero_spread_patience": patience})
    calls.clear()  # the call at setup (binding to the data) is not a rollout
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_trainer(tmp_path, max_steps=5).fit(module, prompt_datamodule(tmp_path, module.tokenizer, n=12))
    assert not [w for w in caught if "consecutive rollouts" in str(w.message)]


def test_spread_watch_by_hand():
    """Per-function means over the streak only; a rollout with spread resets it; one group of one completion is
    not a group."""
    watch = SpreadWatch(2, ["a", "b"], group_relative=False)
    same = torch.tensor([1.0, 1.0, 2.0, 2.0])
    table = torch.tensor([[1.0, math.nan], [1.0, math.nan], [2.0, 0.0], [2.0, 0.0]])
    assert watch.local_stats(same, table, 2).tolist() == [2.0, 2.0, 6.0, 0.0, 4.0, 2.0]
    watch.update(watch.local_stats(torch.tensor([1.0, 3.0, 2.0, 2.0]), table, 2))  # spread in group 0
    assert watch.streak == 0
    watch.update(watch.local_stats(same, table, 2))
    assert watch.local_stats(same, table, 1).numel() == 0  # G = 1: nothing to compare, not counted
    watch.update(torch.zeros(0))
    assert watch.streak == 1
    with pytest.warns(UserWarning, match=r"for 2 consecutive rollouts .*so the reward did not tell any prompt's "
                                         r"completions apart\. Mean reward per function over those rollouts: a 1\.500, "
                                         r"b 0\.000\."):  # fmt: skip
        watch.update(watch.local_stats(same, table, 2) * 2)  # two ranks' sums: the means stay
    assert watch.warned and watch.local_stats(same, table, 2).numel() == 0


def test_ppo_says_the_reward_cannot_rank_rather_than_zero_advantages():
    policy, tokenizer = load_model("tiny-llama")
    module = PPO(policy=policy, value_model="policy", **tiny_options(tokenizer, num_generations=2))
    assert module.signal.spread.group_relative is False
    assert tiny_grpo().signal.spread.group_relative is True


# -- references a verifier cannot use -------------------------------------------------------------------------------
def prompt_file(tmp_path, answers):
    rows = [{"prompt": f"What is {i} + 0?", "answer": a} for i, a in enumerate(answers)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def test_unparsable_references_are_named_once_with_their_file_rows(tmp_path, tiny_tokenizer):
    from lit_align.datamodules.prompt import PromptDataModule

    answers = ["0", "one", "2", "", "4", None, "6", "7,5x", "8", "9"]
    dm = PromptDataModule(tokenizer=tiny_tokenizer, data_path=str(prompt_file(tmp_path, answers)), val_size=3)
    options = RewardOptions(reward_funcs=["lit_align.rewards.verifiers:arithmetic_answer_reward",
                                          {"class_path": "lit_align.rewards.math_answer.MathAnswerReward",
                                           "init_args": {"name": "math"}}])  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_reward_options(dm, options)
        check_reward_options(dm, options)  # the recipe checks before the model, the module again at setup: said once
    said = [str(w.message) for w in caught if "cannot use the reference answer" in str(w.message)]
    assert len(said) == 2, said  # once per function
    arithmetic = next(m for m in said if "arithmetic_answer_reward" in m)
    # File rows, whichever split they fell in (val_size=3 carved 3 rows out at random); None is "no answer", fine.
    assert "cannot use the reference answer of 3 of 10 rows of" in arithmetic and "(column 'answer')" in arithmetic
    said = "row 2 ('one'), row 4 (''), row 8 ('7,5x'): not a number; expected one number such as 42"
    assert said in arithmetic and "(rows 1-based)" in arithmetic
    assert "get None (no opinion) from it" in arithmetic


def test_a_verifier_that_can_score_no_row_is_refused_before_training(tmp_path, tiny_tokenizer):
    from lit_align.datamodules.prompt import PromptDataModule
    from lit_align.errors import OptionError

    dm = PromptDataModule(tokenizer=tiny_tokenizer, data_path=str(prompt_file(tmp_path, list("uvwxyz!"))), val_size=0)
    said = (r"'math_answer_reward' cannot use the reference answer of any of the 7 rows.*row 1 \('u'\), row 2 "
            r"\('v'\), .* row 5 \('y'\): not a single number; .*\(rows 1-based\); and 2 more rows\. It would score "
            r"no completion")
    with pytest.raises(OptionError, match=said):
        check_reward_options(dm, RewardOptions(reward_funcs=["lit_align.rewards.math_answer:math_answer_reward"]))


def test_an_unparsable_answer_is_no_opinion_not_a_wrong_answer():
    assert arithmetic_answer_reward(["p"] * 4, ["3", "3", "3", "3"], answer=["3", "three", "", True]) == [
        1.0, None, None, None]  # fmt: skip


# -- DDP: one decision for all ranks --------------------------------------------------------------------------------
DDP_SCRIPT = r"""
import json, os, sys
from pathlib import Path
import lightning as L
from lit_align.algorithms.grpo import GRPO
from lit_align.models.loading import load_model
from lit_align.rewards.signal import UnscorableRollout
from tests.online_helpers import prompt_datamodule, tiny_options

def rank_reward(prompts, completions, **kwargs):
    # None on rank 0 always; on rank 1 only when told (both ranks then have nothing to score)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    nothing = rank == 0 or os.environ["BOTH_UNSCORABLE"] == "1"
    return [None if nothing else float(i) for i in range(len(completions))]

if __name__ == "__main__":
    out = Path(sys.argv[1])
    policy, tokenizer = load_model("tiny-llama")
    module = GRPO(policy=policy, **tiny_options(tokenizer, rewards={"reward_funcs": [rank_reward]}))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(out), limit_val_batches=0)
    try:
        trainer.fit(module, prompt_datamodule(out, tokenizer, n=8))
        result = {"steps": trainer.global_step}
    except UnscorableRollout as err:
        result = {"stopped": str(err)[:60]}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.parametrize("both", [False, True], ids=["one-rank-unscorable", "all-ranks-unscorable"])
def test_ddp_ranks_decide_together(tmp_path, both):
    """2 processes: a rank with nothing to score while the other has rewards trains on (its advantages are 0); when
    no rank has anything, every rank stops with the message (none waits on another)."""
    script = tmp_path / "ddp_signal.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "BOTH_UNSCORABLE": "1" if both else "0"}  # fmt: skip
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    if both:
        assert all(r["stopped"].startswith("no completion of this rollout could be scored") for r in ranks)
    else:
        assert ranks == [{"steps": 2}, {"steps": 2}]
