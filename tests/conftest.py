import os
from pathlib import Path

import pytest

from utils.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"

# Two CPU threads: the machine CI runs on; also keeps runs comparable.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# A tiny, fast configuration of the demo scene for end-to-end tests: photometric joint training
# of field and cameras (configs/demo.yaml's track bundle adjustment needs larger images; tests
# that exercise tracks turn them on themselves).
TINY = [
    "--model:encoding",
    "frequency",
    "--model:occupancy",
    "false",
    "--training:w_track",
    "0",
    "--training:w_distortion",
    "0",
    "--tracks:ba_iters",
    "0",
    "--cameras:freeze_after",
    "null",
    "--model:barf_c2f",
    "[0.0, 0.5]",
    "--data:demo_size",
    "[48, 36]",
    "--data:demo_views",
    "8",
    "--model:net_depth",
    "2",
    "--model:net_width",
    "32",
    "--model:skips",
    "[]",
    "--model:pos_enc_levels",
    "4",
    "--model:dir_enc_levels",
    "2",
    "--model:n_samples",
    "16",
    "--training:n_rays",
    "256",
    "--training:progress_bar",
    "false",
    "--training:print_every",
    "5",
    "--training:image_every",
    "0",
    "--training:eval_at_end",
    "false",
    "--device",
    "cpu",
    # float32 on every host: with auto a CPU with AVX512-BF16 would train the frequency MLP in
    # bf16, and the tests' tolerances were set on float32 (the bf16 path has its own tests)
    "--training:autocast",
    "none",
]


def demo_args(root: Path, *extra) -> list[str]:
    """train.py arguments for a tiny demo run logging under root (the demo scene cached there
    too), then `extra`."""
    args = ["--config", REPO / "configs" / "demo.yaml", "--log_root", root / "logs"]
    args += ["--data:data_dir", root / "demo_scene", *TINY, *extra]
    return [str(a) for a in args]


@pytest.fixture
def tiny_args(tmp_path):
    """Arguments for a tiny demo run logging under tmp_path (demo scene cached there too)."""
    return demo_args(tmp_path)


def need(path: Path) -> Path:
    """`path`, or skip the test when that data is not available (no ../shared/data)."""
    if not path.exists():
        pytest.skip(f"test data {path} is not available")
    return path


def data_cfg(**overrides):
    """The data section of base.yaml with `overrides` (the one source of defaults)."""
    return load_config(None, {f"data:{k}": v for k, v in overrides.items()}).data
