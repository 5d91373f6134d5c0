"""Odds Ratio Preference Optimization (Hong et al. 2024, https://arxiv.org/abs/2403.07691), Eqs. 6–7.

loss = NLL(y_w | x) − λ·log σ(log odds_θ(y_w|x) − log odds_θ(y_l|x)),   odds_θ(y|x) = P / (1 − P)

with P = exp(mean log π(y|x)) the token-mean likelihood. Monolithic: SFT and preference alignment in
one stage, no reference model. The NLL term follows TRL's ORPOTrainer (see :func:`orpo_logps`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lit_align.batches import IGNORE_INDEX, PreferenceBatch
from lit_align.hparams import check_beta
from lit_align.losses import orpo_loss
from lit_align.metrics import PREFERENCE_METRICS, Value, preference_values
from lit_align.models.logprobs import SequenceLogps, concatenate_pair, pair_groups, token_logps
from lit_align.training.offline import OfflineModule


class ORPO(OfflineModule):
    """ORPO as a LightningModule (reference-free).

    The NLL term, as TRL 1.16 ``ORPOTrainer`` computes it: cross-entropy over the chosen rows' FULL
    prompt + completion (every attention-mask position after the first; the prompt is not masked),
    averaged over all those tokens of the batch. The paper's Eq. 6 writes the NLL of the response
    only; ``nll_on_prompt=False`` gives that. The odds ratio always uses token-mean completion
    log-probs.

    Logged like TRL's ORPOTrainer: ``rewards/*`` (λ·mean log-prob), ``logps/*`` (token-MEAN completion
    log-probs, as TRL logs them), ``logits/*`` (vocab-mean logit over completion tokens, DPOTrainer's
    definition; TRL's ORPO averages over every position incl. prompt and padding), ``nll_loss``,
    ``log_odds_ratio`` (log σ(log odds ratio)) and ``log_odds_chosen`` (the log odds ratio).

    The shared options (policy, optimizer, LoRA, ...) are :class:`AlignmentModule`'s.

    Args:
        beta: λ, weight of the odds-ratio term (TRL's name ``beta``; the paper uses 0.1).
        nll_on_prompt: include the prompt tokens in the chosen NLL (TRL's ORPOTrainer, default) or
            only the completion tokens (the paper's equation).
    """

    METRICS = (*PREFERENCE_METRICS, "nll_loss", "log_odds_ratio", "log_odds_chosen")

    def __init__(
        self,
        *,
        beta: float = 0.1,
        nll_on_prompt: bool = True,
        learning_rate: float = 5e-6,
        **kwargs: Any,
    ) -> None:
        check_beta(beta, "λ (for the NLL alone, without the odds-ratio term, use SFT)")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta = beta
        self.nll_on_prompt = nll_on_prompt

    def forward(
        self, batch: PreferenceBatch
    ) -> tuple[SequenceLogps, SequenceLogps, torch.Tensor, torch.Tensor]:
        """(chosen, rejected) completion log-probs and the chosen rows' NLL sums and token counts."""
        return orpo_logps(self.policy, batch, self.pad_token_id, self.nll_on_prompt)

    def compute_loss(self, batch: PreferenceBatch) -> tuple[torch.Tensor, dict[str, Value]]:
        chosen, rejected, nll_sum, nll_tokens = self(batch)
        losses, chosen_rewards, rejected_rewards, log_odds_ratio, log_odds = orpo_loss(
            chosen.mean, rejected.mean, beta=self.beta
        )
        nll = nll_sum.sum() / nll_tokens.sum().clamp(min=1)  # token mean over the batch
        values = preference_values(chosen_rewards, rejected_rewards, chosen, rejected)
        values["logps/chosen"] = chosen.mean.detach()
        values["logps/rejected"] = rejected.mean.detach()
        values["nll_loss"] = ((nll_sum / nll_tokens.clamp(min=1)).detach(), nll_tokens)
        values["log_odds_ratio"] = log_odds_ratio
        values["log_odds_chosen"] = log_odds
        return nll + losses.mean(), values


def orpo_logps(
    model: nn.Module,
    batch: PreferenceBatch,
    pad_token_id: int,
    nll_on_prompt: bool = True,
    chunked: bool | None = None,
) -> tuple[SequenceLogps, SequenceLogps, torch.Tensor, torch.Tensor]:
    """One forward over chosen + rejected giving both ORPO needs.

    Returns ``(chosen, rejected, nll_sum, nll_tokens)``: completion statistics per side, and per
    chosen row the summed NLL and its token count (B,). With ``nll_on_prompt`` the chosen rows are
    scored on every attention-mask position (logits for the whole sequence are then computed, where
    completion-only scoring keeps only the completion's logits). ``chunked``: see :func:`token_logps`.
    """
    joint = concatenate_pair(batch, pad_token_id)
    n = batch["chosen_input_ids"].shape[0]
    labels = joint["labels"]
    completion = labels != IGNORE_INDEX
    completion[:, 0] = False  # position 0 has no context to score it (token_logps does the same)
    if nll_on_prompt:
        labels = labels.clone()
        chosen_mask = joint["attention_mask"][:n].bool()
        labels[:n] = torch.where(chosen_mask, joint["input_ids"][:n], IGNORE_INDEX)
    logps, scored, mean_logits, _ = token_logps(
        model, joint["input_ids"], joint["attention_mask"], labels, chunked=chunked, groups=pair_groups(n)
    )
    num_tokens = completion.sum(-1)
    total = (logps * completion).sum(-1)
    stats = SequenceLogps(total, total / num_tokens.clamp(min=1), num_tokens, (mean_logits * completion).sum(-1))
    chosen, rejected = stats.split(n)
    nll_sum = -(logps[:n] * scored[:n]).sum(-1)
    return chosen, rejected, nll_sum, scored[:n].sum(-1)
