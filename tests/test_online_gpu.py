"""The online modules on a CUDA device: rollout, rewards and updates keep every tensor on the right device."""

from __future__ import annotations

import pytest
import torch

from lit_align.algorithms.grpo import GRPO
from lit_align.algorithms.remax import ReMax
from lit_align.algorithms.rloo import RLOO
from lit_align.models.loading import load_model
from tests.helpers import changed, snapshot
from tests.online_helpers import length_reward, prompt_rows

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def prompt_loader(tokenizer, n: int = 4, batch_size: int = 2):
    """Prompt batches built without ``datasets`` (collated as PromptDataModule does)."""
    rows = prompt_rows(n)
    batches = []
    for start in range(0, n, batch_size):
        chunk = rows[start : start + batch_size]
        ids = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True)["input_ids"] for r in chunk]
        width = max(map(len, ids))
        batches.append({
            "prompt_input_ids": torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids]),
            "prompt_attention_mask": torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids]),
            "prompt": [r["prompt"] for r in chunk], "answer": [r["answer"] for r in chunk],
        })  # fmt: skip
    return batches


@pytest.mark.parametrize(("cls", "kwargs"), [(GRPO, {"beta": 0.1, "num_iterations": 2}), (RLOO, {}), (ReMax, {})])
def test_update_and_fit_on_cuda(tmp_path, cls, kwargs):
    import lightning as L

    policy, tokenizer = load_model("tiny-llama")
    module = cls(policy=policy, tokenizer=tokenizer, num_generations=2, sampling={"max_new_tokens": 8},
                 learning_rate=1e-3, rewards={"reward_funcs": [length_reward]}, **kwargs).cuda()  # fmt: skip
    before = snapshot(module.policy)
    out = module.update(prompt_loader(tokenizer)[0])
    assert changed(before, module.policy) and out["reward"] >= 0
    trainer = L.Trainer(accelerator="gpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=str(tmp_path))  # fmt: skip
    from torch.utils.data import DataLoader

    loader = DataLoader(prompt_loader(tokenizer), batch_size=None)  # the ready-made batches, as they are
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step >= 3  # a rollout of 2 optimizer steps may overshoot max_steps by one
    assert "train/reward" in trainer.callback_metrics and "val/reward" in trainer.callback_metrics
