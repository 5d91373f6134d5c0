"""Cold-start SFT data for GuessTheNumber, a training prompt file and 32 held-out games.

Rows 0-167 of datamodules/samples/guess_number_prompts.jsonl are the training prompts (SFT demos and the RL runs),
rows 168-199 the held-out games (secret fixed by a `secret` column, drawn with another seed). A demo: system message
from with_tool_instructions with the environment's guess method, the user prompt with the reset observation appended
(with_observation), assistant turns calling guess with bisection, the environment's own answers as tool messages, and
"The number is N." -- prompt/completion rows for tool_sft.py (assistant-only loss).
"""
import json
import random
import sys

from lit_align.tools.chat import with_observation, with_tool_instructions
from lit_align.tools.games import GuessTheNumber

PROMPTS = "datamodules/samples/guess_number_prompts.jsonl"


def tool_call(number):
    return "<tool_call>\n" + json.dumps({"name": "guess", "arguments": {"number": number}}) + "\n</tool_call>"


def demo(row, secret):
    env = GuessTheNumber()
    obs = env.reset(**{**row, "secret": secret})
    prompt = with_tool_instructions(with_observation(row["prompt"], obs), [env.guess])
    lo, hi, msgs = env.low, env.high, []
    while True:
        g = (lo + hi) // 2
        answer = env.guess(g)
        msgs += [{"role": "assistant", "content": tool_call(g)}, {"role": "tool", "name": "guess", "content": answer}]
        if answer == "correct":
            break
        lo, hi = (g + 1, hi) if answer == "higher" else (lo, g - 1)
    msgs.append({"role": "assistant", "content": f"The number is {g}."})
    assert env.get_reward() > 0.4
    return {"prompt": prompt, "completion": msgs}


def main(n_games=400, out="/tmp/tools_runs/data/guess_sft.jsonl"):
    rows = [json.loads(line) for line in open(PROMPTS)]
    train, held = rows[:168], rows[168:]
    rng = random.Random(0)
    with open(out, "w") as f:
        for _ in range(n_games):
            row = train[rng.randrange(len(train))]
            f.write(json.dumps(demo(row, rng.randint(row["low"], row["high"]))) + "\n")
    with open("bench/tools_runs/data/guess_train_prompts.jsonl", "w") as f:
        for row in train:
            f.write(json.dumps(row) + "\n")
    rng = random.Random(12345)
    with open("bench/tools_runs/data/guess_heldout32.jsonl", "w") as f:
        for row in held:
            f.write(json.dumps({**row, "secret": rng.randint(row["low"], row["high"])}) + "\n")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
