"""Rule-based reward functions for verifiable tasks.

Every function has TRL's reward-function signature
``f(prompts, completions, **kwargs) -> list[float | None]``: one score per completion, where dataset
columns (here ``answer``) arrive as keyword lists aligned with ``completions``. A completion is
either a string or a list of chat messages (``[{"role": "assistant", "content": ...}]``). ``None``
means "no opinion" (the row carries no answer), so a caller summing several rewards can skip it
rather than count it as wrong.

Model output is only ever matched with regular expressions, never evaluated: ``"2 + 3"`` is not 5
here, and ``"__import__('os')..."`` simply has no number in it.

``arithmetic_answer_reward`` and ``format_reward`` score the project's arithmetic demo prompts; their
rules are simple on purpose and stay fixed, so benchmark numbers stay comparable. Left out there:
partial credit, units (any number counts: "5 apples" is 5) and non-integer targets (answers are
integers, though "42.0" still matches 42). Math answers in general (GSM8K, ``\\boxed{}``, fractions,
currency) are :mod:`lit_align.rewards.math_answer`'s job.

Configurable verifiers are small classes whose typed ``__init__`` is their config (a config names
``{"class_path": ..., "init_args": ...}``), each with a module-level default for configs that name a
function: :class:`FormatReward` (required tags or a regular expression; ``think_answer_format_reward``)
and :class:`NormalizedMatchReward` (SQuAD-style normalized string match; ``normalized_match_reward``).
The soft overlong penalty is in :mod:`lit_align.rewards.length`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, TypeVar

from lit_align.errors import DataError, OptionError

# A sign counts only when no digit precedes it, so "10-5" yields 10 and 5, not 10 and -5.
# Commas are thousands separators only in groups of three: "1,234" is one number, "3,4" two.
_NUMBER = re.compile(r"(?<!\d)-?\d+(?:,\d{3})*(?:\.\d+)?")
# The prompts in datamodules/samples/arithmetic_prompts.jsonl ask: "Answer with just the number."
_JUST_A_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)\.?")

Completion = str | Sequence[dict[str, Any]]
F = TypeVar("F", bound=Callable[..., Any])


def completion_text(completion: Completion) -> str:
    """The text of a completion given as a string or as a list of chat messages.

    Message contents may be strings or lists of content parts (``{"type": "text", "text": ...}``);
    the texts of all messages are joined with newlines. A multi-turn conversation counts only what the policy said:
    tool messages are left out, so a number a tool returned is not taken for the policy's answer.
    """
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        if message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content") or ""
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(parts)


def _parse_number(text: str) -> Fraction | None:
    try:
        return Fraction(text.strip().rstrip(".").replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def extract_final_number(text: str) -> Fraction | None:
    """The first number after the last ``####`` if there is one, else the last number in the text."""
    if "####" in text:
        match = _NUMBER.search(text.rsplit("####", 1)[1])
        return _parse_number(match.group()) if match else None
    matches = _NUMBER.findall(text)
    return _parse_number(matches[-1]) if matches else None


def checks_reference(column: str, problem: Callable[[Any], str | None]) -> Callable[[F], F]:
    """Mark a reward function as reading its reference answer from ``column``, with ``problem(value)`` saying why it
    cannot use a value (``None``: it can). Checked on the whole data before training
    (:func:`lit_align.rewards.signal.check_references`), which names the rows. A verifier class gives the two
    attributes itself (``reference_column``, ``reference_problem``)."""

    def mark(func: F) -> F:
        func.reference_column, func.reference_problem = column, problem  # type: ignore[attr-defined]
        return func

    return mark


def _integer_reference_problem(reference: Any) -> str | None:
    if isinstance(reference, bool) or _parse_number(str(reference)) is None:
        return "not a number; expected one number such as 42, -3 or 1,234"
    return None


@checks_reference("answer", _integer_reference_problem)
def arithmetic_answer_reward(
    prompts: list, completions: list[Completion], answer: list[str | int | None], **kwargs: Any
) -> list[float | None]:
    """1.0 where the completion's final number equals ``answer``, 0.0 otherwise; None (no opinion) where the row has
    no answer, or one that is not a number (reported once, with the rows, before training)."""
    rewards: list[float | None] = []
    for completion, target in zip(completions, answer, strict=True):
        expected = None if target is None or isinstance(target, bool) else _parse_number(str(target))
        if expected is None:
            rewards.append(None)
            continue
        got = extract_final_number(completion_text(completion))
        rewards.append(float(got == expected))
    return rewards


