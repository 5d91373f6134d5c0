"""The math final-answer verifier: tricky answer strings, references, bounds, and GSM8K's own solutions."""

from __future__ import annotations

import json
import time
from fractions import Fraction

import pytest

from lit_align.rewards.math_answer import (
    MathAnswerReward,
    extract_answer,
    math_answer_reward,
    normalize_math,
    numbers_in,
    parse_reference,
)

# (completion, reference, reward). Each line says which rule it pins down.
TRICKY = [
    # markers and their order: #### > \boxed > <answer> > "the answer is" > last line's "= x" > last number
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72", 1.0),
    ("#### 72 clips\nso maybe 80", "72", 1.0),  # #### wins over later numbers
    ("#### $\n7", "7", 0.0),  # a marker without a number is no answer, not a cue to read other numbers
    ("#### Step 1\nAdd 3 and 4.\n#### Final answer\n\\boxed{7}", "7", 1.0),  # Markdown headings are no marker
    ("#### Solution\nShe has 12 apples", "12", 1.0),
    ("#### 1,200.", "1200", 1.0),
    ("#### \\boxed{18}", "18", 1.0),
    ("We get \\boxed{5}, so the answer is 6.", "5", 1.0),  # a box wins over the phrase
    ("First \\boxed{3}, then on reflection \\boxed{4}.", "4", 1.0),  # the last box
    ("\\boxed{}", "0", 0.0),
    ("Almost: \\boxed{12", "12", 1.0),  # an unclosed box counts as none; the last number then reads 12
    ("<think>7 or 8? The answer is 7.</think><answer>8</answer>", "8", 1.0),  # only the <answer> block is read
    ("<think>...</think><answer>3 + 4 = 7 apples</answer>", "7", 1.0),
    ("The answer is 42.", "42", 1.0),
    ("Final answer: -7", "-7", 1.0),
    ("**Answer:** 19 eggs", "19", 1.0),
    ("The answer isn't 5, it is 6", "6", 1.0),  # "isn't" is not "is"
    ("The answer is twelve.\nShe had 7 and got 8.", "12", 0.0),  # a phrase without a number does not count
    ("It will take her 120/24 = <<120/24=5>>5 hours to read 120 pages.", "5", 1.0),  # last line's equation
    ("x <= 10, so 3 + 4 is at most 7", "7", 1.0),  # <= is no equation: the last number
    # LaTeX
    ("$\\boxed{\\frac{3}{4}}$", "3/4", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", 1.0),
    ("\\boxed{\\tfrac{-3}{4}}", "-3/4", 1.0),
    ("\\boxed{-\\frac{1}{2}}", "-0.5", 1.0),
    ("\\boxed{\\frac34}", "3/4", 1.0),
    ("\\boxed{1\\frac{1}{2}}", "1.5", 1.0),  # mixed number, not 11/2
    ("\\boxed{\\$18}", "18", 1.0),
    ("\\boxed{18\\text{ cm}}", "18", 1.0),
    ("\\boxed{\\text{\\$}18.00}", "$18", 1.0),
    ("\\boxed{90^\\circ}", "90", 1.0),
    ("\\boxed{90^{\\circ}}", "90", 1.0),
    ("\\boxed{1{,}000}", "1000", 1.0),
    ("\\boxed{1\\!000}", "1,000", 1.0),
    ("\\boxed{\\text{\\textbf{42}}}", "42", 1.0),  # nested braces
    ("\\boxed{2.5 \\times 10^{3}}", "2500", 1.0),
    ("\\[ x = \\left(\\frac{9}{3}\\right) \\]", "3", 1.0),
    ("\\boxed{\\sqrt{2}}", "2", 0.0),  # symbolic answers are no numbers ...
    ("\\boxed{2\\pi}", "2", 0.0),
    ("The answer is $\\sqrt{2}$. Check: 2", "2", 0.0),  # ... and the phrase still decides
    ("\\boxed{\\displaystyle 5}", "5", 1.0),
    # currency, percent, units
    ("The total is $1,234.50.", "1234.5", 1.0),
    ("It costs €5.", "5", 1.0),
    ("She owes -$3 now.", "-3", 1.0),  # the sign survives the currency sign
    ("Balance: $-3", "-3", 1.0),
    ("He saved 50%.", "50", 1.0),  # a percent sign is a unit: 50% is 50 ...
    ("He saved 50%.", "0.5", 0.0),  # ... not 0.5
    ("The answer is 42 apples", "42", 1.0),
    ("The speed is 5 km/h", "5", 1.0),
    ("The area is 25 m^2", "25", 1.0),  # a unit's power is not a number
    ("The area is 25 cm²", "25", 1.0),
    ("It is 72°F outside", "72", 1.0),
    # commas, signs, decimals
    ("The answer is 1,000,000", "1000000", 1.0),
    ("The points are 3,4", "4", 1.0),  # "3,4" is a list: two numbers
    ("The points are 3,4", "34", 0.0),
    ("1,2345", "2345", 1.0),  # thousands groups come in threes
    ("x = -5", "-5", 1.0),
    ("The temperature fell to −12 degrees", "-12", 1.0),  # Unicode minus
    ("from 10-5", "5", 1.0),  # a minus after a digit is a range or a subtraction
    ("from 10-5", "-5", 0.0),
    ("The answer is 3.14.", "3.14", 1.0),  # trailing period
    ("It is .5 of the cake", "1/2", 1.0),
    ("It weighs 2.50 kg", "2.5", 1.0),
    ("0.1 + 0.2 = 0.3", "0.3", 1.0),  # exact rationals: no float rounding
    ("0.1 + 0.2 = 0.30000000000000004", "0.3", 0.0),
    ("It holds 1.5e3 liters", "1500", 1.0),
    ("Avogadro: 6.02 × 10^23", "6.02e23", 1.0),
    # fractions and mixed numbers
    ("She ate 3/4 of the pie", "0.75", 1.0),
    ("She ate 6/8 of the pie", "3/4", 1.0),  # an unreduced fraction is the same number
    ("Add 1 1/2 cups", "3/2", 1.0),
    ("Use 2 5/4 cups", "5/4", 1.0),  # an improper "fraction part" is no mixed number: 2 and 5/4
    ("Divide by zero: 5/0", "5", 0.0),
    # several numbers, none, and things that must not be evaluated
    ("First 40, no wait: 42", "42", 1.0),
    ("She has 3 cats and 4 dogs", "3", 0.0),  # the last number is 4
    ("I have no idea.", "7", 0.0),
    ("", "0", 0.0),
    ("6 * 7", "42", 0.0),  # expressions are not computed
    ("2^{10}", "1024", 0.0),
    ("__import__('os').system('rm -rf x')", "0", 0.0),  # never evaluated
    ("H2O boils at 100", "100", 1.0),  # a digit inside a word is no number
    ("Room x2", "2", 0.0),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), TRICKY)
