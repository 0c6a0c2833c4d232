"""Data-parallel training under `torchrun` (DDP semantics): process group, sharding, syncing.

    torchrun --nproc_per_node=N -m cxrssl pretrain ...

The pieces, each usable on its own (and tested with 2 gloo processes on CPU):

* `init_from_env` — the process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR/PORT): NCCL on CUDA (each rank on `cuda:LOCAL_RANK`), gloo on CPU. Without those
  variables it is a no-op single process, so every caller can use it unconditionally.
* `broadcast_object` — rank 0 decides (the run directory: each rank resolving `${now:}` itself
  would diverge by a second) and every rank receives its value.
* `ShardedSampler` — any sampler (plain shuffling or the imbalance over/undersamplers) sharded by
  rank: every rank draws the same full index list for the epoch (same seed, `set_epoch`), pads it
  to a multiple of the world size, and keeps every world_size-th index from its rank on.
* `average_gradients` — the gradient all-reduce. Tasks run their own `training_step`, which calls
  `self(...)` rather than a `DistributedDataParallel` wrapper's forward, so the reduction is
  explicit: one flattened all-reduce per step after backward, before clipping; after it every rank
  holds the gradient of the global batch, so identical optimizer steps keep weights identical.
* `all_reduce_sums` — loss/metric sums (a dict of tensors) summed over ranks before any comparison
  (early stopping, best.pt, threshold), so ranks never disagree.
* `broadcast_module` — rank 0's parameters and buffers to every rank (start identical; BatchNorm
  running statistics before checkpoints). `sync_batchnorm` for `trainer.sync_batchnorm=true`.
* `EvalShard` / `shard_eval_loader` — validation split by rank WITHOUT padding (rank r takes rows
  r, r+W, r+2W, …), so no row is counted twice; ranks then combine their sums (`sum_over_ranks`)
  and tasks gather their predictions (`gather_objects`) before computing metrics, so every rank
  computes the same full-set AUROC and takes the same early-stopping/best.pt decision.
* `any_rank` — a flag raised on any rank (a preemption signal) seen by every rank at the same
  step, so all ranks stop together and rank 0 writes the recovery checkpoint.

A failure on one rank stops all: torchrun's agent terminates the other workers when one exits
non-zero; `init_from_env(timeout_s=...)` bounds how long a collective waits for a dead peer.
"""
from __future__ import annotations

import atexit
import datetime
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_torchrun() -> DistEnv:
    """Ranks from torchrun's environment variables (single process when they are absent)."""
    try:
        return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as err:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (set by torchrun): {err}") from err


def backend_for(device: str) -> str:
    return "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join torchrun's process group (idempotent). `device` is trainer.device: auto → CUDA if present."""
    env = env_from_torchrun()
    if not env.enabled or (dist.is_available() and dist.is_initialized()):
        return env
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    wanted = "cuda" if device == "auto" and torch.cuda.is_available() else str(device)
    backend = backend_for(wanted)
    if backend == "nccl":
        if env.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={env.local_rank} but only {torch.cuda.device_count()} CUDA devices: "
                               "lower torchrun --nproc_per_node")
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    # Leave the group before the interpreter tears down: a rank that exited with the group still up
    # (gloo's threads joinable) died in std::terminate, "terminate called without an active exception",
    # exit -6, and torchrun reported the whole run failed (seen once in a full suite run).
    atexit.register(destroy)
    return env


