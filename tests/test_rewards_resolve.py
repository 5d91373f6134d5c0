"""Reward functions by import path (never evaluated), weights, and the reward-model scorer."""

from __future__ import annotations

import pytest
import torch

from lit_align.algorithms.reward_model import last_token_rewards
from lit_align.models.loading import build_byte_tokenizer, build_tiny_llama
from lit_align.rewards import RewardModelScorer, resolve_reward_funcs
from lit_align.rewards.verifiers import arithmetic_answer_reward, format_reward


def test_import_paths_resolve_to_the_functions():
    funcs, names, weights = resolve_reward_funcs(
        ["lit_align.rewards.verifiers:arithmetic_answer_reward", "lit_align.rewards.verifiers.format_reward"]
    )
    assert funcs == [arithmetic_answer_reward, format_reward]
    assert names == ["arithmetic_answer_reward", "format_reward"] and weights == [1.0, 1.0]


def test_weights_callables_and_repeated_names():
    def custom(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    funcs, names, weights = resolve_reward_funcs([custom, format_reward, format_reward], [2, 0.5, 1])
    assert funcs[0] is custom and names == ["custom", "format_reward", "format_reward_2"]
    assert weights == [2.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="2 reward_weights for 1 reward functions"):
        resolve_reward_funcs([custom], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        resolve_reward_funcs([])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("__import__('os').system('echo pwned')", "expected an import path"),
        ("lambda p, c: [1.0]", "expected an import path"),
        ("arithmetic_answer_reward", "expected an import path"),
        ("lit_align.nonexistent_module:f", "cannot import module"),
        ("lit_align.rewards.verifiers:no_such_function", "has no attribute"),
        ("lit_align.rewards.verifiers:_NUMBER", "not a callable"),
    ],
)
def test_bad_specs_are_refused_not_evaluated(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_reward_funcs([spec])


@pytest.fixture
def reward_model_dir(tmp_path):
    tokenizer = build_byte_tokenizer()
    model = build_tiny_llama(tokenizer, seed=3, kind="sequence_classification")
    model.save_pretrained(tmp_path / "hf_model")
    tokenizer.save_pretrained(tmp_path / "hf_model")
    return tmp_path / "hf_model", model, tokenizer


def test_scorer_reads_the_last_real_token(reward_model_dir):
    path, model, tokenizer = reward_model_dir
    scorer = RewardModelScorer(path, batch_size=2, device="cpu")
    prompts = ["Q: 1+1? A:", "Q: what is the capital of France? A:", "Q: x? A:"]
    completions = [" 2", " Paris, of course.", " y"]
    scores = scorer(prompts, completions, answer=["2", "Paris", None])  # extra columns are ignored
    assert len(scores) == 3 and scorer.__name__ == "reward_model"
    model.eval()
    for prompt, completion, score in zip(prompts, completions, scores, strict=True):
        ids = torch.tensor([tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]])  # scored alone
        expected = last_token_rewards(model, ids, torch.ones_like(ids)).item()
        assert score == pytest.approx(expected, abs=1e-5)  # padding in the batch changes nothing
    assert len(set(scores)) == 3


def test_scorer_chat_prompts_and_model_spec(reward_model_dir):
    path, model, tokenizer = reward_model_dir
    funcs, names, _ = resolve_reward_funcs([f"model:{path}"])
    prompt = [{"role": "user", "content": "hi"}]
    score = funcs[0]([prompt], [[{"role": "assistant", "content": "hello"}]])[0]
    text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "hello"}], tokenize=False)
    assert text.endswith("hello<|im_end|>\n")
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    model.eval()
    assert score == pytest.approx(last_token_rewards(model, ids, torch.ones_like(ids)).item(), abs=1e-5)
    assert funcs[0]([prompt], ["hello"]) == [score]  # a plain-string completion becomes the assistant turn
    assert names == ["reward_model"]


def test_class_path_configs_build_instances_and_instances_record_as_configs():
    """A checkpoint records a configured instance as {"class_path", "init_args"}; resolve rebuilds it (imported by
    path, never evaluated). Functions keep their import path; an instance whose init args are not all kept as plain
    attributes falls back to an import path too."""
    from lit_align.rewards.length import OverlongPenalty
    from lit_align.rewards.resolve import recorded_reward_func

    penalty = OverlongPenalty(max_length=64, cache_length=16, name="o")
    config = recorded_reward_func(penalty)
    assert config == {"class_path": "lit_align.rewards.length.OverlongPenalty",
                      "init_args": {"max_length": 64, "cache_length": 16, "name": "o"}}  # fmt: skip
    (rebuilt,), names, _ = resolve_reward_funcs([config])
    assert repr(rebuilt) == repr(penalty) and names == ["o"]
    assert recorded_reward_func(format_reward) == "lit_align.rewards.verifiers:format_reward"
    assert recorded_reward_func(config) is config  # already plain data

    class Local:
        def __init__(self, scale: float = 1.0) -> None:
            self.scale = scale

        def __call__(self, prompts, completions, **kwargs):
            return [self.scale] * len(completions)

    assert not isinstance(recorded_reward_func(Local()), dict)  # a local class cannot be imported back


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"class_path": "lit_align.rewards.verifiers.format_reward"}, "is not a class"),
        ({"class_path": "model:/tmp/rm"}, "expected"),
        ({"class_path": "os.system('x')"}, "expected an import path"),
        ({"class_path": "lit_align.rewards.length.OverlongPenalty", "init_args": [1]}, "expected"),
        ({"class_path": "lit_align.rewards.length.OverlongPenalty", "extra": 1}, "expected"),
        ({"class_path": "collections.OrderedDict"}, "not callable"),
    ],
)
def test_bad_class_path_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        resolve_reward_funcs([config])
