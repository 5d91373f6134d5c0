"""Evaluation and generation: the report's numbers by hand, and both recipes end to end on a tiny run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from lit_align.commands.report import summarize, wald_interval
from lit_align.datamodules import PromptDataModule
from lit_align.rewards.reward_set import RewardOptions, RewardSet
from lit_align.rollouts.sampling import GenerationOptions
from tests.conftest import REPO, write_jsonl


def record(trained: float | None, start: float | None, lengths=(10, 8)) -> dict:
    return {"prompt": "p", "trained": "a", "start": "b", "trained_length": lengths[0], "start_length": lengths[1],
            "trained_scores": [trained], "start_scores": [start], "trained_reward": trained,
            "start_reward": start}  # fmt: skip


def test_win_rate_counts_ties_half_and_skips_unjudged_prompts():
    """Scores 1, ½, 0, 1 -> win rate 2.5/4 = 0.625; the prompt nobody could judge is left out of it."""
    records = [record(2.0, 1.0), record(1.0, 1.0), record(0.0, 3.0), record(5.0, 4.0), record(None, None)]
    report = summarize(records, ["rm"])
    assert report["judged"] == 4 and (report["wins"], report["ties"], report["losses"]) == (2, 1, 1)
    assert report["win_rate"] == pytest.approx(0.625)
    # mean 0.625, sample std of (1, .5, 0, 1) = sqrt(((.375)^2 + (.125)^2 + (.625)^2 + (.375)^2) / 3) = 0.4787
    low, high = report["win_rate_ci95"]
    half = 1.96 * 0.47871355 / 2
    assert low == pytest.approx(0.625 - half, abs=1e-6) and high == pytest.approx(min(1.0, 0.625 + half), abs=1e-6)
    assert report["reward"] == {"trained": 2.0, "start": 2.25, "change": -0.25}
    assert report["length"] == {"trained": 10.0, "start": 8.0, "change": 2.0}


def test_perplexity_and_implicit_accuracy_from_pairs():
    pairs = [{"pair": True, "trained_nll": 6.0, "start_nll": 8.0, "tokens": 4, "implicit_correct": True},
             {"pair": True, "trained_nll": 2.0, "start_nll": 4.0, "tokens": 2, "implicit_correct": False}]  # fmt: skip
    report = summarize(pairs, [])
    assert report["perplexity"]["trained"] == pytest.approx(math.exp(8 / 6))  # token-weighted: (6 + 2) / (4 + 2)
    assert report["perplexity"]["start"] == pytest.approx(math.exp(12 / 6))
    assert report["implicit_reward_accuracy"] == 0.5 and "win_rate" not in report


def test_wald_interval_limits():
    assert math.isnan(wald_interval([1.0])[0])
    assert wald_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)  # no spread, no width


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-step DPO run on the tiny preset through the recipe, and a tiny reward-model folder."""
    root = tmp_path_factory.mktemp("eval")
    cmd = [sys.executable, str(REPO / "recipes/dpo.py"), "fit", "--config", str(REPO / "recipes/configs/tiny.yaml")]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama

    tokenizer = build_byte_tokenizer()
    build_tiny_llama(tokenizer, seed=3, kind="sequence_classification").save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    shutil.copytree(root / "rm", root / "rm_run" / "hf_model")
    pairs = [{"prompt": f"Say {i}.", "chosen": f"{i}.", "rejected": f"No {i}."} for i in range(6)]
    write_jsonl(root / "pairs.jsonl", pairs)
    return root


