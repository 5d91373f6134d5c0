"""TR-DPO's reference syncing (``DPO(sync_ref_model=True)``): the reference becomes α·policy + (1 − α)·reference after
every ``ref_model_sync_steps`` optimizer steps, as TRL's ``SyncRefModelCallback``, and is then part of the checkpoint.
Kill-and-resume across a sync: tests/test_resume.py (``trdpo``); DDP/FSDP2 against one process: tests/test_scaling.py
(``dpo_trdpo``)."""

from __future__ import annotations

import lightning as L
import torch

from lit_align.algorithms.dpo import DPO
from lit_align.datamodules import PreferenceDataModule
from lit_align.models.loading import load_model
from tests.conftest import write_jsonl
from tests.helpers import tiny_trainer

ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f" {2 * i}.", "rejected": f" {2 * i + 1}, I think."}
        for i in range(12)]  # fmt: skip


class States(L.Callback):
    """Policy and reference weights at the start of every step (before the module's own hook: callbacks run first)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[dict, dict]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        clone = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
        self.seen[trainer.global_step] = (clone(pl_module.policy), clone(pl_module.reference))


def test_reference_is_mixed_toward_the_policy_every_n_steps(tmp_path):
    policy, tokenizer = load_model("tiny-llama")
    module = DPO(policy=policy, learning_rate=1e-3, sync_ref_model=True, ref_model_sync_steps=2,
                 ref_model_mixup_alpha=0.25)  # fmt: skip
    assert "reference_model.model.embed_tokens.weight" in module.state_dict()  # checkpointed with the policy
    assert all(not p.requires_grad for p in module.reference.parameters())  # and never trained
    dm = PreferenceDataModule(tokenizer=tokenizer, data_path=str(write_jsonl(tmp_path / "d.jsonl", ROWS)),
                              val_size=0, batch_size=2, max_length=64, max_prompt_length=32)  # fmt: skip
    states = States()
    tiny_trainer(tmp_path, max_steps=5, callbacks=[states]).fit(module, dm)
    (policy_0, ref_0), (policy_2, ref_2), (_, ref_3), (policy_4, ref_4) = (states.seen[s] for s in (0, 2, 3, 4))
    assert all(torch.equal(ref_2[k], ref_0[k]) for k in ref_0)  # steps 1-2: not synced yet
    for name in ref_0:  # at step 2 (before step 3): ref = 0.25·π_2 + 0.75·ref_0; unchanged through step 3
        torch.testing.assert_close(ref_3[name], 0.25 * policy_2[name] + 0.75 * ref_0[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(ref_4[name], ref_3[name], rtol=0, atol=0)
    final = module.reference.state_dict()
    for name in ref_0:  # at step 4: again, from the reference as step 2 left it
        torch.testing.assert_close(final[name], 0.25 * policy_4[name] + 0.75 * ref_3[name], rtol=0, atol=1e-6)
    assert module._reference.synced_at == 4
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["reference_synced_at"] == 4


def test_a_hard_copy_and_a_separate_reference_model(tmp_path):
    """α = 1 copies the policy; a reference_policy of the same architecture is synced as well."""
    policy, tokenizer = load_model("tiny-llama")
    module = DPO(policy=policy, reference_policy="tiny-llama", sync_ref_model=True, ref_model_sync_steps=1,
                 ref_model_mixup_alpha=1.0, learning_rate=1e-3)  # fmt: skip
    assert module.reference_source == "model"
    dm = PreferenceDataModule(tokenizer=tokenizer, data_path=str(write_jsonl(tmp_path / "d.jsonl", ROWS)),
                              val_size=0, batch_size=2, max_length=64, max_prompt_length=32)  # fmt: skip
    states = States()
    tiny_trainer(tmp_path, max_steps=2, callbacks=[states]).fit(module, dm)
    policy_1, _ = states.seen[1]
    assert all(torch.equal(module.reference.state_dict()[k], v) for k, v in policy_1.items())  # synced at step 1...
    assert not all(torch.equal(module.policy.state_dict()[k], v) for k, v in policy_1.items())  # ...then trained on
