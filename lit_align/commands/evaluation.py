"""Judge a trained policy against the model it started from, on held-out prompts (and held-out pairs).

Both models complete every held-out prompt with the same sampling settings, the same chat template and the
same random stream (each prompt batch draws from an RNG seeded by (``sampling.seed``, batch, rank), once for
each model), and the judge — a reward model, or reward functions such as a verifier — scores both. Reported:

    win rate      share of prompts where the trained policy's completion scores higher, ties counted half,
                  with a 95% interval (normal approximation over the per-prompt scores 1 / ½ / 0)
    reward        mean judge score of each model and the change; each reward function's mean too
    length        mean completion length in tokens of each and the change (length is the classic reward hack:
                  read it beside the win rate)
    perplexity    exp of the token-mean NLL of the held-out preferred responses under each model (pairs given)
    implicit-reward accuracy
                  share of held-out pairs where log π/π_0 (trained over starting model) ranks chosen over
                  rejected, DPO's implicit reward with any β (pairs given)

With tools (``tools``: the run's own by default, from its config), both models complete each prompt as a
conversation with the same tools and environments (:class:`~lit_align.tools.multi_turn.ToolRunner`; environments
seeded by the batch's key, so both models play the same games), the judges see the conversations, an environment's
``get_reward`` is a judge too, and ``tools/call_frequency`` and ``tools/failure_frequency`` of each model are reported.

Lightning Fabric launches ``devices`` processes; batch j goes to process j mod N and the records are gathered before
the summary (no row is repeated). Outputs: a console
table, ``eval.json``, ``samples.jsonl``, and TensorBoard scalars (``eval/*``) with a text table of sample
pairs, all in ``out_dir``.

Left out: LLM-as-a-judge (this judge is a reward model or a rule), pairwise judges, and length-controlled
win rates (the length change is reported instead, for the reader to weigh).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lit_align.commands.runs import load_trained, tools_of
from lit_align.errors import OptionError
from lit_align.hparams import group_as_plain
from lit_align.metrics import table_cell
from lit_align.models.logprobs import preference_logps
from lit_align.models.sharding import gather_objects
from lit_align.rewards.model_scorer import RewardModelScorer
from lit_align.rewards.resolve import resolve_reward_funcs
from lit_align.rewards.scoring import score_completions
from lit_align.rollouts.sampling import GenerationOptions, Sampler
from lit_align.tools.multi_turn import ToolRunner
from lit_align.tools.options import ToolOptions

TIE = 1e-6  # judge scores closer than this count as a tie


class Evaluation:
    """Completes prompt batches with both models and scores them; scores pair batches under both. Both models sample
    through one :class:`~lit_align.rollouts.sampling.Sampler`, each prompt batch from the RNG of its own key (its
    index): the two models draw from the same stream, and the records do not depend on how many processes share the
    batches.

    Args:
        policy: the trained policy.
        baseline: the model it is compared with.
        judges: reward functions (reward models included) that score both models' completions.
        sampler: samples the completions of both models.
        tokenizer: the policy's tokenizer (both models share it).
        greedy: decode greedily instead of sampling (both models).
        tool_runner: completes prompts as conversations with its tools and environments (both models).
    """

    def __init__(self, policy: nn.Module, baseline: nn.Module, judges: list[Any], sampler: Sampler, tokenizer: Any,
                 greedy: bool = False, tool_runner: ToolRunner | None = None) -> None:  # fmt: skip
        self.policy, self.baseline = policy.eval().requires_grad_(False), baseline.eval().requires_grad_(False)
        self.judges, self.sampler, self.tokenizer, self.greedy = judges, sampler, tokenizer, greedy
        self.tool_runner = tool_runner

    @torch.no_grad()
    def records(self, batch: dict[str, Any], index: int) -> list[dict[str, Any]]:
        """The records of batch ``index`` of a prompt or pair loader."""
        return self._pair_records(batch) if "chosen_input_ids" in batch else self._prompt_records(batch, index)

    def _prompt_records(self, batch: dict[str, Any], index: int) -> list[dict[str, Any]]:
        ids, mask = batch.get("prompt_input_ids"), batch.get("prompt_attention_mask")
        key = f"eval/{index}"  # the same stream for both models
        models = (("trained", self.policy), ("start", self.baseline))
        if self.tool_runner is not None:
            rollouts = {name: self.tool_runner.rollout(self.sampler, model, self.tokenizer, batch, 1, key, self.greedy)
                        for name, model in models}  # fmt: skip
        else:
            rollouts = {name: self.sampler.sample(model, ids, mask, self.tokenizer, 1, key, greedy=self.greedy)
                        for name, model in models}  # fmt: skip
        scores = {name: self._judge(batch, rollout) for name, rollout in rollouts.items()}
        records = []
        for i, prompt in enumerate(batch["prompt"]):
            record: dict[str, Any] = {"prompt": prompt}
            for name, rollout in rollouts.items():
                record[name] = rollout.texts[i]
                record[f"{name}_length"] = int(rollout.policy_mask[i].sum())  # the policy's own tokens
                record[f"{name}_scores"] = [None if math.isnan(v) else v for v in scores[name][i].tolist()]
                if rollout.tool_calls is not None:
                    record[f"{name}_tool_calls"] = int(rollout.tool_calls[i])
                    record[f"{name}_tool_failures"] = int(rollout.tool_failures[i])
            records.append(record)
        return records

    def _judge(self, batch: dict[str, Any], rollout: Any) -> Tensor:
        """(B, F) judge scores, NaN where a function had no opinion; (B, 0) without judges."""
        if not self.judges:
            return torch.zeros(len(rollout), 0)
        columns = {k: v for k, v in batch.items() if k != "prompt" and not torch.is_tensor(v)}
        ids = [r[:n] for r, n in zip(rollout.completion_ids.tolist(), rollout.lengths.tolist(), strict=True)]
        return score_completions(self.judges, batch["prompt"], rollout.texts, columns, ids, 1, rollout.messages,
                                 rollout.environments)  # fmt: skip

    def _pair_records(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        pad = self.tokenizer.pad_token_id or 0
        chosen, rejected = preference_logps(self.policy, batch, pad)
        chosen_0, rejected_0 = preference_logps(self.baseline, batch, pad)
        ranked = (chosen.sum - chosen_0.sum) > (rejected.sum - rejected_0.sum)
        return [
            {"pair": True, "trained_nll": float(-chosen.sum[i]), "start_nll": float(-chosen_0.sum[i]),
             "tokens": int(chosen.num_tokens[i]), "implicit_correct": bool(ranked[i])}
            for i in range(len(ranked))
        ]  # fmt: skip


def wald_interval(scores: list[float], z: float = 1.96) -> tuple[float, float]:
    """mean ± z·s/√n of per-prompt scores in [0, 1] (s: sample std), clipped to [0, 1]; (nan, nan) when n < 2."""
    n = len(scores)
    if n < 2:
        return (math.nan, math.nan)
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = z * std / math.sqrt(n)
    return (max(0.0, mean - half), min(1.0, mean + half))


def summarize(records: list[dict[str, Any]], judge_names: list[str], weights: list[float]) -> dict[str, Any]:
    """The report of :mod:`lit_align.commands.evaluation` from the gathered records (pure; see the module docstring)."""
    prompts = [r for r in records if not r.get("pair")]
    pairs = [r for r in records if r.get("pair")]
    report: dict[str, Any] = {"prompts": len(prompts), "pairs": len(pairs)}
    if prompts:
        for name in ("trained", "start"):
            report.setdefault("length", {})[name] = sum(r[f"{name}_length"] for r in prompts) / len(prompts)
        report["length"]["change"] = report["length"]["trained"] - report["length"]["start"]
    if prompts and "trained_tool_calls" in prompts[0]:  # TRL's names: calls per completion, failed calls per call
        calls = {n: sum(r[f"{n}_tool_calls"] for r in prompts) for n in ("trained", "start")}
        failures = {n: sum(r[f"{n}_tool_failures"] for r in prompts) for n in ("trained", "start")}
        report["tools/call_frequency"] = _change([calls["trained"] / len(prompts)], [calls["start"] / len(prompts)])
        report["tools/failure_frequency"] = _change([failures["trained"] / max(calls["trained"], 1)],
                                                    [failures["start"] / max(calls["start"], 1)])  # fmt: skip
    if prompts and judge_names:
        judged = []
        for r in prompts:
            t, s = (_weighted(r[f"{n}_scores"], weights) for n in ("trained", "start"))
            if t is not None and s is not None:
                judged.append((t, s))
        wins = sum(t - s > TIE for t, s in judged)
        ties = sum(abs(t - s) <= TIE for t, s in judged)
        scores = [1.0 if t - s > TIE else 0.5 if abs(t - s) <= TIE else 0.0 for t, s in judged]
        report["judged"] = len(judged)
        report["win_rate"] = sum(scores) / len(scores) if scores else math.nan
        report["win_rate_ci95"] = list(wald_interval(scores))
        report["wins"], report["ties"], report["losses"] = wins, ties, len(judged) - wins - ties
        trained = [t for t, _ in judged]
        start = [s for _, s in judged]
        report["reward"] = _change(trained, start)
        for i, name in enumerate(judge_names):
            pairs_i = [(r["trained_scores"][i], r["start_scores"][i]) for r in prompts]
            kept = [(t, s) for t, s in pairs_i if t is not None and s is not None]
            report[f"rewards/{name}"] = _change([t for t, _ in kept], [s for _, s in kept])
    if pairs:
        tokens = sum(r["tokens"] for r in pairs)
        report["perplexity"] = {
            name: math.exp(sum(r[f"{name}_nll"] for r in pairs) / max(tokens, 1)) for name in ("trained", "start")
        }
        report["perplexity"]["change"] = report["perplexity"]["trained"] - report["perplexity"]["start"]
        report["implicit_reward_accuracy"] = sum(r["implicit_correct"] for r in pairs) / len(pairs)
    return report


def _weighted(scores: list[float | None], weights: list[float]) -> float | None:
    """The judge's score: weighted sum over functions with an opinion (None when none had one)."""
    kept = [(s, w) for s, w in zip(scores, weights, strict=True) if s is not None]
    return sum(s * w for s, w in kept) if kept else None


