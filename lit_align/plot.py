"""Plot one scalar from a run's TensorBoard events as a dependency-free SVG (for the README).

python scripts/plot_metric.py runs/orpo/version_0 train/rewards/margins docs/img/orpo_margins.svg
"""

from __future__ import annotations

import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

W, H, PAD = 640, 320, 48


def read(run_dir: str, tag: str) -> list[tuple[int, float]]:
    points: list[tuple[int, float]] = []
    for event_file in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points += [(e.step, e.value) for e in acc.Scalars(tag)]
    if not points:
        raise SystemExit(f"no scalar {tag!r} under {run_dir}")
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


if __name__ == "__main__":
    run_dir, tag, out = sys.argv[1:4]
    Path(out).write_text(svg(read(run_dir, tag), tag), encoding="utf-8")
    print(f"wrote {out}")
