"""Distillation's math: the divergences by hand, the chunked passes against full logits, and TRL 1.16's
``DistillationTrainer._compute_loss`` and GKD's ``generalized_jsd_loss`` on fixed completions."""

from __future__ import annotations

import functools
import inspect
import math
import types

import pytest
import torch

from lit_align.losses.distillation import generalized_jsd, kl, renormalized, sampled_reverse_kl, top_k_logps
from lit_align.models import lm_head, packing, shared_prefix
from lit_align.models.divergence import student_divergence, teacher_pass
from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama

# -- the equations by hand ----------------------------------------------------------------------------------------


def test_divergences_by_hand_on_two_tokens():
    """p_s = (0.5, 0.5), p_t = (0.9, 0.1).
    forward KL(p_t ‖ p_s) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.9·0.587787 − 0.1·1.609438 = 0.368064
    reverse KL(p_s ‖ p_t) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = −0.293893 + 0.804719 = 0.510826
    β = 0.5: m = (0.7, 0.3); KL(p_t ‖ m) = 0.9 ln(9/7) + 0.1 ln(1/3) = 0.226183 − 0.109861 = 0.116322;
    KL(p_s ‖ m) = 0.5 ln(5/7) + 0.5 ln(5/3) = −0.168236 + 0.255413 = 0.087177; JSD = (0.116322 + 0.087177)/2 = 0.101750
    """
    student, teacher = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.9, 0.1]).log()
    assert generalized_jsd(student, teacher, 0.0).item() == pytest.approx(0.368064, abs=1e-6)
    assert generalized_jsd(student, teacher, 1.0).item() == pytest.approx(0.510826, abs=1e-6)
    assert generalized_jsd(student, teacher, 0.5).item() == pytest.approx(0.101750, abs=1e-6)
    # β = 0.25: m = 0.25 p_t + 0.75 p_s = (0.6, 0.4)
    m = torch.tensor([0.6, 0.4])
    expected = 0.25 * (0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)) + 0.75 * (
        0.5 * math.log(0.5 / 0.6) + 0.5 * math.log(0.5 / 0.4))  # fmt: skip
    assert generalized_jsd(student, teacher, 0.25).item() == pytest.approx(expected, abs=1e-6)
    assert kl(teacher, m.log()).item() == pytest.approx(0.9 * math.log(1.5) + 0.1 * math.log(0.25), abs=1e-6)


def test_limit_cases():
    """Equal distributions: 0 for every β; JSD_β ≤ ln 2 · ... bounded by the KLs; a token p gives no mass counts 0."""
    p = torch.log_softmax(torch.randn(3, 7), -1)
    for beta in (0.0, 0.3, 0.5, 1.0):
        assert torch.allclose(generalized_jsd(p, p, beta), torch.zeros(3), atol=1e-6)
    disjoint_s, disjoint_t = torch.tensor([1.0, 0.0]).log(), torch.tensor([0.0, 1.0]).log()
    assert generalized_jsd(disjoint_s, disjoint_t, 0.5).item() == pytest.approx(math.log(2), abs=1e-6)  # JSD's max
    assert kl(torch.tensor([1.0, 0.0]).log(), torch.tensor([0.5, 0.5]).log()).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="beta must be in"):
        generalized_jsd(p, p, 1.5)


def test_top_k_renormalizes_both_on_the_teachers_tokens():
    """Teacher (0.6, 0.3, 0.1), student (0.2, 0.2, 0.6), k = 2 -> the first two tokens: teacher (2/3, 1/3), student
    (1/2, 1/2); forward KL = 2/3 ln(4/3) + 1/3 ln(2/3) = 0.191788 − 0.135155 = 0.056633."""
    teacher, student = torch.tensor([0.6, 0.3, 0.1]).log(), torch.tensor([0.2, 0.2, 0.6]).log()
    ids = teacher.topk(2).indices
    s, t = top_k_logps(student, teacher, ids)
    assert torch.allclose(s.exp(), torch.tensor([0.5, 0.5])) and torch.allclose(t.exp(), torch.tensor([2, 1]) / 3)
    assert generalized_jsd(s, t, 0.0).item() == pytest.approx(0.056633, abs=1e-6)
    assert torch.allclose(renormalized(torch.tensor([0.1, 0.3]).log()).exp(), torch.tensor([0.25, 0.75]))


