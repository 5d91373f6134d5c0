"""What tokenization changed, counted: rows per status (``ok``, ``truncated``, a drop) and per remark, with the first
row numbers of each, and the sentence the DataModules log about them (:class:`~lit_align.datamodules.base.
TokenizedDataModule`)."""

from __future__ import annotations

from collections import Counter

DROPPED = ("dropped", "chosen_equals_rejected", "completion_repeats_prompt")  # statuses that leave the data
FIRST_ROWS = 5  # row numbers a report names per status or remark


def count_remarks(statuses: list[str], notes: list[str], rows: list[int]) -> tuple[Counter, dict[str, list[int]]]:
    """Rows per status and remarks per kind (``notes``: comma-separated per row), and the first
    :data:`FIRST_ROWS` row numbers of each but ``ok``. A status that drops its row is counted under its name with
    `` (dropped)``, so a remark of the same name on kept rows stays apart."""
    counts: Counter[str] = Counter()
    first: dict[str, list[int]] = {}
    for status, remarks, row in zip(statuses, notes, rows, strict=True):
        for key in [f"{status} (dropped)" if status in DROPPED else status, *(r for r in remarks.split(",") if r)]:
            counts[key] += 1
            if key != "ok" and len(named := first.setdefault(key, [])) < FIRST_ROWS and row not in named:
                named.append(row)
    return counts, first


def remarks_text(counts: Counter, rows: dict[str, list[int]]) -> str:
    """``4 empty_completions (rows 4, 10, 13, 41), 2 chosen_equals_rejected (dropped; rows 6, 8) (rows 1-based)``:
    every count but ``ok``, with its first rows (``...`` when there are more), numbered from 1 as every message
    numbers rows (``rows`` holds 0-based indices)."""
    parts = []
    for key, count in counts.items():
        if key == "ok":
            continue
        named = rows.get(key, [])
        listed = ", ".join(str(row + 1) for row in named) + (", ..." if count > len(named) else "")
        which = f"row{'s' if len(named) > 1 or count > 1 else ''} {listed}"
        name, dropped = key.removesuffix(" (dropped)"), key.endswith(" (dropped)")
        parts.append(f"{count} {name} ({'dropped; ' if dropped else ''}{which})")
    return ", ".join(parts) + " (rows 1-based)" if parts else ""
