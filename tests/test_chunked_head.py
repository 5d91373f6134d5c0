"""The chunked LM head (``lit_align.models.lm_head``) against the plain path (full logits), values and gradients.

Every comparison runs one function twice on the same model and batch, ``chunked=True`` and
``chunked=False``, backpropagates the same random per-token (or per-sequence) weights through both,
and compares the outputs and every trainable parameter's gradient. ``CHUNK_LOGITS`` is shrunk so each
batch spans several chunks. A spy on ``lm_head.head_scores`` proves the chunked path really ran (a
silent fallback would make the comparison trivially true).

Models: tiny-llama (untied head), the same with tied input/output embeddings (as SmolLM2), a biased
head, LoRA (peft), gradient checkpointing, bf16 weights; fallbacks: Gemma-2's logit soft-capping, LoRA on
the head, and models that post-process their head's output where no config field says so. On CUDA
(``-m gpu``): Liger's kernel and ours against the plain path. DDP and FSDP2: ``tests/test_scaling.py``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from lit_align.algorithms.orpo import orpo_logps
from lit_align.algorithms.sft import token_stats
from lit_align.models import lm_head, logprobs
from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama, load_model
from lit_align.models.logprobs import IGNORE_INDEX, preference_logps, sequence_logps, token_logps
from tests.test_logprobs import naive_token_logps, random_batch

ATOL = 1e-5
CHUNK_ROWS = 7  # rows per chunk in these tests: every batch spans several chunks


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(lm_head, "CHUNK_LOGITS", CHUNK_ROWS * 259)
    monkeypatch.setattr(logprobs, "_logged_fallbacks", set())


@pytest.fixture
def head_calls(monkeypatch) -> list[int]:
    """Number of scored tokens of each chunked-head call."""
    calls, original = [], lm_head.head_scores

    def spy(hidden, *args, **kwargs):
        calls.append(hidden.shape[0])
        return original(hidden, *args, **kwargs)

    monkeypatch.setattr(lm_head, "head_scores", spy)
    return calls


def tiny(seed: int = 0, tie: bool = False) -> nn.Module:
    tokenizer = build_byte_tokenizer()
    model = build_tiny_llama(tokenizer, seed=seed)
    if tie:
        model.config.tie_word_embeddings = True
        torch.manual_seed(seed)
        model = type(model)(model.config)
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def lora(model: nn.Module, targets: list[str] | str = "all-linear") -> nn.Module:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(0)
    return peft.get_peft_model(model, config)


def upstream(shape, seed: int = 7) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def run(model, compute, chunked: bool):
    """(detached outputs, trainable parameters' gradients) of ``compute(chunked) -> (outputs, objective)``."""
    model.zero_grad(set_to_none=True)
    outputs, objective = compute(chunked)
    objective.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in outputs.items() if v is not None}, grads


def assert_paths_equal(model, compute, atol: float = ATOL, grad_atol: float = ATOL) -> dict[str, float]:
    """Chunked == plain within ``atol`` (outputs) and ``grad_atol`` (gradients); returns the max deviations."""
    (out_c, grad_c), (out_p, grad_p) = run(model, compute, True), run(model, compute, False)
    assert out_c.keys() == out_p.keys() and grad_c.keys() == grad_p.keys() and grad_c
    deviation = {"outputs": 0.0, "gradients": 0.0}
    for name in out_c:
        if out_c[name].dtype == torch.bool:
            assert torch.equal(out_c[name], out_p[name]), name
            continue
        torch.testing.assert_close(out_c[name], out_p[name], atol=atol, rtol=0, msg=name)
        deviation["outputs"] = max(deviation["outputs"], float((out_c[name] - out_p[name]).abs().max()))
    for name in grad_c:
        torch.testing.assert_close(grad_c[name], grad_p[name], atol=grad_atol, rtol=0, msg=name)
        deviation["gradients"] = max(deviation["gradients"], float((grad_c[name] - grad_p[name]).abs().max()))
    print(deviation)
    return deviation


def token_logps_compute(model, batch, temperature: float = 1.0):
    weights = upstream(batch["labels"].shape)

    def compute(chunked):
        out = token_logps(model, **batch, with_entropy=True, temperature=temperature, chunked=chunked)
        return out._asdict(), (out.logps * weights).sum()

    return compute


