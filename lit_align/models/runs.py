"""Find a trained policy: a run directory, a checkpoint, a Hugging Face export, or anything ``load_model`` takes.

A run directory is what a recipe writes (``runs/<algo>/version_N``): ``config.yaml`` (the resolved config,
whose ``model.policy`` is the starting model), ``checkpoints/*.ckpt`` and the ``hf_model/`` export.
:func:`load_trained` prefers the export; from a single-file checkpoint it rebuilds the starting model and
loads the checkpoint's policy weights (LoRA adapters merged). A sharded (FSDP2 / DCP) checkpoint folder is
not read here: the run's ``hf_model/`` export is the gathered model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from lit_align.errors import OptionError, PathNotFound
from lit_align.models.loading import load_model, load_tokenizer


@dataclass
class Trained:
    """A loaded policy, its tokenizer, and the model it started from (``None`` when that cannot be told)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    starting_policy: str | None
    source: str  # what was loaded, for reports


def run_config(run_dir: Path) -> dict:
    """A run directory's resolved ``config.yaml`` ({} when there is none)."""
    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def starting_policy_of(run_dir: Path) -> str | None:
    """The ``model.policy`` a run started from (its config.yaml), or ``None``."""
    policy = (run_config(run_dir).get("model") or {}).get("policy")
    return policy if isinstance(policy, str) else None


def tools_of(ref: str | Path) -> dict | None:
    """The ``model.tools`` group a run trained with (its config.yaml, or a checkpoint's hyperparameters), or ``None``
    (no run, or a run without tools)."""
    path = Path(ref)
    if path.suffix == ".ckpt" and path.is_file():
        tools = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {}).get("tools")
    else:
        run_dir = path if (path / "hf_model").is_dir() else path.parent if (path / "config.json").is_file() else path
        tools = (run_config(run_dir).get("model") or {}).get("tools") if run_dir.is_dir() else None
    return tools if isinstance(tools, dict) and (tools.get("functions") or tools.get("environment")) else None


def load_trained(ref: str | Path) -> Trained:
    """Load the policy ``ref`` names: a run directory, a ``.ckpt`` file, a Hugging Face folder (an ``hf_model``
    export) or a preset / hub id / ``.gguf`` (then it is its own starting model)."""
    path = Path(ref)
    if path.is_dir() and (path / "hf_model" / "config.json").is_file():  # a run directory with its export
        return _from_export(path / "hf_model", starting_policy_of(path))
    if path.is_dir() and (path / "config.json").is_file():  # an export (its run directory is the parent)
        return _from_export(path, starting_policy_of(path.parent))
    if path.suffix == ".ckpt" and path.is_file():
        return _from_checkpoint(path)
    if path.suffix == ".ckpt" and path.is_dir():
        raise OptionError(
            f"{path} is a sharded (FSDP2/DCP) checkpoint: use the run's hf_model export "
            f"({path.parent.parent / 'hf_model'}), or consolidate it first with "
            "`python -m lightning.pytorch.utilities.consolidate_checkpoint <path>`"
        )
    if path.is_dir():
        raise PathNotFound(
            f"{path} is a folder but neither a run directory (with hf_model/) nor a Hugging Face model (config.json)"
        )
    model, tokenizer = load_model(str(ref))
    return Trained(model, tokenizer, str(ref), str(ref))


def _from_export(folder: Path, starting: str | None) -> Trained:
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder) if (folder / "tokenizer_config.json").is_file() else None
    if tokenizer is None:
        if starting is None:
            raise PathNotFound(f"{folder} has no tokenizer and no run config naming the starting model")
        tokenizer = load_tokenizer(starting)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Trained(model, tokenizer, starting, str(folder))


def _from_checkpoint(path: Path) -> Trained:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters", {})
    starting = hparams.get("policy") or starting_policy_of(path.parent.parent)
    if not isinstance(starting, str):
        raise OptionError(f"{path}: the checkpoint does not name its starting policy (hyper_parameters.policy)")
    model, tokenizer = load_model(starting)
    if hparams.get("lora_r", 0) > 0:
        from lit_align.models.loading import apply_lora

        model = apply_lora(model, hparams["lora_r"], hparams.get("lora_alpha", 16), 0.0,
                           hparams.get("lora_target_modules", "all-linear"))  # fmt: skip
    state = {k.removeprefix("policy."): v for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")}
    model.load_state_dict(state, strict=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return Trained(model, tokenizer, starting, str(path))
