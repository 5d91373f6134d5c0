"""A tool-free environment, so single-turn rows can share a run with a game's rows (each row's ``environment``
column picks its own): ``--model.tools.environment '{guess: lit_align.tools.games:GuessTheNumber, plain:
bench.distill_runs.envs:NoTools}'``."""

from __future__ import annotations

from typing import Any


class NoTools:
    """No tools, no reward: the prompt is answered in one turn, as without tools."""

    def reset(self, **row: Any) -> None:
        return None
