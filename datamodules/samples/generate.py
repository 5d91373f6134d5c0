"""Generate the small demo datasets that ship with lit-align.

Everything here is built from templates with ``random.Random(seed)``: no downloads, no external data,
stdlib only. Re-running the script reproduces the committed files byte for byte (a test checks it).

Run either ``python -m lit_align.datamodules.samples.generate`` or ``python datamodules/samples/generate.py``;
``--out-dir`` defaults to this folder.

Files (JSON Lines, one object per line; messages are TRL's conversational format):

``preference_demo.jsonl`` (800 rows): paired preferences for DPO / IPO / SimPO / ORPO.
    ``{"prompt": [{"role": "user", "content": str}],
       "chosen": [{"role": "assistant", "content": str}],
       "rejected": [{"role": "assistant", "content": str}]}``
    Prompts are unique. ``chosen`` is the correct answer in one fixed, terse style
    ("17 + 25 = 42."); ``rejected`` is a wrong answer in the same style (half the rows), a curt
    dismissal (a quarter) or an off-topic ramble (a quarter). The signal is deliberately strong and
    systematic so a 135M model learns it in minutes on CPU: prompt + completion stay well under
    64 BPE tokens.

``preference_heldout.jsonl`` (100 rows): pairs built the same way, whose prompts appear in no demo
    training file: held-out data for ``recipes/evaluate.py`` (win rate, perplexity, implicit-reward accuracy).

``binary_demo.jsonl`` (600 rows): unpaired binary feedback for KTO / BCO.
    ``{"prompt": [user message], "completion": [assistant message], "label": bool}``
    330 desirable (correct) and 270 undesirable (wrong / dismissive / rambling) rows; 270 prompts
    appear once with each label, 60 only with a desirable completion.

``sft_demo.jsonl`` (500 rows): supervised fine-tuning pairs with correct answers.
    ``{"prompt": [user message], "completion": [assistant message]}``

``arithmetic_prompts.jsonl`` (1000 rows): prompts with verifiable integer answers for GRPO-style RL.
    ``{"prompt": [user message], "answer": str}`` where ``answer`` is a non-negative integer as a
    string. Each prompt ends with ``"Answer with just the number."``; ``lit_align.rewards`` scores
    correctness (``arithmetic_answer_reward``) and that format (``format_reward``).

``guess_number_prompts.jsonl`` (200 rows): games for the GuessTheNumber environment (``lit_align.tools.games``).
    ``{"prompt": [user message], "low": int, "high": int}``: the environment draws the number in [low, high] when a
    rollout starts and appends the rules to the message; ranges of 8 to 32 numbers.

Deliberately left out: a train/validation split (the DataModules carve one off with a seed) and any
tokenization (the DataModules receive the tokenizer).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ARITHMETIC_INSTRUCTION = "Answer with just the number."

WORDS = (
    "apple", "garden", "river", "window", "pencil", "orange", "planet", "bridge", "castle", "forest",
    "guitar", "island", "jacket", "kitten", "ladder", "market", "needle", "pocket", "rabbit", "silver",
    "tomato", "violin", "winter", "yellow", "banana", "candle", "dragon", "engine", "flower", "hammer",
    "cat", "dog", "sun", "tree", "book", "chair", "cloud", "house", "music", "ocean",
    "butterfly", "elephant", "mountain", "computer", "sandwich", "umbrella", "kangaroo", "blanket",
    "triangle", "notebook", "pumpkin", "rainbow", "teacher", "library", "bicycle", "chocolate",
)  # fmt: skip

UNITS = (  # (big unit, small unit, small units per big unit)
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("days", "hours", 24),
    ("weeks", "days", 7),
    ("years", "months", 12),
    ("meters", "centimeters", 100),
    ("kilograms", "grams", 1000),
    ("centimeters", "millimeters", 10),
    ("dozens", "eggs", 12),
    ("kilometers", "meters", 1000),
)

DISMISSALS = (
    "I don't feel like answering that.",
    "Figure it out yourself.",
    "Ask someone else.",
    "That's not my problem.",
    "Why would I know that?",
    "I'd rather not say.",
    "Not today.",
    "Look it up.",
)

RAMBLE_OPENERS = (
    "Well, that reminds me of something.",
    "Hmm, interesting question.",
    "Oh, speaking of that,",
    "Before I answer,",
)
RAMBLE_TOPICS = (
    "my cousin once painted a fence bright blue",
    "the weather has been really cloudy lately",
    "penguins can't fly but they swim very fast",
    "I think soup is better in winter",
    "there is a great bakery near the old station",
    "trains used to run on steam",
    "my favorite color changes every week",
    "some people collect stamps for fun",
)


@dataclass(frozen=True)
class Task:
    """One templated question with its correct answer and a same-style wrong answer."""

    prompt: str
    correct: str
    wrong: str


def _offset(rng: random.Random, low: int = 1, high: int = 10) -> int:
    """A nonzero signed offset used to make plausible wrong answers."""
    return rng.choice((-1, 1)) * rng.randint(low, high)


def addition(rng: random.Random) -> Task:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    wrong = max(0, a + b + _offset(rng))
    wrong = wrong if wrong != a + b else a + b + 1
    return Task(f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", f"{a} + {b} = {wrong}.")


def subtraction(rng: random.Random) -> Task:
    a = rng.randint(10, 90)
    b = rng.randint(1, a - 1)
    wrong = a - b + _offset(rng)
    wrong = wrong if wrong >= 0 else a - b + rng.randint(1, 10)
    return Task(f"What is {a} - {b}?", f"{a} - {b} = {a - b}.", f"{a} - {b} = {wrong}.")


def multiplication(rng: random.Random) -> Task:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    wrong = rng.choice((a * b + _offset(rng, 1, 5), a + b, a * (b + 1)))
    wrong = wrong if wrong != a * b else a * b + 2
    return Task(f"What is {a} times {b}?", f"{a} times {b} is {a * b}.", f"{a} times {b} is {wrong}.")


def comparison(rng: random.Random) -> Task:
    a, b = rng.sample(range(1, 100), 2)
    big, small = max(a, b), min(a, b)
    word = rng.choice(("larger", "smaller"))
    right, other = (big, small) if word == "larger" else (small, big)
    return Task(
        f"Which is {word}, {a} or {b}?",
        f"{right} is {word} than {other}.",
        f"{other} is {word} than {right}.",
    )


def letter_count(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    n = len(word)
    wrong = max(1, n + _offset(rng, 1, 3))
    wrong = wrong if wrong != n else n + 1
    return Task(
        f"How many letters are in the word '{word}'?",
        f"The word '{word}' has {n} letters.",
        f"The word '{word}' has {wrong} letters.",
    )


def uppercase(rng: random.Random) -> Task:
    phrase = " ".join(rng.sample(WORDS, rng.randint(2, 3)))
    words = phrase.split()
    wrong = rng.choice(
        (
            phrase,
            phrase.title(),
            " ".join([words[0].upper(), *words[1:]]),
            " ".join(reversed(phrase.upper().split())),
        )
    )
    return Task(f"Write '{phrase}' in capital letters.", phrase.upper(), wrong)


def next_number(rng: random.Random) -> Task:
    n = rng.randint(1, 500)
    wrong = rng.choice((n - 1, n + 2, n + 10, n))
    return Task(f"What comes after {n}?", f"{n + 1} comes after {n}.", f"{wrong} comes after {n}.")


def unit_conversion(rng: random.Random) -> Task:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 15)
    wrong_factor = rng.choice([f for f in (10, 12, 24, 60, 100, 1000) if f != factor])
    return Task(
        f"How many {small} are in {n} {big}?",
        f"There are {n * factor} {small} in {n} {big}.",
        f"There are {n * wrong_factor} {small} in {n} {big}.",
    )


FAMILIES: tuple[Callable[[random.Random], Task], ...] = (
    addition,
    subtraction,
    multiplication,
    comparison,
    letter_count,
    uppercase,
    next_number,
    unit_conversion,
)


def unique_tasks(rng: random.Random, n: int) -> list[Task]:
    """``n`` tasks with distinct prompts, families drawn uniformly."""
    tasks: dict[str, Task] = {}
    for _ in range(200 * n):
        if len(tasks) == n:
            return list(tasks.values())
        task = rng.choice(FAMILIES)(rng)
        tasks.setdefault(task.prompt, task)
    raise RuntimeError(f"could only build {len(tasks)} unique prompts out of {n}")


def ramble(rng: random.Random) -> str:
    return f"{rng.choice(RAMBLE_OPENERS)} {rng.choice(RAMBLE_TOPICS).capitalize()}."


def bad_answer(rng: random.Random, task: Task) -> str:
    """Wrong-in-style half the time, otherwise a dismissal or a ramble."""
    r = rng.random()
    if r < 0.5:
        return task.wrong
    return rng.choice(DISMISSALS) if r < 0.75 else ramble(rng)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def preference_rows(seed: int = 0, n: int = 800) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": _user(t.prompt),
            "chosen": _assistant(t.correct),
            "rejected": _assistant(bad_answer(rng, t)),
        }
        for t in unique_tasks(rng, n)
    ]


def preference_heldout_rows(seed: int = 4, n: int = 100) -> list[dict]:
    """Pairs built like ``preference_rows`` whose prompts appear in none of the demo training files."""
    seen = {json.dumps(row["prompt"]) for build in (preference_rows, binary_rows, sft_rows) for row in build()}
    rng = random.Random(seed)
    rows = []
    for t in unique_tasks(rng, 4 * n):
        if json.dumps(_user(t.prompt)) not in seen and len(rows) < n:
            rows.append({"prompt": _user(t.prompt), "chosen": _assistant(t.correct),
                         "rejected": _assistant(bad_answer(rng, t))})  # fmt: skip
    return rows


def binary_rows(seed: int = 1, n_prompts: int = 330, n_undesirable: int = 270) -> list[dict]:
    rng = random.Random(seed)
    tasks = unique_tasks(rng, n_prompts)
    rows = [{"prompt": _user(t.prompt), "completion": _assistant(t.correct), "label": True} for t in tasks]
    rows += [
        {"prompt": _user(t.prompt), "completion": _assistant(bad_answer(rng, t)), "label": False}
        for t in tasks[:n_undesirable]
    ]
    rng.shuffle(rows)
    return rows


def sft_rows(seed: int = 2, n: int = 500) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": _user(t.prompt), "completion": _assistant(t.correct)} for t in unique_tasks(rng, n)]


NAMES = ("Tom", "Anna", "Sam", "Maria", "Ben", "Lily", "Omar", "Sara", "Leo", "Mia", "Jack", "Nora")
ITEMS = ("apples", "pencils", "marbles", "cookies", "stickers", "books", "oranges", "cards", "shells")


def arithmetic_problem(rng: random.Random) -> tuple[str, int]:
    """One bare-arithmetic or word problem with a non-negative integer answer."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(9)
    if kind == 0:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        return f"What is {a} + {b}?", a + b
    if kind == 1:
        a = rng.randint(5, 99)
        b = rng.randint(1, a)
        return f"What is {a} - {b}?", a - b
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} * {b}?", a * b
    if kind == 3:
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        return f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?", a + b
    if kind == 4:
        a = rng.randint(3, 40)
        b = rng.randint(1, a)
        return (
            f"{name} has {a} {item} and gives {b} to {other}. How many {item} does {name} have left?",
            a - b,
        )
    if kind == 5:
        a, b = rng.randint(2, 10), rng.randint(2, 12)
        return f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?", a * b
    if kind == 6:
        a = rng.randint(5, 30)
        b, c = rng.randint(1, a), rng.randint(1, 20)
        return (
            f"{name} had {a} {item}, lost {b}, then found {c} more. How many {item} does {name} have?",
            a - b + c,
        )
    if kind == 7:
        a, b = rng.randint(2, 20), rng.randint(2, 7)
        return f"{name} reads {a} pages a day for {b} days. How many pages does {name} read?", a * b
    b, k = rng.randint(2, 6), rng.randint(2, 10)
    return f"{name} shares {b * k} {item} equally among {b} friends. How many {item} does each friend get?", k


