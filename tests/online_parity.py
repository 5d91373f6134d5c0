"""Shared fixtures of the online parity tests against TRL 1.16 (test_parity_grpo_trl.py, test_parity_rloo_trl.py).

Both sides train on the SAME fixed completions (no sampling): a tiny policy (tiny-llama, seed 0), a different tiny
reference (seed 1), two chat prompts of different lengths (so the shorter one is left-padded) and G = 4 completions
each of lengths 2..8, three of them truncated (no EOS within ``MAX_NEW_TOKENS``).

TRL side: the trainer is built from copies of the models (TRL patches their forward with its fused LM head at its
temperature) and only its generation backend is replaced: ``_generate_single_turn`` returns the fixed completion
ids. Everything after generation is TRL's own: ``_generate_and_score_completions`` tokenizes the prompts (asserted
equal to ours), pads, scores the rewards, computes the old and reference log-probs, the RLOO KL penalty and the
advantages; ``compute_loss`` gives each micro-batch's loss. The optimizer step is driven as HF's Trainer drives it:
the generation batch cut into ``gradient_accumulation_steps`` micro-batches with TRL's ``split_tensor_dict``,
``current_gradient_accumulation_steps`` set, each loss divided by it when the trainer does not scale for
accumulation itself (``loss_is_scaled_for_ga``, RLOO), backpropagated micro-batch by micro-batch. TRL's
``_prepare_inputs`` also shuffles the rows first; we do not (lit-align's micro-batches are contiguous): with
equal-size micro-batches the step's loss and gradient under ``grpo``, ``dapo``, ``dr_grpo`` and RLOO's mean do
not depend on which rows share a micro-batch (under ``bnpo`` they do, which is why lit-align has no ``bnpo``).

lit-align side: the module's own ``update`` with ``generate_samples`` returning the rollout. Each optimizer step
records its summed micro-batch losses, its gradients and the parameters they were taken at, then steps (AdamW), so
a second pass over the rollout (``num_iterations=2``) is genuinely off-policy; TRL's model is loaded with the same
parameters for each step, its old log-probs being its own pass at the sampling state.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lit_align.models.loading import load_model
from lit_align.rollouts.record import Experience, Rollout
from lit_align.training.online import OnlinePolicyGradient
from tests.conftest import write_jsonl
from tests.online_helpers import fixed_rollout, length_reward

trl = pytest.importorskip("trl")
if trl.__version__ != "1.16.0":
    pytest.skip(f"parity is pinned to TRL 1.16.0, found {trl.__version__}", allow_module_level=True)
datasets = pytest.importorskip("datasets")
from trl.trainer.utils import split_tensor_dict  # noqa: E402  (after the version check)

ATOL = 1e-5  # losses and every gradient entry, fp32
BETA = 0.3
NUM_GENERATIONS = 4
MAX_NEW_TOKENS = 8
LENGTHS = [3, 8, 5, 8, 2, 6, 8, 4]  # rows of length MAX_NEW_TOKENS have no EOS: truncated
ROWS = [
    {"prompt": [{"role": "user", "content": "Count to 3."}], "answer": "3"},
    {"prompt": [{"role": "user", "content": "Count slowly from one to twelve, please."}], "answer": "12"},
]
LEARNING_RATE = 3e-4  # AdamW step 1 moves log-probs by ~0.1: pass 2 is off-policy, some tokens clipped


@dataclass
class Fixture:
    """The models (never trained: each side trains copies), the prompt batch and the fixed completions."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    tokenizer: object
    batch: dict
    rollout: Rollout


def make_fixture(tmp_path: Path) -> Fixture:
    from lit_align.datamodules.prompt import PromptDataModule

    policy, tokenizer = load_model("tiny-llama", seed=0)
    reference, _ = load_model("tiny-llama", seed=1)
    dm = PromptDataModule(tokenizer=tokenizer, data_path=str(write_jsonl(tmp_path / "prompts.jsonl", ROWS)),
                          val_size=0, batch_size=len(ROWS))  # fmt: skip
    dm.setup("fit")
    batch = dm.collate([dm.train_dataset[i] for i in range(len(ROWS))])
    assert batch["prompt"] == [r["prompt"] for r in ROWS]
    assert not batch["prompt_attention_mask"].all()  # one prompt is left-padded
    rollout = fixed_rollout(batch, tokenizer, NUM_GENERATIONS, LENGTHS)
    assert rollout.is_truncated.sum() == 3 and rollout.completion_ids.shape[1] == MAX_NEW_TOKENS
    return Fixture(policy, reference, tokenizer, batch, rollout)


