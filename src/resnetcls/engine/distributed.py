"""torchrun support: the process group from RANK/LOCAL_RANK/WORLD_SIZE, who writes, and exact reductions.

`torchrun --nproc_per_node N -m resnetcls train ...` starts N copies of the same command; each reads its
place from the environment torchrun sets (as nanoGPT does). Without those variables (a plain run) every
helper here is a cheap no-op, so train() has one code path.

Two things this module exists to get right:
- evaluation counts every image once: each rank takes val indices rank::world_size (no padding, unlike
  DistributedSampler, which repeats samples to even out the shards) and the sums are all-reduced;
- a rank that dies never leaves the others waiting forever: the process group has a finite timeout
  (train.dist_timeout_s), and torchrun's agent tears the job down when any worker exits non-zero.
The one wait allowed to be longer is wait_for_data(): building a node's decoded cache can take hours more
on one node than on another, and the ranks wait for that in a group of its own (PREPARE_TIMEOUT_S).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError
from .loop import EpochStats, evaluate

PREPARE_TIMEOUT_S = 24 * 3600  # how long ranks wait for each other's data preparation (cache builds)
_prepare_group = None  # the gloo group wait_for_data() waits in, made by setup()


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank 0 of 1 for a plain run."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 prints progress and writes logs, checkpoints and model directories."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise UserError(
            f"environment variable {name}={value!r}: expected an integer (set by torchrun)"
        ) from None


def world_from_env() -> World:
    """RANK, LOCAL_RANK and WORLD_SIZE as torchrun sets them; rank 0 of 1 when they are absent."""
    return World(_env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1))


def is_main() -> bool:
    """True in a plain run and on rank 0 of a torchrun job (the one place that decides who writes)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return world_from_env().is_main


def setup(device_name: str, timeout_s: float) -> tuple[World, str]:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) and pick this rank's device.

    Returns the world and the device name to use: under torchrun with CUDA, `cuda:LOCAL_RANK` (one process
    per GPU). A plain run returns the device name unchanged and starts nothing.
    """
    world = world_from_env()
    if not world.distributed or dist.is_initialized():
        return world, device_name
    if timeout_s <= 0:
        raise UserError(
            f"train.dist_timeout_s={timeout_s}: must be positive (a finite wait is what stops a "
            f"rank from hanging forever when another one dies)"
        )
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise UserError(f"--device {device_name}: no CUDA GPU is available on this machine")
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK={world.local_rank}: this machine has {torch.cuda.device_count()} GPU(s); "
                f"start at most that many processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(world.local_rank)
        device_name = f"cuda:{world.local_rank}"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    global _prepare_group
    _prepare_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=PREPARE_TIMEOUT_S))
    return world, device_name


def wait_for_data() -> None:
    """Every rank waits here until all have built or opened their data (train calls it when its loaders are
    ready). Each node builds the decoded cache in its own cache folder (or, on a shared one, one node builds
    under the lock while the others wait on it), and one node may take far longer than train.dist_timeout_s
    (more images to decode, a slower disk, a cold cache beside a warm one): that wait gets PREPARE_TIMEOUT_S
    instead, while a rank that dies still ends the job at once (torchrun's agent)."""
    if _active() and _prepare_group is not None:
        dist.barrier(group=_prepare_group)


def cleanup() -> None:
    """Leave the process group (at the end of train, also after an error)."""
    global _prepare_group
    _prepare_group = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _reduce_device() -> torch.device:
    # nccl reduces CUDA tensors only; gloo CPU tensors.
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (float64 or int64 keeps counts and sums exact); the input if alone."""
    if not _active():
        return values
    out = values.to(_reduce_device())
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (a stop request must stop all ranks at the same step)."""
    if not _active():
        return flag
    return bool(all_reduce_sum(torch.tensor([int(flag)], dtype=torch.int64)).item())


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small picklable things such as bad-file lists)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def evaluate_sharded(
    model, loader, loss_fn, ctx, num_classes: int, stop=None, logits_out: list | None = None
):
    """loop.evaluate over this rank's shard of loader (indices rank, rank + world, ...), then the sums of all
    ranks: (stats as if one process had evaluated every image once, the CxC confusion matrix).
    stop: loop.evaluate's local stop check; stats.interrupted is then True on every rank when any stopped
    (the check itself is local: shards may differ by one batch, so no collective runs per batch).
    logits_out: loop.evaluate's, this rank's shard only."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    mine = evaluate(model, loader, loss_fn, ctx, confusion, stop, logits_out)
    sums = all_reduce_sum(
        torch.tensor([mine.loss_sum, mine.correct1, mine.correct5, mine.images], dtype=torch.float64)
    )  # float64: counts below 2**53 stay exact
    bad = [item for shard in gather_objects(mine.bad) for item in shard]
    stats = EpochStats(
        loss_sum=float(sums[0]),
        correct1=int(sums[1]),
        correct5=int(sums[2]),
        images=int(sums[3]),
        seconds=mine.seconds,
        data_wait_s=mine.data_wait_s,
        bad=bad,
        interrupted=any_rank(mine.interrupted),
    )
    return stats, all_reduce_sum(confusion)
