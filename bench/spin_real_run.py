"""SPIN with SmolLM2-135M-Instruct on the project's demo SFT rows, on CPU: the recipe's default run, then the held-out
log-prob margin of the ground truth over the policy's own samples, per iteration.

Held-out margin of a policy θ: over the recipe's 8 held-out rows (of the first 40 of
``datamodules/samples/sft_demo.jsonl``; the validation split, never trained on), the mean of
log p_θ(y|x) − log p_θ(y'|x), y the ground truth, y' ~ p_θ(·|x) one sample of θ itself (temperature 1, the recipe's
``max_new_tokens``), both tokenized alike (chat template) and summed over completion tokens; also as token means (each
log-prob divided by its completion's token count). In expectation it is H(p_θ) − CE(p_data, p_θ), 0 at SPIN's fixed
point p_θ = p_data: it moves towards 0 as the model's own answers and the ground truth become alike in likelihood.
θ_0 (the initial model) and θ_1 (after iteration 0) are what the run itself measured when each iteration began
(``spin/iteration_<t>.jsonl``, held-out lines); θ_2 (after iteration 1) is measured here the same way on the
held-out prompts (the exported model samples with the run's sampling options, seed key ``spin/2``).

    nice -n 10 python bench/spin_real_run.py [--out bench_runs/spin] [-- extra recipe flags]
    python bench/spin_real_run.py --analyze RUN_DIR   # only the report, for a finished run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def margins(lines: list[dict]) -> tuple[float, float]:
    """(summed, token-mean) held-out margin of the ground truth over the generated responses."""
    held = [line for line in lines if line["id"].startswith("val/")]
    summed = [line["ref_chosen_logps"] - line["ref_rejected_logps"] for line in held]
    token = [
        line["ref_chosen_logps"] / line["chosen_tokens"] - line["ref_rejected_logps"] / line["rejected_tokens"]
        for line in held
    ]
    return sum(summed) / len(summed), sum(token) / len(token)


def final_lines(run_dir: Path, config: dict, iteration: int) -> list[dict]:
    """The held-out lines an iteration start would write, for the exported final policy (one process)."""
    from lit_align.datamodules import SPINDataModule
    from lit_align.models.loading import load_model
    from lit_align.rollouts.sampling import Sampler
    from lit_align.training.self_play import generate_responses, pair_logps

    policy, tokenizer = load_model(str(run_dir / "hf_model"))
    data = {k: v for k, v in config["data"].items() if k != "tokenizer"}
    dm = SPINDataModule(tokenizer=tokenizer, **data)
    dm.setup("fit")
    model = config["model"]
    sampler = Sampler(model["sampling"])
    items = [item for item in dm.self_play_items() if item["id"].startswith("val/")]
    common = {"batch_size": model["generation_batch_size"], "pad_id": tokenizer.pad_token_id, "rank": 0, "world": 1,
              "padded": False}  # fmt: skip
    prompts = [i["prompt_ids"] for i in items]
    responses = generate_responses(sampler, policy, tokenizer, prompts, key=f"spin/{iteration}", **common)
    lines = [{"id": item["id"], "prompt": item["prompt"], "chosen": item["chosen"], "rejected": responses[n]["text"],
              "truncated": responses[n]["truncated"]} for n, item in enumerate(items)]  # fmt: skip
    rows = [dm.pair_row(line) for line in lines]
    scores = pair_logps(policy, rows, dm.collate, **common)
    for n, line in enumerate(lines):
        line.update(scores[n])
    return lines


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for event_file in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_runs/spin", help="working directory of the run (runs/spin/...)")
    parser.add_argument("--analyze", help="a finished run's directory: report only")
    args, extra = parser.parse_known_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    report: dict = {}
    if args.analyze:
        run_dir = Path(args.analyze)
    else:
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(REPO / "recipes" / "spin.py"), "fit", *[a for a in extra if a != "--"]]
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, cwd=out, check=True)
        report["wall_seconds"] = round(time.perf_counter() - start)
        report["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)  # the child
        run_dir = max((out / "runs" / "spin").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    iterations = config["model"]["iterations"]
    report["run_dir"] = str(run_dir)
    exported = run_dir / "hf_model" / "model.safetensors"
    report["fit_wall_seconds"] = round(exported.stat().st_mtime - (run_dir / "config.yaml").stat().st_mtime)
    tags = scalars(run_dir)
    for t in range(iterations):
        lines = [json.loads(x) for x in (run_dir / "spin" / f"iteration_{t}.jsonl").read_text().splitlines()]
        steps = [s for s, v in tags.get("spin/iteration", []) if v == t]
        in_iteration = {name: [v for s, v in tags.get(name, []) if s in steps]
                        for name in ("train/loss", "train/rewards/accuracies", "train/rewards/margins")}  # fmt: skip
        gen = [v for s, v in tags.get("spin/generation_seconds", []) if s in steps]
        train = [line for line in lines if line["id"].startswith("train/")]
        held = [line for line in lines if line["id"].startswith("val/")]
        report[f"theta_{t}"] = {
            "heldout_margin": [round(m, 3) for m in margins(lines)],
            "truncated_ratio": round(sum(line["truncated"] for line in train) / len(train), 3),
            "truncated_ratio_heldout": round(sum(x["truncated"] for x in held) / max(1, len(held)), 3),
            "generation_seconds": round(gen[0]) if gen else None,
            "steps": len(steps),
            **{f"{k} (last 10 steps)": round(sum(v[-10:]) / len(v[-10:]), 4) for k, v in in_iteration.items() if v},
        }
    start = time.perf_counter()
    lines = final_lines(run_dir, config, iterations)
    report[f"theta_{iterations}"] = {
        "heldout_margin": [round(m, 3) for m in margins(lines)],
        "truncated_ratio_heldout": round(sum(x["truncated"] for x in lines) / len(lines), 3),
        "eval_seconds": round(time.perf_counter() - start),
    }
    (run_dir / "spin" / f"final_{iterations}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