def test_evaluate_recipe_reports_win_rate_reward_length_perplexity(tiny_run):
    out = tiny_run / "report"
    cmd = [sys.executable, str(REPO / "recipes/evaluate.py"), "runs/dpo/version_0", "--rewards.reward_funcs",
           "[model:rm]", "--pairs", "pairs.jsonl", "--sampling.max_new_tokens", "6", "--out_dir", str(out)]  # fmt: skip
    result = subprocess.run(cmd, cwd=tiny_run, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["prompts"] == 6 and report["pairs"] == 6 and report["judged"] == 6
    assert 0.0 <= report["win_rate"] <= 1.0 and len(report["win_rate_ci95"]) == 2
    assert set(report["reward"]) == set(report["length"]) == set(report["perplexity"]) == {"trained", "start", "change"}
    assert report["settings"]["baseline"] == "tiny-llama"  # the run's own starting policy, from its config.yaml
    assert "win rate" in result.stdout and "implicit-reward accuracy" in result.stdout
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and {"trained", "start", "trained_scores"} <= set(samples[0])
    assert list(out.glob("events.out.tfevents.*"))


@pytest.mark.slow  # two processes
def test_two_processes_give_the_records_of_one(tiny_run):
    """Batch j goes to process j mod N, seeded by its own key: 2 DDP processes (Lightning Fabric) report the records,
    and so the report, of 1."""
    reports = {}
    for devices, strategy in ((1, "auto"), (2, "ddp")):
        out = tiny_run / f"layout{devices}"
        cmd = [sys.executable, str(REPO / "recipes/evaluate.py"), "runs/dpo/version_0", "--rewards.reward_funcs",
               "[model:rm]", "--pairs.data_path", "pairs.jsonl", "--pairs.batch_size", "2",
               "--sampling.max_new_tokens", "6", "--accelerator",
               "cpu", "--devices", str(devices), "--strategy", strategy, "--out_dir", str(out)]  # fmt: skip
        result = subprocess.run(cmd, cwd=tiny_run, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        reports[devices] = (json.loads((out / "eval.json").read_text()), sorted(samples, key=lambda r: r["prompt"]))
    (one, one_samples), (two, two_samples) = reports[1], reports[2]
    assert one_samples == two_samples and one["pairs"] == two["pairs"] == 6
    for key in ("win_rate", "reward", "length", "perplexity", "implicit_reward_accuracy"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


def test_evaluating_a_model_against_itself_is_all_ties(tiny_run):
    """Same model, same seeded stream: identical completions, identical scores, win rate exactly 0.5."""
    from lit_align.commands.evaluation import evaluate

    judge = RewardOptions(reward_funcs=[f"model:{tiny_run / 'rm_run'}"])  # a run directory: its hf_model export
    report = evaluate("tiny-llama", baseline="tiny-llama", rewards=judge,
                      prompts=str(tiny_run / "pairs.jsonl"), sampling=GenerationOptions(max_new_tokens=6),
                      out_dir=str(tiny_run / "self"))  # fmt: skip
    assert report["win_rate"] == 0.5 and report["ties"] == report["judged"] == 6
    assert report["length"]["change"] == 0.0


def test_generate_recipe_writes_jsonl_with_the_other_columns(tiny_run):
    rows = [{"prompt": "Hi", "id": 7}, {"prompt": [{"role": "user", "content": "Yo"}], "id": 8}]
    write_jsonl(tiny_run / "prompts.jsonl", rows)
    cmd = [sys.executable, str(REPO / "recipes/generate.py"), "runs/dpo/version_0", "--prompts", "prompts.jsonl",
           "--output", "out.jsonl", "--sampling.max_new_tokens", "4", "--num_generations", "2"]  # fmt: skip
    result = subprocess.run(cmd, cwd=tiny_run, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tiny_run / "out.jsonl").read_text().splitlines()]
    assert rows[0]["id"] == 7 and len(rows[0]["completions"]) == 2 and len(rows) == 2
    said = result.stderr  # progress on standard error (standard output may be the rows)
    assert "loading runs/dpo/version_0" in said and "generating for 2 prompts of prompts.jsonl" in said
    assert "2/2 prompts" in said and f"wrote 2 rows to {tiny_run / 'out.jsonl'}" in said


def test_a_report_without_a_judge_says_it_has_no_win_rate(tiny_run):
    cmd = [sys.executable, str(REPO / "recipes/evaluate.py"), "runs/dpo/version_0", "--pairs", "pairs.jsonl",
           "--sampling.max_new_tokens", "4", "--out_dir", str(tiny_run / "unjudged")]  # fmt: skip
    result = subprocess.run(cmd, cwd=tiny_run, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("win rate")]
    assert "not judged" in line and "--rewards.reward_funcs" in line
    assert "length" in result.stdout and "perplexity" in result.stdout


def test_generate_reads_prompts_from_stdin(tiny_run):
    cmd = [sys.executable, str(REPO / "recipes/generate.py"), "runs/dpo/version_0", "--sampling.max_new_tokens", "3",
           "--greedy", "true"]  # fmt: skip
    result = subprocess.run(cmd, cwd=tiny_run, input="Hello\nAgain\n\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) >= 2  # one completion per prompt (a completion may hold newlines)


def test_evaluation_plays_the_same_games_with_both_models(tiny_tokenizer):
    """With tools, both models complete each prompt as a conversation in identically seeded environments; the
    environment's reward judges, and the tools metrics are reported."""
    from lit_align.commands.evaluation import Evaluation
    from lit_align.models.loading import load_model
    from lit_align.rollouts.sampling import Sampler
    from lit_align.tools.multi_turn import ToolRunner
    from lit_align.tools.options import ToolOptions
    from tests.online_helpers import ScriptedTurns, game_rows, guessing_script

    runner = ToolRunner(ToolOptions(environment="lit_align.tools.games:GuessTheNumber", max_turns=6))
    player = ScriptedTurns(tiny_tokenizer, guessing_script, 900)
    sampler = Sampler(GenerationOptions(max_new_tokens=900), backend=player)
    policy, baseline = load_model("tiny-llama", seed=0)[0], load_model("tiny-llama", seed=1)[0]
    judges = RewardSet(RewardOptions(reward_funcs=()), runner.environment_rewards)
    evaluation = Evaluation(policy, baseline, judges, sampler, tiny_tokenizer, True, runner)
    rows = game_rows(3)
    batch = {"prompt": [r["prompt"] for r in rows], "low": [1] * 3, "high": [16] * 3}
    records = evaluation.records(batch, 0)
    assert [r["trained"] for r in records] == [r["start"] for r in records]  # the same games, the same player
    assert all(r["trained_tool_calls"] >= 1 and r["trained_tool_failures"] == 0 for r in records)
    assert all(r["trained_scores"][0] >= 0.5 for r in records)  # bisection finds the number within 6 turns
    report = summarize(records, ["GuessTheNumber"])
    calls = sum(r["trained_tool_calls"] for r in records) / 3
    assert report["tools/call_frequency"] == {"trained": calls, "start": calls, "change": 0.0}
    assert report["tools/failure_frequency"]["trained"] == 0.0 and report["win_rate"] == 0.5


def test_evaluate_takes_the_runs_tools(tmp_path):
    """evaluate() on a run trained with tools uses them by default (its config.yaml); the report names them."""
    import yaml

    from lit_align.commands.evaluation import evaluate
    from lit_align.models.runs import tools_of

    run = tmp_path / "run"
    (run / "hf_model").mkdir(parents=True)
    tools = {"functions": [], "environment": "lit_align.tools.games:GuessTheNumber", "max_turns": 3}
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"policy": "tiny-llama", "tools": tools}}))
    assert tools_of(run) == tools and tools_of(tmp_path) is None
    from lit_align.models.loading import load_model

    model, tokenizer = load_model("tiny-llama")
    model.save_pretrained(run / "hf_model")
    tokenizer.save_pretrained(run / "hf_model")
    prompts = write_jsonl(tmp_path / "games.jsonl", [{"prompt": [{"role": "user", "content": "Play."}], "low": 1,
                                                      "high": 8}] * 2)  # fmt: skip
    report = evaluate(str(run), prompts=str(prompts), sampling=GenerationOptions(max_new_tokens=16), greedy=True,
                      out_dir=str(tmp_path / "eval"), accelerator="cpu")  # fmt: skip
    assert report["settings"]["tools"]["environment"] == "lit_align.tools.games:GuessTheNumber"
    assert "tools/call_frequency" in report and "rewards/GuessTheNumber" in report


