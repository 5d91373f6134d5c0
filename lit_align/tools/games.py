"""GuessTheNumber: a multi-turn environment with its own reward, in TRL 1.16's environment shape (``reset``, public
methods as tools, ``get_reward``), used by ``recipes/configs/examples/grpo_guess_number.yaml`` and its RLOO twin."""

from __future__ import annotations

import random
from typing import Any


class GuessTheNumber:
    """The environment thinks of a whole number in ``[low, high]`` (the row's ``low`` / ``high`` columns, else 1 and
    16; a ``secret`` column fixes the number, else it is drawn with ``random``, seeded per rollout); the policy finds
    it with the ``guess`` tool, which answers higher, lower or correct.

    Reward (:meth:`get_reward`): 1 for finding it, less 0.1 for each guess after the first (at least 0.5); without
    finding it, up to 0.4 for how close the last guess came; 0 without any guess.
    """

    def __init__(self) -> None:
        self.low, self.high, self.secret = 1, 16, 1
        self.guesses: list[int] = []
        self.solved = False

    def reset(self, **row: Any) -> str:
        self.low, self.high = int(row.get("low", 1)), int(row.get("high", 16))
        self.secret = int(row["secret"]) if row.get("secret") is not None else random.randint(self.low, self.high)
        self.guesses, self.solved = [], False
        return (f"\nI am thinking of a whole number from {self.low} to {self.high}. Find it with the guess tool: it "
                "answers higher, lower or correct.")  # fmt: skip

    def guess(self, number: int) -> str:
        """Guess the secret number.

        Args:
            number: the guess, a whole number in the range.

        Returns:
            "correct", "higher" (the secret is higher) or "lower".
        """
        if self.solved:
            return "You already found it."
        if isinstance(number, bool) or not isinstance(number, int | float) or int(number) != number:
            raise ValueError(f"the guess must be a whole number, got {number!r}")
        number = int(number)
        self.guesses.append(number)
        if number == self.secret:
            self.solved = True
            return "correct"
        return "higher" if self.secret > number else "lower"

    def get_reward(self) -> float:
        if self.solved:
            return max(0.5, 1.0 - 0.1 * (len(self.guesses) - 1))
        if not self.guesses:
            return 0.0
        return 0.4 * (1 - abs(self.guesses[-1] - self.secret) / max(1, self.high - self.low))
