"""One writer per experiment: `<exp>/lock.pid`, held by the process that writes the experiment.

train.py holds it from the moment it creates or resumes an experiment until it exits (the
set-up included); eval.py holds it while it writes metrics.json, eval/ and registered/. The file
names the holder (`<pid> <program>`) so that a refusal can say who; the lock itself is an
advisory flock on the open file, which the kernel drops when the process ends however it ends
(SIGKILL, a crash, a power cut), so a lock left behind by a dead process is free and the next
run takes it over. Readers take no lock (render.py, plots): checkpoints and metrics are written
atomically, so they can read while a run trains.

Where flock is missing (no fcntl) or refused (some network filesystems), the pid in the file is
the lock: held while a process of that pid is alive. That is weaker (a pid reused by an
unrelated process looks alive, and two starts at the same instant can both win), but it still
stops the common case of a second command on an experiment that is training.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: the pid-file fallback
    fcntl = None

LOCK_FILE = "lock.pid"
# A holder writes its pid just after it gets the flock, and a probe holds a shared flock for an
# instant: both windows are far shorter than this, so waiting this long never misreports.
SETTLE_S = 0.5

_HELD: dict[str, ExperimentLock] = {}  # this process's locks, by the directory's real path


@dataclass(frozen=True)
class Holder:
    """Who holds an experiment's lock: pid None where the file does not say."""

    pid: int | None
    program: str


class LockHeld(Exception):
    """Another live process holds the lock (`holder`)."""

    def __init__(self, holder: Holder):
        super().__init__(f"held by process {holder.pid} ({holder.program})")
        self.holder = holder


def _key(exp_dir: Path) -> str:
    return os.path.realpath(exp_dir)


def _parse(text: str) -> Holder | None:
    pid, _, program = text.strip().partition(" ")
    try:
        return Holder(int(pid), program or "unknown program")
    except ValueError:
        return None


def _read(fd: int) -> Holder | None:
    try:
        return _parse(os.pread(fd, 256, 0).decode("utf-8", "replace"))
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, another user's
        return True
    except OSError:
        return False
    return True


def _flock(fd: int, shared: bool) -> bool | None:
    """Try to take the flock without waiting: True taken, False held elsewhere, None where this
    system or filesystem has no flock (then the pid in the file is the lock)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None
    return True


def _same_file(path: Path, fd: int) -> bool:
    """Whether `path` still names the open file `fd` (a releasing holder unlinks it, and a lock
    on an unlinked file keeps nobody out)."""
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def lock_holder(exp_dir: str | Path) -> Holder | None:
    """The live process, other than this one, that holds the experiment's lock; None if free."""
    exp_dir = Path(exp_dir)
    if _key(exp_dir) in _HELD:
        return None
    try:
        fd = os.open(exp_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file (or no directory): nobody holds it
        return None
    try:
        deadline = time.monotonic() + SETTLE_S
        while True:
            taken = _flock(fd, shared=True)
            who = _read(fd)
            if taken:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            if taken is None:
                alive = who is not None and who.pid != os.getpid() and _alive(who.pid)
                return who if alive else None
            if who is not None or time.monotonic() > deadline:
                return who or Holder(None, "unknown program")
            time.sleep(0.02)  # it holds the flock and has not written its pid yet
    finally:
        os.close(fd)


class ExperimentLock:
    """The lock of one experiment directory for this process. acquire() takes it (or raises
    LockHeld naming the live holder); release() gives it back and removes the file. Held until
    release() or the end of the process, so a caller releases it in a `finally`."""

    def __init__(self, exp_dir: str | Path, program: str):
        self.exp_dir = Path(exp_dir)
        self.program = program
        self._fd: int | None = None
        self._key = ""

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, log=print) -> None:
        """Take the lock (the directory must exist); nothing to do if this object holds it. A
        lock file left by a process that has ended is taken over, with one line to `log`."""
        if self.held:
            return
        key = _key(self.exp_dir)
        if key in _HELD:  # another part of this process writes it: still a second writer
            raise LockHeld(Holder(os.getpid(), _HELD[key].program))
        path = self.exp_dir / LOCK_FILE
        deadline = time.monotonic() + SETTLE_S
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            taken = _flock(fd, shared=False)
            who = _read(fd)
            if taken is None and who is not None and who.pid != os.getpid() and _alive(who.pid):
                taken = False
            if taken is False:
                os.close(fd)
                if time.monotonic() > deadline:  # not a probe's instant: a real holder
                    raise LockHeld(who or Holder(None, "unknown program"))
                time.sleep(0.02)
                continue
            if _same_file(path, fd):
                break
            os.close(fd)  # its holder released and unlinked it meanwhile: lock the new file
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.program}\n".encode(), 0)
        self._fd, self._key = fd, key
        _HELD[key] = self
        if who is not None and who.pid != os.getpid():
            log(
                f"{self.exp_dir}: process {who.pid} ({who.program}) ended without releasing its "
                "lock; taking it over"
            )

    def release(self) -> None:
        """Give the lock back; removing the file first means a process that opened it meanwhile
        sees, once it gets the flock, that the file is gone and locks a fresh one."""
        if self._fd is None:
            return
        path = self.exp_dir / LOCK_FILE
        if _same_file(path, self._fd):
            path.unlink(missing_ok=True)
        os.close(self._fd)
        _HELD.pop(self._key, None)
        self._fd = None


def _forget_in_child() -> None:
    """A forked child (a worker pool) shares the parent's open lock files: closing its copies
    keeps the lock tied to the parent's life, not to a child that outlives it."""
    for lock in list(_HELD.values()):
        try:
            os.close(lock._fd)
        except OSError:
            pass
        lock._fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
