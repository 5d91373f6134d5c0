"""RLVR with SmolLM2-135M-Instruct on CPU: held-out greedy accuracy before and after training.

Runs the recipe's own configuration (``recipes/configs/rlvr.yaml``, plus ``--config`` overlays and
``--key value`` overrides, exactly as ``python recipes/rlvr.py fit`` takes them) through one Trainer:
``validate`` (before), ``fit`` (which validates every ``trainer.val_check_interval`` steps and at the
end), then prints one line per rollout (rewards, per-verifier accuracy, lengths, times) and a JSON
summary. "Accuracy" is ``val/rewards/<verifier>/mean``: the verifier's mean over the greedy completions of
the DataModule's held-out rows (its seeded validation split, never trained on).

    nice -n 10 python bench/rlvr_real_run.py                       # arithmetic task, the default config
    nice -n 10 python bench/rlvr_real_run.py --config recipes/configs/examples/rlvr_gsm8k.yaml \\
        --data.max_samples 456 --trainer.max_steps 64               # GSM8K: 256 train / 200 held-out rows

``--threads`` (default 2) sets torch's thread count; the rest goes to the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import lightning as L
import torch

from lit_align.algorithms.rlvr import RLVR
from lit_align.callbacks.console import quiet
from lit_align.commands.cli import AlignCLI
from lit_align.datamodules.prompt import PromptDataModule

DEFAULT_CONFIG = Path(__file__).parents[1] / "recipes" / "configs" / "rlvr.yaml"


class StepPrinter(L.Callback):
    """One line per rollout from the step's logged metrics; keeps them for the summary."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        values = {k.removeprefix("train/"): float(v) for k, v in metrics.items() if k.startswith("train/")}
        self.history.append(values)
        verifiers = "  ".join(f"{n} {values[f'rewards/{n}/mean']:.3f}" for n in module.rewards.names)
        print(
            f"rollout {len(self.history):3d}  step {trainer.global_step:3d}  reward {values['reward']:+.3f}  "
            f"{verifiers}  "
            f"zero-std {values['frac_reward_zero_std']:.2f}  len {values['completions/mean_length']:5.1f}  "
            f"gen {values['time/generation']:5.1f}s  update {values['time/update']:5.1f}s  "
            f"wall {time.perf_counter() - self.start:6.0f}s",
            flush=True,
        )


def val_values(metrics: dict) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in metrics.items() if k.startswith("val/")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args, cli_args = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    quiet()
    cli = AlignCLI(
        RLVR, PromptDataModule, args=cli_args, run=False, auto_configure_optimizers=False,
        parser_kwargs={"default_config_files": [str(DEFAULT_CONFIG)]}, save_config_kwargs={"overwrite": True},
    )  # fmt: skip
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    printer = StepPrinter()
    trainer.callbacks.append(printer)
    load = os.getloadavg()

    cpu_start = time.process_time()
    start = time.perf_counter()
    before = val_values(trainer.validate(module, data, verbose=False)[0])
    before_s = time.perf_counter() - start
    print("before:", json.dumps(before), f"({before_s:.0f}s)", flush=True)
    printer.start = start = time.perf_counter()
    trainer.fit(module, data)
    fit_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    after = val_values(trainer.callback_metrics)  # validated at the last step: max_steps % val_check_interval == 0

    history = printer.history

    def mean(key: str, rows: list[dict[str, float]]) -> float:
        return round(sum(h[key] for h in rows) / len(rows), 4)

    summary = {
        "config": cli_args, "threads": args.threads, "load_average_at_start": load,
        "load_average_at_end": os.getloadavg(), "train_rows": len(data.train_dataset),
        "held_out_rows": len(data.val_dataset), "rollouts": len(history), "optimizer_steps": trainer.global_step,
        "held_out_before": before, "held_out_after": after, "validate_before_s": round(before_s),
        "fit_wall_s": round(fit_s), "process_cpu_s": round(cpu_s), "log_dir": trainer.log_dir,
        "train_first5": {k: mean(k, history[:5]) for k in history[0] if k.startswith("reward")},
        "train_last5": {k: mean(k, history[-5:]) for k in history[0] if k.startswith("reward")},
        "generation_s_per_rollout": mean("time/generation", history),
        "update_s_per_rollout": mean("time/update", history),
        "mean_length_first5": mean("completions/mean_length", history[:5]),
        "mean_length_last5": mean("completions/mean_length", history[-5:]),
    }  # fmt: skip
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
