"""utils.malloc: threads allocate from glibc's main arena, as the main thread does, instead of
arenas of their own (whose capped heaps map fresh pages for a render's large temporaries), and
a training step's large blocks come from the heap, which reuses them."""

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


HEAP = """
import ctypes, ctypes.util, sys
sys.path.insert(0, {repo!r})
import torch
from utils.cli import run_cli
from utils.malloc import M_MMAP_THRESHOLD, MMAP_THRESHOLD, _mallopt
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
def mapped(argv=None):
    grad = torch.empty(7 << 20)  # 28 MiB: the planes' gradient of a 385-node grid
    print(libc.mallinfo2().hblkhd >> 20)  # MiB in blocks mapped on their own
    return 0
def kept(argv=None):
    before = libc.mallinfo2().arena
    grad = torch.empty(7 << 20)
    del grad  # freed at the heap's top
    print((libc.mallinfo2().arena - before) >> 20)  # MiB the heap grew by and still holds
    return 0
probe, mode = {{"mapped": mapped, "kept": kept}}[sys.argv[1]], sys.argv[2]
if mode == "entry point":  # as train.py, view.py, render.py and eval.py run
    run_cli(probe, [])
else:
    if mode == "mmap threshold only":
        _mallopt()(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    probe()
"""


def heap_mib(probe: str, mode: str) -> int:
    code = HEAP.format(repo=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, probe, mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_training_step_sized_block_comes_from_the_heap_in_every_entry_point():
    assert heap_mib("mapped", "default") >= 28  # mapped on its own: fresh pages, each faulting
    assert heap_mib("mapped", "entry point") < 28  # utils.cli.run_cli: from the heap, reused


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_heap_keeps_a_freed_step_sized_block_for_the_next_step():
    # glibc trims only a free block at the heap's top, and another allocation may land above
    # it: the control hands it back in about half of the runs (the first of ten that does is
    # enough), the entry point keeps it in every run (five: without its trim threshold one of
    # them would almost surely trim)
    assert any(heap_mib("kept", "mmap threshold only") < 28 for _ in range(10))
    assert min(heap_mib("kept", "entry point") for _ in range(5)) >= 28  # run_cli's trim
