"""Per-model numbers from an evaluate run's samples.jsonl: n, reward per judge, solve rate (score 1 / reward >= 0.5 for
GuessTheNumber), calls and failures per completion, failure rate, share answering ("answer is"/"number is")."""
import json
import re
import sys
from statistics import mean

rows = [json.loads(line) for line in open(sys.argv[1] + "/samples.jsonl")]
NAMES = sys.argv[2].split(",") if len(sys.argv) > 2 else [f"judge{i}" for i in range(8)]
for who in ("trained", "start"):
    scores = [r[f"{who}_scores"] for r in rows]
    judges = range(len(scores[0])) if isinstance(scores[0], list) else [None]
    calls = [r[f"{who}_tool_calls"] for r in rows]
    fails = [r[f"{who}_tool_failures"] for r in rows]
    turns = [len(re.findall(r"^\[assistant\]", r[who], flags=re.M)) or 1 for r in rows]
    answered = [bool(re.search(r"(answer|number) is", r[who].rsplit("[assistant]", 1)[-1])) for r in rows]
    out = {"n": len(rows)}
    for j in judges:
        name = NAMES[j] if j is not None else "score"
        vals = [s[j] if j is not None else s for s in scores]
        vals = [v for v in vals if v is not None]
        out[f"{name}_mean"] = round(mean(vals), 4)
        out[f"{name}_solve_rate"] = round(mean(v >= (0.5 if "Guess" in name else 1.0) for v in vals), 4)
    out.update(calls_per_completion=round(mean(calls), 3),
               failed_calls_per_call=round(sum(fails) / max(1, sum(calls)), 4), mean_turns=round(mean(turns), 3),
               final_turn_answers=round(mean(answered), 3))
    print(who, json.dumps(out))
