"""Judge a trained policy against the model it started from, on held-out prompts (and held-out pairs).

Both models complete every held-out prompt with the same sampling settings, the same chat template and the
same random stream (each prompt batch draws from an RNG seeded by (``sampling.seed``, batch), once for each model),
and the judges — the ``rewards`` group of the online recipes: reward models (``model:<dir>``), verifiers, any reward
function, weighted — score both through one :class:`~lit_align.rewards.reward_set.RewardSet`. The held-out data are
the recipes' DataModules (``prompts``: a ``PromptDataModule``, ``pairs``: a ``PreferenceDataModule``, or a file for
either), every row held out. Reported:

    win rate      share of prompts where the trained policy's completion scores higher (the weighted sum of the
                  judges), ties counted half,
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
the summary (no row is repeated). Outputs (:mod:`lit_align.commands.report`): a console table, ``eval.json``,
``samples.jsonl``, and TensorBoard scalars (``eval/*``) with a text table of sample pairs, all in ``out_dir``.

Left out: LLM-as-a-judge (this judge is a reward model or a rule), pairwise judges, and length-controlled
win rates (the length change is reported instead, for the reader to weigh).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lit_align.commands.report import format_report, summarize, write_report
from lit_align.datamodules import PreferenceDataModule, PromptDataModule
from lit_align.datamodules.base import TokenizedDataModule
from lit_align.errors import OptionError
from lit_align.hparams import group_as_plain, keyword_options
from lit_align.models.logprobs import preference_logps
from lit_align.models.runs import Trained, load_trained, tools_of
from lit_align.models.sharding import gather_objects
from lit_align.rewards.reward_set import RewardOptions, RewardSet
from lit_align.rollouts.sampling import GenerationOptions, Sampler
from lit_align.tools.multi_turn import ToolRunner
from lit_align.tools.options import ToolOptions


class Evaluation:
    """Completes prompt batches with both models and scores them; scores pair batches under both. Both models sample
    through one :class:`~lit_align.rollouts.sampling.Sampler`, each prompt batch from the RNG of its own key (its
    index): the two models draw from the same stream, and the records do not depend on how many processes share the
    batches.

    Args:
        policy: the trained policy.
        baseline: the model it is compared with.
        judges: the reward set that scores both models' completions (``None``: no judge).
        sampler: samples the completions of both models.
        tokenizer: the policy's tokenizer (both models share it).
        greedy: decode greedily instead of sampling (both models).
        tool_runner: completes prompts as conversations with its tools and environments (both models).
    """

    def __init__(self, policy: nn.Module, baseline: nn.Module, judges: RewardSet | None, sampler: Sampler,
                 tokenizer: Any, greedy: bool = False, tool_runner: ToolRunner | None = None) -> None:  # fmt: skip
        self.policy, self.baseline = policy.eval().requires_grad_(False), baseline.eval().requires_grad_(False)
        self.judges, self.sampler, self.tokenizer, self.greedy = judges, sampler, tokenizer, greedy
        self.tool_runner = tool_runner

    def run(self, loaders: list[DataLoader], rank: int, world_size: int, device: torch.device) -> list[dict[str, Any]]:
        """The records of this process's batches (batch j of each loader on process j mod ``world_size``)."""
        records = []
        for loader in loaders:
            for index, batch in enumerate(loader):
                if index % world_size == rank:
                    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    records.extend(self.records(batch, index))
        return records

    @torch.no_grad()
    def records(self, batch: dict[str, Any], index: int) -> list[dict[str, Any]]:
        """The records of batch ``index`` of a prompt or pair loader."""
        return self._pair_records(batch) if "chosen_input_ids" in batch else self._prompt_records(batch, index)

    def _prompt_records(self, batch: dict[str, Any], index: int) -> list[dict[str, Any]]:
        key = f"eval/{index}"  # the same stream for both models
        rollouts = {name: self._complete(model, batch, key) for name, model in (("trained", self.policy),
                                                                                 ("start", self.baseline))}  # fmt: skip
        records = [{"prompt": prompt} for prompt in batch["prompt"]]
        for name, rollout in rollouts.items():
            per_func, reward = self._judge(batch, rollout)
            for i, record in enumerate(records):
                record[name] = rollout.texts[i]
                record[f"{name}_length"] = int(rollout.policy_mask[i].sum())  # the policy's own tokens
                record[f"{name}_scores"] = [_number(v) for v in per_func[i].tolist()]
                record[f"{name}_reward"] = _number(float(reward[i]))
                if rollout.tool_calls is not None:
                    record[f"{name}_tool_calls"] = int(rollout.tool_calls[i])
                    record[f"{name}_tool_failures"] = int(rollout.tool_failures[i])
        return records

    def _complete(self, model: nn.Module, batch: dict[str, Any], key: str) -> Any:
        if self.tool_runner is not None:
            return self.tool_runner.rollout(self.sampler, model, self.tokenizer, batch, 1, key, self.greedy)
        return self.sampler.sample(model, batch.get("prompt_input_ids"), batch.get("prompt_attention_mask"),
                                   self.tokenizer, 1, key, greedy=self.greedy)  # fmt: skip

    def _judge(self, batch: dict[str, Any], rollout: Any) -> tuple[Tensor, Tensor]:
        """(B, F) judge scores, NaN where a function had no opinion, and (B,) their weighted sum (NaN where none
        had one); (B, 0) and NaN without judges."""
        if self.judges is None:
            return torch.zeros(len(rollout), 0), torch.full((len(rollout),), math.nan)
        per_func = self.judges.score(batch, rollout, training=False)
        return per_func, self.judges.combine(per_func)

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


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def evaluate(
    policy: str,
    baseline: str | None = None,
    prompts: PromptDataModule | None = None,
    pairs: PreferenceDataModule | None = None,
    rewards: RewardOptions | None = None,
    sampling: GenerationOptions = GenerationOptions(),
    tools: ToolOptions | None = None,
    greedy: bool = False,
    out_dir: str | None = None,
    table_rows: int = 8,
    accelerator: str = "auto",
    devices: int = 1,
    strategy: str = "auto",
) -> dict[str, Any] | None:
    """Compare a trained policy with the model it started from on held-out data, and write the report.

    With a judge (``--rewards``, or the run's environments' rewards) the report gives the win rate (ties half, with
    a 95% interval) and each model's reward; without one it gives each model's response length and, with pairs, the
    perplexity of the held-out chosen responses and the implicit-reward accuracy, and says that no win rate was
    judged. Returns the report on rank 0, ``None`` elsewhere.

    Args:
        policy: the trained policy: a run directory (``runs/dpo/version_0``), a ``.ckpt`` file, an ``hf_model``
            export, or a preset / hub id / directory.
        baseline: the model to compare with (default: the run's own starting policy).
        prompts: held-out prompts: a file (``--prompts held_out.jsonl``) or the prompt DataModule's options
            (``--prompts.data_path``, ``--prompts.user_template``, ``--prompts.columns``, ``--prompts.max_samples``,
            ...), tokenized by the policy's tokenizer, every row held out.
        pairs: held-out preference pairs, a file or the preference DataModule's options (``--pairs.data_path``,
            ...): perplexity of the chosen responses and implicit-reward accuracy; their prompts are completed and
            judged when ``prompts`` is not given.
        rewards: the judges: the online recipes' ``rewards`` group (``--rewards.reward_funcs
            '[model:runs/reward_model/version_0]'``, verifiers by import path, ``--rewards.reward_weights``); the
            win rate compares the weighted sums. ``None``: no judge but the environments' rewards.
        sampling: how both models sample (a group: ``--sampling.<option>``).
        tools: tools and environments both models may use (a group: ``--tools.<option>``); default: those the
            ``policy``'s run trained with (its config.yaml or checkpoint), none for a plain model. The environments'
            ``get_reward`` judge beside the reward functions (weight 1).
        greedy: decode greedily instead of sampling (both models).
        out_dir: where the report goes (default: ``<run directory>/eval``, else ``eval``).
        table_rows: prompts shown in the text table of sample pairs.
        accelerator: Lightning (Fabric) accelerator.
        devices: devices (processes) to split the batches over.
        strategy: Lightning (Fabric) strategy (``ddp`` with several devices).
    """
    if prompts is None and pairs is None:
        raise OptionError("give held-out --prompts, --pairs, or both")
    trained, start = load_models(policy, baseline)
    tools = ToolOptions(**(tools_of(policy) or {})) if tools is None else tools
    runner = ToolRunner(tools) if tools.enabled else None
    judges = judge_set(rewards, runner)
    loaders = held_out_loaders(prompts, pairs, trained.tokenizer)
    fabric = L.Fabric(accelerator=accelerator, devices=devices, strategy=strategy)
    fabric.launch()
    for model in (trained.model, start.model, *(judges.frozen_models() if judges else ())):
        model.to(fabric.device)  # reward models score on this process's device too
    evaluation = Evaluation(trained.model, start.model, judges, Sampler(sampling), trained.tokenizer, greedy, runner)
    records = evaluation.run(loaders, fabric.global_rank, fabric.world_size, fabric.device)
    records = [record for part in gather_objects(records) for record in part]
    if fabric.global_rank != 0:
        return None
    report = summarize(records, judges.names if judges else [])
    report["settings"] = {"policy": trained.source, "baseline": start.source, "greedy": greedy,
                          "rewards": judges.options.plain() if judges else None, **group_as_plain(sampling),
                          "tools": group_as_plain(tools)}  # fmt: skip
    folder = Path(out_dir) if out_dir else _default_out_dir(policy)
    write_report(folder, report, [r for r in records if not r.get("pair")], table_rows)
    print(format_report(report), flush=True)
    print(f"report: {folder / 'eval.json'}   samples: {folder / 'samples.jsonl'}   tensorboard --logdir {folder}")
    return report


