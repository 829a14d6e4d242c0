"""The one way every entry point turns user errors into one sentence and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from utils.errors import CheckpointError, ConfigError, DataError
from utils.malloc import tune_malloc

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def run_cli(
    run: Callable[[list[str]], int],
    argv: list[str] | None,
    user_errors: tuple[type[Exception], ...] = (),
    interrupted: tuple[type[BaseException], str] | None = None,
) -> int:
    """Call run(argv) (argv defaults to sys.argv[1:]); a user error (config, data, checkpoint,
    plus `user_errors`) prints `error: <sentence>` and returns 2; `interrupted` = (exception
    type, message) prints the message and returns 130, and so does a Ctrl-C anywhere else
    (feature extraction, the camera start), with a sentence instead of a traceback. Threads
    allocate from the main heap, which keeps its freed memory (utils.malloc)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    tune_malloc()  # before the entry point starts threads (the viewer's renders)
    try:
        return run(argv)
    except (*USER_ERRORS, *user_errors) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BaseException as err:
        if interrupted is not None and isinstance(err, interrupted[0]):
            print(interrupted[1], file=sys.stderr)
            return 130
        if isinstance(err, KeyboardInterrupt):  # Ctrl-C outside a loop that saves (set-up)
            print("\ninterrupted (Ctrl-C)", file=sys.stderr)
            return 130
        raise
