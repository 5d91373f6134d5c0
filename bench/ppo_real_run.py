"""PPO on SmolLM2-135M-Instruct with a reward model from the reward-model recipe, on CPU.

First train the reward model (it writes ``runs/reward_model/version_0/hf_model`` under the working directory):

    python recipes/reward_model.py fit
    nice -n 10 python bench/ppo_real_run.py [--rollouts 20] [--prompts 16] [--epochs 4] [--minibatches 2]

Prompts: the project's arithmetic word problems (``PromptDataModule``'s default data); ``--eval`` of them are split
off before training (the DataModule's validation split, never trained on). Held-out score: the reward model's mean
score of GREEDY completions of those prompts, before and after training (plus, as a side check, the arithmetic
verifier's accuracy on the same completions and their mean length). The critic starts as a copy of the reward
model. Each rollout samples one completion per prompt and makes ``--epochs x --minibatches`` optimizer steps
(``module.update``, the same ``rl_step`` a Trainer runs). Prints, per rollout, the score, KL, β, value and policy
losses and clip fractions; ``--out`` writes them and the summary as JSON (the curves).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lit_align.algorithms.ppo import DEFAULT_REWARD_MODEL, PPO
from lit_align.datamodules.prompt import PromptDataModule
from lit_align.models.loading import load_model
from lit_align.rewards.verifiers import arithmetic_answer_reward

CURVE = ("reward", "objective/kl", "objective/kl_coef", "objective/rlhf_reward", "loss/value_avg", "loss/policy_avg",
         "policy/approxkl_avg", "policy/clipfrac_avg", "val/clipfrac_avg", "objective/entropy",
         "completions/mean_length", "completions/clipped_ratio", "time/generation", "time/update")  # fmt: skip


@torch.no_grad()
def held_out(module: PPO, batches) -> dict[str, float]:
    """Reward-model score, arithmetic accuracy and length of greedy completions of the held-out prompts."""
    scores, correct, lengths = [], [], []
    for batch in batches:
        rollout = module.sample(batch["prompt_input_ids"], batch["prompt_attention_mask"], greedy=True)
        scores += module.score(batch, rollout)[:, 0].tolist()
        completions = [[{"role": "assistant", "content": t}] for t in rollout.texts]
        correct += arithmetic_answer_reward(batch["prompt"], completions, batch["answer"])
        lengths += rollout.lengths.tolist()
    n = len(scores)
    return {"score": sum(scores) / n, "accuracy": sum(correct) / n, "length": sum(lengths) / n, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-model", default=DEFAULT_REWARD_MODEL)
    parser.add_argument("--value-model", default="reward_model")
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=16, help="prompts (= completions) per rollout")
    parser.add_argument("--epochs", type=int, default=4, help="PPO epochs (num_iterations)")
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-6)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--kl-target", type=float, default=None)
    parser.add_argument("--vf-coef", type=float, default=0.1)
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank for policy and critic (0: full fine-tune)")
    parser.add_argument("--eval", type=int, default=48, help="held-out prompts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the per-rollout curves and summary")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    policy, tokenizer = load_model("smollm2-135m-instruct")
    module = PPO(
        policy=policy, tokenizer=tokenizer, value_model=args.value_model,
        rewards={"reward_funcs": [f"model:{args.reward_model}"], "log_completions_every_n_steps": 0},
        beta=args.beta, kl_target=args.kl_target, vf_coef=args.vf_coef, num_iterations=args.epochs,
        num_minibatches=args.minibatches, sampling={"max_new_tokens": args.max_new_tokens, "seed": args.seed},
        learning_rate=args.lr, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
    )  # fmt: skip
    dm = PromptDataModule(tokenizer=tokenizer, val_size=args.eval, batch_size=args.prompts, eval_batch_size=16,
                          seed=args.seed)  # fmt: skip
    dm.setup("fit")
    evaluation = list(dm.val_dataloader())
    train = iter(dm.train_dataloader())

    start = time.perf_counter()
    before = held_out(module, evaluation)
    print(f"held-out before: {json.dumps(before)} ({time.perf_counter() - start:.0f}s)", flush=True)
    history, steps_per_rollout = [], args.epochs * args.minibatches
    fit_start = time.perf_counter()
    for rollout in range(args.rollouts):
        values = module.update(next(train), total_steps=args.rollouts * steps_per_rollout)
        history.append({k: values[k] for k in ("loss", *CURVE)})
        print(
            f"rollout {rollout + 1:3d}  score {values['reward']:+.3f}  kl {values['objective/kl']:+.3f}  "
            f"beta {values['objective/kl_coef']:.4f}  value_loss {values['loss/value_avg']:.4f}  "
            f"policy_loss {values['loss/policy_avg']:+.4f}  approxkl {values['policy/approxkl_avg']:.4f}  "
            f"clipfrac {values['policy/clipfrac_avg']:.3f}  vf_clipfrac {values['val/clipfrac_avg']:.3f}  "
            f"len {values['completions/mean_length']:4.1f}  gen {values['time/generation']:4.1f}s  "
            f"update {values['time/update']:5.1f}s",
            flush=True,
        )
    fit_s = time.perf_counter() - fit_start
    after = held_out(module, evaluation)
    print(f"held-out after: {json.dumps(after)}", flush=True)

    def mean(key: str, rows: list[dict]) -> float:
        return sum(h[key] for h in rows) / len(rows)

    summary = {
        "rollouts": args.rollouts, "prompts": args.prompts, "epochs": args.epochs, "minibatches": args.minibatches,
        "optimizer_steps": args.rollouts * steps_per_rollout, "max_new_tokens": args.max_new_tokens, "lr": args.lr,
        "beta": args.beta, "kl_target": args.kl_target, "vf_coef": args.vf_coef, "value_model": args.value_model,
        "lora_r": args.lora_r,
        "held_out_before": before, "held_out_after": after,
        "train_score_first5": mean("reward", history[:5]), "train_score_last5": mean("reward", history[-5:]),
        "kl_last5": mean("objective/kl", history[-5:]), "value_loss_first5": mean("loss/value_avg", history[:5]),
        "value_loss_last5": mean("loss/value_avg", history[-5:]), "fit_wall_s": fit_s,
        "generation_s_per_rollout": mean("time/generation", history),
        "update_s_per_rollout": mean("time/update", history),
    }  # fmt: skip
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "history": history}, indent=1))


if __name__ == "__main__":
    main()
