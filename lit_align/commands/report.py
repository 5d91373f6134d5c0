"""The evaluation's report: the numbers from the gathered records, the console table, and the files.

:func:`summarize` is pure (the records in, the report out); :func:`write_report` writes ``eval.json``,
``samples.jsonl`` and TensorBoard scalars (``eval/*``) with a text table of sample pairs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lit_align.metrics import table_cell

TIE = 1e-6  # judge scores closer than this count as a tie


def wald_interval(scores: list[float], z: float = 1.96) -> tuple[float, float]:
    """mean ± z·s/√n of per-prompt scores in [0, 1] (s: sample std), clipped to [0, 1]; (nan, nan) when n < 2."""
    n = len(scores)
    if n < 2:
        return (math.nan, math.nan)
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = z * std / math.sqrt(n)
    return (max(0.0, mean - half), min(1.0, mean + half))


def summarize(records: list[dict[str, Any]], judge_names: list[str]) -> dict[str, Any]:
    """The report of :mod:`lit_align.commands.evaluation` from the gathered records (see its docstring): each prompt
    record carries both models' combined judge score (``trained_reward``, ``start_reward``: None when no judge had
    an opinion) and each judge's (``*_scores``)."""
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
        judged = [(r["trained_reward"], r["start_reward"]) for r in prompts
                  if r["trained_reward"] is not None and r["start_reward"] is not None]  # fmt: skip
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
        lines.append(f"{'win rate':28s}{'not judged':>12s}   (no judge: give --rewards.reward_funcs, e.g. "
                     "[model:runs/reward_model/version_0]; a run's environments judge by their rewards)")  # fmt: skip
    if "implicit_reward_accuracy" in report:
        lines.append(f"{'implicit-reward accuracy':28s}{report['implicit_reward_accuracy']:>12.3f}   "
                     f"({report['pairs']} held-out pairs)")  # fmt: skip
    return "\n".join(lines)


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
