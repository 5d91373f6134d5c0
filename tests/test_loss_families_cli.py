"""Every new loss type and variant of issue 22 runs from the command line on the tiny preset (the recipe's own
LightningCLI, in this process, with ``recipes/configs/tiny.yaml``) and logs TRL's metric names to TensorBoard."""

from __future__ import annotations

import importlib

import pytest

from lit_align.losses.dpo_family import LOSSES
from tests.conftest import REPO
from tests.helpers import event_tags

pytestmark = pytest.mark.slow  # about 40 short fits

TINY = str(REPO / "recipes" / "configs" / "tiny.yaml")
PREFERENCE_METRICS = {f"train/{m}" for m in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                            "rewards/accuracies", "logps/chosen", "logps/rejected")}  # fmt: skip
ONLINE = {  # variant: (recipe, flags, TRL's metric names it must log besides reward and entropy)
    "cispo": ("grpo", ["--model.objective.name", "cispo"], {"train/cispo_clip_ratio"}),
    "sapo": ("grpo", ["--model.objective.name", "sapo"], set()),
    "vespo": ("grpo", ["--model.objective.name", "vespo"], {"train/vespo/phi_seq_mean"}),
    "gspo": ("grpo", ["--model.importance_ratio", "sequence_mean"], {"train/clip_ratio/region_mean"}),
    "gspo-token": ("grpo", ["--model.importance_ratio", "sequence_mean_token"], {"train/clip_ratio/region_mean"}),
    "luspo": ("grpo", ["--model.importance_ratio", "sequence_mean", "--model.loss_aggregation", "sequence_sum"],
              {"train/clip_ratio/region_mean"}),
    "two-sided-clip": ("grpo", ["--model.objective.delta", "1.5"], {"train/clip_ratio/region_mean"}),
    "rlvr-cispo": ("rlvr", ["--model.objective.name", "cispo"], {"train/cispo_clip_ratio"}),
    "rloo-gspo": ("rloo", ["--model.importance_ratio", "sequence_mean"], {"train/clip_ratio/region_mean"}),
    "reinforce_pp": ("reinforce_pp", [], {"train/kl", "train/clip_ratio/region_mean"}),
    "reinforce_pp-none": ("reinforce_pp", ["--model.baseline", "none", "--model.gamma", "0.99"], {"train/kl"}),
}  # fmt: skip


def fit(recipe: str, flags: list[str], tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    importlib.import_module(f"lit_align.recipes.{recipe}").main(["fit", "--config", TINY, *flags])
    return event_tags(tmp_path / "runs" / recipe / "version_0")


DPO_CASES = {name: ["--model.loss_type", name] for name in LOSSES}
DPO_CASES["exo_pair"] += ["--model.label_smoothing", "0.001"]
DPO_CASES["discopop"] += ["--model.discopop_tau", "0.1"]
DPO_CASES["rpo-mixture"] = ["--model.loss_type", "[sigmoid, sft]", "--model.loss_weights", "[1.0, 0.5]"]
DPO_CASES["tr-dpo"] = ["--model.sync_ref_model", "true", "--model.ref_model_sync_steps", "1"]


@pytest.mark.parametrize("case", list(DPO_CASES))
def test_every_dpo_loss_type_from_the_command_line(tmp_path, monkeypatch, case):
    tags = fit("dpo", DPO_CASES[case], tmp_path, monkeypatch)
    assert PREFERENCE_METRICS <= tags and {"val/loss", "val/rewards/margins"} <= tags


@pytest.mark.parametrize("case", list(ONLINE))
def test_every_online_variant_from_the_command_line(tmp_path, monkeypatch, case):
    recipe, flags, metrics = ONLINE[case]
    tags = fit(recipe, flags, tmp_path, monkeypatch)
    assert {"train/reward", "train/entropy", "train/loss", *metrics} <= tags, sorted(tags)
