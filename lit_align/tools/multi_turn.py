"""Multi-turn rollouts: the policy writes, its tool calls run, their results come back, and it writes again.

:class:`ToolRunner` is the part an online module holds when ``tools`` are configured (:class:`~lit_align.tools.
options.ToolOptions`). Per batch of N prompts and G completions each (B = N x G rows, prompt-major):

    1. each row gets a fresh environment (when one is configured; ``reset(**row)`` under a seeded ``random``) and
       its tools: the configured functions plus the environment's methods;
    2. each prompt is rendered with its tools shown and the ``reset`` observation appended
       (:func:`~lit_align.tools.chat.prompt_ids`); rows of a prompt that render alike are sampled G at a time from
       one prompt (the backend's shared prefill), otherwise one by one;
    3. turn after turn: the rows still talking are sampled (the sampler's backend, key ``<key>/turn<k>``); a turn
       that ends with EOS and holds tool calls gets them run (:func:`~lit_align.tools.calls.run_tool_call`) and the
       tool messages appended as tokens (:func:`~lit_align.tools.chat.tool_turn_ids`); a row stops when it answers
       without a call, runs out of tokens (``sampling.max_new_tokens`` for the whole conversation), turns or calls.

The :class:`~lit_align.rollouts.record.Rollout` holds the whole conversation after the prompt as its completion
(attention over all of it) and ``tool_mask`` (1 on the policy's own tokens, 0 on the tools'): the loss, the log-probs
that enter it, the KL, the entropy and the critic's value loss are taken over ``completion_mask * tool_mask`` only.
Reward functions receive the conversation as messages (assistant and tool) and, with environments, ``environments=``.
Each turn prefills its whole context again (no KV reuse across turns): simple and exact, at the cost of one
prefill per turn. Under FSDP2 every forward is a collective, so the ranks take the same number of turns: a rank whose
conversations are over samples one throwaway token while another rank's go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lit_align.datamodules.tokenize import left_pad, pad
from lit_align.errors import DataError, OptionError, row_label
from lit_align.models.sharding import is_fsdp2_sharded
from lit_align.rewards.resolve import import_reward_func
from lit_align.rollouts.record import Rollout
from lit_align.tools.calls import ToolResult, parse_tool_calls, run_tool_call, tool_schema, tools_by_name
from lit_align.tools.chat import prompt_ids, tool_turn_ids, with_observation
from lit_align.tools.environments import (
    ENVIRONMENT_COLUMN,
    EnvironmentReward,
    check_environment,
    environment_methods,
    has_reward,
    resolve_factories,
    seeded_random,
)  # fmt: skip
from lit_align.tools.options import ToolOptions

TOOL_METRICS = ("tools/call_frequency", "tools/failure_frequency", "tools/mean_turns")


@dataclass
class Conversation:
    """One row's conversation after its prompt: tokens and which are the policy's, messages, counts."""

    prompt_ids: list[int]
    tools: dict[str, Callable]
    environment: Any = None
    ids: list[int] = field(default_factory=list)
    policy: list[int] = field(default_factory=list)  # 1: the policy's own token, 0: a tool's
    messages: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    failures: int = 0
    turns: int = 0
    truncated: bool = False
    done: bool = False


class ToolRunner:
    """Multi-turn rollouts with the tools and environments of a :class:`ToolOptions` group.

    Args:
        options: the ``tools`` group.
    """

    def __init__(self, options: ToolOptions) -> None:
        self.options = options
        self.functions = [import_reward_func(f) if isinstance(f, str) else f for f in options.functions]
        for f in self.functions:
            tool_schema(f)  # a tool without a schema fails here, before any model loads
        tools_by_name(self.functions, "--model.tools.functions")
        self.factories = resolve_factories(options.environment)
        self.environment_rewards: list[EnvironmentReward] = []
        for name, factory in self.factories.items():  # one probe instance each: its shape, tools and reward
            instance = factory()
            check_environment(instance, name)
            methods = environment_methods(instance)
            for method in methods:
                tool_schema(method)
            tools_by_name([*self.functions, *methods], f"environment {type(instance).__name__}")
            if has_reward(instance) and type(instance) not in [r.environment_type for r in self.environment_rewards]:
                self.environment_rewards.append(EnvironmentReward(type(instance)))

    @property
    def multi_environment(self) -> bool:
        return len(self.factories) > 1 or (bool(self.factories) and None not in self.factories)

    # -- the rollout ------------------------------------------------------------------------------
    def rollout(self, sampler: Any, model: nn.Module, tokenizer: Any, batch: dict[str, Any] | None,
                num_generations: int, key: str | None = None, greedy: bool = False) -> Rollout:  # fmt: skip
        """G conversations per prompt of ``batch`` (prompt-major), sampled by ``sampler``'s backend; see the module."""
        if batch is None or "prompt" not in batch:
            raise ValueError("a multi-turn rollout starts from the prompt batch (its chat prompts and columns), not "
                             "from token ids alone: pass the batch (sample(..., batch=batch))")  # fmt: skip
        key = sampler.call_key(key, greedy)
        seed = f"{sampler.options.seed}/{key}"
        rows = self.start(batch, num_generations, tokenizer, seed)
        budget = sampler.options.max_new_tokens
        sharded = is_fsdp2_sharded(model)  # every forward is a collective: the ranks take the same number of turns
        for turn in range(self.options.max_turns):
            active = [i for i, row in enumerate(rows) if not row.done]
            if not (_any_rank(bool(active), model) if sharded else active):
                break
            if not active:  # this rank's conversations are over, another rank's are not: a turn that keeps step
                ids, mask = _left_pad([rows[0].prompt_ids], tokenizer.pad_token_id, model)
                sampler.sample(model, ids, mask, tokenizer, 1, f"{key}/turn{turn}", greedy, max_new_tokens=1)
                continue
            contexts = [rows[i].prompt_ids + rows[i].ids for i in active]
            room = max(budget - len(rows[i].ids) for i in active)
            per_prompt = num_generations if turn == 0 and _grouped(contexts, num_generations) else 1
            unique = contexts[::per_prompt]
            ids, mask = _left_pad(unique, tokenizer.pad_token_id, model)
            sampled = sampler.sample(model, ids, mask, tokenizer, per_prompt, f"{key}/turn{turn}", greedy,
                                     max_new_tokens=room)  # the room the conversation has left
            for j, i in enumerate(active):
                n = int(sampled.lengths[j])
                new = sampled.completion_ids[j, :n].tolist()
                self.take_turn(rows[i], new, bool(sampled.is_truncated[j]), budget, tokenizer, f"{seed}/{i}")
        for row in rows:  # the turn limit reached with a call pending: the conversation ends there
            row.done = True
        return self.assemble(rows, tokenizer, num_generations, model)

    def start(self, batch: dict[str, Any], num_generations: int, tokenizer: Any, seed: str) -> list[Conversation]:
        """Each row's environment (reset), tools and rendered prompt."""
        rows = []
        for i, row in enumerate(self.rows(batch, "the batch")):
            for g in range(num_generations):
                b = i * num_generations + g
                environment, observation, methods = None, None, []
                if self.factories:
                    where = f"prompt {i + 1} (1-based) of the batch"
                    environment, observation = self.reset(dict(row), where, f"{seed}/{b}/reset")
                    methods = environment_methods(environment)
                tools = [*self.functions, *methods]
                ids = prompt_ids(tokenizer, with_observation(row["prompt"], observation), tools)
                rows.append(Conversation(ids, tools_by_name(tools, "a rollout's tools"), environment))
        return rows

    @staticmethod
    def rows(batch: dict[str, Any], where: str) -> list[dict[str, Any]]:
        """The batch's rows (``prompt`` and every other column), each prompt checked to be a chat."""
        columns = {k: v for k, v in batch.items() if k != "prompt" and isinstance(v, list)}
        rows = []
        for i, prompt in enumerate(batch["prompt"]):
            if not (isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)):
                raise DataError(f"{where}: prompt {i + 1} (1-based) ({str(prompt)[:60]!r}) is text; tool use needs "
                                "chat prompts (--data.user_template makes text prompts user messages)")  # fmt: skip
            rows.append({"prompt": prompt, **{k: v[i] for k, v in columns.items()}})
        return rows

    def reset(self, row: dict[str, Any], where: str, seed: str) -> tuple[Any, str | None]:
        """A fresh environment for ``row`` (its ``environment`` column taken out, with several), made and reset under
        Python's ``random`` seeded from ``seed``, and the observation its ``reset`` returned."""
        name = row.pop(ENVIRONMENT_COLUMN, None) if self.multi_environment else None
        if name not in self.factories:
            raise DataError(f"{where} has {ENVIRONMENT_COLUMN}={name!r}, not one of the configured environments: "
                            f"{', '.join(map(str, self.factories))}")  # fmt: skip
        with seeded_random(seed):
            environment = self.factories[name]()
            try:
                observation = environment.reset(**row)
            except Exception as err:
                raise DataError(f"{where}: {type(environment).__name__}.reset(**row) failed with the row's columns "
                                f"({', '.join(row)}): {type(err).__name__}: {err}") from err
        if observation is not None and not isinstance(observation, str):
            raise OptionError(f"{type(environment).__name__}.reset() returned {type(observation).__name__}; expected a "
                              "string to append to the prompt, or None")  # fmt: skip
        return environment, observation

    def take_turn(self, row: Conversation, new: list[int], truncated: bool, budget: int, tokenizer: Any,
                  seed: str) -> None:  # fmt: skip
        """Add one sampled turn to ``row``; run its tool calls and append their messages, or end the row."""
        room = budget - len(row.ids)
        if len(new) > room:
            new, truncated = new[:room], True
        row.ids += new
        row.policy += [1] * len(new)
        row.turns += 1
        text = tokenizer.decode(new, skip_special_tokens=True)
        row.messages.append({"role": "assistant", "content": text})
        calls = [] if truncated else parse_tool_calls(text)
        limited = row.turns >= self.options.max_turns or row.calls + len(calls) > self.options.max_tool_calls
        if truncated or not calls or limited:
            row.truncated, row.done = truncated, True
            return
        results: list[ToolResult] = []
        for c, call in enumerate(calls):
            with seeded_random(f"{seed}/call{row.calls + c}"):
                results.append(run_tool_call(call, row.tools, self.options.timeout, self.options.max_result_chars))
        row.calls += len(results)
        row.failures += sum(r.failed for r in results)
        messages = [{"role": "tool", "name": r.name, "content": r.content} for r in results]
        suffix = tool_turn_ids(tokenizer, messages, tokenizer.decode(new[-1:]))
        if len(row.ids) + len(suffix) >= budget:  # no room for the results and an answer: it ends here
            row.done = True
            return
        row.ids += suffix
        row.policy += [0] * len(suffix)
        row.messages += messages

    def assemble(self, rows: list[Conversation], tokenizer: Any, num_generations: int, model: nn.Module) -> Rollout:
        device = next(model.parameters()).device
        prompt_input_ids, prompt_mask = _left_pad([r.prompt_ids for r in rows], tokenizer.pad_token_id, model)
        completion = pad([r.ids for r in rows], tokenizer.pad_token_id)  # every row has a turn: at least one token
        mask, policy = pad([[1] * len(r.ids) for r in rows], 0), pad([r.policy for r in rows], 0)
        count = lambda attr: torch.tensor([getattr(r, attr) for r in rows], device=device)  # noqa: E731
        rollout = Rollout(
            prompt_input_ids, prompt_mask, completion.to(device), mask.to(device), [conversation_text(r.messages)
            for r in rows], mask.sum(1).to(device), count("truncated").bool(), num_generations,
        )  # fmt: skip
        rollout.tool_mask = policy.to(device)
        rollout.messages = [r.messages for r in rows]
        rollout.tool_calls, rollout.tool_failures, rollout.turns = count("calls"), count("failures"), count("turns")
        rollout.environments = [r.environment for r in rows] if self.factories else None
        return rollout

    # -- metrics ------------------------------------------------------------------------------------
    @staticmethod
    def values(rollout: Rollout) -> dict[str, Any]:
        """TRL's ``tools/call_frequency`` (calls per completion) and ``tools/failure_frequency`` (failed calls per
        call), and the mean number of assistant turns per completion; as (values, weights) for exact averages over
        ranks."""
        calls, failures = rollout.tool_calls.float(), rollout.tool_failures.float()
        rate = torch.where(calls > 0, failures / calls.clamp(min=1), torch.zeros_like(calls))
        return {"tools/call_frequency": calls, "tools/failure_frequency": (rate, calls),
                "tools/mean_turns": rollout.turns.float()}  # fmt: skip


