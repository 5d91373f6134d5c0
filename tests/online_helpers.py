"""Shared pieces of the online-algorithm tests: a reward with spread, small prompt data, a fixed rollout."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from lit_align.rewards.verifiers import completion_text
from lit_align.rollouts.record import Rollout, completion_mask_until_eos
from tests.conftest import write_jsonl


def length_reward(prompts, completions, **kwargs):
    """Completion length in characters / 10: random tiny models give rewards with spread."""
    return [len(completion_text(c)) / 10 for c in completions]


def tiny_options(tokenizer, sampling: dict | None = None, rewards: dict | None = None, **kwargs) -> dict:
    """The options of a tiny online module: 8-token completions scored by :func:`length_reward`, lr 1e-3; the
    ``sampling`` and ``rewards`` given are merged into those groups, the other options override."""
    return {"num_generations": 4, "learning_rate": 1e-3, "tokenizer": tokenizer,
            "sampling": {"max_new_tokens": 8, **(sampling or {})},
            "rewards": {"reward_funcs": [length_reward], **(rewards or {})}, **kwargs}  # fmt: skip


def prompt_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Count to {i}."}], "answer": str(i)} for i in range(n)]


def prompt_datamodule(tmp_path: Path, tokenizer, n: int = 8, **kwargs):
    from lit_align.datamodules.prompt import PromptDataModule  # imported here: the GPU test's image has no ``datasets``

    path = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(n))
    kwargs.setdefault("val_size", 0)
    kwargs.setdefault("batch_size", 2)
    return PromptDataModule(tokenizer=tokenizer, data_path=str(path), **kwargs)


def prompt_batch(tmp_path: Path, tokenizer, n: int = 4) -> dict:
    dm = prompt_datamodule(tmp_path, tokenizer, n=n)
    dm.setup("fit")
    return dm.collate([dm.train_dataset[i] for i in range(n)])


def fixed_rollout(batch: dict, tokenizer, num_generations: int, lengths: list[int], seed: int = 0) -> Rollout:
    """A rollout with chosen completion lengths (an EOS ends each one shorter than the longest)."""
    width = max(lengths)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 200, (len(lengths), width), generator=generator)
    for row, n in enumerate(lengths):
        if n < width:
            ids[row, n - 1] = tokenizer.eos_token_id
    mask, truncated = completion_mask_until_eos(ids, [tokenizer.eos_token_id])
    ids = ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    lengths_t = mask.sum(1)
    texts = tokenizer.batch_decode([r[:n] for r, n in zip(ids.tolist(), lengths_t.tolist(), strict=True)],
                                   skip_special_tokens=True)  # fmt: skip
    prompt_ids = batch["prompt_input_ids"].repeat_interleave(num_generations, 0)
    prompt_mask = batch["prompt_attention_mask"].repeat_interleave(num_generations, 0)
    return Rollout(prompt_ids, prompt_mask, ids, mask, texts, lengths_t, truncated, num_generations)


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


class ScriptedBackend:
    """A generation backend whose completions depend only on the prompt's tokens and the sample index.

    Sampling is per-rank random by design, so layouts (1 process vs 2) cannot draw the same completions;
    with this backend they do, and everything downstream (rewards, advantages, losses, updates) must
    then match exactly.
    """

    def __init__(self, tokenizer, max_new_tokens: int = 8) -> None:
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens

    def __call__(self, model, prompt_input_ids, prompt_attention_mask, num_generations=1, greedy=False,
                 max_new_tokens=None) -> Rollout:  # fmt: skip
        limit, rows = max_new_tokens or self.max_new_tokens, []
        for ids, mask in zip(prompt_input_ids.tolist(), prompt_attention_mask.tolist(), strict=True):
            key = sum((i + 1) * t for i, t in enumerate(t for t, m in zip(ids, mask, strict=True) if m))
            for g in range(num_generations):
                generator = torch.Generator().manual_seed(key * 31 + g)
                length = int(torch.randint(2, limit + 1, (1,), generator=generator))
                rows.append(torch.randint(3, 200, (length,), generator=generator).tolist())
        width = max(len(r) for r in rows)
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ends = [r[:-1] + [eos] if len(r) < limit else r for r in rows]  # full length = truncated
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in ends])
        mask, truncated = completion_mask_until_eos(ids, [eos])
        lengths = mask.sum(1)
        texts = self.tokenizer.batch_decode([r[:n] for r, n in zip(ids.tolist(), lengths.tolist(), strict=True)],
                                            skip_special_tokens=True)  # fmt: skip
        device = prompt_input_ids.device
        return Rollout(
            prompt_input_ids.repeat_interleave(num_generations, 0), prompt_attention_mask.repeat_interleave(
                num_generations, 0), ids.to(device), mask.to(device), texts, lengths.to(device),
            truncated.to(device), num_generations,
        )  # fmt: skip


def needs_answer(prompts, completions, answer, **kwargs):
    """A reward function that needs an ``answer`` column (binding tests)."""
    return [float(completion_text(c) == str(a)) for c, a in zip(completions, answer, strict=True)]


def no_kwargs_reward(prompts, completions):
    """A reward function without ``**kwargs``: any data column besides the prompt cannot reach it (binding tests)."""
    return [0.0 for _ in completions]


def crashing_reward(prompts, completions, **kwargs):
    """A reward function that fails on every call (binding tests)."""
    raise KeyError("score")


def unscorable_reward(prompts, completions, **kwargs):
    """A verifier that can never score (dead-reward warning tests)."""
    return [None for _ in completions]


class ScriptedTurns:
    """A generation backend that writes what ``script(context_text, turn)`` says (then EOS), for multi-turn tests:
    ``context_text`` is the decoded prompt and conversation so far, ``turn`` the number of assistant turns in it. A
    reply longer than ``max_new_tokens`` is cut there (truncated, no EOS). Greedy or sampled alike."""

    def __init__(self, tokenizer, script, max_new_tokens: int = 64) -> None:
        self.tokenizer, self.script, self.max_new_tokens = tokenizer, script, max_new_tokens
        self.calls: list[int] = []  # rows per call

    def __call__(self, model, prompt_input_ids, prompt_attention_mask, num_generations=1, greedy=False,
                 max_new_tokens=None) -> Rollout:  # fmt: skip
        tok, rows, limit = self.tokenizer, [], max_new_tokens or self.max_new_tokens
        for ids, mask in zip(prompt_input_ids.tolist(), prompt_attention_mask.tolist(), strict=True):
            context = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
            turn = context.count("<|im_start|>assistant") - 1
            for g in range(num_generations):
                reply = tok(self.script(context, turn, g), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                rows.append(reply[:limit])
        self.calls.append(len(rows))
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        mask, truncated = completion_mask_until_eos(ids, [tok.eos_token_id])
        lengths = mask.sum(1)
        texts = tok.batch_decode([r[:n] for r, n in zip(ids.tolist(), lengths.tolist(), strict=True)],
                                 skip_special_tokens=True)  # fmt: skip
        device = prompt_input_ids.device
        return Rollout(prompt_input_ids.repeat_interleave(num_generations, 0),
                       prompt_attention_mask.repeat_interleave(num_generations, 0), ids.to(device), mask.to(device),
                       texts, lengths.to(device), truncated.to(device), num_generations)  # fmt: skip


class ScriptedPlayer(L.Callback):
    """A recipe's sampling replaced by :func:`guessing_script` (``--trainer.callbacks+=tests.online_helpers.
    ScriptedPlayer``): the tiny random model never calls a tool, this player calls ``guess`` every turn."""

    def __init__(self, max_new_tokens: int = 300) -> None:
        self.max_new_tokens = max_new_tokens

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.sampler.backend = ScriptedTurns(pl_module.tokenizer, guessing_script, self.max_new_tokens)


def guessing_script(context: str, turn: int, g: int) -> str:
    """A player of :class:`~lit_align.tools.games.GuessTheNumber` for :class:`ScriptedTurns`: a first guess that
    depends on the sample, then bisection on the answers in the context; "Found it." once correct."""
    import re

    low, high = (int(x) for x in re.search(r"from (\d+) to (\d+)", context).groups())
    guesses = [int(x) for x in re.findall(r'"number": (\d+)', context)]
    answers = re.findall(r"<\|im_start\|>tool\n(\w+)", context)
    for guess, answer in zip(guesses, answers, strict=False):
        if answer == "correct":
            return "Found it."
        low, high = (guess + 1, high) if answer == "higher" else (low, guess - 1)
    guess = min(high, low + 2 + 4 * g) if turn == 0 else (low + high) // 2
    return f'<tool_call>{{"name": "guess", "arguments": {{"number": {guess}}}}}</tool_call>'


def game_rows(n: int, secret: bool = False, uneven: bool = False) -> list[dict]:
    """Prompt rows of the guessing game (with a fixed ``secret`` per row when asked). ``uneven``: every other game
    has one number (over in 2 turns), the others 64 (played to the turn limit)."""
    rows = []
    for i in range(n):
        low, high = (i, i) if uneven and i % 2 == 0 else (1, 64 if uneven else 16)
        row = {"prompt": [{"role": "user", "content": f"Game {i}."}], "low": low, "high": high}
        if secret:
            row["secret"] = low + (5 * i) % (high - low + 1)
        rows.append(row)
    return rows


class GeneratingScript(ScriptedTurns):
    """:class:`ScriptedTurns` that first runs the model's real ``generate`` on the same rows (under FSDP2 every
    forward is a collective), then answers from the script: multi-turn layouts in which the ranks' conversations
    last different numbers of turns."""

    def __call__(self, model, prompt_input_ids, prompt_attention_mask, num_generations=1, greedy=False,
                 max_new_tokens=None) -> Rollout:  # fmt: skip
        from lit_align.rollouts.hf import HFGenerate

        HFGenerate(self.tokenizer, max_new_tokens=2, kv_cache="dynamic")(
            model, prompt_input_ids, prompt_attention_mask, num_generations, greedy
        )
        return super().__call__(model, prompt_input_ids, prompt_attention_mask, num_generations, greedy,
                                max_new_tokens)  # fmt: skip
