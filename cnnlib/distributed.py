"""Several processes, one experiment: ``cnnlib`` under ``torchrun``.

Launched as ``torchrun --nproc_per_node=N script.py`` (one process per GPU, or N processes on
the CPU), a script that uses ``cnnlib`` changes in two places and nowhere else:

* ``cnnlib.fit`` trains one model data-parallel (``DistributedDataParallel``): every rank cuts
  the same shuffled, augmented global batch and trains on its ``1/N`` slice of it; gradients are
  averaged, so the effective batch, the learning-rate schedule and the result are those of one
  process (up to BatchNorm, which sees per-rank statistics; see ``sync_buffers``). Rank 0 shows the
  progress bar and writes the cache; every rank returns the same ``History`` and ends with the
  same weights.
* ``sweep(fn, items)`` runs a lecture's *independent* runs (six architectures, five seeds...)
  spread over the ranks: rank ``r`` computes ``fn(items[i])`` for ``i = r, r + N, ...`` and every
  rank gets the whole list back in order. Inside ``fn``, ``fit`` trains on the rank's own device
  as one process would (no DDP). Every call starts from generators seeded with ``seed + i``, so
  the results do not depend on how the items were spread: the same as ``sweep`` without torchrun.

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here starts a process group: ``rank()`` is
0, ``world_size()`` 1, ``sweep`` is a plain (seeded) map. The process group is NCCL on CUDA and
gloo on the CPU, started by ``init()`` (which ``fit`` and ``sweep`` call themselves). On CUDA
``init()`` also makes GPU ``LOCAL_RANK`` this process's device: call it before loading data, so
that ``cnnlib.load()`` puts each rank's copy on its own GPU.
"""
from __future__ import annotations

import atexit
import contextlib
import inspect
import os
import traceback
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from . import cache as _cache
from . import profile as _profile

_local_depth = 0  # > 0 inside sweep(): fit trains on this rank alone


def is_distributed() -> bool:
    """Was this process started as one of several (``torchrun`` sets ``WORLD_SIZE`` > 1)?"""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init() -> bool:
    """Start the process group once (NCCL for a CUDA profile, gloo otherwise); idempotent.

    Returns whether this process is part of a group of several. Without torchrun it does nothing.
    On CUDA it sets the current device to ``cuda:LOCAL_RANK`` before the group starts."""
    if not is_distributed() or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    cuda = _profile.current().device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that prints, shows progress bars and writes the cache."""
    return rank() == 0


def data_parallel() -> bool:
    """Should ``fit`` train data-parallel here? Under torchrun, except inside ``sweep``."""
    return is_distributed() and _local_depth == 0


@contextlib.contextmanager
def local():
    """Inside this block ``fit`` trains on this rank alone, as without torchrun (``sweep`` uses it)."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def device() -> torch.device:
    """This rank's device for the active profile: ``cuda:LOCAL_RANK`` on CUDA, else the profile's."""
    dev = _profile.current().device
    if dev.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


# --------------------------------------------------------------------------------------------
# The one helper for independent runs
# --------------------------------------------------------------------------------------------

def sweep(fn: Callable[[Any], Any], items: Iterable, *, seed: int | None = None) -> list:
    """``[fn(item) for item in items]``, the items spread over the ranks under torchrun.

    Rank ``r`` of ``N`` computes the items ``r, r + N, r + 2N, ...``; the results are gathered
    (``torch.distributed.all_gather_object``, so they must pickle: numbers, ``History``, CPU
    tensors) and every rank returns the full list in the items' order. Before each call Python,
    NumPy and PyTorch are seeded with ``seed + i`` (default: the profile's seed), so the result
    of item ``i`` depends on ``i`` alone — the same on any number of ranks as without torchrun,
    where ``sweep`` is this seeded map and starts no process group. Afterwards every generator
    is seeded with ``seed + len(items)``, on every rank alike.

    Inside ``fn``, ``cnnlib.fit`` trains on this rank alone (and caches its own runs). An
    exception in ``fn`` on any rank is raised on every rank, naming the item.
    """
    items = list(items)
    seed = _profile.current().seed if seed is None else seed
    distributed = init()
    here, world = (rank(), world_size()) if distributed else (0, 1)
    mine = []
    with local():
        for i in range(here, len(items), world):
            _profile.seed_everything(seed + i)
            try:
                mine.append((i, True, fn(items[i])))
            except Exception as err:
                if not distributed:
                    raise
                mine.append((i, False, "".join(traceback.format_exception_only(type(err), err)).strip()))
                failure = err
                break
    if distributed:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
        mine = [entry for part in gathered for entry in part]
        failed = sorted((i, r, msg) for r, part in enumerate(gathered) for i, ok, msg in part if not ok)
        if failed:
            i, r, msg = failed[0]
            name = getattr(fn, "__name__", None) or repr(fn)
            error = RuntimeError(f"sweep: {name}({items[i]!r}) failed on rank {r}: {msg}")
            raise error from (failure if r == here else None)
    _profile.seed_everything(seed + len(items))
    results = [None] * len(items)
    for i, _, value in mine:
        results[i] = value
    return results


