"""torch.distributed (DDP) support for runs launched with ``torchrun``: tiny and explicit.

Typical use in a recipe or the CLI::

    info = init_distributed(device)            # reads torchrun's environment; single process otherwise
    model = wrap_ddp(model.to(info.device), info)
    ...                                        # each rank trains on its own shard of every batch
    loss = all_reduce_mean(loss, info)          # the same number on every rank
    shutdown(info)

Only rank 0 (``info.is_main``) writes files: pass ``is_writer=info.is_main`` to
:class:`neuromorph.runs.Run`, and send rank 0's run directory to the others with :func:`broadcast_object`.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_reduce_grads",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "init_distributed",
    "shutdown",
    "wrap_ddp",
]


class DistInfo(NamedTuple):
    """Where this process sits in the job: its rank, the world size, its rank on this machine, whether it
    is rank 0 (the one that writes files and prints), and the torch device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    is_main: bool
    device: torch.device


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _check_info(info: Any) -> DistInfo:
    if not isinstance(info, DistInfo):
        raise ValueError(f"info must be the DistInfo returned by init_distributed, got {type(info).__name__}")
    return info


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group that ``torchrun`` set up, or describe a single process.

    When the environment has ``WORLD_SIZE > 1`` (as ``torchrun --nproc_per_node N`` sets it, together with
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) this initialises the default process
    group with the ``gloo`` backend for ``device="cpu"`` or ``nccl`` for ``device="cuda"``; on CUDA each
    process uses ``cuda:LOCAL_RANK``. Otherwise it returns ``DistInfo(0, 1, 0, True, torch.device(device))``
    and touches nothing. Calling it again in an initialised process reuses the existing group.
    """
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (optionally 'cuda:N'), got {device!r}")
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='cpu'")
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1, got {world_size}")
    if world_size == 1:
        return DistInfo(0, 1, 0, True, torch.device(device))
    rank = _env_int("RANK", -1)
    local_rank = _env_int("LOCAL_RANK", -1)
    if not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"WORLD_SIZE={world_size} but RANK={os.environ.get('RANK')!r} / "
            f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r} are missing or out of range; launch with torchrun"
        )
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed support")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_rank() == 0, dev)


def _active(info: DistInfo) -> bool:
    if info.world_size <= 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"info.world_size={info.world_size} but no process group is initialised; call init_distributed"
        )
    return True


def wrap_ddp(module: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """Wrap ``module`` in ``DistributedDataParallel`` when ``info.world_size > 1``, else return it unchanged.

    Move the module to ``info.device`` first. DDP averages the gradients over ranks in ``backward()``, so
    with equal per-rank batches one step equals a single-process step on the concatenated batch.
    """
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    info = _check_info(info)
    if not _active(info):
        return module
    from torch.nn.parallel import DistributedDataParallel

    if info.device.type == "cuda":
        return DistributedDataParallel(
            module, device_ids=[info.device.index], output_device=info.device.index
        )
    return DistributedDataParallel(module)


def all_reduce_mean(x: float | torch.Tensor, info: DistInfo) -> float:
    """Average a scalar metric over ranks: ``mean_r x_r`` (the value itself when single-process).

    ``x`` is a Python number or a one-element tensor (detached; computed in float64). Every rank must call
    it, in the same order.
    """
    info = _check_info(info)
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"x must be a number or a one-element tensor, got shape {tuple(x.shape)}")
        value = x.detach().to(torch.float64).reshape(())
    elif isinstance(x, int | float) and not isinstance(x, bool):
        value = torch.tensor(float(x), dtype=torch.float64)
    else:
        raise ValueError(f"x must be a number or a one-element tensor, got {x!r}")
    if not _active(info):
        return float(value.item())
    value = value.to(info.device).clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return float(value.item()) / info.world_size


def all_reduce_grads(module: torch.nn.Module, info: DistInfo) -> None:
    """Average every ``.grad`` of ``module`` over ranks in place (what DDP's backward does), for
    gradients set without ``backward()`` (e.g. e-prop); nothing when single-process. Every rank must
    hold the same parameters with a gradient."""
    info = _check_info(info)
    if not _active(info):
        return
    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(info.world_size)


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (e.g. the run directory); identity when single-process.

    The object travels pickled between the job's own processes (never from a file); keep it small.
    """
    info = _check_info(info)
    if not isinstance(src, int) or not 0 <= src < info.world_size:
        raise ValueError(f"src must be a rank in [0, {info.world_size}), got {src!r}")
    if not _active(info):
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=info.device if info.device.type == "cuda" else None)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait until every rank reaches this point (no-op when single-process)."""
    info = _check_info(info)
    if not _active(info):
        return
    if info.device.type == "cuda":
        dist.barrier(device_ids=[info.device.index])
    else:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Destroy the default process group if one is initialised (safe to call more than once)."""
    _check_info(info)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