def arithmetic_rows(seed: int = 3, n: int = 1000) -> list[dict]:
    rng = random.Random(seed)
    problems: dict[str, int] = {}
    for _ in range(200 * n):
        if len(problems) == n:
            break
        question, answer = arithmetic_problem(rng)
        problems.setdefault(question, answer)
    return [{"prompt": _user(f"{q} {ARITHMETIC_INSTRUCTION}"), "answer": str(a)} for q, a in problems.items()]


GAME_OPENINGS = ("Let's play a guessing game.", "I'd like to play a game with you.", "Can you find my number?",
                 "Time for a number game.")  # fmt: skip


def guess_number_rows(seed: int = 5, n: int = 200) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        size = rng.choice((8, 16, 32))
        low = rng.choice((1, 1, 10, 50))
        text = f"{rng.choice(GAME_OPENINGS)} Use the guess tool, and say the number when you have found it."
        rows.append({"prompt": _user(text), "low": low, "high": low + size - 1})
    return rows


DATASETS: dict[str, Callable[[], list[dict]]] = {
    "preference_demo.jsonl": preference_rows,
    "preference_heldout.jsonl": preference_heldout_rows,
    "binary_demo.jsonl": binary_rows,
    "sft_demo.jsonl": sft_rows,
    "arithmetic_prompts.jsonl": arithmetic_rows,
    "guess_number_prompts.jsonl": guess_number_rows,
}


def write_jsonl(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(out_dir: Path) -> dict[str, int]:
    """Write every demo file into ``out_dir``; returns the row count per file name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, build in DATASETS.items():
        rows = build()
        write_jsonl(rows, out_dir / name)
        counts[name] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    for name, count in generate(args.out_dir).items():
        path = args.out_dir / name
        print(f"{path}: {count} rows, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
