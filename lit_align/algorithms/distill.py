"""On-policy distillation: a student trained on its own samples against one teacher or several.

Two objectives (``loss_type``), both on the completion tokens the student is trained on (tool tokens masked):

``jsd`` (GKD, Agarwal et al. 2024, https://arxiv.org/abs/2306.13649; TRL 1.16's ``DistillationTrainer``): per token
the generalized Jensen-Shannon divergence between the student's and the teacher's next-token distributions at the
sampling temperature τ (:func:`~lit_align.losses.distillation.generalized_jsd`; ``beta`` 0 forward KL, 1 reverse KL,
0.5 JSD), aggregated as ``loss_aggregation`` says (default ``token_mean``, TRL's sum over tokens / their number):

    L = agg_t JSD_β( softmax(z_student,t / τ), softmax(z_teacher,t / τ) )

Both distributions come from the chunked LM head (:mod:`lit_align.models.divergence`): no (tokens x vocabulary)
logits; ``top_k`` compares them on the teacher's k likeliest tokens only. Whose completions (GKD's ``lmbda``, drawn
once per rollout, seeded by the step): the student's own samples with probability ``lmbda``, else the data's
``completion`` column, or with ``seq_kd`` the teacher's samples (sequence-level KD).

``opd`` (the sampled reverse KL of verl / NeMo-RL / slime's on-policy distillation): the per-token advantage

    A_t = −(log π_old(y_t) − log π_teacher(y_t)) + reward_coef · Â_i,   Â_i = GRPO's group-normalized task reward

trained with the online objectives (``objective``, ``epsilon``, importance ratios, rollout correction) as GRPO is;
with ``reward_coef > 0`` and reward functions, verifiers or an environment it is GRPO with a teacher.

Several teachers (``teachers: {name: source}``): each prompt's ``teacher_id`` column picks its teacher; a micro-batch
is ONE student pass whatever its rows' teachers (each token's teacher logits from its own teacher's head).
What is left out: a teacher served apart from the trainer (the teacher runs in the trainer's process, sharded like
the reference under FSDP2); GKD's sequence-level KD by the teacher under vLLM (``seq_kd`` samples with Hugging
Face generate).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lit_align.batches import PromptBatch
from lit_align.errors import DataError
from lit_align.hparams import as_group, check_options, fix_options
from lit_align.losses.distillation import sampled_reverse_kl
from lit_align.losses.policy_gradient import aggregate_loss, group_normalized_advantages, masked_mean
from lit_align.models.divergence import TeacherTokens, student_divergence, teacher_pass
from lit_align.models.loading import ModelRef, load_tokenizer
from lit_align.models.sharding import is_fsdp2_sharded
from lit_align.rewards.reward_set import RewardOptions, check_reward_options
from lit_align.rollouts.record import Experience, Rollout, merge_rollouts, rollout_from_batch, rollout_of_completions
from lit_align.rollouts.sampling import seeded_rng
from lit_align.tools.multi_turn import TOOL_METRICS, ToolRunner, check_tool_data
from lit_align.tools.options import ToolOptions
from lit_align.training.objective import ObjectiveOptions
from lit_align.training.online import OnlinePolicyGradient
from lit_align.training.teachers import TEACHER_COLUMN, Teachers, teacher_ids

LossType = Literal["jsd", "opd"]
COMPLETION_COLUMN = "completion"


class Distill(OnlinePolicyGradient):
    """On-policy distillation as a LightningModule with manual optimization (the module docstring's equations).

    Batches are prompt-only (``lit_align.datamodules.PromptDataModule``; with ``lmbda < 1`` and no ``seq_kd`` its
    rows need a ``completion`` column, with several teachers a ``teacher_id`` one). ``trainer.max_steps`` counts
    optimizer steps. The other options are the online base's and its parts' (see ``--help``); distillation has no
    reference model (the teacher is the anchor), so the base's KL options are not offered, and the ``rewards`` are
    none by default (given, they are logged, and with ``loss_type=opd`` added with ``reward_coef``).

    Args:
        teacher: the teacher (a preset, hub id, folder, ``.gguf``, a lit-align run directory, its ``hf_model/`` or a
            ``.ckpt``; from Python also an ``nn.Module``); or give ``teachers``.
        teachers: several teachers by name, ``{name: source}``; each prompt's ``teacher_id`` column names its own.
        loss_type: ``jsd`` (the divergence of the full next-token distributions) or ``opd`` (the sampled reverse
            KL as a per-token advantage of the policy-gradient objective).
        beta: with ``jsd``: TRL's β of the generalized JSD (0 forward KL, 1 reverse KL, 0.5 symmetric JSD).
        lmbda: with ``jsd``: GKD's on-policy fraction, the probability that a rollout is the student's own samples
            (else the data's completions, or the teacher's with ``seq_kd``); 1: always on-policy.
        seq_kd: with ``jsd`` and ``lmbda < 1``: the off-policy share is sampled from the teacher (sequence-level KD)
            instead of read from the data.
        top_k: with ``jsd``: compare the distributions on the teacher's k most likely tokens only, both
            renormalized there (for large vocabularies; null: the whole vocabulary).
        reward_coef: with ``opd``: the weight of the task reward's group-normalized advantage added to the
            per-token teacher advantage (needs reward functions or an environment, and ``num_generations >= 2``).
        teacher_system_prompt: the teachers see each prompt with this system message in place of its own (context
            distillation: the student learns to answer unprompted as the instructed teacher does); the student and
            its samples see the data's prompts. Needs chat prompts and a chat template; single-turn only.
    """

    REWARDS_OPTIONAL: ClassVar[bool] = True
    KEY_METRICS = ("distill/divergence", "distill/reverse_kl", "reward")

    def __init__(
        self,
        *,
        teacher: ModelRef | None = None,
        teachers: dict[str, ModelRef] | None = None,
        loss_type: LossType = "jsd",
        beta: float = 0.5,
        lmbda: float = 1.0,
        seq_kd: bool = False,
        top_k: int | None = None,
        reward_coef: float = 0.0,
        teacher_system_prompt: str | None = None,
        num_generations: int = 1,
        learning_rate: float = 1e-5,
        rewards: RewardOptions = RewardOptions(reward_funcs=()),
        **kwargs: Any,
    ) -> None:
        fix_options(kwargs, "Distill", "it has no reference model: the teacher is the anchor", kl_penalty="loss",
                    kl_importance_correction=True, reference_policy=None)  # fmt: skip
        rewards = as_group(RewardOptions, rewards)
        tools = as_group(ToolOptions, kwargs.get("tools"))
        objective = as_group(ObjectiveOptions, kwargs.get("objective"))
        jsd = loss_type == "jsd"
        check_options(
            (loss_type in ("jsd", "opd"), "loss_type", loss_type, "jsd or opd"),
            (teacher is None or teachers is None, "teachers", teachers, "either teacher or teachers, not both (the "
             "recipe's default config names a teacher: add --model.teacher null)"),
            (teachers is None or len(teachers) > 0, "teachers", teachers, "at least one {name: source}"),
            (0.0 <= beta <= 1.0, "beta", beta, "in [0, 1] (0: forward KL, 1: reverse KL)"),
            (0.0 <= lmbda <= 1.0, "lmbda", lmbda, "a probability in [0, 1]"),
            (jsd or lmbda == 1.0, "lmbda", lmbda, "1 with loss_type=opd: the sampled reverse KL is an estimate under "
             "the student's own samples"),
            (jsd or not seq_kd, "seq_kd", seq_kd, "applies to loss_type=jsd"),
            (not seq_kd or lmbda < 1.0, "seq_kd", seq_kd, "needs lmbda < 1 (the teacher samples the off-policy share)"),
            (lmbda == 1.0 or not tools.enabled, "lmbda", lmbda, "1 with tools: the data's completions and the "
             "teacher's samples are single-turn"),
            (top_k is None or top_k >= 1, "top_k", top_k, "at least 1, or null (the whole vocabulary)"),
            (jsd or top_k is None, "top_k", top_k, "applies to loss_type=jsd"),
            (reward_coef >= 0, "reward_coef", reward_coef, ">= 0"),
            (not jsd or reward_coef == 0, "reward_coef", reward_coef, "applies to loss_type=opd (a policy-gradient "
             "term beside the teacher's)"),
            (reward_coef == 0 or num_generations >= 2, "num_generations", num_generations, "at least 2 with "
             "reward_coef > 0: the reward's advantage is relative to its group"),
            (reward_coef == 0 or bool(rewards.reward_funcs) or tools.enabled, "reward_coef", reward_coef,
             "needs reward functions (--model.rewards.reward_funcs) or an environment"),
            (not jsd or objective == ObjectiveOptions(), "objective", objective, "applies to loss_type=opd"),
            (teacher_system_prompt is None or not tools.enabled, "teacher_system_prompt", teacher_system_prompt,
             "single-turn only: a conversation's later turns would reach the teacher without it"),
        )  # fmt: skip
        self.loss_type, self.divergence_beta, self.lmbda, self.seq_kd = loss_type, beta, lmbda, seq_kd
        self.top_k, self.reward_coef, self.teacher_system_prompt = top_k, reward_coef, teacher_system_prompt
        sources = teachers if teachers is not None else ({"teacher": teacher} if teacher is not None else {})
        self.teacher_names = list(sources)
        super().__init__(beta=0.0, kl_penalty="loss", kl_importance_correction=True, reference_policy=None,
                         num_generations=num_generations, learning_rate=learning_rate, rewards=rewards,
                         **kwargs)  # fmt: skip
        if seq_kd and self.sampler.options.generation_backend == "vllm":
            check_options((False, "seq_kd", seq_kd, "samples the teacher with Hugging Face generate: set "
                           "sampling.generation_backend=hf"))  # fmt: skip
        # The rewards' spread only matters where they are trained on (reward_coef > 0, GRPO's group advantage).
        self.signal.spread.patience = self.signal.spread.patience if reward_coef > 0 else 0
        self.signal.spread.group_relative = True
        self._source = "student"  # whose completions the current rollout is (a metric)
        tokenizer = self._tokenizer or (load_tokenizer(self._tokenizer_name) if self._tokenizer_name else None)
        self.teachers = self.hold(Teachers(sources, self.policy, tokenizer, self.policy_name or "(an nn.Module)"))

    # -- hooks of the base ------------------------------------------------------------------------
    def metric_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The completions' (and, when given, the rewards' and tools') metrics, the divergence (``jsd``) or the
        objective's clip statistics (``opd``), the entropy, each teacher's reverse KL and log-probs of the sampled
        tokens beside the student's, the on-policy share, the optimizer steps' and the timings."""
        rewards = self.rewards.metric_names() if self.rewards.names else ("completions/mean_length",
                                                                         "completions/clipped_ratio")  # fmt: skip
        val_rewards = self.rewards.metric_names(with_std=False) if self.rewards.names else rewards
        tools = TOOL_METRICS if self.tool_runner else ()
        per_teacher = tuple(f"distill/{name}/{what}" for name in self.teacher_names
                            for what in ("reverse_kl", "teacher_logps"))  # fmt: skip
        objective = ("distill/divergence",) if self.loss_type == "jsd" else self.objective.options.metric_names()
        train = (*rewards, *tools, *objective, "entropy", "distill/reverse_kl", *per_teacher, "distill/student_logps",
                 "distill/on_policy", "learning_rate", "grad_norm", "time/generation", "time/reward", "time/update")
        return train, (*val_rewards, *tools, "distill/reverse_kl", *per_teacher, "distill/student_logps")

    @classmethod
    def check_data(cls, datamodule: Any, options: dict[str, Any]) -> None:
        """The reward functions (when given) on the first rows; the ``teacher_id`` column with several teachers."""
        tools = as_group(ToolOptions, options.get("tools"))
        rewards = as_group(RewardOptions, options.get("rewards", RewardOptions(reward_funcs=())))
        if rewards.reward_funcs:
            environments = functools.partial(check_tool_data, tools) if tools.enabled else None
            check_reward_options(datamodule, rewards, environments)
        teachers = options.get("teachers")
        if teachers and len(teachers) > 1:
            dataset = getattr(datamodule, "train_dataset", None)
            if dataset is not None and len(dataset):
                rows = dataset[: min(len(dataset), 64)]
                teacher_ids({**rows, "prompt": rows.get("prompt", [])}, list(teachers))

    def needs_old_logps(self) -> bool:
        """``opd``'s advantage is a difference of the sampling policy's log-probs and the teacher's."""
        return self.loss_type == "opd" or super().needs_old_logps()

    def compute_advantages(self, rewards: Tensor, exp: Experience) -> Tensor:
        """``opd``: −(log π_old − log π_teacher) per token, plus ``reward_coef`` x the group-normalized reward;
        ``jsd``: none (zeros: the divergence needs no advantage)."""
        if self.loss_type == "jsd":
            return torch.zeros_like(rewards)
        advantages = -sampled_reverse_kl(exp.old_logps, exp.extra["teacher_logps"]) * exp.loss_mask
        if self.reward_coef > 0:
            group = group_normalized_advantages(rewards, exp.rollout.num_generations, "group")
            advantages = advantages + self.reward_coef * group.unsqueeze(1)
        return advantages

    def policy_loss(self, exp: Experience, rows: Tensor, normalizer: Tensor, stats: dict[str, list]) -> Tensor:
        """``opd``: the base's objective with the per-token advantages. ``jsd``: the divergence of micro-batch
        ``rows`` in ONE student pass (each token against its own row's teacher), aggregated under the minibatch's
        ``normalizer``."""
        if self.loss_type == "opd":
            return super().policy_loss(exp, rows, normalizer, stats)
        owner, position, tokens = exp.extra["teacher_owner"], exp.extra["teacher_position"], exp.extra["teachers"]
        rollout, start = exp.rollout, exp.rollout.prompt_input_ids.shape[1]
        teaching = TeacherTokens.select([tokens.get(name) for name in self.teacher_names], owner[rows], position[rows])
        input_ids, attention_mask, labels = rollout.model_inputs(rows)
        divergence, logps, entropy = student_divergence(
            self.policy, input_ids, attention_mask, labels, start, teaching, self.divergence_beta,
            self.sampler.options.temperature, rollout.prompt_groups(rows),
        )  # fmt: skip
        mask = exp.loss_mask[rows]
        reverse_kl = sampled_reverse_kl(logps.detach(), exp.extra["teacher_logps"][rows])
        for metric, value in (("distill/divergence", divergence.detach()), ("entropy", entropy),
                              ("distill/reverse_kl", reverse_kl), ("distill/student_logps", logps.detach())):
            stats[metric].append((masked_mean(value, mask).reshape(1), mask.sum().reshape(1).float()))
        for k, name in enumerate(self.teacher_names):  # every rank logs every teacher's (a collective), maybe empty
            taught = (owner[rows] == k).unsqueeze(1) & mask.bool()
            stats[f"distill/{name}/reverse_kl"].append((reverse_kl[taught], torch.ones(int(taught.sum()))))
        return aggregate_loss(divergence, mask, self.loss_aggregation, normalizer=normalizer)

    def collect(self, batch: PromptBatch) -> tuple[Rollout, Tensor, dict[str, float]]:
        """Whose completions (:meth:`rollout_source`): a rollout made outside (``input_ids`` and ``old_log_probs``,
        the seed interface; ``rewards`` optional), the student's samples, the teacher's (one per prompt) or the
        data's completions (one per prompt); scored when reward functions are given."""
        start = time.perf_counter()
        source = "outside" if "input_ids" in batch else self.rollout_source()
        self._source = source
        if source == "outside":
            given = "rewards" in batch
            batch.setdefault("rewards", torch.full((batch["input_ids"].shape[0],), float("nan")))
            eos_ids = self.sampler.eos_ids(self.policy, self.tokenizer)
            rollout, per_func = rollout_from_batch(batch, self.num_generations, self.tokenizer, eos_ids)
            return rollout, per_func if given else per_func[:, :0], {"generation": 0.0, "reward": 0.0}
        prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        if source == "student":
            rollout = self.generate_samples(prompt_ids, prompt_mask, with_logps=False, batch=batch)
        elif source == "teacher":  # each prompt sampled by its teacher, one completion each
            key = f"teacher/{self.global_step}/{self.global_rank}" if self.in_fit() else f"teacher/{self._rollouts}"
            parts, rows_of = [], self.teachers.rows_of(batch, len(prompt_ids), 1, self.device)
            lockstep = any(is_fsdp2_sharded(model) for model in self.teachers.frozen_models())
            for name in self.teacher_names:  # under FSDP2 every rank samples with every teacher (a collective)
                rows = rows_of.get(name)
                if rows is None and not lockstep:
                    continue
                given = rows if rows is not None else torch.zeros(1, dtype=torch.long, device=self.device)
                draw = functools.partial(self.sampler.sample, prompt_input_ids=prompt_ids[given],
                                         prompt_attention_mask=prompt_mask[given], tokenizer=self.tokenizer,
                                         num_generations=1, key=f"{key}/{name}")  # fmt: skip
                sampled = self.teachers.forward(name, self.policy, draw)
                if rows is not None:
                    parts.append((rows, sampled))
            rollout = merge_rollouts(parts, self.tokenizer.pad_token_id)
        else:
            eos_id = self.sampler.eos_ids(self.policy, self.tokenizer)[0]
            rollout = rollout_of_completions(batch, COMPLETION_COLUMN, self.tokenizer, eos_id,
                                             self.sampler.options.max_new_tokens)  # fmt: skip
        t_generation = time.perf_counter() - start
        start = time.perf_counter()
        per_func = self.rewards.score(batch, rollout, training=self.training)  # (B, 0) without reward functions
        return rollout, per_func, {"generation": t_generation, "reward": time.perf_counter() - start}

    def combine_rewards(self, per_func: Tensor) -> Tensor:
        """The reward the advantage sees: with ``reward_coef > 0`` the weighted sum, else none (zeros: the rewards
        given are only logged)."""
        if self.reward_coef > 0:
            return self.rewards.combine(per_func)
        return torch.zeros(per_func.shape[0], device=per_func.device)

    def rollout_values(
        self, batch: PromptBatch, rollout: Rollout, rewards_per_func: Tensor, rewards: Tensor, training: bool
    ) -> dict[str, Any]:  # fmt: skip
        """The completions' metrics, the rewards' when given (their weighted sum as ``reward``, trained on or not)
        and, on held-out prompts, each teacher's reverse KL to the student on its greedy completions."""
        if self.rewards.names:
            values = super().rollout_values(batch, rollout, rewards_per_func, self.rewards.combine(rewards_per_func),
                                            training)  # fmt: skip
        else:
            values = {"completions/mean_length": rollout.policy_mask.sum(dim=1).float(),
                      "completions/clipped_ratio": rollout.is_truncated.float()}  # fmt: skip
            if self.tool_runner and rollout.tool_calls is not None:
                values.update(ToolRunner.values(rollout))
        if not training:
            exp = Experience(batch, rollout, rewards_per_func, torch.zeros(len(rollout), dtype=torch.bool),
                             rollout.policy_mask.clone(), self._no_grad_logps(rollout, self.policy), None)  # fmt: skip
            self.teach(exp)
            self.teacher_metrics(exp, values)
        return values

    def make_experience(self, batch: PromptBatch, rollout: Rollout, rewards_per_func: Tensor) -> Experience:
        """The base's (the loss mask, the sampling policy's log-probs for ``opd``), then the teachers' pass
        (:meth:`teach`) and their metrics: each teacher's log-probs of the sampled tokens and, for ``opd``, its
        reverse KL to the sampling policy (``jsd`` logs it from the live policy, in :meth:`policy_loss`)."""
        exp = super().make_experience(batch, rollout, rewards_per_func)
        if self.reward_coef == 0:  # no reward enters the advantage, so no row is left out for want of one
            exp.unscorable = torch.zeros_like(exp.unscorable)
        self.teach(exp)
        if self.loss_type == "opd":
            self.teacher_metrics(exp, exp.metrics)
        else:
            mask = exp.loss_mask.bool()
            for k, name in enumerate(self.teacher_names):
                rows = (exp.extra["teacher_owner"] == k).unsqueeze(1) & mask
                exp.metrics[f"distill/{name}/teacher_logps"] = (exp.extra["teacher_logps"][rows],
                                                                torch.ones(int(rows.sum())))  # fmt: skip
        exp.metrics["distill/on_policy"] = torch.tensor([float(self._source == "student")])
        return exp

    def rollout_source(self) -> Literal["student", "teacher", "data"]:
        """Whose completions this rollout trains on: the student's with probability ``lmbda`` (one draw per
        rollout, seeded by the sampling seed and the step, so every rank and a resumed run draw alike), else the
        teacher's (``seq_kd``) or the data's."""
        if self.lmbda >= 1.0:
            return "student"
        step = self.global_step if self.in_fit() else self._rollouts
        with seeded_rng(f"{self.sampler.options.seed}/lmbda/{step}", torch.device("cpu")):
            draw = float(torch.rand(()))
        if draw < self.lmbda:
            return "student"
        return "teacher" if self.seq_kd else "data"

    def teach(self, exp: Experience) -> None:
        """Each teacher's pass over its rows (no grad, in the update's row chunks): ``exp.extra["teachers"]`` (name
        -> :class:`~lit_align.models.divergence.TeacherTokens` of its rows), ``teacher_owner`` / ``teacher_position``
        (B,) (each row's teacher and its place among that teacher's rows) and ``teacher_logps`` (B, L)."""
        rollout = exp.rollout if self.teacher_system_prompt is None else self.teacher_view(exp.batch, exp.rollout)
        rows_of = self.teachers.rows_of(exp.batch, len(rollout), rollout.num_generations, self.device)
        owner = torch.full((len(rollout),), -1, dtype=torch.long, device=self.device)
        position = torch.zeros(len(rollout), dtype=torch.long, device=self.device)
        teacher_logps = torch.zeros(rollout.completion_ids.shape, device=self.device)
        start, chunk = rollout.prompt_input_ids.shape[1], len(self.no_grad_passes(rollout)[0])
        passes = self.teacher_pass_counts(rows_of, chunk)
        tokens: dict[str, TeacherTokens] = {}
        for name, count in zip(self.teacher_names, passes, strict=True):
            rows = rows_of.get(name, torch.zeros(0, dtype=torch.long, device=self.device))
            parts = list(rows.split(chunk)) if len(rows) else []
            parts += [torch.zeros(1, dtype=torch.long, device=self.device)] * (count - len(parts))  # FSDP2's lockstep
            scored = [self.teachers.forward(name, self.policy, lambda model, part=part: teacher_pass(
                model, *rollout.model_inputs(part), start, self.sampler.options.temperature, self.top_k,
                rollout.prompt_groups(part))) for part in parts]  # fmt: skip
            if not len(rows):
                continue
            owner[rows] = self.teacher_names.index(name)
            position[rows] = torch.arange(len(rows), device=self.device)
            tokens[name] = TeacherTokens.cat(scored[: math.ceil(len(rows) / chunk)])
            teacher_logps[rows] = tokens[name].logps
        exp.extra.update(teachers=tokens, teacher_owner=owner, teacher_position=position, teacher_logps=teacher_logps)

    def teacher_pass_counts(self, rows_of: dict[str, Tensor], chunk: int) -> list[int]:
        """How many row-chunk passes each teacher runs. Under FSDP2 a sharded teacher's forward is a collective, so
        every rank runs as many as the rank with the most of its rows (a rank with fewer reruns a row, discarded);
        elsewhere each teacher runs over its own rows only."""
        counts = torch.tensor([math.ceil(len(rows_of.get(name, ())) / chunk) for name in self.teacher_names])
        if any(is_fsdp2_sharded(model) for model in self.teachers.frozen_models()):
            counts = self.all_reduce(counts.to(self.device), "max").cpu()
        return counts.tolist()

    def teacher_view(self, batch: PromptBatch, rollout: Rollout) -> Rollout:
        """The rollout as the teachers read it with ``teacher_system_prompt``: each prompt's messages with that system
        message in place of its own, tokenized with the chat template and left-padded; the same completions."""
        prompts = []
        for i, prompt in enumerate(batch["prompt"]):
            if not (isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)):
                raise DataError(f"batch row {i}, field 'prompt': teacher_system_prompt needs chat prompts (a message "
                                f"list), got {type(prompt).__name__}")  # fmt: skip
            messages = [{"role": "system", "content": self.teacher_system_prompt},
                        *(m for m in prompt if m.get("role") != "system")]  # fmt: skip
            prompts.append(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                              return_dict=False))  # fmt: skip
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, device=self.device)
            mask[i, width - len(p):] = 1
        G = rollout.num_generations
        return dataclasses.replace(rollout, prompt_input_ids=ids.repeat_interleave(G, 0),
                                   prompt_attention_mask=mask.repeat_interleave(G, 0))  # fmt: skip

    def teacher_metrics(self, exp: Experience, values: dict[str, Any]) -> None:
        """Each teacher's reverse KL to the sampling policy (k1 per token, its mean the KL's estimate) and its
        log-probs of the sampled tokens, beside the student's: from the recorded log-probs (``opd``, validation)."""
        mask = exp.loss_mask.bool()
        reverse_kl = sampled_reverse_kl(exp.old_logps, exp.extra["teacher_logps"])
        values["distill/reverse_kl"] = (reverse_kl[mask], torch.ones(int(mask.sum())))
        values["distill/student_logps"] = (exp.old_logps[mask], torch.ones(int(mask.sum())))
        for k, name in enumerate(self.teacher_names):
            rows = (exp.extra["teacher_owner"] == k).unsqueeze(1) & mask
            for what, value in (("reverse_kl", reverse_kl), ("teacher_logps", exp.extra["teacher_logps"])):
                values[f"distill/{name}/{what}"] = (value[rows], torch.ones(int(rows.sum())))


__all__ = ["Distill", "TEACHER_COLUMN"]
