"""Keep freed memory in the process, so a forward pass does not re-fault its buffers every call.

glibc's malloc hands large freed blocks straight back to the kernel (``mmap`` threshold,
heap trimming). oneDNN convolutions allocate megabytes of workspace per call, so with the
defaults every call page-faults them in again: measured here on a 2-core VM, a depthwise
conv of a 32x96x28x28 batch took 21 ms instead of 3 ms, and which of the two a run got
changed from run to run. That noise would swamp the differences a latency table and a
Pareto front exist to show, and it slows training as much. Raising the two thresholds is
what jemalloc/tcmalloc (recommended by PyTorch's CPU performance guide) do by design;
``allocator_description()`` goes into every measurement's environment record.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound on 64-bit systems
_TRIM_THRESHOLD = 1 << 30

_kept = False


def _preloaded_allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    return next((lib for lib in ("jemalloc", "tcmalloc", "mimalloc") if lib in preload), "")


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds once per process; True when they are raised.

    A no-op where the C library is not glibc or another allocator is preloaded.
    """
    global _kept
    if _kept:
        return True
    if platform.libc_ver()[0] != "glibc" or _preloaded_allocator():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    _kept = bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
                 and libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))
    return _kept


def allocator_description() -> str:
    """Which allocator serves this process, for environment records."""
    preloaded = _preloaded_allocator()
    if preloaded:
        return preloaded
    if platform.libc_ver()[0] != "glibc":
        return "system"
    return "glibc, freed memory kept" if _kept else "glibc defaults"