def format_reward(prompts: list, completions: list[Completion], **kwargs: Any) -> list[float | None]:
    """1.0 where the completion is just a number (the format the arithmetic prompts ask for), else 0.0.

    Surrounding whitespace, a leading minus, thousands commas and one trailing period are allowed.
    """
    return [float(_JUST_A_NUMBER.fullmatch(completion_text(c).strip()) is not None) for c in completions]


def exact_match_reward(
    prompts: list, completions: list[Completion], answer: list[str | None], **kwargs: Any
) -> list[float | None]:
    """1.0 where the stripped, case-folded completion equals the stripped, case-folded ``answer``."""
    return [
        None if target is None else float(completion_text(c).strip().casefold() == str(target).strip().casefold())
        for c, target in zip(completions, answer, strict=True)
    ]


_TAG_NAME = re.compile(r"[A-Za-z_][\w.-]*")


class FormatReward:
    """``reward(prompts, completions, **kwargs) -> list[float]``: 1.0 where the completion has the required
    format, else 0.0 (never None). Give exactly one of ``tags`` and ``pattern``.

    With ``tags`` (e.g. ``["think", "answer"]``, DeepSeek-R1's format) each ``<tag>...</tag>`` block
    must appear exactly once, in the given order, with non-blank content and no nesting of itself;
    ``strict`` also forbids any text but whitespace around and between the blocks. The check is a
    linear scan (``str.find``), no regular expression, so it is fast on any output. When the chat
    template already opens ``<think>`` in the prompt (Qwen3, DeepSeek-R1 distills), the completion
    starts inside the block: use a ``pattern`` such as ``(?s).*</think>\\s*<answer>.+</answer>``.

    With ``pattern`` the whole stripped completion must match it (``strict``; ``re.fullmatch``) or the
    pattern must occur in it (``re.search``), with ``re.DOTALL``. The pattern comes from the config
    and is trusted; a pattern with nested quantifiers can backtrack for long on adversarial output.

    Args:
        tags: required tag names, in order.
        pattern: a regular expression instead of tags.
        strict: tags: nothing but whitespace outside the blocks; pattern: full match rather than search.
        name: the metric name (``rewards/<name>/mean``).
    """

    def __init__(
        self,
        tags: list[str] | None = None,
        pattern: str | None = None,
        strict: bool = True,
        name: str = "format_reward",
    ) -> None:
        if (tags is None) == (pattern is None):
            raise OptionError("FormatReward: give exactly one of tags and pattern")
        if tags is not None and (
            not tags or not all(_TAG_NAME.fullmatch(t) for t in tags) or len(set(tags)) < len(tags)
        ):
            raise OptionError(f"FormatReward: tags must be distinct names like 'think', got {tags!r}")
        self.tags = None if tags is None else list(tags)
        self.pattern, self.strict = pattern, strict
        self.name = self.__name__ = name  # __name__ names the metric; every init arg is an attribute
        try:
            self._regex = re.compile(pattern, re.DOTALL) if pattern is not None else None
        except re.error as err:
            raise OptionError(f"FormatReward: pattern {pattern!r} is no regular expression ({err})") from err

    def __repr__(self) -> str:
        what = f"tags={self.tags!r}" if self.tags is not None else f"pattern={self.pattern!r}"
        return f"FormatReward({what}, strict={self.strict}, name={self.__name__!r})"

    def __call__(self, prompts: list[Any], completions: list[Completion], **kwargs: Any) -> list[float | None]:
        return [float(self.matches(completion_text(c))) for c in completions]

    def matches(self, text: str) -> bool:
        """Whether ``text`` has the required format."""
        if self._regex is not None:
            return (self._regex.fullmatch(text.strip()) if self.strict else self._regex.search(text)) is not None
        position = 0
        for tag in self.tags or []:
            opening, closing = f"<{tag}>", f"</{tag}>"
            if text.count(opening) != 1 or text.count(closing) != 1:
                return False
            start = text.find(opening, position)
            end = text.find(closing, start)
            if start < 0 or end < 0 or not text[start + len(opening) : end].strip():
                return False
            if self.strict and text[position:start].strip():
                return False
            position = end + len(closing)
        return not (self.strict and text[position:].strip())


_THINK_ANSWER = FormatReward(tags=["think", "answer"], name="think_answer_format_reward")


