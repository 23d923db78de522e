"""Several processes (ranks) training one cell: who writes, who waits, and how they meet.

Launchers set the usual torch variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):
torchrun and `accelerate launch` do so themselves; under SLURM (hydra-submitit-launcher, one task
per GPU) `init()` exports them from the job environment. With one process everything here is a
no-op, so library code calls it unconditionally.

Rules the rest of cft follows:
- every rank computes the same run folder and the same artifact keys (no timestamps, no pids);
- rank 0 alone writes run files, metrics, checkpoints' bookkeeping, W&B and artifacts;
- ranks that must wait for rank 0 (an artifact it builds alone, e.g. an evaluation that can take
  hours) poll the file system instead of blocking in a collective, so no collective times out;
- every cell of a multirun starts and ends on all ranks together (`meet`, `share`): they run over a
  second, CPU (gloo) process group whose timeout is days (CFT_DIST_WAIT_HOURS, default 168), so a rank
  may wait there for rank 0's evaluation however long it takes. The training group's timeout
  (CFT_DIST_TIMEOUT_MIN, default 60) bounds only the collectives that all ranks enter together.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)

_TOKEN: str | None = None
_WAIT_GROUP: Any = None  # the long-timeout gloo group of `meet` and `share` (see the module docstring)
TIMEOUT_ENV = "CFT_DIST_TIMEOUT_MIN"  # minutes: the training collectives' timeout
WAIT_ENV = "CFT_DIST_WAIT_HOURS"  # hours: how long a rank waits at a meeting point (rank 0 evaluating)


def _from_submitit() -> None:
    """Under a submitit job with several tasks, export the torch variables from the job environment."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    try:
        import submitit
    except ImportError:
        return
    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return
    # One task per GPU: the rank picks its GPU by LOCAL_RANK (see init), so CUDA_VISIBLE_DEVICES stays.
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def init(timeout_minutes: float | None = None) -> None:
    """Join the process group of this job (nccl on GPUs, gloo on CPUs); a no-op for one process.

    The timeout bounds collectives (training steps, barriers); long one-rank work is waited for by
    polling files (see `wait_until`), so the default suits. CFT_DIST_TIMEOUT_MIN overrides it."""
    _from_submitit()
    if world_size() <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    minutes = float(timeout_minutes or os.environ.get(TIMEOUT_ENV, 60))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(minutes=minutes))
    global _WAIT_GROUP
    # Collective: every rank creates it here, in the same order. gloo waits on a socket (no busy GPU).
    _WAIT_GROUP = dist.new_group(backend="gloo", timeout=timedelta(hours=float(os.environ.get(WAIT_ENV, 168))))
    log.info("rank %d of %d joined the process group (%s)", rank(), world_size(), dist.get_backend())
    job_token()  # now, while every rank is here: later calls may come from rank 0 alone (nested artifacts)


def init_deepspeed() -> None:
    """Join the process group, then let deepspeed.comm wrap it (DeepSpeed reads world size and rank from it)."""
    init()
    import deepspeed
    import torch
    import torch.distributed as dist

    if world_size() <= 1 and not dist.is_initialized():
        # DeepSpeed needs a process group even for one process (plain `python train.py train=deepspeed_zero2`).
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(port))
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)


def _initialized() -> bool:
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not _initialized():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(value: float) -> float:
    if not _initialized():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


def meet(ok: bool = True) -> bool:
    """Wait until every rank is here (no timeout in practice: see the module docstring); True when every
    rank passed ok=True. Ranks meet at the start and end of each cell, so one rank never runs ahead into
    the next cell's training while rank 0 evaluates, and the ranks agree on what happened."""
    if not _initialized() or _WAIT_GROUP is None:
        return ok
    import torch.distributed as dist

    flags: list[Any] = [None] * world_size()
    dist.all_gather_object(flags, bool(ok), group=_WAIT_GROUP)
    return all(flags)


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (over the long-timeout group, like `meet`)."""
    if not _initialized() or _WAIT_GROUP is None:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_WAIT_GROUP)
    return out


def share(obj: Any) -> Any:
    """Rank 0's `obj` on every rank, waiting for rank 0 as long as `meet` does (rank 0 decides)."""
    if not _initialized() or _WAIT_GROUP is None:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_WAIT_GROUP)
    return box[0]


def job_token() -> str:
    """A random id shared by the ranks of this job (collective on first call): it names files by
    which rank 0 tells the others what it decided, never confused with another job's."""
    global _TOKEN
    if _TOKEN is None:
        _TOKEN = broadcast(uuid.uuid4().hex[:12])
    return _TOKEN


def wait_until(done: Callable[[], Any], what: str, poll_s: float = 1.0) -> Any:
    """Poll until done() is truthy and return it. Used by ranks waiting for rank 0; if rank 0 dies,
    the launcher (torchrun, srun) ends the other ranks, so this needs no timeout of its own."""
    start, said = time.time(), False
    while True:
        result = done()
        if result:
            return result
        if not said and time.time() - start > 30:
            log.info("rank %d: waiting for rank 0 (%s)", rank(), what)
            said = True
        time.sleep(poll_s)


def exit_process(status: Any) -> None:
    """Exit the process with `status` (an exit code, None, or a message, as sys.exit takes), at the end of an
    entry script run as __main__. One rank of several runs Python's exit handlers, flushes, and leaves without the
    interpreter's finalization (os._exit). The reason, from a core dump of an aborted rank: gloo's worker
    thread (pt_gloo_runloop) destroys a finished collective's work, whose tensors drop their last Python
    reference; that decref takes the GIL, and a thread taking the GIL while the interpreter finalizes is ended
    by Python 3.11 with pthread_exit, whose unwinding through the work's noexcept destructor calls
    std::terminate ("terminate called without an active exception", SIGABRT: a finished job exited 1 from
    torchrun, about 1 run in 8 of the 2-rank sweep test). Without finalization there is no such window.
    pytorch/pytorch#190489 tracks it; an exit handler that destroys the process groups was tried upstream
    (pytorch/pytorch#179291) and abandoned."""
    import atexit
    import sys

    if world_size() <= 1:
        sys.exit(status)
    code = status if isinstance(status, int) else (0 if status is None else 1)
    if not isinstance(status, int) and status is not None:
        print(status, file=sys.stderr)
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
