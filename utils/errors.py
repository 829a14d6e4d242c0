"""Every error a user can cause, in one place. Entry points print the message (one sentence
naming the cause and the fix) and exit with code 2 (utils/cli.py)."""


class ConfigError(ValueError):
    """A configuration mistake the user can fix; entry points print it and exit with code 2."""


class DataError(ValueError):
    """Bad input data a user can fix (path, image, pose file). The message is one sentence
    naming the cause and the fix; entry points print it and exit with code 2."""


class CheckpointError(ValueError):
    """A missing, corrupt or mismatching checkpoint; entry points print it and exit with 2."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); exit code 2, last good checkpoint kept."""


class Interrupted(Exception):
    """Ctrl-C: latest.pt was saved at the last completed step."""