# -- the autograd function alone ------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
def test_head_scores_equal_a_full_softmax(temperature, bias):
    """logp, mean logit, entropy, hits and the gradients of h, W, b equal a full (N, V) log-softmax's."""
    g = torch.Generator().manual_seed(0)
    n, hidden_size, vocab = 23, 16, 259
    # logits of std 2, as a trained LM's (at std 4 the fp32 entropy lse − Σ p·z loses ~2e-5 to cancellation)
    h = (0.5 * torch.randn(n, hidden_size, generator=g)).requires_grad_()
    w = torch.randn(vocab, hidden_size, generator=g, requires_grad=True)
    b = torch.randn(vocab, generator=g, requires_grad=True) if bias else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[:5] = nn.functional.linear(h[:5], w, b).argmax(-1)  # some hits
    weights = torch.randn(n, generator=g)

    ours = lm_head.head_scores(h, w, b, targets, temperature, with_entropy=True, with_hits=True)
    (ours.logps * weights).sum().backward()
    got = [t.grad.clone() for t in (h, w, b) if t is not None]
    for t in (h, w, b):
        if t is not None:
            t.grad = None

    logits = nn.functional.linear(h, w, b)
    logp_all = torch.log_softmax(logits / temperature, -1)
    expected = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours.logps, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.mean_logits, logits.mean(-1).detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.entropy, -(logp_all.exp() * logp_all).sum(-1).detach(), atol=ATOL, rtol=0)
    assert torch.equal(ours.hits.bool(), logits.argmax(-1) == targets) and ours.hits[:5].all()
    for ours_grad, t in zip(got, [t for t in (h, w, b) if t is not None], strict=True):
        torch.testing.assert_close(ours_grad, t.grad, atol=ATOL, rtol=1e-5)


def test_no_scored_token_gives_zero_gradients_not_none():
    """DDP waits for a gradient of every used parameter: an empty chunk loop still returns zeros."""
    h = torch.zeros(0, 8, requires_grad=True)
    w = torch.randn(259, 8, requires_grad=True)
    out = lm_head.head_scores(h, w, None, torch.zeros(0, dtype=torch.long))
    out.logps.sum().backward()
    assert w.grad is not None and (w.grad == 0).all() and h.grad.shape == (0, 8)


# -- the library's functions on models, chunked vs plain ------------------------------------------
VARIANTS = ("untied", "tied", "biased_head", "lora", "gradient_checkpointing")


def variant(name: str) -> nn.Module:
    if name == "tied":
        return tiny(tie=True)
    model = tiny()
    if name == "biased_head":  # a linear head with a bias (GPT-J, Phi-2 have one)
        head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.data.copy_(model.lm_head.weight)
        nn.init.normal_(head.bias, std=0.5)
        model.lm_head = head
    elif name == "lora":
        model = lora(model)
    elif name == "gradient_checkpointing":
        model.gradient_checkpointing_enable()
        model.train()
    return model


@pytest.mark.parametrize("name", VARIANTS)
def test_token_logps_and_gradients(name, head_calls):
    model = variant(name)
    batch = random_batch(0, 256)
    layer_calls = []
    inner = model.get_base_model() if name == "lora" else model
    inner.model.layers[0].mlp.register_forward_pre_hook(lambda *_: layer_calls.append(1))  # inside the checkpoint
    assert_paths_equal(model, token_logps_compute(model, batch))
    assert head_calls, "the chunked path did not run"
    assert len(layer_calls) == (4 if name == "gradient_checkpointing" else 2)  # recomputed in backward
    if name == "lora":  # only the adapters train; the head is frozen and got no gradient
        assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["untied", "tied"])
def test_temperature(name, head_calls):
    """log-probs and entropies of softmax(logits / 0.7), in both paths and against the naive loop."""
    model = variant(name)
    batch = random_batch(1, 256)
    assert_paths_equal(model, token_logps_compute(model, batch, temperature=0.7))
    assert head_calls
    with torch.no_grad():
        ours = token_logps(model, **batch, temperature=0.7).logps
        scaled = _ScaledLogits(model, 1 / 0.7)
        expected, _ = naive_token_logps(scaled, **batch)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