def test_tricky_answers(completion, reference, expected):
    assert math_answer_reward(["q"], [completion], answer=[reference]) == [expected]


def test_at_least_forty_tricky_strings():
    assert len(TRICKY) >= 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 72", Fraction(72)),
        ("\\boxed{\\frac{3}{4}}", Fraction(3, 4)),
        ("It costs $1,200 per month for 3 months = $3,600 total", Fraction(3600)),
        ("no numbers at all", None),
        ("\\boxed{x+y}", None),
        ("#### \\sqrt{3}", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_require_marker():
    assert extract_answer("She has 7 apples.", require_marker=True) is None
    assert extract_answer("So 3 + 4 = 7", require_marker=True) is None
    assert extract_answer("The answer is 7 apples.", require_marker=True) == 7
    assert extract_answer("<answer>3 + 4 = 7</answer>", require_marker=True) == 7  # the block is the marker
    reward = MathAnswerReward(require_marker=True)
    assert reward(["q", "q"], ["She has 7 apples.", "#### 7"], answer=["7", "7"]) == [0.0, 1.0]


def test_normalize_math_and_numbers_in():
    assert normalize_math("\\$1{,}000 \\text{ cm}") == " 1,000   cm "
    text = "Costs: 1,234.5, -3, 10-5, 3/4, 1 1/2, 2e3, x2, 5/0"
    assert list(numbers_in(normalize_math(text))) == [
        Fraction("1234.5"), Fraction(-3), Fraction(10), Fraction(5), Fraction(3, 4), Fraction(3, 2), Fraction(2000)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("72", Fraction(72)),
        ("1,200", Fraction(1200)),
        ("-3", Fraction(-3)),
        ("0.5", Fraction(1, 2)),
        ("3/4", Fraction(3, 4)),
        ("$18", Fraction(18)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("50%", Fraction(50)),
        ("18 dollars", Fraction(18)),
        (42, Fraction(42)),
        (0.1, Fraction(1, 10)),  # str(0.1) is "0.1": the float's shortest repr, read exactly
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", Fraction(72)),  # a raw GSM8K answer
        ("so \\boxed{-2}", Fraction(-2)),
        (None, None),
        ("", None),
        ("3, 4", None),  # not a single number
        ("Paris", None),
        ("\\sqrt{2}", None),
        (True, None),
        ("#### ", None),
    ],
)
def test_parse_reference(reference, expected):
    assert parse_reference(reference) == expected


def test_reward_rows_messages_and_columns():
    completions = ["#### 5", [{"role": "assistant", "content": "\\boxed{5}"}], "5", "4", "5"]
    answers = ["5", "5", None, "5", "Paris"]
    assert math_answer_reward([None] * 5, completions, answer=answers, completion_ids=[[1]] * 5) == [
        1.0, 1.0, None, 0.0, None  # no reference, or one that is no number: no opinion
    ]  # fmt: skip
    custom = MathAnswerReward(column="final_answer", name="gsm8k")
    assert custom(["q"], ["#### 1,200"], final_answer=["1200"]) == [1.0] and custom.__name__ == "gsm8k"
    with pytest.raises(ValueError, match="no 'final_answer' column"):
        custom(["q"], ["1"], answer=["1"])
    with pytest.raises(ValueError):
        math_answer_reward(["p", "q"], ["1", "2"], answer=["1"])
    with pytest.raises(ValueError, match="max_chars"):
        MathAnswerReward(max_chars=0)
    assert math_answer_reward.__name__ == "math_answer_reward" == MathAnswerReward().__name__


def test_built_from_a_class_path_config():
    """A config's ``{"class_path", "init_args"}`` builds the verifier (jsonargparse, as LightningCLI does)."""
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--reward", type=MathAnswerReward)
    config = parser.parse_object(
        {"reward": {"class_path": "lit_align.rewards.math_answer.MathAnswerReward", "init_args": {"column": "x"}}}
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    reward = instantiate(config).reward
    assert isinstance(reward, MathAnswerReward) and reward.column == "x"
    assert reward(["q"], ["\\boxed{3}"], x=["3"]) == [1.0]


PATHOLOGICAL = {
    "digits": "7" * 1_000_000,
    "thousands": "1," * 500_000,
    "open braces": "\\boxed{" + "{" * 999_990,
    "many boxes": "\\boxed{1}" * 110_000,
    "unclosed boxes": "\\boxed{" * 140_000,
    "answer phrases": "the answer is " * 70_000,
    "equals": "=" * 1_000_000,
    "calculator": "<<" * 500_000,
    "latex": "\\frac{" * 160_000,
    "minus signs": "-" * 1_000_000,
    "answer tags": "<answer>" * 120_000,
    "one line": "x " * 500_000 + "= 5",
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_completions_are_fast(name):
    text = PATHOLOGICAL[name]
    assert len(text) >= 900_000
    start = time.perf_counter()
    math_answer_reward(["q"], [text], answer=["5"])
    assert time.perf_counter() - start < 1.0, name  # well under 0.1 s here; the margin is for busy machines


# GSM8K's own solutions (the "####" line removed) read as completions: the 73 of 7,473 whose
# final_answer the verifier does not recover, by kind. Each is a correct "no": the text's last
# statement is not the reference, or says it in a form deliberately not read.
GSM8K_MISSES = {
    # The solution's own result differs from final_answer (a slip in the solution or a different quantity).
    "solution disagrees": "356 786 1154 2770 3263 3334 3409 4796 4910 5350 6157 6760 7182 7444",
    # The answer is restated with the question's quantities after it, on a line without "=":
    # "There are 33 ounces of cereal in those 3 boxes." (the last number is 3)
    "answer restated before other numbers": "497 1238 1608 2717 2947 3433 3784 3863 4440 4786 5339 5621 5724 "
    "5788 5922 6181 6208 6519 6956",
    # The last line's equation gives an intermediate, the answer follows in words: "= 30 zombies, ... 4 days ago".
    "answer after the last equation": "455 2917 3350 4358 5418",
    # The answer is in other units or a percentage: "$0.25" for "25" (cents), ".8" for "80" (%).
    "other unit": "123 198 343 1617 2270 2969 3517 7112",
    # "= 16.75 bags ..., meaning ... 17 bags": rounding stated after the equation.
    "rounded in words": "1010 1842 1983 2416 3520 4206 4419 4603 4714 7146",
    # "He spends $50 ... because 50 < 52": a comparison ends the solution.
    "comparison last": "303 1716 2114 2877 3136 3873 4774 6089 6169 6275 6419",
    # "$100 000": a space as thousands separator is not read (it would merge lists like "5 100").
    "space thousands": "2517 5066 6539",
    # "6:07 AM is 7 minutes after 6:00 AM": clock times are not numbers here.
    "clock time": "4349",
    # "the third answer was 1800-400": the word "answer" names an intermediate quantity.
    "answer phrase on an intermediate": "1887 7157",
}


def test_gsm8k_references_and_solutions(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "train_normalized.jsonl").open(encoding="utf-8")]
    raw = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").open(encoding="utf-8")]
    assert len(rows) == len(raw) == 7473
    references = [parse_reference(row["final_answer"]) for row in rows]
    assert None not in references  # every final_answer is one number
    # The raw answers end in "#### <final answer>": read through the marker, all 7,473 agree.
    assert [extract_answer(r["answer"]) for r in raw] == references
    misses = {row["id"] for row, ref in zip(rows, references, strict=True) if extract_answer(row["solution"]) != ref}
    expected = {f"train-{n}" for ids in GSM8K_MISSES.values() for n in ids.split()}
    assert sum(len(ids.split()) for ids in GSM8K_MISSES.values()) == len(expected) == 73
    assert misses == expected
    assert 1 - len(misses) / len(rows) > 0.99  # 7,400 of 7,473
