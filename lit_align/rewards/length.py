"""Length shaping: DAPO's soft overlong punishment as a reward function with TRL's signature.

Yu et al. 2025, "DAPO: an Open-Source LLM Reinforcement Learning System at Scale", eq. 13, for a
completion of ``L`` tokens, maximum length ``L_max`` and punishment interval ``L_cache``::

    R_length = 0                                  if L <= L_max - L_cache
             = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
             = -1                                 if L > L_max

It is added to the correctness reward (weight 1 in DAPO), so a long answer loses reward gradually
instead of the cliff that truncation gives. DAPO used ``L_max = 20480`` and ``L_cache = 4096`` (an
expected maximum of 16,384 tokens); set ``L_max`` to the generation limit (``max_new_tokens``) or
below it, since a completion cut at ``max_new_tokens`` is never longer than that.

``L`` is ``len(completion_ids[i])`` as the trainer passes it (lit_align's online modules and TRL:
the completion's tokens up to and including the first EOS, without padding). Without
``completion_ids`` (a direct call on texts) ``L`` is the completion's character count, a rule that
needs no tokenizer: for byte-level tokenizers and byte-level BPE on ASCII text it is never below the
token count, so the penalty is never milder than with real tokens, but usually much harsher.
"""

from __future__ import annotations

from typing import Any

from lit_align.errors import OptionError
from lit_align.rewards.verifiers import Completion, completion_text


def soft_overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """DAPO eq. 13 for one completion of ``length`` tokens (see the module docstring); in [-1, 0]."""
    if length <= max_length - cache_length:
        return 0.0
    if length <= max_length:
        return (max_length - cache_length - length) / cache_length
    return -1.0


class OverlongPenalty:
    """``reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]``: DAPO's soft overlong
    punishment (:func:`soft_overlong_penalty`), 0 for short completions down to -1 past ``max_length``.

    Args:
        max_length: ``L_max``, in tokens: longer completions get -1.
        cache_length: ``L_cache``, in tokens: the penalty falls linearly from 0 to -1 over the last
            ``cache_length`` tokens up to ``max_length`` (0: no soft interval, only the -1 past ``max_length``).
        name: the metric name (``rewards/<name>/mean``).
    """

    def __init__(self, max_length: int = 20480, cache_length: int = 4096, name: str = "overlong_penalty") -> None:
        if not 0 <= cache_length <= max_length:
            raise OptionError(f"need 0 <= cache_length <= max_length, got {cache_length} and {max_length}")
        self.max_length, self.cache_length = max_length, cache_length
        self.name = self.__name__ = name  # __name__ names the metric; every init arg is an attribute

    def __repr__(self) -> str:
        lengths = f"max_length={self.max_length}, cache_length={self.cache_length}"
        return f"OverlongPenalty({lengths}, name={self.__name__!r})"

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Completion],
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if completion_ids is None:
            lengths = [len(completion_text(c)) for c in completions]
        else:
            lengths = [len(ids) for _, ids in zip(completions, completion_ids, strict=True)]
        return [soft_overlong_penalty(n, self.max_length, self.cache_length) for n in lengths]


_DEFAULT = OverlongPenalty()


def overlong_penalty(
    prompts: list[Any], completions: list[Completion], completion_ids: list[list[int]] | None = None, **kwargs: Any
) -> list[float | None]:
    """:class:`OverlongPenalty` with DAPO's lengths (``L_max`` 20480, ``L_cache`` 4096); configure the class
    for shorter generations."""
    return _DEFAULT(prompts, completions, completion_ids, **kwargs)
