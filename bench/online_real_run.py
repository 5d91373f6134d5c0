"""GRPO / RLOO / ReMax with SmolLM2-135M-Instruct on the project's arithmetic word problems, on CPU.

Held-out score: the mean ``arithmetic_answer_reward`` of GREEDY completions of ``--eval`` prompts of
``datamodules/samples/arithmetic_prompts.jsonl`` split off before training (the DataModule's
validation split, never trained on), before and after training. Training takes ``--prompts`` shuffled
training prompts per step, samples
``--generations`` completions each, and makes one optimizer step per rollout (``module.update``,
the same ``rl_step`` a Trainer runs). Prints per-step reward, the time split generation / reward /
update, and generated tokens per second.

    nice -n 10 python bench/online_real_run.py --algo grpo [--steps 25] [--prompts 8] [--generations 4]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lit_align.algorithms.grpo import GRPO
from lit_align.algorithms.reinforce_pp import ReinforcePP
from lit_align.algorithms.remax import ReMax
from lit_align.algorithms.rloo import RLOO
from lit_align.datamodules.prompt import PromptDataModule
from lit_align.models.loading import load_model
from lit_align.rewards.verifiers import arithmetic_answer_reward

ALGOS = {"grpo": GRPO, "rloo": RLOO, "remax": ReMax, "reinforce_pp": ReinforcePP}


@torch.no_grad()
def greedy_reward(module, batches) -> tuple[float, float]:
    """Mean reward and mean completion length of greedy completions over the held-out batches."""
    rewards, lengths = [], []
    for batch in batches:
        out = module.sample(batch["prompt_input_ids"], batch["prompt_attention_mask"], greedy=True)
        completions = [[{"role": "assistant", "content": t}] for t in out.texts]
        rewards += arithmetic_answer_reward(batch["prompt"], completions, batch["answer"])
        lengths += out.lengths.tolist()
    return sum(rewards) / len(rewards), sum(lengths) / len(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(ALGOS), default="grpo")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--eval", type=int, default=32, help="held-out prompts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=1, help="num_iterations: passes over each rollout")
    parser.add_argument("--objective", default="clip", help="objective.name: clip, cispo, sapo, vespo")
    parser.add_argument("--cispo-max-weight", type=float, default=5.0)
    parser.add_argument("--importance-ratio", default=None, help="token, sequence_mean (GSPO), ...")
    parser.add_argument("--loss-aggregation", default=None)
    parser.add_argument("--epsilon", type=float, default=0.2, help="clip range (GSPO's paper: 3e-4)")
    parser.add_argument("--epsilon-high", type=float, default=None, help="upper clip range (GSPO's paper: 4e-4)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    policy, tokenizer = load_model("smollm2-135m-instruct")
    objective = {"name": args.objective}
    if args.objective == "cispo":
        objective["cispo_max_weight"] = args.cispo_max_weight
    family = {
        "objective": objective,
        "num_iterations": args.iterations,
        "epsilon": args.epsilon,
        "epsilon_high": args.epsilon_high,
    }
    family.update({k: v for k, v in (("importance_ratio", args.importance_ratio),
                                     ("loss_aggregation", args.loss_aggregation)) if v is not None})  # fmt: skip
    module = ALGOS[args.algo](
        policy=policy, tokenizer=tokenizer, beta=args.beta, num_generations=args.generations,
        sampling={"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}, learning_rate=args.lr,
        warmup_ratio=0.0, scheduler="constant", rewards={"log_completions_every_n_steps": 0}, **family,
    )  # fmt: skip
    dm = PromptDataModule(
        tokenizer=tokenizer, val_size=args.eval, batch_size=args.prompts, eval_batch_size=16, seed=args.seed
    )
    dm.setup("fit")
    held_out = list(dm.val_dataloader())
    train = iter(dm.train_dataloader())

    start = time.perf_counter()
    before, before_len = greedy_reward(module, held_out)
    eval_s = time.perf_counter() - start
    print(f"held-out greedy reward before: {before:.3f} (mean length {before_len:.1f} tokens, {eval_s:.0f}s)")
    history = []
    fit_start = time.perf_counter()
    for step in range(args.steps):
        batch = next(train)
        values = module.update(batch, total_steps=args.steps)
        tokens = values["completions/mean_length"] * args.prompts * args.generations
        values["tokens_per_s"] = tokens / values["time/generation"]
        history.append(values)
        print(
            f"step {step + 1:3d}  reward {values['reward']:.3f}  loss {values['loss']:+.4f}  "
            f"len {values['completions/mean_length']:5.1f}  clipped {values['completions/clipped_ratio']:.2f}  "
            f"ratio clipped {values.get('cispo_clip_ratio', values.get('clip_ratio/region_mean', 0.0)):.3f}  "
            f"gen {values['time/generation']:5.1f}s  update {values['time/update']:5.1f}s  "
            f"{values['tokens_per_s']:5.1f} tok/s",
            flush=True,
        )
    fit_s = time.perf_counter() - fit_start
    after, after_len = greedy_reward(module, held_out)

    def mean(key: str) -> float:
        return sum(h[key] for h in history) / len(history)

    summary = {
        "algo": args.algo, "steps": args.steps, "prompts": args.prompts, "generations": args.generations,
        "max_new_tokens": args.max_new_tokens, "lr": args.lr, "beta": args.beta, "iterations": args.iterations,
        "epsilon": args.epsilon, "epsilon_high": args.epsilon_high,
        "objective": objective, "importance_ratio": module.importance_ratio,
        "loss_aggregation": module.loss_aggregation,
        "eval_prompts": sum(len(b["prompt"]) for b in held_out),
        "held_out_reward_before": before, "held_out_reward_after": after, "mean_length_before": before_len,
        "mean_length_after": after_len, "train_reward_first5": sum(h["reward"] for h in history[:5]) / len(history[:5]),
        "train_reward_last5": sum(h["reward"] for h in history[-5:]) / len(history[-5:]), "fit_wall_s": fit_s,
        "generation_s_per_step": mean("time/generation"), "reward_s_per_step": mean("time/reward"),
        "update_s_per_step": mean("time/update"),
        "ratio_clipped_mean": sum(h.get("cispo_clip_ratio", h.get("clip_ratio/region_mean", 0.0)) for h in history)
        / len(history), "generated_tokens_per_s": mean("tokens_per_s"),
    }  # fmt: skip
    if args.algo == "remax":
        summary["greedy_baseline_s_per_step"] = mean("time/greedy_generation")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