class _ScaledLogits(nn.Module):
    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits * self.factor
        return out


@pytest.mark.parametrize("seed", [0, 3])
def test_sequence_and_preference_logps(seed, head_calls):
    model = tiny(tie=True)
    single = random_batch(seed, 256)
    counts = (single["labels"] != IGNORE_INDEX).sum(-1)
    weights = upstream(counts.shape)

    def sequence(chunked):
        stats = sequence_logps(model, **single, temperature=1.0, chunked=chunked)
        return vars(stats), (stats.mean * weights).sum() + stats.sum.sum()

    assert_paths_equal(model, sequence)
    chosen, rejected = random_batch(seed + 10, 256, max_len=30), random_batch(seed + 11, 256, max_len=12)
    pair = {f"chosen_{k}": v for k, v in chosen.items()} | {f"rejected_{k}": v for k, v in rejected.items()}

    def preference(chunked):
        c, r = preference_logps(model, pair, 256, chunked=chunked)
        outputs = {f"chosen_{k}": v for k, v in vars(c).items()} | {f"rejected_{k}": v for k, v in vars(r).items()}
        return outputs, (c.mean - r.mean).sigmoid().log().sum()

    assert_paths_equal(model, preference)
    assert head_calls


def test_sft_token_stats_loss_and_accuracy(head_calls):
    """Summed NLL, counts and top-1 hits; half the completion labels are set to the argmax so hits occur."""
    model = tiny()
    batch = random_batch(2, 256)
    with torch.no_grad():
        predicted = model(input_ids=batch["input_ids"]).logits.argmax(-1)  # predicted[:, t] scores token t + 1
    labels = batch["labels"].clone()
    completion = labels != IGNORE_INDEX
    completion[:, 0] = False
    flip = completion & (torch.arange(labels.shape[1]) % 2 == 0)
    labels[:, 1:][flip[:, 1:]] = predicted[:, :-1][flip[:, 1:]]
    batch["labels"] = labels

    def compute(chunked):
        stats = token_stats(model, **batch, chunked=chunked)
        return vars(stats), stats.nll.sum() / stats.num_tokens.sum()

    assert_paths_equal(model, compute)
    assert token_stats(model, **batch).num_correct.sum() >= flip.sum() > 0
    assert head_calls


@pytest.mark.parametrize("nll_on_prompt", [True, False])
def test_orpo_logps(nll_on_prompt, head_calls):
    model = tiny(tie=True)
    chosen, rejected = random_batch(4, 256, max_len=20), random_batch(5, 256, max_len=28)
    pair = {f"chosen_{k}": v for k, v in chosen.items()} | {f"rejected_{k}": v for k, v in rejected.items()}

    def compute(chunked):
        c, r, nll_sum, nll_tokens = orpo_logps(model, pair, 256, nll_on_prompt, chunked=chunked)
        outputs = {f"chosen_{k}": v for k, v in vars(c).items()} | {f"rejected_{k}": v for k, v in vars(r).items()}
        outputs |= {"nll_sum": nll_sum, "nll_tokens": nll_tokens}
        return outputs, nll_sum.sum() / nll_tokens.sum() - (c.mean - r.mean).sigmoid().log().mean()

    assert_paths_equal(model, compute)
    assert head_calls


def test_bf16_weights(head_calls):
    """bf16 weights (tied head): log-probs within 2e-3, gradients within 2 bf16 roundings of their scale.

    Both paths compute each row's logits with a bf16 matmul and take fp32 log-softmaxes, so log-probs can
    differ only where the BLAS blocks a chunk differently from the whole block (a bf16 rounding of a
    logit, 2^-9 relative; measured: 0). The head weight's gradient is one bf16 matmul over all tokens in
    the plain path and a fp32 sum of per-chunk bf16 matmuls here: they differ by bf16 roundings (2^-8
    relative to the largest entry; measured: half a unit in the last place of the tied embedding's largest
    entry, every other gradient bit-identical), and that difference reaches the layers' bf16 backward.
    """
    model = tiny(tie=True).to(torch.bfloat16)
    batch = random_batch(0, 256)
    compute = token_logps_compute(model, batch)
    _, grads = run(model, compute, False)
    scale = max(float(g.abs().max()) for g in grads.values())
    deviation = assert_paths_equal(model, compute, atol=2e-3, grad_atol=2 * 2**-8 * scale)
    assert head_calls
    assert deviation["gradients"] <= 2 * 2**-8 * scale