def device_for(env: DistEnv, device: str) -> str:
    """The rank's own device: `cuda` → `cuda:LOCAL_RANK` under torchrun, anything else unchanged."""
    if env.enabled and str(device) in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{env.local_rank}"
    return str(device)


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(value: Any, src: int = 0) -> Any:
    """`value` from rank `src` on every rank (picklable objects: paths, dicts)."""
    if not is_active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _flat_allreduce(tensors: list[torch.Tensor], average: bool) -> None:
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if average:
        flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over ranks (one all-reduce per dtype). A parameter that got
    no gradient on this rank contributes zeros, so ranks always issue the same collectives."""
    if not is_active():
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        _flat_allreduce(grads, average=True)


def all_reduce_sums(sums: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum each tensor over ranks (keys in sorted order, so every rank reduces the same sequence)."""
    if not is_active():
        return dict(sums)
    keys = sorted(sums)
    values = [torch.as_tensor(sums[k], dtype=torch.float64).clone().reshape(-1) for k in keys]
    _flat_allreduce(values, average=False)
    return {k: v.reshape(torch.as_tensor(sums[k]).shape) for k, v in zip(keys, values)}


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Rank `src`'s parameters and buffers on every rank."""
    if not is_active():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Rank `src`'s buffers (BatchNorm running statistics: each rank saw only its shard)."""
    if not is_active():
        return
    with torch.no_grad():
        for tensor in module.buffers():
            dist.broadcast(tensor.data, src=src)


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written best.pt that all ranks read next)."""
    if is_active():
        dist.barrier()


def convert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm statistics over the global batch (a no-op in one process)."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module) if is_active() else module


def sync_batchnorm(module: torch.nn.Module, enabled: bool, device_type: str = "cpu", log=print) -> torch.nn.Module:
    """`trainer.sync_batchnorm=true`: every BatchNorm layer of `module` made synchronous, in place
    (statistics over the GLOBAL batch: the running statistics are those of one process on the
    global batch, not of each rank's shard). CUDA: torch's SyncBatchNorm; CPU: `sync_bn.CPUSyncBatchNorm`.
    One process: unchanged, with one log line."""
    if not enabled:
        return module
    if not is_active():
        log("trainer.sync_batchnorm=true: single process, BatchNorm left as is")
        return module
    from cxrssl.engine.sync_bn import convert

    keep = frozenset(id(m) for m in getattr(module, "_frozen_norms", ()))  # frozen layers stay in eval
    converted, n = convert(module, device_type, keep)
    if converted is not module:
        raise TypeError("trainer.sync_batchnorm converts a model's layers; got a bare BatchNorm layer")
    if is_main():
        log(f"trainer.sync_batchnorm=true: {n} BatchNorm layers synchronised over {dist.get_world_size()} ranks")
    return module


def is_main() -> bool:
    return not is_active() or dist.get_rank() == 0


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (picklable; tensors travel via CPU), in rank order; `[value]` alone."""
    if not is_active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def sum_over_ranks(totals: Mapping[str, float], counts: Mapping[str, int]) -> tuple[dict[str, float], dict[str, int]]:
    """Sums and counts added over ranks, key by key (a rank whose shard had no rows for a key —
    an empty validation shard — contributes nothing); the same result, in the same order, on every rank."""
    parts = gather_objects((dict(totals), dict(counts)))
    keys = sorted({k for t, _ in parts for k in t})
    return ({k: math.fsum(t.get(k, 0.0) for t, _ in parts) for k in keys},
            {k: sum(c.get(k, 0) for _, c in parts) for k in keys})


_flag_group = None


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any rank (one 1-element CPU all-reduce; under NCCL a
    gloo side group, so reading the result never waits for the GPU)."""
    if not is_active():
        return bool(flag)
    global _flag_group
    if _flag_group is None:
        _flag_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    box = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(box, op=dist.ReduceOp.MAX, group=_flag_group)
    return bool(box.item())


class ShardedSampler(Sampler[int]):
    """Rank `rank`'s share of any sampler's epoch: the same full draw on every rank, padded by
    repeating its start to a multiple of `world_size`, then every `world_size`-th index."""

    def __init__(self, base: Sampler[int], world_size: int, rank: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.base, self.world_size, self.rank = base, world_size, rank

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
        elif getattr(self.base, "generator", None) is not None:
            self.base.generator.manual_seed(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.base) / self.world_size)

    def __iter__(self) -> Iterator[int]:
        indices = list(iter(self.base))
        total = len(self) * self.world_size
        if indices:
            indices += (indices * math.ceil(total / len(indices)))[: total - len(indices)]
        return iter(indices[self.rank:total:self.world_size])


class EvalShard(Sampler[int]):
    """Rank `rank`'s rows of an evaluation sampler's order: every `world_size`-th from `rank` on, NOT
    padded (padding would count repeated rows twice in AUROC and loss means). Shards differ in size
    by at most one row; validation issues no collective per batch, so uneven batch counts are fine."""

    def __init__(self, base: Sampler[int], world_size: int, rank: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.base, self.world_size, self.rank = base, world_size, rank

    def __len__(self) -> int:
        return len(range(self.rank, len(self.base), self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(list(iter(self.base))[self.rank::self.world_size])


def _rebuild(loader: torch.utils.data.DataLoader, sampler: Sampler[int], drop_last: bool):
    return torch.utils.data.DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=drop_last,
        persistent_workers=loader.persistent_workers if loader.num_workers else False,
        worker_init_fn=loader.worker_init_fn, prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
        generator=loader.generator)


def shard_loader(loader: torch.utils.data.DataLoader, env: DistEnv) -> torch.utils.data.DataLoader:
    """The training DataLoader with its sampler sharded by rank (no-op for one process). An
    incomplete last batch is dropped only if the SHARD has more than one batch (the loaders'
    rule, applied per rank: a 30-image split at batch 16 gives each of 2 ranks one batch of 15)."""
    if not env.enabled:
        return loader
    sampler = ShardedSampler(loader.sampler, env.world_size, env.rank)
    return _rebuild(loader, sampler, loader.drop_last and len(sampler) > (loader.batch_size or 1))


def shard_eval_loader(loader: torch.utils.data.DataLoader, env: DistEnv) -> torch.utils.data.DataLoader:
    """A validation DataLoader whose rows are split by rank without padding (no-op for one process)."""
    if not env.enabled:
        return loader
    return _rebuild(loader, EvalShard(loader.sampler, env.world_size, env.rank), False)


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