def test_sampled_reverse_kl_is_k1_and_its_mean_estimates_the_kl():
    """E_{y ~ p_s}[log p_s(y) − log p_t(y)] = KL(p_s ‖ p_t): the mean over many samples approaches it."""
    torch.manual_seed(0)
    s, t = torch.log_softmax(torch.randn(5), -1), torch.log_softmax(torch.randn(5), -1)
    assert sampled_reverse_kl(torch.tensor([-1.0]), torch.tensor([-3.0])).item() == 2.0
    draws = torch.multinomial(s.exp(), 200_000, replacement=True)
    estimate = sampled_reverse_kl(s[draws], t[draws]).mean()
    assert estimate.item() == pytest.approx(kl(s, t).item(), abs=0.01)


# -- the chunked passes against full logits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    tokenizer = build_byte_tokenizer()
    return build_tiny_llama(tokenizer, seed=0), build_tiny_llama(tokenizer, seed=1), tokenizer


def fixed_batch(left_padding: bool = True, B: int = 4, P: int = 5, L: int = 7, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 250, (B, P + L), generator=generator)
    attention = torch.ones_like(ids)
    if left_padding:
        attention[0, :2] = 0
    attention[1, P + 3 :] = 0  # a short completion
    attention[2, P + 5 :] = 0
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :P] = -100
    return ids, attention, labels, P


def full_logits_divergence(student, teacher, ids, attention, P, beta, temperature, top_k=None):
    """(B, L) divergence and the student's log-probs from the models' whole logits (the reference computation)."""
    student_logps = torch.log_softmax(student(input_ids=ids, attention_mask=attention).logits[:, P - 1 : -1].float()
                                      / temperature, -1)  # fmt: skip
    with torch.no_grad():
        teacher_logps = torch.log_softmax(teacher(input_ids=ids, attention_mask=attention).logits[:, P - 1 : -1].float()
                                          / temperature, -1)  # fmt: skip
    if top_k is None:
        divergence = generalized_jsd(student_logps, teacher_logps, beta)
    else:
        divergence = generalized_jsd(*top_k_logps(student_logps, teacher_logps, teacher_logps.topk(top_k).indices),
                                     beta)  # fmt: skip
    return divergence, student_logps.gather(-1, ids[:, P:, None]).squeeze(-1)


def param_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("path", ["padded", "padding_free", "shared_prefix", "one_row_chunks"])
@pytest.mark.parametrize("beta,top_k", [(0.0, None), (0.5, None), (1.0, None), (0.5, 3)])
def test_chunked_passes_equal_the_full_logits(models, path, beta, top_k, monkeypatch):
    """The divergence, the sampled tokens' log-probs and every gradient of the chunked passes equal those of the
    whole (tokens x vocabulary) logits, on each path (padded, packed, shared prefixes, one token per chunk)."""
    student, teacher, _ = models
    ids, attention, labels, P = fixed_batch(left_padding=path == "padded")
    groups = [[0, 1], [2, 3]] if path == "shared_prefix" else None
    if path == "shared_prefix":  # rows of a group share their prompt
        ids[1, :P], ids[3, :P] = ids[0, :P], ids[2, :P]
    if path == "one_row_chunks":
        monkeypatch.setattr(lm_head, "CHUNK_LOGITS", 1)
    for model in (student, teacher):
        packing.set_padding_free(model, path in ("padding_free", "shared_prefix"))
        shared_prefix.set_shared_prefix(model, path == "shared_prefix")
    try:
        mask = (labels[:, P:] != -100).float()
        student.zero_grad()
        tokens = teacher_pass(teacher, ids, attention, labels, P, 0.7, top_k, groups)
        divergence, logps, entropy = student_divergence(student, ids, attention, labels, P, tokens, beta, 0.7, groups)
        ((divergence * mask).sum() + 0.1 * (logps * mask).sum()).backward()
        ours = param_grads(student)
        student.zero_grad()
        expected, expected_logps = full_logits_divergence(student, teacher, ids, attention, P, beta, 0.7, top_k)
        ((expected * mask).sum() + 0.1 * (expected_logps * mask).sum()).backward()
        reference = param_grads(student)
    finally:
        for model in (student, teacher):
            packing.set_padding_free(model, False)
            shared_prefix.set_shared_prefix(model, False)
    assert torch.allclose(divergence * mask, expected.detach() * mask, atol=1e-6)
    assert torch.allclose(logps * mask, expected_logps.detach() * mask, atol=1e-5)
    assert (entropy * mask).gt(0).sum() == mask.sum()  # a positive entropy at every completion token
    assert torch.allclose(tokens.logps * mask, teacher_logps_of(teacher, ids, attention, P, 0.7) * mask, atol=1e-5)
    assert ours.keys() == reference.keys()
    for name, grad in ours.items():
        assert torch.allclose(grad, reference[name], atol=1e-6), name


