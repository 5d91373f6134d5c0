"""GRPO with your own reward function: any callable with TRL's signature.

A reward function takes the prompts, the completions (text, or chat messages for chat prompts) and every
other column of the data as keyword lists, and returns one float per completion (or None: no opinion).
This one rewards completions that answer with the word count the prompt asks for.

    python examples/grpo_custom_reward.py --tiny    # a tiny random model, seconds (what CI runs)
    python examples/grpo_custom_reward.py           # SmolLM2-135M-Instruct, 10 optimizer steps (minutes on a CPU)

From a config or the command line, name it by import path instead:
``--model.rewards.reward_funcs '["examples.grpo_custom_reward:word_count_reward"]'`` (the module must be importable).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lightning as L

from lit_align import GRPO, load_model
from lit_align.callbacks.console import quiet
from lit_align.datamodules import PromptDataModule
from lit_align.rewards.verifiers import completion_text


def word_count_reward(prompts: list, completions: list, words: list[int], **kwargs) -> list[float]:
    """1 - |words written - words asked| / words asked, floored at 0; ``words`` is a column of the data."""
    rewards = []
    for completion, wanted in zip(completions, words, strict=True):
        written = len(completion_text(completion).split())
        rewards.append(max(0.0, 1.0 - abs(written - wanted) / wanted))
    return rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (seconds)")
    args = parser.parse_args()
    quiet()
    rows = [{"prompt": [{"role": "user", "content": f"Describe the sea in exactly {n} words."}], "words": n}
            for n in range(3, 13)]  # fmt: skip
    folder = Path(tempfile.mkdtemp())
    data = folder / "prompts.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    model, tokenizer = load_model("tiny-llama" if args.tiny else "smollm2-135m-instruct")
    module = GRPO(policy=model, tokenizer=tokenizer, num_generations=4,
                  rewards={"reward_funcs": [word_count_reward], "log_completions_every_n_steps": 0},
                  sampling={"max_new_tokens": 8 if args.tiny else 32}, learning_rate=1e-3 if args.tiny else 2e-6)
    dm = PromptDataModule(tokenizer=tokenizer, data_path=str(data), val_size=0, batch_size=2)
    trainer = L.Trainer(max_steps=2 if args.tiny else 10, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        default_root_dir=str(folder))  # fmt: skip
    trainer.fit(module, dm)
    print(f"after {trainer.global_step} steps: reward {float(trainer.callback_metrics['train/reward']):.3f}")


if __name__ == "__main__":
    main()
