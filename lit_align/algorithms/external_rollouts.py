"""The seed interface of the online modules: rollouts made or consumed outside a Trainer.

``samples, log_probs = module.generate_samples(prompt_ids, prompt_mask)`` samples ``num_generations`` completions per
prompt and their sampling log-probs; ``module.update(batch)`` runs one RL step (rollout → reward → advantage →
updates, :meth:`~lit_align.algorithms.online.OnlinePolicyGradient.rl_step`) outside a Trainer, on a prompt batch or
on a rollout made elsewhere (:meth:`ExternalRolloutMixin.given_rollout`: another sampler, a vLLM server, a replay).

A mixin of :class:`~lit_align.algorithms.online.OnlinePolicyGradient`: it uses the host's ``sample``,
``rl_step``, ``num_generations``, ``tokenizer``, ``backend`` and ``policy``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_align.batches import PromptBatch
from lit_align.metrics import weighted_mean
from lit_align.rollout import Rollout, completion_mask_until_eos


class ExternalRolloutMixin:
    """``generate_samples``, ``given_rollout`` and ``update`` of the online modules (module docstring)."""

    def generate_samples(
        self, prompt_input_ids: Tensor, prompt_attention_mask: Tensor, with_logps: bool = True
    ) -> Rollout:
        """``num_generations`` sampled completions per prompt (prompt-major), without grad.

        ``samples, log_probs = module.generate_samples(prompt_ids, prompt_mask)`` unpacks the rollout into the
        sequences (prompt + completion) and the completion tokens' log-probs under the sampling policy (at the
        sampling temperature; one extra no-grad forward, skipped with ``with_logps=False``). Together with the
        rewards they make the batch :meth:`update` takes.
        """
        rollout = self.sample(prompt_input_ids, prompt_attention_mask, self.num_generations)
        if with_logps:
            rollout.logps = self._no_grad_logps(rollout, self.policy) * rollout.completion_mask
        return rollout

    def given_rollout(self, batch: dict[str, Any]) -> tuple[Rollout, Tensor, dict[str, Any]]:
        """A rollout made outside the module, as :meth:`update` takes it (the seed interface):

            ``input_ids``      (B, P + L) sequences: prompt (left-padded) then completion (right-padded),
                               B = prompts x ``num_generations``, prompt-major; what ``generate_samples`` returns
            ``rewards``        (B,) the task reward of each completion (NaN: unscorable)
            ``old_log_probs``  (B, L) the completion tokens' log-probs under the sampling policy
            ``attention_mask`` optional (B, P + L); by default the prompt starts at its first non-pad token and the
                               completion ends at its first EOS
        Any other column (e.g. ``prompt``, ``answer``: one entry per prompt) passes to ReMax's greedy baseline.
        """
        input_ids, logps = batch["input_ids"], batch["old_log_probs"].float()
        L = logps.shape[1]
        P = input_ids.shape[1] - L
        rewards = torch.as_tensor(batch["rewards"], dtype=torch.float, device=input_ids.device)
        if P < 1 or rewards.shape != (input_ids.shape[0],) or input_ids.shape[0] % self.num_generations:
            raise ValueError(
                f"update() with a rollout batch expects input_ids (B, P + L), old_log_probs (B, L) and rewards (B,) "
                f"with B a multiple of num_generations={self.num_generations}; got input_ids "
                f"{tuple(input_ids.shape)}, old_log_probs {tuple(logps.shape)}, rewards {tuple(rewards.shape)}"
            )
        prompt_ids, completion_ids = input_ids[:, :P], input_ids[:, P:]
        if "attention_mask" in batch:
            prompt_mask, completion_mask = batch["attention_mask"][:, :P], batch["attention_mask"][:, P:]
            is_truncated = completion_mask[:, -1].bool()
        else:
            pad = self.tokenizer.pad_token_id
            prompt_mask = (prompt_ids != pad).long().cummax(dim=1).values  # left padding: from the first real token
            completion_mask, is_truncated = completion_mask_until_eos(completion_ids, self.backend.eos_ids(self.policy))
        completion_mask = completion_mask.long()
        lengths = completion_mask.sum(1)
        rows = [ids[:n] for ids, n in zip(completion_ids.tolist(), lengths.tolist(), strict=True)]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts, lengths, is_truncated,
                          self.num_generations, logps * completion_mask)  # fmt: skip
        G = self.num_generations
        batch.setdefault("prompt_input_ids", prompt_ids[::G])
        batch.setdefault("prompt_attention_mask", prompt_mask[::G])
        scorable = ~rewards.isnan()
        values = {"reward": (rewards.nan_to_num(0.0), scorable.float()), "completions/mean_length": lengths.float(),
                  "completions/clipped_ratio": is_truncated.float()}  # fmt: skip
        return rollout, rewards.unsqueeze(1), values

    def update(self, batch: PromptBatch | dict[str, Any], total_steps: int = 1000) -> dict[str, float]:
        """One rollout and its ``num_iterations x num_minibatches`` optimizer steps outside a Trainer.

        ``batch`` is a prompt batch (the module samples and scores), or a rollout made outside: ``{"input_ids",
        "rewards", "old_log_probs"}`` (see :meth:`given_rollout`). The optimizer is the one of
        :meth:`~lit_align.algorithms.base.AlignmentModule.update`: the fit's, continued, after ``Trainer.fit``.
        """
        self.standalone_optimizer(total_steps)
        self.train()
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, values, _ = self.rl_step(batch)
        self._rollouts += 1
        return {"loss": float(loss), **{name: weighted_mean(value) for name, value in values.items()}}