def _change(trained: list[float], start: list[float]) -> dict[str, float]:
    mean_t = sum(trained) / len(trained) if trained else math.nan
    mean_s = sum(start) / len(start) if start else math.nan
    return {"trained": mean_t, "start": mean_s, "change": mean_t - mean_s}


def format_report(report: dict[str, Any]) -> str:
    """The console table."""
    lines = [f"{'':28s}{'trained':>12s}{'start':>12s}{'change':>12s}"]
    tools = ("tools/call_frequency", "tools/failure_frequency")
    for key in ["reward", *sorted(k for k in report if k.startswith("rewards/")), "length", *tools, "perplexity"]:
        if key in report:
            row = report[key]
            lines.append(f"{key:28s}{row['trained']:>12.4g}{row['start']:>12.4g}{row['change']:>+12.4g}")
    if "win_rate" in report:
        low, high = report["win_rate_ci95"]
        lines.append(
            f"{'win rate':28s}{report['win_rate']:>12.3f}   95% [{low:.3f}, {high:.3f}]   "
            f"({report['wins']} wins, {report['ties']} ties, {report['losses']} losses of {report['judged']})"
        )
    else:
        lines.append(f"{'win rate':28s}{'not judged':>12s}   (no judge: give --reward_model or --reward_funcs; "
                     "a run with environments judges by their rewards)")  # fmt: skip
    if "implicit_reward_accuracy" in report:
        lines.append(f"{'implicit-reward accuracy':28s}{report['implicit_reward_accuracy']:>12.3f}   "
                     f"({report['pairs']} held-out pairs)")  # fmt: skip
    return "\n".join(lines)


