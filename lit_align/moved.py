"""Import paths from before the layout by concern (lit-align 0.1's flat modules), kept working with a warning.

``from lit_align.sampling import GenerationOptions``, ``import lit_align.algorithms.online`` or a config's
``class_path: lit_align.preemption.StopOnSignal`` still import: the old module name is a stand-in whose attributes
are its new home's, and the first use warns (``FutureWarning``) with the path to write instead. ``lit_align.models``
and ``lit_align.reference`` are packages now; they still give the names their modules had (``from lit_align.models
import load_model``), without a warning: jsonargparse looks classes up in their parent packages, and a warning
there would reach every command line. Checkpoints hold plain data only, so none names a moved module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Any

# old module -> its new home (and, for names that left it, the modules they went to)
MOVED: dict[str, tuple[str, ...]] = {
    "lit_align.model_files": ("lit_align.models.files",),
    "lit_align.logprobs": ("lit_align.models.logprobs",),
    "lit_align.lm_head": ("lit_align.models.lm_head",),
    "lit_align.packing": ("lit_align.models.packing",),
    "lit_align.shared_prefix": ("lit_align.models.shared_prefix",),
    "lit_align.fused": ("lit_align.models.fused",),
    "lit_align.sharding": ("lit_align.models.sharding",),
    "lit_align.host_memory": ("lit_align.models.host_memory",),
    "lit_align.sampling": ("lit_align.rollouts.sampling",),
    "lit_align.vllm_backend": ("lit_align.rollouts.vllm",),
    "lit_align.rollout": ("lit_align.rollouts.record", "lit_align.rollouts.hf", "lit_align.rollouts.sampling",
                          "lit_align.models.sharding"),
    "lit_align.reference_cache": ("lit_align.reference.cache",),
    "lit_align.objective": ("lit_align.training.objective",),
    "lit_align.algorithms.base": ("lit_align.training.base",),
    "lit_align.algorithms.offline": ("lit_align.training.offline",),
    "lit_align.algorithms.online": ("lit_align.training.online",),
    "lit_align.algorithms.updates": ("lit_align.training.online",),
    "lit_align.algorithms.critic": ("lit_align.training.critic",),
    "lit_align.algorithms.self_play": ("lit_align.training.self_play",),
    "lit_align.console": ("lit_align.callbacks.console", "lit_align.metrics"),
    "lit_align.preemption": ("lit_align.callbacks.preemption",),
    "lit_align.cli": ("lit_align.commands.cli",),
    "lit_align.evaluation": ("lit_align.commands.evaluation", "lit_align.commands.report"),
    "lit_align.generation": ("lit_align.commands.generation",),
    "lit_align.runs": ("lit_align.models.runs",),
    "lit_align.commands.runs": ("lit_align.models.runs",),
    "lit_align.plot": ("lit_align.commands.plot",),
}  # fmt: skip


def warn_moved(old: str, new: str, stacklevel: int) -> None:
    """Warn where the user's code (or config) names ``old``: ``stacklevel`` frames above the caller."""
    warnings.warn(f"{old} is now {new}: import it from there (the old path goes in lit-align 0.2)", FutureWarning,
                  stacklevel=stacklevel + 1)  # fmt: skip


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        homes = [importlib.import_module(home) for home in MOVED[self.__name__]]
        holding = [home for home in homes if hasattr(home, name)]
        if holding:  # named where it is defined when one of the homes defines it, else by the first that has it
            value = getattr(holding[0], name)
            home = next((h for h in holding if getattr(value, "__module__", None) == h.__name__), holding[0])
            warn_moved(f"{self.__name__}.{name}", f"{home.__name__}.{name}", stacklevel=2)
            setattr(self, name, value)  # warned once
            return value
        raise AttributeError(f"module {self.__name__!r} (now {MOVED[self.__name__][0]}) has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted({n for home in MOVED[self.__name__] for n in dir(importlib.import_module(home))})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: asked only for names no file answers."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _StandIn(spec.name, f"moved to {MOVED[spec.name][0]}")

    def exec_module(self, module: types.ModuleType) -> None:
        importlib.import_module(MOVED[module.__name__][0])  # a home that cannot import fails here, by its own name


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
