"""Teacher B's data: arithmetic rows 0-899 of the project's demo prompts (900-999 held out), each completion the
one-line computation ending in the answer ("24 + 26 = 50"; two steps "29 - 11 = 18, 18 + 2 = 20"), which
arithmetic_answer_reward scores by its last number. Every row's computed result is checked against its answer."""

import json
import re

SRC = "/work/main/datamodules/samples/arithmetic_prompts.jsonl"
OUT = "/tmp/distill_teachers/data/arith_sft900_worked.jsonl"
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
PATTERNS = [  # (prompt pattern, operator)
    (r"What is (\d+) ([-+*/]) (\d+)\?", None),
    (r"has (\d+) \w+ and buys (\d+) more", "+"),
    (r"has (\d+) \w+ and gives (\d+) to", "-"),
    (r"shares (\d+) \w+ equally among (\d+) friends", "/"),
    (r"There are (\d+) boxes with (\d+) \w+ in each box", "*"),
    (r"reads (\d+) pages a day for (\d+) days", "*"),
]
TWO_STEPS = r"had (\d+) \w+, lost (\d+), then found (\d+) more"


def worked(text: str) -> tuple[str, int]:
    """The worked line and its result."""
    match = re.search(TWO_STEPS, text)
    if match:
        a, b, c = map(int, match.groups())
        return f"{a} - {b} = {a - b}, {a - b} + {c} = {a - b + c}", a - b + c
    for pattern, op in PATTERNS:
        match = re.search(pattern, text)
        if match:
            groups = match.groups()
            a, b = int(groups[0]), int(groups[-1])
            op = op or groups[1]
            value = OPS[op](a, b)
            return f"{a} {op} {b} = {value}", value
    raise ValueError(text)


def main() -> None:
    with open(SRC) as source:
        rows = [json.loads(line) for line in source]
    with open(OUT, "w") as out:
        for row in rows[:900]:
            line, value = worked(row["prompt"][-1]["content"])
            assert str(value) == str(row["answer"]).strip(), (row, line)
            completion = [{"role": "assistant", "content": line}]
            out.write(json.dumps({"prompt": row["prompt"], "completion": completion}) + "\n")
    differ = sum(str(worked(r["prompt"][-1]["content"])[1]) != str(r["answer"]).strip() for r in rows[900:])
    print("held-out rows whose worked answer differs from the answer column:", differ)


if __name__ == "__main__":
    main()