def think_answer_format_reward(prompts: list[Any], completions: list[Completion], **kwargs: Any) -> list[float | None]:
    """1.0 where the completion is ``<think>...</think>`` then ``<answer>...</answer>`` and nothing else
    (DeepSeek-R1's format; :class:`FormatReward` with ``tags=["think", "answer"]``), else 0.0."""
    return _THINK_ANSWER(prompts, completions, **kwargs)


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalize_text(text: str, articles: bool = True, punctuation: bool = True) -> str:
    """SQuAD's answer normalization (Rajpurkar et al. 2016, the official evaluation script), Unicode-aware.

    NFKC-normalized and case-folded; punctuation and symbols (every character that is neither a
    letter, a digit nor whitespace, and ``_``) removed, not replaced by a space, as SQuAD does (``U.S.A.``
    becomes ``usa``, ``3.5`` becomes ``35``); the English articles a, an, the removed as words; runs
    of whitespace collapsed to one space and the ends stripped.

    Args:
        text: the string to normalize.
        articles: remove the articles.
        punctuation: remove punctuation and symbols.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    if punctuation:
        text = _PUNCTUATION.sub("", text)
    if articles:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


class NormalizedMatchReward:
    """``reward(prompts, completions, **columns) -> list[float | None]``: 1.0 where the normalized completion
    (:func:`normalize_text`) equals the normalized reference, 0.0 where not, None where the row has no
    reference. A reference may be a list of acceptable answers (aliases); any one matching counts.

    With ``tag`` set, only the content of the completion's last ``<tag>...</tag>`` block is compared
    (none: 0.0). A reference with nothing left once normalized (``"..."``) or not text gets None (no opinion):
    it would score every completion wrong (:meth:`reference_problem`; reported with its rows before training).

    Args:
        column: the dataset column holding the reference answer (a string or a list of strings).
        tag: compare only the last ``<tag>...</tag>`` block's content (e.g. ``"answer"``).
        articles: remove the articles a, an, the before comparing.
        punctuation: remove punctuation and symbols before comparing.
        name: the metric name (``rewards/<name>/mean``).
    """

    def __init__(
        self,
        column: str = "answer",
        tag: str | None = None,
        articles: bool = True,
        punctuation: bool = True,
        name: str = "normalized_match_reward",
    ) -> None:
        if tag is not None and not _TAG_NAME.fullmatch(tag):
            raise OptionError(f"NormalizedMatchReward: tag must be a name like 'answer', got {tag!r}")
        self.column, self.tag, self.articles, self.punctuation = column, tag, articles, punctuation
        self.name = self.__name__ = name  # __name__ names the metric; every init arg is an attribute

    def __repr__(self) -> str:
        return (
            f"NormalizedMatchReward(column={self.column!r}, tag={self.tag!r}, articles={self.articles}, "
            f"punctuation={self.punctuation}, name={self.__name__!r})"
        )

    @property
    def reference_column(self) -> str:
        return self.column

    def reference_problem(self, reference: Any) -> str | None:
        """Why a reference cannot be matched (``None``: it can): not text, or nothing left once normalized."""
        aliases = [reference] if isinstance(reference, str | int | float) else reference
        if isinstance(reference, bool) or not isinstance(aliases, list | tuple):
            return f"a {type(reference).__name__}; expected a string or a list of acceptable strings"
        if not {normalize_text(str(a), self.articles, self.punctuation) for a in aliases} - {""}:
            return "nothing is left of it once normalized, so no completion can match it"
        return None

    def _answer_text(self, text: str) -> str | None:
        if self.tag is None:
            return text
        end = text.rfind(f"</{self.tag}>")
        start = text.rfind(f"<{self.tag}>", 0, max(end, 0))
        return text[start + len(self.tag) + 2 : end] if end >= 0 and start >= 0 else None

    def __call__(self, prompts: list[Any], completions: list[Completion], **kwargs: Any) -> list[float | None]:
        if self.column not in kwargs:
            raise DataError(f"{self.__name__}: no {self.column!r} column among {sorted(kwargs)}")
        rewards: list[float | None] = []
        for completion, reference in zip(completions, kwargs[self.column], strict=True):
            if reference is None:
                rewards.append(None)
                continue
            if self.reference_problem(reference) is not None:  # reported once, with the rows, before training
                rewards.append(None)
                continue
            aliases = [reference] if isinstance(reference, str | int | float) else list(reference)
            targets = {normalize_text(str(a), self.articles, self.punctuation) for a in aliases} - {""}
            answer = self._answer_text(completion_text(completion))
            got = None if answer is None else normalize_text(answer, self.articles, self.punctuation)
            rewards.append(float(got in targets))
        return rewards


_NORMALIZED_MATCH = NormalizedMatchReward()


@checks_reference("answer", _NORMALIZED_MATCH.reference_problem)
def normalized_match_reward(prompts: list[Any], completions: list[Completion], **kwargs: Any) -> list[float | None]:
    """:class:`NormalizedMatchReward` with its defaults: the whole completion against ``answer``."""
    return _NORMALIZED_MATCH(prompts, completions, **kwargs)
