"""glibc's allocator, set once per process: threads allocate like the main thread, and the
large blocks a training step frees are reused instead of handed back to the kernel.

A thread other than the main one allocates from its own glibc arena, whose heaps are capped at
64 MiB: the large, short-lived tensors of a render (tens of MiB per chunk of rays) are then
mapped and unmapped on every use, and each new page faults and is zeroed again. A viewer's
render thread took tens of thousands of page faults a fern frame, where the main thread took a
handful, and rendered it 10-30% slower (other scenes' renders need not hit it: flower's and
horns' did not). With one arena every thread shares the main heap, whose freed memory is
reused.

The main thread paid the same on its own: a block over glibc's mmap threshold (128 KiB at the
start, raised only as such blocks are freed) is mapped afresh each time it is allocated, and
the heap hands its free top back to the kernel past the trim threshold; either way the next
use faults every page in again. A training step's largest block is the gradient of the grid's
planes (28 MiB at 385 nodes, zero-filled every step). Blocks up to 32 MiB (glibc's largest
mmap threshold on 64-bit) come from the heap, and the heap keeps up to 1 GiB of freed memory:
both are needed, as the mmap threshold alone puts the block in the heap only for the default
trim to hand it back. The process holds on to its
peak heap rather than shrinking after it. CHANGELOG.md has the page faults and step times.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20  # the most glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30


def _mallopt():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt


def one_malloc_arena() -> bool:
    """Every thread allocates from the main arena from now on (glibc; call it before the
    program starts its threads). False where the C library is not glibc (nothing changes)."""
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, 1))


def keep_freed_memory() -> bool:
    """Blocks up to MMAP_THRESHOLD come from the heap and the heap keeps what is freed (up to
    TRIM_THRESHOLD at its top), so a step's large temporaries reuse pages already mapped.
    False where the C library is not glibc (nothing changes)."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mapped = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    trimmed = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))  # set whatever the first gave
    return mapped and trimmed


def tune_malloc() -> bool:
    """one_malloc_arena and keep_freed_memory, once at an entry point's start (both applied
    whatever the first returns)."""
    arena, kept = one_malloc_arena(), keep_freed_memory()
    return arena and kept
