"""Per-step scalars of a run's TensorBoard logs: python bench/tools_runs/curves.py RUN_DIR [tag-substring ...]."""
import sys
from collections import defaultdict

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
wanted = sys.argv[2:] or ["reward", "tools/", "loss", "completion_length", "learning_rate"]
tags = [t for t in acc.Tags()["scalars"] if any(w in t for w in wanted)]
table = defaultdict(dict)
for tag in tags:
    for e in acc.Scalars(tag):
        table[e.step][tag] = e.value
print("step\t" + "\t".join(tags))
for step in sorted(table):
    print(f"{step}\t" + "\t".join(f"{table[step][t]:.4g}" if t in table[step] else "" for t in tags))
