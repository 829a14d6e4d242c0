"""Checkpoints on disk: atomic writes, clear errors for missing or corrupt files, and the
key filters used by the refine recipe."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from models.cameras import LEGACY_FOCAL_PARAMETERISATIONS
from utils.errors import CheckpointError
from utils.io import write_atomic

CHECKPOINT_VERSION = 2
# Version 1 (before the layout rework): the focal parameter was `cam_param.focal` (now
# `cam_param.focal_raw`), `cam_param.size` held (W, H) (now (H, W)) and the cameras' metadata
# named the parameterisation `focal_param` with the values square / ratio. _upgrade reads it.
READABLE_VERSIONS = (1, 2)


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
    if not isinstance(ckpt, dict) or "model" not in ckpt or "version" not in ckpt:
        raise CheckpointError(f"{path} is not a posefree checkpoint.")
    if ckpt["version"] not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path} has version {ckpt['version']}; this posefree reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (a newer posefree wrote it?)."
        )
    return _upgrade(ckpt)


def _upgrade(ckpt: dict) -> dict:
    """A version-1 checkpoint in today's names (see CHECKPOINT_VERSION)."""
    if ckpt["version"] == 1:
        model = ckpt["model"]
        old = [k for k in model if k == "cam_param.focal" or k.endswith(".cam_param.focal")]
        for prefix in sorted(k[: -len("focal")] for k in old):
            model[prefix + "focal_raw"] = model.pop(prefix + "focal")
            if prefix + "size" in model:
                model[prefix + "size"] = model[prefix + "size"].flip(-1)  # (W, H) -> (H, W)
        cams = ckpt.get("cameras", {})
        if "focal_param" in cams:
            kind = cams.pop("focal_param")
            cams["focal_parameterisation"] = LEGACY_FOCAL_PARAMETERISATIONS.get(kind, kind)
        ckpt["version"] = CHECKPOINT_VERSION
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
