"""Give freed host memory back to the operating system after each training step (glibc ``malloc_trim``).

On CPU every activation, gradient and temporary of a step is host memory from glibc's ``malloc``. Tensors above
glibc's mmap threshold are returned to the system when freed, but the threshold is dynamic: after the first
multi-megabyte tensor is freed it rises (up to 32 MB), and from then on activations live in the heap arenas, whose
freed chunks stay resident. The next step then allocates its activations partly beside that retained memory, so
the process's peak resident memory (what an out-of-memory killer or a container limit sees) grows by up to a
step's activations. ``malloc_trim(0)`` after the step hands the free pages back (``MADV_DONTNEED``); the next step
faults them in again as it needs them.

Measured on a DPO step of SmolLM2-135M (fp32, 4 HH pairs; ``docs/measurements.md``): 0.10 GB off the peak
resident memory in one run, 0.37 GB in another (how much freed heap stays resident depends on the order of
allocations), no measurable change in step time (a call on a fresh process took 0.35 ms). The alternative, a
fixed low mmap threshold (``MALLOC_MMAP_THRESHOLD_=131072``), cut the peak further but made steps about 1.5×
slower: every tensor's pages are then faulted in on every allocation. Only glibc has ``malloc_trim``; elsewhere
(macOS, musl) this does nothing. GPU memory is not touched (PyTorch's caching allocator keeps its own pool by design).

Switched by the shared module option ``release_host_memory`` (:class:`~lit_align.training.base.AlignmentModule`).
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` from the C library already loaded in this process, or None where it has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_host_memory() -> bool:
    """Return the C heap's free pages to the system; True if any were released (False also where unsupported)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
