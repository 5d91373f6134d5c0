"""Lightning callbacks a Trainer holds (the recipes add them; add them to your own Trainer too).

    export.py      HFExport: the trained policy saved in Hugging Face format at the end of fit
    console.py     ConsoleSummary (plain step lines, validation results, the end-of-fit summary), StepProgressBar, and
                   quiet() (the noise a run does not need)
    preemption.py  StopOnSignal: SIGTERM, SIGINT and SIGUSR1 save a checkpoint at the step and exit non-zero

``lit_align.callbacks.HFExport`` (and the other three) is the path configs name.
"""

from lit_align.callbacks.console import ConsoleSummary, StepProgressBar
from lit_align.callbacks.export import HFExport
from lit_align.callbacks.preemption import StopOnSignal

__all__ = ["ConsoleSummary", "HFExport", "StepProgressBar", "StopOnSignal"]