def test_evaluate_takes_text_prompts_with_a_user_template_and_renamed_columns(tmp_path):
    """GSM8K-shaped held-out rows ({"question", "final_answer"}) evaluated as chats, the answer column renamed."""
    from lit_align.commands.evaluation import evaluate

    rows = [{"question": f"What is {i} + {i}?", "final_answer": str(2 * i)} for i in range(3)]
    prompts = write_jsonl(tmp_path / "gsm8k_like.jsonl", rows)
    held_out = PromptDataModule(data_path=str(prompts), user_template="{prompt} Answer with the number.",
                                columns={"prompt": "question", "answer": "final_answer"})  # fmt: skip
    rewards = RewardOptions(reward_funcs=["lit_align.rewards.verifiers:arithmetic_answer_reward"])
    report = evaluate("tiny-llama", baseline="tiny-llama", prompts=held_out, rewards=rewards,
                      sampling=GenerationOptions(max_new_tokens=4), greedy=True, out_dir=str(tmp_path / "eval"),
                      accelerator="cpu")  # fmt: skip
    assert report["prompts"] == 3 and "rewards/arithmetic_answer_reward" in report
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"] == [{"role": "user", "content": "What is 0 + 0? Answer with the number."}]


def test_a_data_file_given_to_a_data_group_is_its_data_path(tmp_path):
    """``--pairs FILE`` reads as ``--pairs.data_path FILE`` (a data file, or a folder); a YAML of the DataModule's
    options, dotted options and other flags are left as given."""
    from lit_align.commands.evaluation import command_line

    args = ["run", "--pairs", "a.jsonl", "--pairs.max_samples", "4", "--prompts=b.parquet", "--rewards", "r.yaml",
            "--prompts", str(tmp_path), "--pairs", "options.yaml", "--prompts"]  # fmt: skip
    assert command_line(args) == [
        "run", "--pairs.data_path", "a.jsonl", "--pairs.max_samples", "4", "--prompts.data_path", "b.parquet",
        "--rewards", "r.yaml", "--prompts.data_path", str(tmp_path), "--pairs", "options.yaml", "--prompts",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"--max_prompts is now --prompts.max_samples"):
        command_line(["run", "--max_prompts=3"])
