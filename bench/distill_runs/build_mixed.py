"""The MOPD prompt file: the guessing game's train prompts (teacher "games", environment "guess") and arithmetic rows
0-899 (teacher "math", the tool-free environment "plain"), shuffled with a fixed seed; the arithmetic held-out rows
(900-963) are checked not to be among them."""

import json
import random

GUESS = "/tmp/distill_teachers/data/guess_train_prompts.jsonl"
ARITH = "/work/main/datamodules/samples/arithmetic_prompts.jsonl"
HELD_OUT = "/tmp/distill_teachers/data/arith_heldout64.jsonl"
OUT = "/tmp/distill_runs/data/mopd_mixed.jsonl"


def read(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def main() -> None:
    rows = [{**row, "teacher_id": "games", "environment": "guess"} for row in read(GUESS)]
    arithmetic = read(ARITH)[:900]
    rows += [{**row, "teacher_id": "math", "environment": "plain"} for row in arithmetic]
    random.Random(0).shuffle(rows)
    with open(OUT, "w") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    held = {json.dumps(row["prompt"]) for row in read(HELD_OUT)}
    print(len(rows), "rows,", sum(r["teacher_id"] == "games" for r in rows), "games;",
          "held-out overlap", sum(json.dumps(r["prompt"]) in held for r in arithmetic))


if __name__ == "__main__":
    main()
