"""What a run prints and logs: plain step lines, validation results and a summary; learning rate and gradient
norm every step; model and data hyperparameters; a resumed run continues its own curves; CLI hints."""

from __future__ import annotations

import glob
import io
import warnings
from contextlib import redirect_stderr, redirect_stdout

import pytest

from lit_align.algorithms import DPO
from lit_align.cli import run
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