def test_never_a_full_logits_tensor_in_forward_or_backward(head_calls):
    """No tensor (other than a view) with the vocabulary as its last dimension has more than CHUNK_ROWS rows."""
    model = tiny()
    batch = random_batch(0, 256, batch=8, max_len=40)
    scored = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert scored > 10 * CHUNK_ROWS
    rows = {}
    for chunked in (True, False):
        with _VocabRows(model.config.vocab_size) as spy:
            sequence_logps(model, **batch, chunked=chunked).sum.sum().backward()
        rows[chunked] = spy.rows
        assert spy.backward_rows  # the mode saw the backward too
        model.zero_grad(set_to_none=True)
    assert rows[True] == CHUNK_ROWS and rows[False] >= scored
    assert head_calls


class _VocabRows(TorchDispatchMode):
    """Largest row count of a fresh (non-view) tensor of shape (..., V), split into forward and backward."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.rows, self.backward_rows = vocab, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # a view allocates nothing (W.t() is (H, V))
            return out
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
                if torch._C._current_graph_task_id() != -1:
                    self.backward_rows = max(self.backward_rows, t.numel() // self.vocab)
        return out


# -- fallbacks ---------------------------------------------------------------------------------------
def assert_falls_back(model, caplog, reason: str, batch=None) -> None:
    """The default (chunked) call logs ``reason`` once and gives exactly the plain path's values and gradients."""
    batch = batch or random_batch(0, 256)
    compute = token_logps_compute(model, batch)
    with caplog.at_level(logging.WARNING, logger="lit_align.models.logprobs"):
        (out_default, grad_default), (out_plain, grad_plain) = run(model, compute, True), run(model, compute, False)
        run(model, compute, True)
    messages = [r.getMessage() for r in caplog.records if "plain path" in r.getMessage()]
    assert len(messages) == 1 and reason in messages[0], messages
    for name in out_plain:
        torch.testing.assert_close(out_default[name], out_plain[name], atol=0, rtol=0)
    for name in grad_plain:
        torch.testing.assert_close(grad_default[name], grad_plain[name], atol=0, rtol=0)


def test_gemma2_soft_capping_falls_back(caplog, head_calls):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=30.0,
                          pad_token_id=256)  # fmt: skip
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    assert_falls_back(model, caplog, "final_logit_softcapping")
    assert not head_calls
    batch = random_batch(1, 256)
    with torch.no_grad():
        expected, _ = naive_token_logps(model, **batch)
        torch.testing.assert_close(token_logps(model, **batch).logps, expected, atol=ATOL, rtol=0)


def test_lora_on_the_head_falls_back(caplog, head_calls):
    model = lora(tiny(), ["q_proj", "v_proj", "lm_head"])
    assert_falls_back(model, caplog, "not a plain nn.Linear")
    assert not head_calls


class _DoubledLogits(nn.Module):
    """A causal LM that scales its head's output in its own forward, with no config field saying so."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.inner, self.in_place = tiny(), in_place

    def get_output_embeddings(self):
        return self.inner.lm_head

    def forward(self, input_ids, attention_mask=None, use_cache=None, logits_to_keep=0):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)
        if self.in_place:
            out.logits.mul_(2)
        else:
            out.logits = out.logits * 2
        return out


@pytest.mark.parametrize("in_place", [False, True])
def test_post_processed_logits_are_detected_at_run_time(caplog, head_calls, in_place):
    """The returned .logits must be the ScoringHead's output, untouched; else plain, and remembered."""
    model = _DoubledLogits(in_place)
    assert lm_head.unsupported_reason(model) is None
    assert_falls_back(model, caplog, "post-processes its head's output")
    assert len(head_calls) == 1  # tried once; the decision is kept for this head