def teacher_logps_of(teacher, ids, attention, P, temperature):
    with torch.no_grad():
        logps = torch.log_softmax(teacher(input_ids=ids, attention_mask=attention).logits[:, P - 1 : -1] / temperature,
                                  -1)  # fmt: skip
    return logps.gather(-1, ids[:, P:, None]).squeeze(-1)


def test_a_head_the_swap_cannot_reproduce_falls_back_to_full_logits(models, caplog):
    """A model whose config post-processes logits: the passes run on its full logits (logged) and still agree."""
    student, teacher, _ = models
    ids, attention, labels, P = fixed_batch()
    mask = (labels[:, P:] != -100).float()
    teacher.config.logit_scale = 1.0  # a field the chunked head cannot reproduce, set to a no-op value
    try:
        with caplog.at_level("WARNING"):
            tokens = teacher_pass(teacher, ids, attention, labels, P, 1.0)
        divergence, _, _ = student_divergence(student, ids, attention, labels, P, tokens, 0.5, 1.0)
    finally:
        del teacher.config.logit_scale
    assert tokens.logits is not None and tokens.hidden is None
    assert "full logits" in caplog.text
    expected, _ = full_logits_divergence(student, teacher, ids, attention, P, 0.5, 1.0)
    assert torch.allclose(divergence * mask, expected.detach() * mask, atol=1e-6)


# -- TRL 1.16 ------------------------------------------------------------------------------------------------------


