"""What a run prints and logs: plain step lines, validation results and a summary; learning rate and gradient
norm every step; model and data hyperparameters; a resumed run continues its own curves; CLI hints."""

from __future__ import annotations

import glob
import io
import warnings
from contextlib import redirect_stderr, redirect_stdout

import pytest

from lit_align.algorithms import DPO
from lit_align.commands.cli import run
from lit_align.datamodules import PreferenceDataModule
from tests.conftest import REPO
from tests.helpers import event_tags

TINY = str(REPO / "recipes" / "configs" / "tiny.yaml")
DPO_YAML = REPO / "recipes" / "configs" / "dpo.yaml"


def dpo_cli(tmp_path, monkeypatch, *extra: str):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with redirect_stdout(out):
        cli = run(DPO, PreferenceDataModule, DPO_YAML, args=["fit", "--config", TINY, *extra])
    return cli, out.getvalue()


def hparams(event_file: str) -> tuple[set[str], list[str]]:
    """The HParams tab's hyperparameter names and its metric columns (tags) in ``event_file``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(event_file)
    acc.Reload()
    keys: set[str] = set()
    metrics: list[str] = []
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            keys |= set(data.session_start_info.hparams)
        if data.HasField("experiment"):
            metrics += [info.name.tag for info in data.experiment.metric_infos]
    return keys, metrics


def test_a_run_prints_steps_validation_and_a_summary_and_logs_lr_grad_norm_and_hparams(tmp_path, monkeypatch):
    cli, printed = dpo_cli(tmp_path, monkeypatch)  # stdout is not a terminal here: plain step lines
    lines = printed.splitlines()
    assert [line.split(" | ")[0] for line in lines if line.startswith("step ")] == ["step 1/3", "step 2/3", "step 3/3"]
    assert any(line.startswith("step 3/3 | loss ") and "| margins " in line and "s/step" in line for line in lines)
    assert any(line.startswith("validation at step 3: loss ") and "rewards/margins" in line for line in lines)
    summary = printed[printed.index("Finished fit: 3 steps") :]
    for words in ("final train (step 3): loss", "last validation (step 3): loss", "logs: runs/dpo/version_0",
                  "tensorboard --logdir runs",
                  "checkpoints: runs/dpo/version_0/checkpoints", "--ckpt_path", "export: runs/dpo/version_0/hf_model"):
        assert words in summary, (words, summary)  # fmt: skip
    run_dir = tmp_path / "runs" / "dpo" / "version_0"
    assert {"train/learning_rate", "train/grad_norm", "train/loss", "val/rewards/margins"} <= event_tags(run_dir)
    (events,) = glob.glob(str(run_dir / "events.out.tfevents.*"))
    keys, metrics = hparams(events)
    assert {"model/beta", "model/learning_rate", "model/policy", "data/batch_size", "data/max_length"} <= keys
    assert {"trainer/max_steps", "trainer/precision", "trainer/world_size", "trainer/seed"} <= keys
    assert not any(k.split("/", 1)[1].startswith("_") for k in keys)  # no LightningCLI internals (_instantiator)
    # The tab's columns are the validation metrics (TensorBoard shows each curve's latest value), not hp_metric = -1.
    assert {"train/loss", "val/loss", "val/rewards/margins", "val/rewards/accuracies"} <= set(metrics)
    assert "hp_metric" not in metrics and "hp_metric" not in event_tags(run_dir)
    assert {"val/loss", "val/rewards/margins"} <= event_tags(run_dir)  # the values the columns read


def test_a_resumed_run_continues_its_own_version(tmp_path, monkeypatch):
    dpo_cli(tmp_path, monkeypatch)
    last = tmp_path / "runs" / "dpo" / "version_0" / "checkpoints" / "last.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, printed = dpo_cli(tmp_path, monkeypatch, "--ckpt_path", str(last), "--trainer.max_steps", "5")
    assert sorted(p.name for p in (tmp_path / "runs" / "dpo").iterdir()) == ["version_0"]
    assert "step 5/5" in printed and "Finished fit: steps 3-5 (resumed)" in printed
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]  # resuming there is the point
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted(glob.glob(str(tmp_path / "runs/dpo/version_0/events.out.tfevents.*"))):
        acc = EventAccumulator(events)
        acc.Reload()
        steps += [event.step for event in acc.Scalars("train/loss")]
    assert max(steps) >= 4 and len(steps) >= 5  # both runs' steps in one version


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fit", "--model.bta", "0.2"], "--model.bta: did you mean --model.beta?"),
        (["fit", "--data.batchsize", "3"], "did you mean --data.batch_size?"),
        (["fit", "--optimizer", "Adam"], "--optimizer is not offered: lit-align's modules build AdamW themselves"),
        (["fit", "--lr_scheduler", "StepLR"], "set --model.scheduler"),
        (["test"], "invalid choice: 'test' (choose from 'fit', 'validate')"),
        (["predict"], "invalid choice: 'predict'"),
    ],
)
def test_cli_errors_say_what_was_meant(args, expected):
    err = io.StringIO()
    with pytest.raises(SystemExit), redirect_stderr(err):
        run(DPO, PreferenceDataModule, DPO_YAML, args=args)
    assert expected in err.getvalue(), err.getvalue()[-800:]


def test_validate_subcommand_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with redirect_stdout(io.StringIO()):
        cli = run(DPO, PreferenceDataModule, DPO_YAML, args=["validate", "--config", TINY])
    assert "val/loss" in cli.trainer.callback_metrics


def test_validate_prints_the_summary_format_not_a_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with redirect_stdout(out):
        run(DPO, PreferenceDataModule, DPO_YAML, args=["validate", "--config", TINY])
    printed = out.getvalue()
    assert "validation at step 0: loss 0.6931" in printed  # 4 significant digits, as the fit's lines
    assert "│" not in printed and "0.693147" not in printed


def test_the_terminal_progress_bar_counts_optimizer_steps_of_max_steps(tmp_path):
    """One bar over the run: its total is max_steps and it ends at the last step (Lightning's, titled
    ``Epoch 0/-2``, counts each epoch's batches)."""
    import lightning as L

    from lit_align.callbacks.console import StepProgressBar
    from tests.conftest import write_jsonl

    rows = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(10)]
    data = PreferenceDataModule(tokenizer="tiny-llama", data_path=str(write_jsonl(tmp_path / "p.jsonl", rows)),
                                val_size=0, batch_size=2)  # fmt: skip
    bar = StepProgressBar()
    trainer = L.Trainer(max_steps=7, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[bar], limit_val_batches=0)  # fmt: skip
    trainer.fit(DPO(policy="tiny-llama", learning_rate=1e-3), data)
    (task,) = [task for task in bar.progress.tasks if task.id == bar.train_progress_bar_id]
    assert task.total == 7 and task.completed == 7 and "Epoch" not in task.description  # 10 rows: two epochs


def test_a_rate_over_no_calls_is_zero_not_nan():
    import torch

    from lit_align.metrics import MetricGroup

    group = MetricGroup(("tools/failure_frequency", "rewards/chosen"), "val/", dist_sync_on_step=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no torchmetrics "compute before update" warning
        group.step({"tools/failure_frequency": (torch.zeros(4), torch.zeros(4)),
                    "rewards/chosen": (torch.zeros(2), torch.zeros(2))})  # fmt: skip
        values = {name: float(value) for name, value in group.compute().items()}
    assert values["val/tools/failure_frequency"] == 0.0
    assert values["val/rewards/chosen"] != values["val/rewards/chosen"]  # nothing measured: NaN, by design
    group.step({"tools/failure_frequency": (torch.tensor([0.5, 0.0]), torch.tensor([2.0, 0.0]))})
    assert float(group.compute()["val/tools/failure_frequency"]) == 0.5  # failed calls per call, weighted by calls
