"""Math final-answer verifier: find the answer in a completion, read it as an exact rational, compare.

Extraction (:func:`extract_answer`) looks at the completion's last ``max_chars`` characters and takes
the first of these that is present:

1. ``#### x`` — GSM8K's convention (Cobbe et al. 2021): the first number on the line after the last
   ``####`` that is followed by a number-like character (digit, sign, point, currency sign, ``\\``),
   so a Markdown heading such as ``#### Step 2`` or ``#### Final answer`` is no marker.
2. ``\\boxed{x}`` (or ``\\fbox{x}``) — the first number inside the last box, braces matched (nested ones
   included). An unclosed last box (a truncated completion) counts as no box.
3. ``<answer>x</answer>`` — the last such block narrows the search to its content; steps 4 to 6
   then run inside it.
4. "the answer is x" / "final answer: x" / "Answer = x" — the first number after the last such phrase
   that has a number on the rest of its line. A phrase with no number there does not count.
5. The result of the last line's equation: the first number after the last ``=`` on the last
   non-empty line (``<=``, ``>=``, ``==``, ``=>`` are not equations). This reads "It will take her
   120/24 = 5 hours to read 120 pages" as 5, where the last number would be 120.
6. The last number in the text.

Steps 5 and 6 read unmarked text; ``require_marker=True`` turns them off. Steps 1 and 2 decide when
their marker is present: ``#### $`` or ``\\boxed{}`` with no number in it is no answer (0.0), not a cue
to look further back. A marked number (steps 1, 2, 4, 5) is symbolic, no answer, when a LaTeX command
that the clean-up left comes before it or a command or ``^`` right after it: ``\\boxed{\\sqrt{2}}``,
``\\boxed{2\\pi}``, ``\\boxed{2^{10}}`` and "the answer is $\\sqrt{2}$" are not 2.

On GSM8K's own solutions (the ``####`` line removed) as completions, step 6 alone recovers the final
answer of 97.2% of the 7,473 training solutions, steps 5 + 6 of 99.0% (step 5 loses 15 whose last line
converts or rounds after the equation, "= 16.75 bags ..., meaning ... 17 bags", and fixes 151);
``tests/test_verifiers_math.py`` lists the remaining failures by kind.

Numbers (:func:`numbers_in`), read after LaTeX and symbol clean-up (:func:`normalize_math`):

- integers and decimals, ``1,234,567.89`` (commas only in groups of three: ``3,4`` is two numbers),
  ``.5``, a trailing period is punctuation (``42.`` is 42);
- a sign counts only where no letter or digit precedes it: ``10-5`` is 10 and 5 (a range or a
  subtraction), ``x = -5`` is -5; the Unicode minus ``−`` (and an en dash before a digit) is a minus;
- simple fractions ``3/4`` and ``\\frac{3}{4}`` (``\\dfrac``, ``\\tfrac``, ``\\frac34``), mixed numbers
  ``1 1/2`` and ``1\\frac{1}{2}`` (only with a proper fraction part);
- scientific notation ``1.5e3``, ``2E-4`` and ``1.5 \\times 10^{3}`` (``\\cdot``, ``×``), exponents of
  at most two digits;
- currency signs (``$``, ``\\$``, ``€``, ``£``, ``¥``, ``₹``; ``-$3`` keeps its sign), percent signs,
  degrees (``^\\circ``, ``°``) and units or words after a number (``42 apples``, ``5 km/h``,
  ``\\text{ cm}``, ``m^2``) are dropped: ``50%`` is 50;
- LaTeX spacing is not a separator: ``1\\!000``, ``1\\,000`` and ``1{,}000`` are 1000;
- GSM8K calculator annotations ``<<48/2=24>>`` are removed before reading.

Equality is exact (:class:`fractions.Fraction`, no float tolerance): ``0.5 == 1/2 == 0.50 ==
\\frac{1}{2}``, ``3 == 3.0``, ``0.1 + 0.2``-style rounding cannot occur. ``50%`` equals 50, not 0.5.

Model output is never evaluated: only regular expressions, brace counting and ``Fraction`` parsing of
matched digit strings. ``48/2`` is the rational 24 (a fraction is a number), but ``6*7`` is two
numbers and ``2^{10}`` is not 1024. All work is bounded: only the last ``max_chars`` characters are
read, a box is scanned for at most 1,000 characters, only the last 32 answer phrases are tried, and number
strings over 64 characters are skipped.

Left out: irrational or symbolic answers (``\\sqrt{2}``, ``\\pi``, ``x+1``: never equal to a number,
though unmarked text still yields its digits), intervals, tuples and sets, multiple-choice letters,
numbers written in words ("twelve"), clock times, European decimal commas (``3,5`` is two numbers)
and space-separated thousands (``1 000``, which would merge lists like "5 100"; thin spaces are
accepted).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction
from itertools import islice
from typing import Any

from lit_align.errors import DataError, OptionError
from lit_align.rewards.verifiers import Completion, checks_reference, completion_text

_MAX_NUMBER_CHARS = 64
_MAX_BOX_CHARS = 1000
_MAX_SPAN_CHARS = 200
_MAX_PHRASES = 32

# An integer part: thousands groups only in threes, and a group must end where the digits end ("1,2345" is 1 and 2345).
_INT = r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)"
_DEC = rf"(?:{_INT}(?:\.[0-9]+)?|\.[0-9]+)"
_NUMBER = re.compile(
    rf"""
    (?<![\w.])(?P<sign>[-+])?                 # no letter, digit or point before: "10-5" is 10 and 5, "x2" no number
    (?:
        (?P<whole>[0-9]+)\ (?P<num>[0-9]+)/(?P<den>[0-9]+)(?![0-9/]|\.[0-9])                   # mixed: 1 1/2
      | (?P<value>{_DEC})
        (?:
            \ ?/\ ?(?P<divisor>{_DEC})(?![0-9/]|\.[0-9])                                        # fraction: 3/4
          | [eE](?P<exp>[-+]?[0-9]{{1,2}})(?![0-9])                                              # 1.5e3
          | \s*(?:\\times|\\cdot|×|·)\s*10\s*\^\s*                                                # 1.5 \times 10^{3}
            (?:\{{\s*(?P<bexp>[-+]?[0-9]{{1,2}})\s*\}}|(?P<pexp>[-+]?[0-9]{{1,2}})(?![0-9]))
        )?
    )
    """,
    re.VERBOSE,
)

_CALCULATOR = re.compile(r"<<[^<>\n]{0,200}>>")  # GSM8K calculator annotations <<48/2=24>>
_CURRENCY = r"(?:\\\$|[$€£¥₹])"
# (pattern, replacement) applied in order by normalize_math.
_CLEANUP: list[tuple[re.Pattern[str], str]] = [
    (re.compile("[−–](?=[0-9$€£¥₹\\\\.])"), "-"),  # Unicode minus (and an en dash used as one) before a number
    (_CALCULATOR, " "),
    (re.compile(r"(?<=[0-9])\s*(?=\\[dt]?frac)"), " "),  # 1\frac{1}{2}: a mixed number, not 11/2
    (re.compile(r"\\[dt]?frac\s*\{\s*([-+]?[0-9.,]+)\s*\}\s*\{\s*([-+]?[0-9.,]+)\s*\}"), r"\1/\2"),
    (re.compile(r"\\[dt]?frac\s*([0-9])\s*([0-9])"), r"\1/\2"),  # \frac34
    (re.compile(r"\\(?:text\w*|math\w*|mbox|operatorname)\s*\{([^{}]{0,200})\}"), r" \1 "),
    (re.compile(r"\\(?:text\w*|math\w*|mbox|operatorname)\s*\{([^{}]{0,200})\}"), r" \1 "),  # \text{\textbf{5}}
    (re.compile(r"\\(?:display|text|script)style\b"), " "),
    (re.compile(r"\{,\}"), ","),  # 1{,}000
    (re.compile(r"\\[!,]"), ""),  # thin spaces used as thousands separators: 1\!000, 1\,000
    (re.compile(r"(?<=[0-9])[\u2009\u202f](?=[0-9]{3}(?![0-9]))"), ""),  # Unicode thin spaces, likewise
    (re.compile(r"\\[;: ]|~|\\q?quad"), " "),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree"), " "),
    (re.compile(r"\\(?:left|right)(?![A-Za-z])|\\[()\[\]]"), " "),
    (re.compile(r"\\%"), "%"),
    (re.compile(rf"([-+])\s*{_CURRENCY}\s*"), r"\1"),  # -$3 keeps its sign
    (re.compile(_CURRENCY), " "),
    (re.compile(r"(?<=[A-Za-z])\s*\^\s*\{?\s*[-+]?[0-9]+\s*\}?|[²³]"), " "),  # unit powers: m^2, cm³
]
_ANSWER_PHRASE = re.compile(
    r"\b(?:final\s+)?answer\**\s*(?:(?:is|was|would\s+be|will\s+be|should\s+be)\b|[:=])\**\s*", re.IGNORECASE
)
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_GSM8K_MARKER = re.compile(r"####[ \t]*((?=[-+.0-9$€£¥₹−\\])[^\n]*)")
_EQUALS = re.compile(r"(?<![<>=!])=(?![=>])")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_TOUCHING = re.compile(r"\s*(?:\\[A-Za-z]|\^)")


def normalize_math(text: str) -> str:
    """``text`` with LaTeX fractions made ``a/b`` and currency, degrees, ``\\text{}`` and spacing commands
    cleaned up (see the module docstring), ready for :func:`numbers_in`."""
    for pattern, replacement in _CLEANUP:
        text = pattern.sub(replacement, text)
    return text


def _number_value(match: re.Match[str]) -> Fraction | None:
    try:
        if match["whole"] is not None:
            value = int(match["whole"]) + Fraction(int(match["num"]), int(match["den"]))
        else:
            value = Fraction(match["value"].replace(",", ""))
            if match["divisor"] is not None:
                value /= Fraction(match["divisor"].replace(",", ""))
            exponent = match["exp"] or match["bexp"] or match["pexp"]
            if exponent is not None:
                value *= Fraction(10) ** int(exponent)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if match["sign"] == "-" else value


def _number_matches(text: str) -> Iterator[tuple[int, int, Fraction]]:
    position = 0
    while (match := _NUMBER.search(text, position)) is not None:
        position = match.end()
        if len(match.group()) > _MAX_NUMBER_CHARS:
            continue
        if match["whole"] is not None and int(match["num"]) >= int(match["den"]):
            position = match.start("num")  # the improper "a/b" is read on its own next
            whole = Fraction(int(match["whole"]))
            yield match.start(), match.end("whole"), -whole if match["sign"] == "-" else whole
            continue
        value = _number_value(match)
        if value is not None:
            yield match.start(), match.end(), value


def numbers_in(text: str) -> Iterator[Fraction]:
    """The numbers in already-normalized ``text``, in order (a fraction or mixed number is one number).

    A division by zero or a number string over 64 characters is skipped. ``2019 3/4`` is a mixed
    number only when its fraction part is proper; ``2 5/4`` is read as 2 and 5/4.
    """
    return (value for _, _, value in _number_matches(text))


def _marked_number(span: str) -> tuple[bool, Fraction | None]:
    """(whether ``span`` holds a number, its first number or None when that one is symbolic).

    The number after a marker is symbolic, no answer, when a LaTeX command the clean-up left (``\\sqrt``,
    ``\\pi``, ``\\frac{x}{2}``, ``\\pm``) comes before it in the span or a command or ``^`` right after it:
    ``\\boxed{2\\sqrt{2}}`` is not 2 and ``\\boxed{2^{10}}`` is not 2.
    """
    text = normalize_math(span[:_MAX_SPAN_CHARS])
    first = next(_number_matches(text), None)
    if first is None:
        return False, None
    return True, None if _is_symbolic(text, first) else first[2]


def _is_symbolic(text: str, number: tuple[int, int, Fraction]) -> bool:
    start, end, _ = number
    return _COMMAND.search(text, 0, start) is not None or _TOUCHING.match(text, end) is not None


def _last_number(text: str) -> Fraction | None:
    values = list(numbers_in(normalize_math(text)))
    return values[-1] if values else None


def _last_box(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``), braces matched; None when
    there is none or it does not close within 1,000 characters."""
    start, command = max((text.rfind(command), command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start + len(command) : start + len(command) + _MAX_BOX_CHARS]
    if not rest.lstrip().startswith("{"):
        token = re.match(r"\s+([^\s$]+)", rest)
        return token.group(1) if token else None
    depth = 0
    for j, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[rest.index("{") + 1 : j]
    return None


def _answer_tag(text: str) -> str | None:
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, max(end, 0))
    return text[start + len("<answer>") : end] if end >= 0 and start >= 0 else None


