"""Keep the encoder's freed activations in the process (glibc's malloc).

glibc gives a freed block back to the OS when it was mapped on its own (allocations
over M_MMAP_THRESHOLD) or when the free space at the heap's top passes M_TRIM_THRESHOLD.
The network allocates and frees megabytes of activations in every pass, so by default
each pass maps and page-faults them anew. With both thresholds raised they stay in the
heap: on the 2-core EPYC the encoder ran 19-21 -> 25-29 images/s at batch 1 and 16 ->
22-27 at batch 8, at the same peak RSS (fresh processes, same weights, 2026-11-27).
Raising one alone does not help: the trim threshold alone turns off glibc's adaptive
mmap threshold, and every activation is mapped (8 images/s). PyTorch's CPU tuning guide
makes the same point and preloads jemalloc or tcmalloc; this needs no preload.

The server encodes in a worker thread, and glibc gives threads arenas of their own, made
of heaps of at most 64 MB. Kept to the one main arena, 16 clients got 18-21 requests/s
against 14-19 (five alternating pairs of server processes, 2-core EPYC).
"""
from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 << 20

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise both thresholds and keep one arena, once per process; False where the C
    library is not glibc."""
    global _done
    if _done is None:
        _done = platform.libc_ver()[0] == "glibc" and _mallopt()
        log.debug("malloc thresholds %s", "raised" if _done else "left as they are")
    return _done


def _mallopt() -> bool:
    libc = ctypes.CDLL(None)  # the process's own C library
    return (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            and libc.mallopt(M_ARENA_MAX, 1) == 1)