DATA_GROUPS = ("--prompts", "--pairs")
RENAMED = {  # evaluate's flags before it took the recipes' groups
    "--reward_model": "--rewards.reward_funcs '[model:<reward model folder or run directory>]'",
    "--reward_funcs": "--rewards.reward_funcs (with --rewards.reward_weights)",
    "--max_prompts": "--prompts.max_samples", "--max_pairs": "--pairs.max_samples",
    "--batch_size": "--prompts.batch_size and --pairs.batch_size",
    "--max_prompt_length": "--prompts.max_prompt_length (and --pairs.max_prompt_length)",
    "--max_length": "--pairs.max_length", "--user_template": "--prompts.user_template",
    "--columns": "--prompts.columns",
}  # fmt: skip
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def command_line(args: Sequence[str]) -> list[str]:
    """evaluate's command line with ``--prompts FILE`` (``--pairs FILE``) as ``--prompts.data_path FILE``, for a data
    file (.jsonl, .json, .parquet, .csv) or a folder: the group's own value is read as a config file of the
    DataModule's options, which a data file is not. Other values (a YAML of options, ``--prompts.<option>``) are
    left as given. A flag evaluate had before it took the recipes' groups is refused with its new spelling."""
    for arg in args:
        if arg.partition("=")[0] in RENAMED:
            flag = arg.partition("=")[0]
            raise OptionError(f"{flag} is now {RENAMED[flag]} (evaluate takes the recipes' option groups)")
    out, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        flag, eq, value = arg.partition("=")
        if flag not in DATA_GROUPS or not (eq or rest):
            out.append(arg)
            continue
        value = value if eq else rest.pop(0)
        is_data = value.endswith(DATA_SUFFIXES) or Path(value).is_dir()
        out += [f"{flag}.data_path" if is_data else flag, value]
    return out


