"""Multi-process training under torchrun (one process per device, rank 0 the main process).

DistributedDataParallel's semantics without its forward wrapper (the trainer renders through
model.rays / model.render_rays, not model.forward): every process starts from rank 0's
parameters and, after each backward, every gradient (field and cameras) is replaced by its mean
over the processes, so parameters, cameras included, stay identical. Only rank 0 writes files.

Without torchrun (WORLD_SIZE unset or 1) nothing is initialised and every helper is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.errors import ConfigError

# Long enough for rank 0's one-off work (features, tracks, COLMAP, bundle adjustment) while the
# other ranks wait; a crashed rank is torn down by torchrun well before.
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer.") from None


def env_world() -> World:
    """The world torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); size 1 without torchrun."""
    return World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    if not is_distributed():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))


def is_main() -> bool:
    return not is_distributed() or dist.get_rank() == 0


@contextlib.contextmanager
def session(device: torch.device):
    """Join the process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU) and yield the
    device this process uses (cuda:LOCAL_RANK on CUDA); leave the group on exit, errors
    included. Single process: yields `device` unchanged and initialises nothing."""
    w = env_world()
    if w.size <= 1:
        yield device
        return
    if device.type == "cuda":
        if w.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {w.local_rank} has no GPU (torch sees {torch.cuda.device_count()}); "
                "start at most one process per GPU (torchrun --nproc_per_node)."
            )
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _shareable(err: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"rank 0 failed: {type(err).__name__}: {err}")


def on_main(fn: Callable[[], object], share: bool = True):
    """Run fn on rank 0 only. Its result (when `share`; it must pickle, CPU tensors only) or
    the exception it raised reaches every rank, so all ranks go on, or fail, together."""
    if not is_distributed():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as err:
            error = err
    payload = [(result if share else None, None if error is None else _shareable(error))]
    dist.broadcast_object_list(payload, src=0)
    if error is not None:
        raise error
    shared, remote_error = payload[0]
    if remote_error is not None:
        raise remote_error
    return result if is_main() else shared


def main_first(fn: Callable[[], object]):
    """Every rank calls fn, rank 0 first (e.g. fn writes a cache the others then read)."""
    if not is_distributed():
        return fn()
    result = on_main(fn, share=False)
    return result if is_main() else fn()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's module."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over the ranks (a new tensor; the input itself without torchrun)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the ranks: one all_reduce per (device, dtype)
    bucket. A parameter without a gradient on this rank contributes zeros; it gets the mean
    when any rank has a gradient for it and keeps None when none has."""
    if not is_distributed():
        return
    size = dist.get_world_size()
    buckets: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.requires_grad:
            buckets.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), group in buckets.items():
        has = torch.tensor([p.grad is not None for p in group], dtype=dtype, device=device)
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
            + [has]
        )
        dist.all_reduce(flat)
        flat[: -len(group)].div_(size)
        offset = 0
        for p, any_grad in zip(group, flat[-len(group) :].tolist()):
            mean = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if any_grad > 0:
                if p.grad is None:
                    p.grad = mean.clone()
                else:
                    p.grad.copy_(mean)


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] without torchrun."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
