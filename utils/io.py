"""The one atomic write: a temporary file beside the target, renamed over it when complete, so a
crash (or Ctrl-C) never leaves a half-written checkpoint, cache or metrics file in place of the
last good one, and two processes writing the same cache never see each other's partial file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def temporary_beside(path: str | Path) -> Path:
    """A fresh, unused path in `path`'s folder to write `path` under before renaming it there
    (same suffix, so writers that look at the extension still work). Creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.unlink(name)  # writers that refuse an existing file (SQLite databases) get a free name
    return Path(name)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path in `path`'s folder (temporary_beside); when the block
    completes it is renamed to `path`, when it raises the temporary file is removed and `path`
    is left as it was. Creates the folder if needed."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call write(f) on a binary file that becomes `path` once write returns
    (torch.save, np.savez, PIL's Image.save with a format, ...)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))
