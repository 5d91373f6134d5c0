"""Shared pieces of the online-algorithm tests: a reward with spread, small prompt data, a fixed rollout."""

from __future__ import annotations

from pathlib import Path

import torch

from lit_align.rewards.verifiers import completion_text
from lit_align.rollout import Rollout, completion_mask_until_eos
from tests.conftest import write_jsonl


def length_reward(prompts, completions, **kwargs):
    """Completion length in characters / 10: random tiny models give rewards with spread."""
    return [len(completion_text(c)) / 10 for c in completions]


def prompt_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Count to {i}."}], "answer": str(i)} for i in range(n)]


def prompt_datamodule(tmp_path: Path, tokenizer, n: int = 8, **kwargs):
    from datamodules.prompt import PromptDataModule  # imported here: the GPU test's image has no ``datasets``

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
