"""``lit_align.models.logprobs`` against a naive per-token reference on tiny-llama.

The reference runs the model over the full sequence, takes ``log_softmax`` of every position's
logits in fp32, and loops over positions: token t (labels[b, t] != -100, t >= 1) is scored by the
logits at t - 1. Batches are right-padded with random prompt/completion boundaries, one row with an
empty completion (all labels -100) in every batch. The value and gradient checks run on both paths,
the chunked LM head (default) and the plain one (``chunked=False``); ``tests/test_chunked_head.py``
compares the two directly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_align.models.loading import load_model
from lit_align.models.logprobs import IGNORE_INDEX, preference_logps, selective_log_softmax, sequence_logps, token_logps

ATOL = 1e-5
SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def model():
    model, _ = load_model("tiny-llama", seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def pad_id() -> int:
    _, tokenizer = load_model("tiny-llama", seed=0)
    return tokenizer.pad_token_id


def random_batch(seed: int, pad_id: int, batch: int = 4, max_len: int = 24) -> dict[str, torch.Tensor]:
    """Right-padded rows, prompt length >= 1 drawn at random; row 1 has no completion at all."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, max_len + 1, (batch,), generator=g).tolist()
    width = max(lengths)
    input_ids = torch.full((batch, width), pad_id)
    attention_mask = torch.zeros(batch, width, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX)
    for b, n in enumerate(lengths):
        prompt = n if b == 1 else int(torch.randint(1, n, (1,), generator=g))
        ids = torch.randint(0, 256, (n,), generator=g)
        input_ids[b, :n], attention_mask[b, :n] = ids, 1
        labels[b, prompt:n] = ids[prompt:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def naive_token_logps(model: nn.Module, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) fp32 log-probs aligned with labels and the vocab-mean logit of each scored position."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    logps = torch.log_softmax(logits, dim=-1)
    rows_logps, rows_logits = [], []
    for b in range(labels.shape[0]):
        per_token, per_logit = [], []
        for t in range(labels.shape[1]):
            scored = t >= 1 and labels[b, t] != IGNORE_INDEX
            per_token.append(logps[b, t - 1, labels[b, t]] if scored else logps.new_zeros(()))
            per_logit.append(logits[b, t - 1].mean().detach() if scored else logps.new_zeros(()))
        rows_logps.append(torch.stack(per_token))
        rows_logits.append(torch.stack(per_logit))
    return torch.stack(rows_logps), torch.stack(rows_logits)


class PlainForward(nn.Module):
    """A model whose forward has no ``logits_to_keep``: token_logps must fall back to full logits."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


class RecordKeep(PlainForward):
    """Accepts ``logits_to_keep`` and records what it was asked for."""

    def forward(self, input_ids, attention_mask, use_cache=None, logits_to_keep=0):
        self.asked = logits_to_keep
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "plain"])
@pytest.mark.parametrize("seed", SEEDS)
def test_token_logps_match_naive_loop(model, pad_id, seed, chunked):
    batch = random_batch(seed, pad_id)
    with torch.no_grad():
        logps, mask, mean_logits, _ = token_logps(model, **batch, chunked=chunked)
        expected, expected_logits = naive_token_logps(model, **batch)
    expected_mask = batch["labels"] != IGNORE_INDEX
    assert torch.equal(mask, expected_mask)  # prompt lengths >= 1, so column 0 is never a completion token
    torch.testing.assert_close(logps, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(mean_logits, expected_logits, atol=ATOL, rtol=0)
    assert (logps[~mask] == 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_sequence_logps_match_naive_and_empty_completion_is_zero(model, pad_id, seed):
    batch = random_batch(seed, pad_id)
    with torch.no_grad():
        stats = sequence_logps(model, **batch)
        expected, expected_logits = naive_token_logps(model, **batch)
    counts = (batch["labels"] != IGNORE_INDEX).sum(-1)
    torch.testing.assert_close(stats.sum, expected.sum(-1), atol=ATOL, rtol=0)
    torch.testing.assert_close(stats.num_tokens, counts)
    nonempty = counts > 0
    torch.testing.assert_close(stats.mean[nonempty], expected.sum(-1)[nonempty] / counts[nonempty], atol=ATOL, rtol=0)
    torch.testing.assert_close(stats.logits_sum, expected_logits.sum(-1), atol=ATOL, rtol=0)
    assert counts[1] == 0 and stats.sum[1] == 0 and stats.mean[1] == 0 and stats.logits_sum[1] == 0
    assert all(torch.isfinite(v).all() for v in (stats.sum, stats.mean, stats.logits_sum))


def test_position_zero_is_never_scored(model, pad_id):
    """A row with an empty prompt: its first token has no context, so it is masked, as in the naive loop."""
    batch = random_batch(0, pad_id)
    batch["labels"][0] = torch.where(batch["attention_mask"][0].bool(), batch["input_ids"][0], IGNORE_INDEX)
    with torch.no_grad():
        logps, mask, _, _ = token_logps(model, **batch)
        expected, _ = naive_token_logps(model, **batch)
    assert not mask[:, 0].any() and mask[0, 1]
    torch.testing.assert_close(logps, expected, atol=ATOL, rtol=0)


def test_all_empty_batch_gives_zeros_and_a_finite_gradient(model, pad_id):
    batch = random_batch(0, pad_id)
    batch["labels"].fill_(IGNORE_INDEX)
    stats = sequence_logps(model, **batch)
    assert (stats.sum == 0).all() and (stats.mean == 0).all() and (stats.num_tokens == 0).all()
    stats.mean.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() and (g == 0).all() for g in grads)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "plain"])
@pytest.mark.parametrize("seed", (0, 1))
def test_gradient_matches_naive(model, pad_id, seed, chunked):
    """d(Σ mean log-probs)/dθ through logits_to_keep and either path equals the naive gradient."""
    batch = random_batch(seed, pad_id)
    counts = (batch["labels"] != IGNORE_INDEX).sum(-1).clamp(min=1)
    sequence_logps(model, **batch, chunked=chunked).mean.sum().backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    expected, _ = naive_token_logps(model, **batch)
    (expected.sum(-1) / counts).sum().backward()
    for got, want in zip(ours, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("seed", (0, 2))
def test_logits_to_keep_path_equals_full_logits_path(model, pad_id, seed):
    batch = random_batch(seed, pad_id)
    recorder, plain = RecordKeep(model), PlainForward(model)
    with torch.no_grad():
        kept = token_logps(recorder, **batch)
        full = token_logps(plain, **batch)
    first_scored = int((batch["labels"] != IGNORE_INDEX).any(0).nonzero()[0])
    assert recorder.asked == batch["input_ids"].shape[1] - first_scored + 1 < batch["input_ids"].shape[1]
    for a, b in zip(kept, full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_concatenated_pair_equals_two_forwards(model, pad_id):
    """One forward over [chosen; rejected] (padded to one width) = separate forwards, chosen wider or not."""
    chosen, rejected = random_batch(5, pad_id, max_len=30), random_batch(6, pad_id, max_len=12)
    batch = {f"chosen_{k}": v for k, v in chosen.items()} | {f"rejected_{k}": v for k, v in rejected.items()}
    assert batch["chosen_input_ids"].shape[1] != batch["rejected_input_ids"].shape[1]
    with torch.no_grad():
        joint_chosen, joint_rejected = preference_logps(model, batch, pad_id)
        for joint, side in ((joint_chosen, chosen), (joint_rejected, rejected)):
            alone = sequence_logps(model, **side)
            for field in ("sum", "mean", "num_tokens", "logits_sum"):
                torch.testing.assert_close(getattr(joint, field), getattr(alone, field), atol=ATOL, rtol=0)


def test_bf16_selective_log_softmax_values_and_gradient():
    """bf16 logits with grad: fp32 values, and a gradient equal to the fp32 naive one up to bf16 rounding.

    The fp32 upcast of each chunk is recomputed in backward, so no fp32 (rows, V) block is saved.
    """
    g = torch.Generator().manual_seed(0)
    vocab = 259
    logits = (3 * torch.randn(3, 7, vocab, generator=g)).bfloat16().requires_grad_()
    targets = torch.randint(0, vocab, (3, 7), generator=g)
    weights = torch.randn(3, 7, generator=g)
    saved = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ours = selective_log_softmax(logits, targets, chunk_rows=4)
    assert ours.dtype == torch.float32
    assert not [s for s in saved if s[0] == torch.float32 and s[1][-1] == vocab], saved
    (ours * weights).sum().backward()

    reference = logits.detach().float().requires_grad_()
    expected = torch.log_softmax(reference, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), reference.grad, atol=1e-2, rtol=1.6e-2)


def test_entropy_matches_full_softmax():
    """H = -Σ_v p_v log p_v of the distribution that scores each completion token, 0 elsewhere."""
    model, _ = load_model("tiny-llama", seed=3)
    ids = torch.randint(0, 200, (2, 9))
    labels = ids.clone()
    labels[:, :4] = -100
    out = token_logps(model, ids, torch.ones_like(ids), labels, with_entropy=True)
    logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    full = -(logp.exp() * logp).sum(-1)  # full[:, t] is the distribution that predicts token t + 1
    expected = torch.zeros(2, 9)
    expected[:, 4:] = full[:, 3:8]
    assert torch.allclose(out.entropy, expected, atol=1e-5)
    assert token_logps(model, ids, torch.ones_like(ids), labels).entropy is None