def conversation_text(messages: list[dict[str, Any]]) -> str:
    """A conversation as plain text, one message after another (the completions table, evaluation records)."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"[{m['role']}{'' if m['role'] != 'tool' else ' ' + m['name']}] {m['content']}"
                     for m in messages)  # fmt: skip


def _grouped(contexts: list[list[int]], num_generations: int) -> bool:
    """Whether the rows of each prompt render alike (then sampled G at a time from one prompt)."""
    return num_generations > 1 and all(
        contexts[i] == contexts[i - i % num_generations] for i in range(len(contexts))
    )


def _left_pad(rows: list[list[int]], pad_id: int, model: nn.Module) -> tuple[Tensor, Tensor]:
    """Left-padded ids and attention mask of ``rows`` on ``model``'s device (generation appends on the right)."""
    device = next(model.parameters()).device
    return left_pad(rows, pad_id).to(device), left_pad([[1] * len(r) for r in rows], 0).to(device)


def _any_rank(flag: bool, model: nn.Module) -> bool:
    """Whether ``flag`` holds on any rank (an all-reduce over the default group)."""
    import torch.distributed as dist

    value = torch.tensor([float(flag)], device=next(model.parameters()).device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def check_tool_data(options: ToolOptions, batch: dict[str, Any], source: str) -> list[Any] | None:
    """Before training, on the first rows of the data: the tools and environments resolve (each with its schema), the
    prompts are chats, each row names a configured environment (with several), and each row's environment is made and
    reset as a rollout would; returns one reset environment per row (for the reward functions' check), or None
    without environments."""
    runner = ToolRunner(options)
    rows = runner.rows(batch, source)
    if not runner.factories:
        return None
    return [runner.reset(row, f"{source}: {row_label(i)}", f"check/{i}")[0] for i, row in enumerate(rows)]