def extract_answer(text: str, max_chars: int = 20_000, require_marker: bool = False) -> Fraction | None:
    """The final answer of ``text`` as an exact rational, or None when it gives none (steps in the module
    docstring).

    Args:
        text: a completion (plain text, Markdown or LaTeX).
        max_chars: only the last ``max_chars`` characters are read (the final answer comes last; this
            bounds the work on pathological output). A number cut at the window's start is dropped.
        require_marker: count only a marked answer (``####``, ``\\boxed{}``, an ``<answer>`` block, "the
            answer is"), not the last line's equation or the last number of unmarked text.
    """
    if len(text) > max_chars:
        text = text[-max_chars:]
        text = text[next((i for i, c in enumerate(text[:_MAX_SPAN_CHARS]) if c.isspace()), 0) :]
    markers = list(_GSM8K_MARKER.finditer(text))
    if markers:
        line = markers[-1].group(1)
        return _marked_number(_last_box(line) or line)[1]  # "#### \\boxed{5}" too
    box = _last_box(text)
    if box is not None:
        return _marked_number(box)[1]
    tag = _answer_tag(text)
    if tag is not None:
        text = tag
    for phrase in reversed(list(_ANSWER_PHRASE.finditer(text))[-_MAX_PHRASES:]):
        found, value = _marked_number(text[phrase.end() : phrase.end() + _MAX_SPAN_CHARS].split("\n", 1)[0])
        if found:
            return value
    if require_marker and tag is None:
        return None
    sides = _EQUALS.split(_CALCULATOR.sub(" ", text.rstrip().rsplit("\n", 1)[-1]))
    if len(sides) > 1:
        found, value = _marked_number(sides[-1])
        if found:
            return value
    return _last_number(text)


