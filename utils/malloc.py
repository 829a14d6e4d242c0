"""glibc's allocator, set once per process so that threads allocate like the main thread.

A thread other than the main one allocates from its own glibc arena, whose heaps are capped at
64 MiB: the large, short-lived tensors of a render (tens of MiB per chunk of rays) are then
mapped and unmapped on every use, and each new page faults and is zeroed again. A viewer's
render thread took tens of thousands of page faults a fern frame, where the main thread took a
handful, and rendered it 10-30% slower (other scenes' renders need not hit it: flower's and
horns' did not). With one arena every thread shares the main heap, whose freed memory is
reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # mallopt's parameter (malloc.h)


def one_malloc_arena() -> bool:
    """Every thread allocates from the main arena from now on (glibc; call it before the
    program starts its threads). False where the C library is not glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_ARENA_MAX, 1))