class _LigerStandIn:
    """``LigerFusedLinearCrossEntropyFunction.apply``'s contract in plain torch (reduction="none" only)."""

    @staticmethod
    def apply(x, weight, target, bias, *options):
        (ce_weight, ignore_index, lse_square_scale, label_smoothing, reduction, softcap, return_z_loss, _accum,
         use_token_scaling, return_token_accuracy, return_predicted_tokens) = options  # fmt: skip
        assert reduction == "none" and ce_weight is None and softcap is None and not use_token_scaling
        assert lse_square_scale == label_smoothing == 0.0 and not return_z_loss and not return_token_accuracy
        logits = nn.functional.linear(x, weight, bias).float()
        loss = nn.functional.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
        return loss, None, None, logits.argmax(-1) if return_predicted_tokens else None


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_liger_glue_on_a_stand_in(temperature):
    """What ``_liger_scores`` makes of Liger's outputs (sign, temperature, mean logit, hits) = our kernel's."""
    g = torch.Generator().manual_seed(1)
    h = (0.5 * torch.randn(19, 16, generator=g)).requires_grad_()
    w = torch.randn(259, 16, generator=g, requires_grad=True)
    b = torch.randn(259, generator=g, requires_grad=True)
    targets = torch.randint(0, 259, (19,), generator=g)
    targets[:4] = nn.functional.linear(h[:4], w, b).argmax(-1)
    weights = torch.randn(19, generator=g)
    results = []
    for scores in (
        lambda: lm_head._liger_scores(_LigerStandIn, h, w, b, targets, temperature, True),
        lambda: lm_head.head_scores(h, w, b, targets, temperature, with_hits=True),
    ):
        out = scores()
        (out.logps * weights).sum().backward()
        results.append((out, [t.grad.clone() for t in (h, w, b)]))
        h.grad = w.grad = b.grad = None
    (liger, liger_grads), (ours, our_grads) = results
    for field in ("logps", "mean_logits", "hits"):
        torch.testing.assert_close(getattr(liger, field), getattr(ours, field), atol=ATOL, rtol=0, msg=field)
    assert liger.entropy is None and liger.hits[:4].all()
    for a, b_ in zip(liger_grads, our_grads, strict=True):
        torch.testing.assert_close(a, b_, atol=ATOL, rtol=1e-5)


# -- CUDA: Liger's fused linear cross-entropy (unverified on this project's CPU machines) ---------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_entropy", [False, True], ids=["liger", "own_kernel"])
def test_cuda_kernels_match_plain(dtype, with_entropy, monkeypatch):
    """On CUDA, without entropy: Liger's kernel (when installed); with entropy: our kernel. Both = plain path."""
    liger_calls, real = [], lm_head._liger_scores
    monkeypatch.setattr(lm_head, "_liger_scores", lambda *args: liger_calls.append(1) or real(*args))
    model = tiny(tie=True).cuda().to(dtype)
    batch = {k: v.cuda() for k, v in random_batch(0, 256).items()}
    weights = upstream(batch["labels"].shape).cuda()

    def compute(chunked):
        out = logprobs.completion_scores(
            model, **batch, with_entropy=with_entropy, with_accuracy=True, temperature=0.8, chunked=chunked
        )
        return out._asdict(), (out.logps * weights).sum()

    if dtype == torch.float32:
        assert_paths_equal(model, compute)
    else:  # bounds of test_bf16_weights
        scale = max(float(g.abs().max()) for g in run(model, compute, False)[1].values())
        assert_paths_equal(model, compute, atol=2e-3, grad_atol=2 * 2**-8 * scale)
    if not with_entropy and lm_head._liger_function() is not None:
        assert liger_calls
    else:
        assert not liger_calls


def test_chunked_path_under_inference_mode_equals_plain():
    """Trainer.validate runs under torch.inference_mode, whose tensors have no version counter."""
    model, _ = load_model("tiny-llama")
    ids = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.inference_mode():
        chunked = token_logps(model, ids, torch.ones_like(ids), labels, chunked=True).logps
    with torch.no_grad():
        plain = token_logps(model, ids, torch.ones_like(ids), labels, chunked=False).logps
    torch.testing.assert_close(chunked, plain, atol=1e-6, rtol=0)
