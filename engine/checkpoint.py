"""Checkpoints on disk: atomic writes, clear errors for missing or corrupt files, and the
key filters used by the refine recipe."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from utils.errors import CheckpointError
from utils.io import write_atomic

CHECKPOINT_VERSION = 1


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save through utils.io.write_atomic: a crash never leaves a half-written
    checkpoint in place of the last good one."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (or --load_dir).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for truncated/foreign files
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}); it is corrupt or "
            "truncated: use another checkpoint (ckpts/final.pt or a backup)."
        ) from None
    if (
        not isinstance(ckpt, dict)
        or "model" not in ckpt
        or ckpt.get("version") != CHECKPOINT_VERSION
    ):
        raise CheckpointError(
            f"{path} is not a posefree checkpoint (version {CHECKPOINT_VERSION})."
        )
    return ckpt


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _matches(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def select_keys(state: dict, only_use: list[str], ignore: list[str]) -> dict:
    """Filter a model state dict by parameter-name prefixes (`cam_param`, `field`, ...)."""
    if only_use and ignore:
        raise CheckpointError(
            "set either training.ckpt_only_use_keys or training.ckpt_ignore_keys, not both."
        )
    if only_use:
        picked = {k: v for k, v in state.items() if _matches(k, only_use)}
        if not picked:
            top = sorted({k.split(".")[0] for k in state})
            raise CheckpointError(
                f"training.ckpt_only_use_keys {only_use} matches no parameter; the checkpoint "
                f"holds {top}."
            )
        return picked
    return {k: v for k, v in state.items() if not _matches(k, ignore)}