def load_models(policy: str, baseline: str | None) -> tuple[Trained, Trained]:
    """The trained policy and the model it is compared with (by default the one its run started from)."""
    trained = load_trained(policy)
    baseline = baseline or trained.starting_policy
    if baseline is None:
        raise OptionError(f"{policy}: cannot tell the starting model; pass --baseline")
    return trained, load_trained(baseline)


def judge_set(rewards: RewardOptions | None, runner: ToolRunner | None) -> RewardSet | None:
    """The judges: the ``rewards`` group's functions and the environments' rewards (weight 1); None without
    either."""
    extra = list(runner.environment_rewards) if runner is not None else []
    if rewards is None and not extra:
        return None
    return RewardSet(rewards if rewards is not None else RewardOptions(reward_funcs=()), extra)


def held_out_loaders(prompts: str | PromptDataModule | None, pairs: str | PreferenceDataModule | None,
                     tokenizer: Any) -> list[DataLoader]:  # fmt: skip
    """Prompt batches (of ``prompts``, else the prompts of ``pairs``) and, with ``pairs``, pair batches; each
    DataModule rebuilt from its options with the policy's tokenizer and every row held out (``val_size`` 0)."""
    modules = [held_out(PromptDataModule, prompts if prompts is not None else pairs, tokenizer)]
    if pairs is not None:
        modules.append(held_out(PreferenceDataModule, pairs, tokenizer))
    return [DataLoader(dm.train_dataset, batch_size=dm.batch_size, collate_fn=dm.collate) for dm in modules]


def held_out(cls: type[TokenizedDataModule], data: str | TokenizedDataModule, tokenizer: Any) -> TokenizedDataModule:
    """A ``cls`` over ``data`` (a file, or a DataModule whose options ``cls`` shares), set up."""
    given = {"data_path": data} if isinstance(data, str) else dict(data.hparams)
    accepted = set(keyword_options(cls)) - {"tokenizer", "val_size"}
    dm = cls(**{k: v for k, v in given.items() if k in accepted}, tokenizer=tokenizer, val_size=0)
    dm.setup("predict")
    return dm


def _default_out_dir(policy: str) -> Path:
    path = Path(policy)
    if path.is_dir() and (path / "hf_model").is_dir():
        return path / "eval"
    if path.is_dir() and (path / "config.json").is_file() and (path.parent / "config.yaml").is_file():
        return path.parent / "eval"
    return Path("eval")