# -- lit-align ------------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One optimizer step: its loss (micro-batch losses summed), its gradients, the parameters they were taken at."""

    loss: float
    grads: dict[str, Tensor]
    state: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Run:
    steps: list[Step]
    metrics: dict[str, float]  # token- (or row-) weighted over all micro-batches, as lit-align logs them
    exp: Experience | None = None


def lit_align_module(
    cls: type[OnlinePolicyGradient], fx: Fixture, temperature: float = 1.0, **options
) -> OnlinePolicyGradient:
    sampling = {"max_new_tokens": MAX_NEW_TOKENS, "temperature": temperature}
    options = {"num_generations": NUM_GENERATIONS, "sampling": sampling,
               "learning_rate": LEARNING_RATE, "rewards": {"reward_funcs": [length_reward]}, "max_grad_norm": None,
               "weight_decay": 0.0, **options}  # fmt: skip
    reference = copy.deepcopy(fx.reference) if options.get("beta", 0.0) > 0 else None
    return cls(policy=copy.deepcopy(fx.policy), reference_policy=reference, tokenizer=fx.tokenizer, **options)


def run_lit_align(module: OnlinePolicyGradient, fx: Fixture) -> Run:
    """One ``update`` on the fixed rollout, recording every optimizer step before it is taken."""
    module.generate_samples = lambda *args: fx.rollout
    steps, micro, seen = [], [], {}
    policy_loss, optimizer_step = module.policy_loss, module.step_manual

    def recording_loss(exp, rows, normalizer, stats):
        loss = policy_loss(exp, rows, normalizer, stats)
        micro.append(float(loss.detach()))
        seen["exp"] = exp
        return loss

    def recording_step():
        grads = {n.removeprefix("policy."): p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        state = {k: v.clone() for k, v in module.policy.state_dict().items()}
        steps.append(Step(sum(micro), grads, state))
        micro.clear()
        return optimizer_step()

    module.policy_loss, module.step_manual = recording_loss, recording_step
    metrics = module.update(fx.batch)
    return Run(steps, metrics, seen["exp"])


# -- TRL ------------------------------------------------------------------------------------------------------------
def trl_trainer(kind: str, fx: Fixture, tmp_path: Path, monkeypatch, accumulation: int, **config):
    """A TRL 1.16 ``GRPOTrainer`` or ``RLOOTrainer`` on copies of the fixture's models; one optimizer step per
    generation batch of all B rows (``steps_per_generation = gradient_accumulation_steps``)."""
    module = {"grpo": trl.trainer.grpo_trainer, "rloo": trl.trainer.rloo_trainer}[kind]
    # TRL builds its reference by loading the policy's name again (``create_model_from_path``); tiny-llama is built
    # in code, and the reference must be a DIFFERENT model: hand TRL a copy of ours.
    monkeypatch.setattr(module, "create_model_from_path", lambda *args, **kwargs: copy.deepcopy(fx.reference))
    rows = len(fx.rollout)
    config_cls, trainer_cls = (trl.GRPOConfig, trl.GRPOTrainer) if kind == "grpo" else (trl.RLOOConfig, trl.RLOOTrainer)
    args = config_cls(
        output_dir=str(tmp_path / f"trl-{kind}"), report_to="none", use_cpu=True, save_strategy="no",
        bf16=False,  # transformers 5 defaults to bf16 autocast where supported, CPU included
        per_device_train_batch_size=rows // accumulation, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation, num_generations=NUM_GENERATIONS, max_completion_length=MAX_NEW_TOKENS,
        **config,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = datasets.Dataset.from_list(ROWS)
        trainer = trainer_cls(model=copy.deepcopy(fx.policy), reward_funcs=[length_reward], args=args,
                              train_dataset=dataset, processing_class=fx.tokenizer)  # fmt: skip
    assert trainer.accelerator.mixed_precision == "no" and trainer.model.training
    trainer.current_gradient_accumulation_steps = accumulation  # what HF's training loop sets per optimizer step
    return trainer


def trl_generation_batch(trainer, fx: Fixture) -> dict:
    """TRL's own ``_generate_and_score_completions`` on the fixed completions (its generation backend replaced); with
    ``fx.rollout.sampler_logps``, they are the engine's log-probs its vLLM backend would return."""
    rollout = fx.rollout
    completions = [ids[:n].tolist() for ids, n in zip(rollout.completion_ids, rollout.lengths, strict=True)]
    engine = None
    if rollout.sampler_logps is not None:
        engine = [lp[:n].tolist() for lp, n in zip(rollout.sampler_logps, rollout.lengths, strict=True)]
    our_prompts = [ids[m.bool()].tolist() for ids, m in zip(rollout.prompt_input_ids, rollout.prompt_attention_mask,
                                                            strict=True)]  # fmt: skip

    def generate(prompt_ids, *args, **kwargs):
        assert [list(p) for p in prompt_ids] == our_prompts  # TRL's chat-templated prompt ids are ours
        return (completions, engine) if isinstance(trainer, trl.GRPOTrainer) else completions

    trainer._generate_single_turn = generate
    with torch.no_grad():
        out = trainer._generate_and_score_completions([row for row in ROWS for _ in range(NUM_GENERATIONS)])
    assert torch.equal(out["prompt_ids"], rollout.prompt_input_ids)  # same left padding
    assert torch.equal(out["prompt_mask"], rollout.prompt_attention_mask)
    assert torch.equal(out["completion_ids"], rollout.completion_ids)
    mask = rollout.completion_mask.bool()
    if trainer.mask_truncated_completions:  # TRL zeroes them in the mask itself (attention included)
        mask = mask & ~rollout.is_truncated.unsqueeze(1)
    assert torch.equal(out["completion_mask"].bool(), mask)
    trainer.rollout_metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}  # RLOO: kl
    trainer._metrics["train"].clear()
    return out


def run_trl(trainer, generation_batch: dict, states: list[dict[str, Tensor]], accumulation: int) -> Run:
    """One optimizer step per state (a pass over the generation batch), as HF's Trainer accumulates."""
    steps, weighted = [], {}
    for state in states:
        trainer.model.load_state_dict(state)
        trainer.model.zero_grad(set_to_none=True)
        total = 0.0
        for micro in split_tensor_dict(generation_batch, accumulation):
            logged = {name: len(values) for name, values in trainer._metrics["train"].items()}
            loss = trainer.compute_loss(trainer.model, micro)
            if not trainer.loss_is_scaled_for_ga:  # HF Trainer.training_step divides such losses
                loss = loss / trainer.current_gradient_accumulation_steps
            loss.backward()
            total += float(loss.detach())
            tokens, rows = float(micro["completion_mask"].sum()), float(len(micro["completion_mask"]))
            for name, values in trainer._metrics["train"].items():
                if len(values) > logged.get(name, 0):  # logged by this micro-batch: a token (RLOO clip: row) mean
                    weight = rows if isinstance(trainer, trl.RLOOTrainer) and name.startswith("clip_ratio") else tokens
                    weighted.setdefault(name, []).append((values[-1], weight))
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        steps.append(Step(total, grads))
    metrics = {name: sum(v * w for v, w in pairs) / sum(w for _, w in pairs) for name, pairs in weighted.items()}
    return Run(steps, {**trainer.rollout_metrics, **metrics})


# -- comparison -----------------------------------------------------------------------------------------------------
def deviations(ours: Run, theirs: Run) -> list[tuple[float, float]]:
    """Per optimizer step: |loss difference| and the largest |gradient difference| over every parameter entry."""
    assert len(ours.steps) == len(theirs.steps) > 0
    out = []
    for mine, other in zip(ours.steps, theirs.steps, strict=True):
        assert mine.grads.keys() == other.grads.keys() and len(mine.grads) > 0
        grad = max(float((mine.grads[n] - other.grads[n]).abs().max()) for n in mine.grads)
        out.append((abs(mine.loss - other.loss), grad))
    return out


def assert_parity(ours: Run, theirs: Run, metrics: tuple[str, ...] = ()) -> list[tuple[float, float]]:
    found = deviations(ours, theirs)
    for step, (loss, grad) in enumerate(found):
        assert loss <= ATOL and grad <= ATOL, f"step {step}: loss off by {loss:.2e}, gradient by {grad:.2e}"
    for name in metrics:
        assert abs(ours.metrics[name] - theirs.metrics[name]) <= ATOL, (name, ours.metrics[name], theirs.metrics[name])
    return found


def max_gradient(run: Run) -> float:
    """The largest gradient entry of a run (to show a compared gradient is not vacuously small)."""
    return max(float(g.abs().max()) for step in run.steps for g in step.grads.values())
