"""Sample from a trained policy: a prompt file to JSONL, or an interactive prompt.

The policy is anything :func:`lit_align.models.runs.load_trained` takes (a run directory, a checkpoint, an
``hf_model`` export, a preset). Prompts go through the tokenizer's chat template as a user turn (rows may also give a
chat message list), exactly as the DataModules format them for training, and completions are sampled with the
same seeded sampler the online algorithms use (``greedy=True`` decodes greedily).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from lit_align.models.runs import load_trained
from lit_align.rollouts.sampling import GenerationOptions, Sampler


class Completer:
    """A policy, its tokenizer and a seeded :class:`~lit_align.rollouts.sampling.Sampler`, nothing else (no optimizer,
    no reward): the ``n``-th sampled call of :meth:`complete` draws from the RNG of key ``n``, so a session repeats.

    Args:
        policy: the model to sample from.
        tokenizer: its tokenizer.
        sampling: the sampling options.
        greedy: decode greedily instead of sampling.
        num_generations: completions per prompt.
    """

    def __init__(self, policy: nn.Module, tokenizer: Any, sampling: GenerationOptions, greedy: bool = False,
                 num_generations: int = 1) -> None:  # fmt: skip
        self.policy, self.tokenizer = policy.eval(), tokenizer
        self.sampler, self.greedy, self.num_generations = Sampler(sampling), greedy, num_generations

    @torch.no_grad()
    def complete(self, prompt_ids: list[list[int]]) -> list[list[str]]:
        """``num_generations`` completions (texts) of each prompt (token ids)."""
        from lit_align.datamodules.tokenize import left_pad

        device = next(self.policy.parameters()).device
        ids = left_pad(prompt_ids, self.tokenizer.pad_token_id).to(device)
        mask = left_pad([[1] * len(p) for p in prompt_ids], 0).to(device)
        n = 1 if self.greedy else self.num_generations
        texts = self.sampler.sample(self.policy, ids, mask, self.tokenizer, n, greedy=self.greedy).texts
        return [texts[i * n : (i + 1) * n] for i in range(len(prompt_ids))]


def generate(
    policy: str,
    prompts: str | None = None,
    output: str | None = None,
    batch_size: int = 8,
    max_prompt_length: int | None = 1024,
    sampling: GenerationOptions = GenerationOptions(),
    greedy: bool = False,
    num_generations: int = 1,
) -> None:
    """Complete the prompts of a file into JSONL, or (without ``prompts``) answer prompts typed at a terminal.

    Args:
        policy: a run directory (``runs/dpo/version_0``), a ``.ckpt`` file, an ``hf_model`` export, or a preset /
            hub id / directory.
        prompts: a .json/.jsonl/.parquet/.csv file of rows with ``prompt`` (text or chat messages); every other
            column is copied to the output. Without it, prompts are read line by line from standard input.
        output: the JSONL file to write (default: standard output); rows ``{"prompt", "completion", ...}``, and
            ``"completions"`` (a list) with ``num_generations`` > 1.
        batch_size: prompts per generation batch.
        max_prompt_length: longest prompt in tokens (the end is kept).
        sampling: how completions are sampled (a group: ``--sampling.<option>``).
        greedy: decode greedily instead of sampling.
        num_generations: completions per prompt.
    """
    if prompts is not None:
        say(f"loading {policy}")
    trained = load_trained(policy)
    module = Completer(trained.model, trained.tokenizer, sampling, greedy, num_generations)
    if prompts is None:
        _interactive(module, max_prompt_length)
        return
    from lit_align.datamodules import PromptDataModule

    dm = PromptDataModule(tokenizer=trained.tokenizer, data_path=prompts, val_size=0,
                          max_prompt_length=max_prompt_length, batch_size=batch_size)  # fmt: skip
    dm.setup("predict")
    rows = dm.train_dataset
    out: TextIO = Path(output).open("w") if output else sys.stdout
    began = time.monotonic()
    say(f"generating for {len(rows)} prompts of {prompts} ({num_generations if not greedy else 1} each, "
        f"{'greedy' if greedy else f'temperature {sampling.temperature}'}, up to {sampling.max_new_tokens} tokens) "
        f"into {output or 'standard output'}")  # fmt: skip
    try:
        for start in range(0, len(rows), batch_size):
            batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
            for row, texts in zip(batch, module.complete([r["prompt_ids"] for r in batch]), strict=True):
                record = {k: v for k, v in row.items() if k not in ("prompt_ids", "_status")}
                record.update({"completion": texts[0]} if len(texts) == 1 else {"completions": texts})
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            done = start + len(batch)
            elapsed = time.monotonic() - began
            say(f"  {done}/{len(rows)} prompts, {elapsed:.0f} s ({elapsed / done:.2g} s/prompt)")
    finally:
        if output:
            out.close()
    say(f"wrote {len(rows)} rows to {Path(output).resolve() if output else 'standard output'}")


def say(text: str) -> None:
    """Progress on standard error: standard output may be the generated rows themselves."""
    print(text, file=sys.stderr, flush=True)


def _interactive(module: Completer, max_prompt_length: int | None) -> None:
    from lit_align.datamodules.tokenize import _ids, truncate_prompt

    tokenizer = module.tokenizer
    chat = bool(tokenizer.chat_template)
    if sys.stdin.isatty():
        print("Type a prompt and press Enter (an empty line or Ctrl-D ends).", file=sys.stderr)
    for line in sys.stdin:
        text = line.rstrip("\n")
        if not text.strip():
            break
        prompt = [{"role": "user", "content": text}] if chat else text
        ids = truncate_prompt(_ids(tokenizer, prompt, generation_prompt=chat), max_prompt_length, "keep_end")
        for completion in module.complete([ids])[0]:
            print(completion, flush=True)
