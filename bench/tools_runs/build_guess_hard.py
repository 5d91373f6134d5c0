"""The harder game for RL (the cold-start SFT already plays the 8/16/32-wide games near bisection's optimum): the same
prompts, ranges 50, 64 or 100 wide starting anywhere in 1-60 (the SFT demos only saw 8/16/32 wide ranges).
Training prompts from rows 0-167, 32 held-out games (secret fixed) from rows 168-199."""
import json
import random

rows = [json.loads(line) for line in open("datamodules/samples/guess_number_prompts.jsonl")]
rng = random.Random(7)


def widen(row):
    low = rng.randint(1, 60)
    return {**row, "low": low, "high": low + rng.choice([50, 64, 100]) - 1}


with open("bench/tools_runs/data/guess_hard_train_prompts.jsonl", "w") as f:
    for row in rows[:168]:
        f.write(json.dumps(widen(row)) + "\n")
with open("bench/tools_runs/data/guess_hard_heldout32.jsonl", "w") as f:
    for row in rows[168:]:
        row = widen(row)
        f.write(json.dumps({**row, "secret": rng.randint(row["low"], row["high"])}) + "\n")
