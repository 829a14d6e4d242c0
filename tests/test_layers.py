"""The package layering holds: every import points strictly down the order below, no source file
is long, and every documented command finds the packages without set_env.sh."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lowest first: a package imports only packages of a lower layer (siblings of one layer do not
# import each other). Entry points (scripts, benchmarks, tests) sit above every package.
LAYERS = [
    ["utils"],
    ["geometry"],
    ["dataio", "models", "losses"],
    ["sfm"],
    ["evaluation"],
    ["engine"],
    ["vis"],
    ["train", "eval", "render", "view", "bench", "tests"],
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
PACKAGES = [name for names in LAYERS[:-1] for name in names]
MAX_LINES = 500


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, those inside functions included; a relative
    import stays inside its own package and is left out."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def upward_imports(package: str) -> list[str]:
    level = LAYER_OF[package]
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            if top in LAYER_OF and top != package and LAYER_OF[top] >= level:
                where = "a sibling of" if LAYER_OF[top] == level else "above"
                bad.append(
                    f"{path.relative_to(REPO)}:{line} imports {module} ({top} is {where} {package})"
                )
    return bad


def test_the_import_walk_sees_nested_and_aliased_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "import numpy as np, engine.trainer\n"
        "from . import sibling\n"
        "def f():\n"
        "    from vis.plot_camera_pose import plot_cameras\n"
        "    class A:\n"
        "        import sfm.colmap as c\n"
    )
    assert sorted(imported_modules(source)) == [
        (1, "engine.trainer"),
        (1, "numpy"),
        (4, "vis.plot_camera_pose"),
        (6, "sfm.colmap"),
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down_the_layers(package):
    assert (REPO / package).is_dir(), f"package {package} is missing"
    bad = upward_imports(package)
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_source_file_is_long():
    long = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > MAX_LINES:
                long.append(f"{path.relative_to(REPO)}: {n} lines")
    assert not long, f"files over {MAX_LINES} lines (split them by concept):\n" + "\n".join(long)


ENTRY_POINTS = [
    "train.py",
    "eval.py",
    "render.py",
    "view.py",
    "vis/plot_camera_pose.py",
    "bench/throughput.py",
    "bench/quality_at_time.py",
    "bench/render_speed.py",
]


# Runs an entry point as `python <script> --help` does (its own folder first on sys.path, no
# PYTHONPATH), then imports every project module the script names, those imported inside its
# functions too (a benchmark imports the trainer only once it runs): --help alone never reaches
# them, so a renamed module or a lost sys.path line would pass it.
DRIVER = """
import importlib, json, runpy, sys
from pathlib import Path
script, wanted = sys.argv[1], json.loads(sys.argv[2])
sys.path[0] = str(Path(script).resolve().parent)
sys.argv = [script, "--help"]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as end:
    if end.code not in (0, None):
        raise
missing = []
for module, names in wanted:
    try:
        found = importlib.import_module(module)
    except ImportError as err:
        missing.append(f"{module} ({err})")
        continue
    for name in names:
        if not hasattr(found, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{name} from {module}")
if missing:
    sys.exit("cannot import " + ", ".join(missing))
"""


def project_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import of a project module in the file, those inside functions
    included; names: what `from module import ...` takes ([] for `import module`)."""
    project = set(LAYER_OF) | {"bench"}
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] in project]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in project:
                found.append((node.module, [a.name for a in node.names]))
    return found


def test_project_imports_are_read_with_their_names(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "import json, engine.trainer\n"
        "from utils.config import load_config as lc, parse_overrides\n"
        "def f():\n"
        "    from bench.throughput import machine\n"
        "    import train\n"
    )
    assert sorted(project_imports(source)) == [
        ("bench.throughput", ["machine"]),
        ("engine.trainer", []),
        ("train", []),
        ("utils.config", ["load_config", "parse_overrides"]),
    ]


def test_entry_points_run_without_set_env():
    """As a user runs them from the repository root with only the venv's python: no PYTHONPATH
    (set_env.sh not sourced); each answers --help and finds every project module it imports.
    Started together: each spends its time importing torch."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = {
        script: subprocess.Popen(
            [sys.executable, "-c", DRIVER, script, json.dumps(project_imports(REPO / script))],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in ENTRY_POINTS
    }
    failed = []
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0 or "usage" not in (out + err).lower():
            tail = (err.strip().splitlines() or ["no output"])[-1]
            failed.append(f"{script} --help: exit {proc.returncode}: {tail}")
    assert not failed, "\n".join(failed)
