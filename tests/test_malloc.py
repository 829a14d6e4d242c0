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
from utils.cli import run_cli
def work():
    for _ in range(10):
        a = np.ones(1 << 18)  # 2 MiB, through malloc
        del a
def threaded(argv=None):
    t = threading.Thread(target=work)
    t.start()
    t.join()
    return 0
if sys.argv[1] == "one":
    assert one_malloc_arena()
if sys.argv[1] == "entry point":  # as train.py, view.py, render.py and eval.py run
    assert run_cli(threaded, []) == 0
else:
    threaded()
sys.stderr.flush()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()  # one block per arena, on stderr
"""


def arenas(mode: str) -> int:
    code = PROBE.format(repo=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stderr.count("Arena ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_thread_allocates_from_the_main_arena_in_every_entry_point():
    assert arenas("default") >= 2  # the thread got an arena of its own
    assert arenas("one") == 1
    assert arenas("entry point") == 1  # utils.cli.run_cli sets it before the program runs