# --------------------------------------------------------------------------------------------
# What fit needs: object broadcast, the cache on rank 0, state and buffer syncing, DDP
# --------------------------------------------------------------------------------------------

def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``torch.distributed.broadcast_object_list``)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cached(name: str, config: Any, compute: Callable[[], Any]) -> Any:
    """``cnnlib.cache.cached`` for all ranks together, with rank 0 the only one touching the disk.

    Rank 0 looks the entry up; if it has to compute it, it first tells the other ranks, which
    then call ``compute()`` with it (a collective computation such as data-parallel training),
    and all of them wait on a barrier until rank 0 has written the entry. If rank 0 found it,
    it sends the stored value to the other ranks instead. Every rank returns the same value."""
    if is_main():
        computed = []

        def compute_together():
            broadcast_object(("compute", None))
            computed.append(True)
            return compute()

        value = _cache.cached(name, config, compute_together)
        if computed:
            barrier()  # the entry is on disk before any rank leaves
        else:
            broadcast_object(("stored", value))
        return value
    what, value = broadcast_object()
    if what == "compute":
        value = compute()
        barrier()
    return value


@torch.no_grad()
def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``module`` with rank ``src``'s."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


@torch.no_grad()
def sync_buffers(module: nn.Module) -> None:
    """Make the buffers equal on all ranks: BatchNorm's running mean and variance become their
    mean over the ranks, every other buffer (``num_batches_tracked``...) rank 0's.

    Each rank's running mean is an exponential average of its shards' means; their average over
    the ranks is the exponential average of the global batches' means, the serial value (the
    update is linear). The averaged running variance is the mean within-shard variance, which
    misses the spread of the shard means (about 1/shard size of the variance)."""
    world = dist.get_world_size()
    averaged = set()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for t in (m.running_mean, m.running_var):
                if t is not None and t.is_floating_point():
                    dist.all_reduce(t)
                    t.div_(world)
                    averaged.add(id(t))
    for t in module.buffers():
        if id(t) not in averaged:
            dist.broadcast(t, src=0)


def all_reduce(values: list[float] | torch.Tensor, op: str = "sum",
               device: torch.device | None = None) -> list[float]:
    """Sum (or ``op="max"``) a few numbers over the ranks, in float64; the same list on every rank."""
    t = torch.as_tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


FIND_UNUSED_PARAMETERS: bool | None = None
"""DDP's ``find_unused_parameters`` for ``fit``: ``None`` (default) turns it on only for models
whose forward skips parameters in some steps — the course's stochastic depth (a residual block
with ``survival < 1``) — as it costs a traversal of the autograd graph every step. Set it to
``True`` for a model of your own that skips layers at random (DDP's error says so)."""


def _skips_parameters(model: nn.Module) -> bool:
    return any(getattr(m, "survival", 1.0) < 1.0 for m in model.modules())


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` for ``fit``.

    Stochastic depth skips whole residual branches in some steps — the same ones on every
    rank, whose in-model generators are seeded alike — hence ``find_unused_parameters`` for
    such models (``FIND_UNUSED_PARAMETERS``). Buffers are not broadcast at every forward:
    ``fit`` calls ``sync_buffers`` before each evaluation."""
    param = next(model.parameters(), None)
    device_ids = [param.device.index] if param is not None and param.device.type == "cuda" else None
    find_unused = _skips_parameters(model) if FIND_UNUSED_PARAMETERS is None else FIND_UNUSED_PARAMETERS
    kwargs = dict(device_ids=device_ids, find_unused_parameters=find_unused)
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
        kwargs["forward_sync_buffers"] = False  # torch >= 2.13 (broadcast_buffers is deprecated)
    else:
        kwargs["broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(model, **kwargs)