def evaluate(
    policy: str,
    baseline: str | None = None,
    reward_model: str | None = None,
    reward_funcs: list[str] | None = None,
    prompts: str | None = None,
    pairs: str | None = None,
    max_prompts: int | None = 200,
    max_pairs: int | None = 200,
    batch_size: int = 8,
    max_prompt_length: int | None = 256,
    max_length: int = 512,
    out_dir: str | None = None,
    accelerator: str = "auto",
    devices: int = 1,
    strategy: str = "auto",
    sampling: GenerationOptions = GenerationOptions(),
    greedy: bool = False,
    table_rows: int = 8,
    tools: ToolOptions | None = None,
    user_template: str | None = None,
    columns: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """Compare a trained policy with the model it started from on held-out data, and write the report.

    With a judge (a reward model, reward functions, or the run's environments' rewards) the report gives the win
    rate (ties half, with a 95% interval) and each model's reward; without one it gives each model's response length
    and, with pairs, the perplexity of the held-out chosen responses and the implicit-reward accuracy, and says that
    no win rate was judged. Returns the report on rank 0, ``None`` elsewhere.

    Args:
        policy: the trained policy: a run directory (``runs/dpo/version_0``), a ``.ckpt`` file, an ``hf_model``
            export, or a preset / hub id / directory.
        baseline: the model to compare with (default: the run's own starting policy).
        reward_model: the judge: a reward-model run directory (its ``hf_model`` export) or a reward-model folder.
        reward_funcs: reward functions by import path (verifiers), judged with equal weights; with
            ``reward_model`` they are reported beside it and the judge is the reward model.
        prompts: held-out prompts (rows with ``prompt`` and any columns the reward functions read).
        pairs: held-out preference pairs (``prompt``, ``chosen``, ``rejected``): perplexity of the chosen
            responses and implicit-reward accuracy; their prompts are used when ``prompts`` is not given.
        max_prompts: use the first N prompts.
        max_pairs: use the first N pairs.
        batch_size: prompts (pairs) per batch.
        max_prompt_length: longest prompt in tokens (the end is kept).
        max_length: longest prompt + response of a pair, in tokens.
        out_dir: where the report goes (default: ``<run directory>/eval``, else ``eval``).
        accelerator: Lightning (Fabric) accelerator.
        devices: devices (processes) to split the batches over.
        strategy: Lightning (Fabric) strategy (``ddp`` with several devices).
        sampling: how both models sample (a group: ``--sampling.<option>``).
        greedy: decode greedily instead of sampling (both models).
        table_rows: prompts shown in the text table of sample pairs.
        tools: tools and environments both models may use (a group: ``--tools.<option>``); default: those the
            ``policy``'s run trained with (its config.yaml or checkpoint), none for a plain model. The environments'
            ``get_reward`` judge beside the other judges.
        user_template: make each text prompt of ``prompts`` a user message written by this format string
            (``{prompt}``), as ``--data.user_template`` of the recipes (e.g. GSM8K questions for a chat model).
        columns: rename the prompt file's columns, as ``--data.columns`` (``{"prompt": "question", "answer":
            "final_answer"}``).
    """
    from lit_align.datamodules import PreferenceDataModule, PromptDataModule

    if prompts is None and pairs is None:
        raise OptionError("give held-out --prompts, --pairs, or both")
    trained = load_trained(policy)
    baseline = baseline or trained.starting_policy
    if baseline is None:
        raise OptionError(f"{policy}: cannot tell the starting model; pass --baseline")
    start = load_trained(baseline)
    specs = ([f"model:{_reward_model_folder(reward_model)}"] if reward_model else []) + list(reward_funcs or [])
    judges, names, _ = resolve_reward_funcs(specs) if specs else ([], [], [])
    weights = [1.0 if reward_model is None or i == 0 else 0.0 for i in range(len(judges))]
    tools = ToolOptions(**(tools_of(policy) or {})) if tools is None else tools
    runner = ToolRunner(tools) if tools.enabled else None
    for env_reward in runner.environment_rewards if runner else ():  # an environment's reward judges too (weight 1)
        judges.append(env_reward)
        names.append(env_reward.__name__)
        weights.append(1.0 if reward_model is None else 0.0)
    tokenizer = trained.tokenizer
    loaders = []
    if prompts or pairs:  # the prompts of the pairs when no prompt file is given
        dm = PromptDataModule(tokenizer=tokenizer, data_path=prompts or pairs, val_size=0, max_samples=max_prompts,
                              max_prompt_length=max_prompt_length, batch_size=batch_size, user_template=user_template,
                              columns=columns)  # fmt: skip
        dm.setup("predict")
        loaders.append(DataLoader(dm.train_dataset, batch_size=batch_size, collate_fn=dm.collate))
    if pairs:
        pm = PreferenceDataModule(
            tokenizer=tokenizer, data_path=pairs, val_size=0, max_samples=max_pairs, max_length=max_length,
            max_prompt_length=max_prompt_length, batch_size=batch_size,
        )  # fmt: skip
        pm.setup("predict")
        loaders.append(DataLoader(pm.train_dataset, batch_size=batch_size, collate_fn=pm.collate))
    fabric = L.Fabric(accelerator=accelerator, devices=devices, strategy=strategy)
    fabric.launch()
    trained.model.to(fabric.device), start.model.to(fabric.device)
    for judge in judges:
        if isinstance(judge, RewardModelScorer):  # reward models score on this process's device too
            judge.model.to(fabric.device)
    evaluation = Evaluation(trained.model, start.model, judges, Sampler(sampling), tokenizer, greedy, runner)
    records = []
    for loader in loaders:
        for index, batch in enumerate(loader):
            if index % fabric.world_size == fabric.global_rank:
                batch = {k: v.to(fabric.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                records.extend(evaluation.records(batch, index))
    records = [record for part in gather_objects(records) for record in part]
    if fabric.global_rank != 0:
        return None
    report = summarize(records, names, weights)
    report["settings"] = {"policy": trained.source, "baseline": start.source, "judges": specs, "greedy": greedy,
                          **group_as_plain(sampling), "tools": group_as_plain(tools)}  # fmt: skip
    folder = Path(out_dir) if out_dir else _default_out_dir(policy)
    write_report(folder, report, [r for r in records if not r.get("pair")], table_rows)
    print(format_report(report), flush=True)
    print(f"report: {folder / 'eval.json'}   samples: {folder / 'samples.jsonl'}   tensorboard --logdir {folder}")
    return report


def write_report(folder: Path, report: dict[str, Any], samples: list[dict[str, Any]], table_rows: int) -> None:
    """eval.json, samples.jsonl, and TensorBoard scalars + a text table of sample pairs under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(report, indent=2, default=str))
    with (folder / "samples.jsonl").open("w") as f:
        for record in samples:
            f.write(json.dumps(record, default=str) + "\n")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for key, value in report.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            writer.add_scalar(f"eval/{key}", value, 0)
        elif isinstance(value, dict):
            for name, number in value.items():
                if isinstance(number, int | float):
                    writer.add_scalar(f"eval/{key}/{name}", number, 0)
    rows = ["| prompt | trained | start |", "| --- | --- | --- |"]
    for record in samples[:table_rows]:
        rows.append("| " + " | ".join(table_cell(record[key]) for key in ("prompt", "trained", "start")) + " |")
    writer.add_text("eval/samples", "\n".join(rows), 0)
    writer.close()


def _reward_model_folder(ref: str) -> str:
    path = Path(ref)
    return str(path / "hf_model") if (path / "hf_model" / "config.json").is_file() else ref


def _default_out_dir(policy: str) -> Path:
    path = Path(policy)
    if path.is_dir() and (path / "hf_model").is_dir():
        return path / "eval"
    if path.is_dir() and (path / "config.json").is_file() and (path.parent / "config.yaml").is_file():
        return path.parent / "eval"
    return Path("eval")
