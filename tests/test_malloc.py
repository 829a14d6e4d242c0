"""utils.malloc: threads allocate from glibc's main arena, as the main thread does, instead of
arenas of their own (whose capped heaps map fresh pages for a render's large temporaries)."""

import subprocess
import sys

import pytest
from conftest import REPO

PROBE = """
import ctypes, ctypes.util, sys, threading
sys.path.insert(0, {repo!r})
import numpy as np
from utils.malloc import one_malloc_arena
if sys.argv[1] == "one":
    assert one_malloc_arena()
def work():
    for _ in range(10):
        a = np.ones(1 << 18)  # 2 MiB, through malloc
        del a
t = threading.Thread(target=work)
t.start()
t.join()
sys.stderr.flush()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()  # one block per arena, on stderr
"""


def arenas(mode: str) -> int:
    code = PROBE.format(repo=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stderr.count("Arena ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_thread_allocates_from_the_main_arena():
    assert arenas("default") >= 2  # the thread got an arena of its own
    assert arenas("one") == 1