def trl_compute_loss(student, teacher, prompt_ids, prompt_mask, completion_ids, completion_mask, beta, temperature,
                     tool_mask=None):  # fmt: skip
    """TRL 1.16's ``DistillationTrainer._compute_loss`` on a stand-in for the trainer holding what it reads."""
    from trl.trainer.distillation_trainer import DistillationTrainer

    trainer = types.SimpleNamespace(
        teacher_model=teacher, beta=beta, temperature=temperature, _is_vlm=False,
        model_kwarg_keys=set(inspect.signature(student.forward).parameters),
        accelerator=types.SimpleNamespace(unwrap_model=lambda model: model, is_main_process=True),
        _forward_redirection=lambda wrapper, unwrapped, function, *args, **kwargs: function(*args, **kwargs),
    )  # fmt: skip
    trainer._get_last_hidden_state = functools.partial(DistillationTrainer._get_last_hidden_state, trainer)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask}  # fmt: skip
    if tool_mask is not None:
        inputs["tool_mask"] = tool_mask
    loss, _, _ = DistillationTrainer._compute_loss(trainer, student, inputs, num_items_in_batch=None)
    return loss


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("with_tool_mask", [False, True])
def test_loss_and_gradients_equal_trl_distillation_trainer(models, beta, with_tool_mask):
    """On fixed completions (left-padded prompts, uneven completions, a tool mask), at τ = 0.8: our token-mean of
    the divergence over the trained tokens equals TRL's loss, and the student's gradients equal TRL's, within 1e-5."""
    pytest.importorskip("trl")
    student, teacher, _ = models
    ids, attention, labels, P = fixed_batch()
    prompt_ids, prompt_mask = ids[:, :P], attention[:, :P]
    completion_ids, completion_mask = ids[:, P:], attention[:, P:]
    tool_mask = None
    loss_mask = completion_mask.float()
    if with_tool_mask:
        tool_mask = torch.ones_like(completion_mask)
        tool_mask[0, 2:4] = 0  # tokens a tool wrote: context, not trained
        tool_mask[3, 1] = 0
        loss_mask = loss_mask * tool_mask
    student.zero_grad()
    trl_loss = trl_compute_loss(student, teacher, prompt_ids, prompt_mask, completion_ids, completion_mask, beta, 0.8,
                                tool_mask)  # fmt: skip
    trl_loss.backward()
    trl_grads = param_grads(student)
    student.zero_grad()
    tokens = teacher_pass(teacher, ids, attention, labels, P, 0.8)
    divergence, _, _ = student_divergence(student, ids, attention, labels, P, tokens, beta, 0.8)
    ours = (divergence * loss_mask).sum() / loss_mask.sum()
    ours.backward()
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    for name, grad in param_grads(student).items():
        assert torch.allclose(grad, trl_grads[name], atol=1e-5), name


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_divergence_equals_gkd_generalized_jsd_loss(models, beta):
    """GKD's ``generalized_jsd_loss`` (full logits, labels masking, batchmean) at τ = 1.3 against our chunked pass."""
    pytest.importorskip("trl")
    from trl.experimental.gkd import GKDTrainer

    student, teacher, _ = models
    ids, attention, labels, P = fixed_batch()
    student_logits = student(input_ids=ids, attention_mask=attention).logits[:, P - 1 : -1]
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids, attention_mask=attention).logits[:, P - 1 : -1]
    gkd = GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, labels[:, P:], beta=beta, temperature=1.3)
    student.zero_grad()
    gkd.backward()
    gkd_grads = param_grads(student)
    student.zero_grad()
    tokens = teacher_pass(teacher, ids, attention, labels, P, 1.3)
    divergence, _, _ = student_divergence(student, ids, attention, labels, P, tokens, beta, 1.3)
    mask = (labels[:, P:] != -100).float()
    ours = (divergence * mask).sum() / mask.sum()
    ours.backward()
    assert ours.item() == pytest.approx(gkd.item(), abs=1e-5)
    for name, grad in param_grads(student).items():
        assert torch.allclose(grad, gkd_grads[name], atol=1e-5), name


def test_rows_of_two_teachers_of_different_widths_in_one_student_pass(models):
    """Rows taught by two teachers (of different hidden sizes, one vocabulary) in ONE student pass: each row's
    divergence and gradient equal those against its own teacher's full logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lit_align.models.divergence import TeacherTokens

    student, narrow, tokenizer = models
    config = LlamaConfig(vocab_size=student.config.vocab_size, hidden_size=96, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(3)
    wide = LlamaForCausalLM(config)
    ids, attention, labels, P = fixed_batch(left_padding=False)
    owner = torch.tensor([0, 1, 1, 0])
    parts = [teacher_pass(t, ids[rows], attention[rows], labels[rows], P, 1.0)
             for t, rows in ((narrow, owner == 0), (wide, owner == 1))]  # fmt: skip
    position = torch.tensor([0, 0, 1, 1])
    tokens = TeacherTokens.select(parts, owner, position)
    assert narrow.config.hidden_size < 96 and tokens.hidden.shape[-1] == 96 and len(tokens.heads) == 2
    mask = (labels[:, P:] != -100).float()
    student.zero_grad()
    divergence, _, _ = student_divergence(student, ids, attention, labels, P, tokens, 0.5, 1.0)
    (divergence * mask).sum().backward()
    ours = param_grads(student)
    student.zero_grad()
    expected = torch.zeros_like(divergence)
    for teacher, rows in ((narrow, owner == 0), (wide, owner == 1)):
        expected[rows] = full_logits_divergence(student, teacher, ids[rows], attention[rows], P, 0.5, 1.0)[0]
    (expected * mask).sum().backward()
    assert torch.allclose(divergence * mask, expected.detach() * mask, atol=1e-6)
    for name, grad in param_grads(student).items():
        assert torch.allclose(ours[name], grad, atol=1e-6), name
