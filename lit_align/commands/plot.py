"""One scalar of a run's TensorBoard events drawn as a dependency-free SVG (the README's curves): ``lit-align plot
runs/orpo/version_0 train/rewards/margins margins.svg`` (``python recipes/plot.py ...`` in a clone)."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_align.errors import DataError, PathNotFound

W, H, PAD = 640, 320, 48


def read(run_dir: str, tag: str) -> list[tuple[int, float]]:
    """The (step, value) points of scalar ``tag`` in every event file under ``run_dir``, by step."""
    if not Path(run_dir).is_dir():
        raise PathNotFound(f"{run_dir}: no such run directory (expected e.g. runs/orpo/version_0)")
    points: list[tuple[int, float]] = []
    for event_file in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points += [(e.step, e.value) for e in acc.Scalars(tag)]
    if not points:
        found = sorted({t for f in Path(run_dir).rglob("events.out.tfevents.*")
                        for t in EventAccumulator(str(f)).Reload().Tags()["scalars"]})  # fmt: skip
        where = "no TensorBoard event files there" if not found else "its scalars: " + ", ".join(found)
        raise DataError(f"{run_dir}: no scalar {tag!r} ({where})")
    return sorted(points)


def svg(points: list[tuple[int, float]], tag: str, smooth: float = 0.6) -> str:
    steps, values = zip(*points, strict=True)
    ema, smoothed = values[0], []
    for v in values:
        ema = smooth * ema + (1 - smooth) * v
        smoothed.append(ema)
    lo, hi = min(min(values), 0.0), max(values)
    x0, x1 = min(steps), max(steps) or 1

    def xy(step: float, value: float) -> str:
        x = PAD + (step - x0) / max(x1 - x0, 1) * (W - 2 * PAD)
        y = H - PAD - (value - lo) / max(hi - lo, 1e-12) * (H - 2 * PAD)
        return f"{x:.1f},{y:.1f}"

    raw = " ".join(xy(s, v) for s, v in points)
    ema_line = " ".join(xy(s, v) for s, v in zip(steps, smoothed, strict=True))
    zero = xy(x0, 0.0).split(",")[1]
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<line x1="{PAD}" y1="{zero}" x2="{W - PAD}" y2="{zero}" stroke="#bbb" stroke-dasharray="4"/>
<polyline points="{raw}" fill="none" stroke="#9ecae1" stroke-width="1.5"/>
<polyline points="{ema_line}" fill="none" stroke="#08519c" stroke-width="2.5"/>
<text x="{PAD}" y="20">{tag} (light: per step, dark: EMA {smooth})</text>
<text x="{PAD}" y="{H - 12}">step {x0}</text><text x="{W - PAD - 60}" y="{H - 12}">step {x1}</text>
<text x="4" y="{PAD}">{hi:.3f}</text><text x="4" y="{H - PAD}">{lo:.3f}</text>
</svg>
"""


def plot(run: str, metric: str, out: str, smooth: float = 0.6) -> None:
    """Draw one logged scalar of a run as an SVG line chart: each step's value (light) and its exponential moving
    average (dark).

    Args:
        run: the run's log directory (``runs/orpo/version_0``), searched for TensorBoard event files.
        metric: the scalar's tag as logged (``train/rewards/margins``, ``val/loss``).
        out: the SVG file to write.
        smooth: the moving average's weight of the past, in [0, 1).
    """
    Path(out).write_text(svg(read(run, metric), metric, smooth), encoding="utf-8")
    print(f"wrote {out}")