def parse_reference(reference: Any) -> Fraction | None:
    """A reference answer (``72``, ``"1,200"``, ``"-3"``, ``"0.5"``, ``"3/4"``, ``"$18"``, ``"\\frac{3}{4}"``)
    as a rational; None unless it holds exactly one number, not a symbolic one (``\\sqrt{2}``).

    A reference carrying a ``####`` line or a ``\\boxed{}`` (a full GSM8K or MATH solution) is read
    through those markers, as a completion would be.
    """
    if reference is None or isinstance(reference, bool):
        return None
    text = str(reference)
    if _GSM8K_MARKER.search(text) or any(command in text for command in _BOX_COMMANDS):
        return extract_answer(text, require_marker=True)
    text = normalize_math(text)
    numbers = list(islice(_number_matches(text), 2))
    return numbers[0][2] if len(numbers) == 1 and not _is_symbolic(text, numbers[0]) else None


class MathAnswerReward:
    """``reward(prompts, completions, **columns) -> list[float | None]``: 1.0 where the completion's final
    answer (:func:`extract_answer`) equals the reference exactly, 0.0 where it differs or there is none,
    None (no opinion) where the row's reference is missing or is not a single number
    (:func:`parse_reference`).

    Args:
        column: the dataset column holding the reference answer.
        max_chars: only the completion's last ``max_chars`` characters are searched.
        require_marker: count only a marked answer (``####``, ``\\boxed{}``, ``<answer>``, "the answer
            is"); an unmarked completion then scores 0.0.
        name: the metric name (``rewards/<name>/mean``).
    """

    def __init__(
        self,
        column: str = "answer",
        max_chars: int = 20_000,
        require_marker: bool = False,
        name: str = "math_answer_reward",
    ) -> None:
        if max_chars < 1:
            raise OptionError(f"max_chars must be positive, got {max_chars}")
        self.column, self.max_chars, self.require_marker = column, max_chars, require_marker
        self.name = self.__name__ = name  # __name__ names the metric; every init arg is an attribute

    def __repr__(self) -> str:
        return (
            f"MathAnswerReward(column={self.column!r}, max_chars={self.max_chars}, "
            f"require_marker={self.require_marker}, name={self.__name__!r})"
        )

    @property
    def reference_column(self) -> str:
        return self.column

    def reference_problem(self, reference: Any) -> str | None:
        """Why a reference is not usable (``None``: it is): not exactly one number (:func:`parse_reference`)."""
        if parse_reference(reference) is None:
            return "not a single number; expected e.g. 72, 1,200, 3/4, \\frac{3}{4} or a solution ending in #### 72"
        return None

    def __call__(self, prompts: list[Any], completions: list[Completion], **kwargs: Any) -> list[float | None]:
        if self.column not in kwargs:
            raise DataError(f"{self.__name__}: no {self.column!r} column among {sorted(kwargs)}")
        rewards: list[float | None] = []
        for completion, reference in zip(completions, kwargs[self.column], strict=True):
            expected = parse_reference(reference)
            if expected is None:
                rewards.append(None)
                continue
            got = extract_answer(completion_text(completion), self.max_chars, self.require_marker)
            rewards.append(float(got == expected))
        return rewards


_DEFAULT = MathAnswerReward()


@checks_reference("answer", _DEFAULT.reference_problem)
def math_answer_reward(prompts: list[Any], completions: list[Completion], **kwargs: Any) -> list[float | None]:
    """:class:`MathAnswerReward` with its defaults (reference in ``answer``), for configs that name a function."""
    return _DEFAULT(prompts, completions, **kwargs)
