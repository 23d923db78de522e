"""Train one cell of the study (or a sweep of cells with -m): Phase 1, Phase 2, evaluation, record.

python train.py                                   # the built-in demo, on the CPU, in minutes
python train.py -m strategy=full,lf_h2 seed=0,1   # a sweep; prints its sweep_id
"""

import hydra
from hydra.core.hydra_config import HydraConfig

from cft.config.cli import guarded
from cft.config.hydra import register_resolvers

register_resolvers()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    from cft.recipes.train import freeze_imports, train_cell

    freeze_imports()
    runtime = HydraConfig.get().runtime
    guarded(train_cell, cfg, run_dir=runtime.output_dir, choices=dict(runtime.choices))


def _strip_local_rank() -> None:
    """The `deepspeed` launcher appends --local_rank=N, which Hydra rejects; torch reads LOCAL_RANK instead."""
    import os
    import sys

    for arg in list(sys.argv[1:]):
        if arg.startswith("--local_rank="):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
            sys.argv.remove(arg)


def _end(status) -> None:
    """Exit with `status`. One rank of several runs Python's exit handlers, flushes, and leaves without the
    interpreter's finalization (os._exit). The reason, from a core dump of an aborted rank: gloo's worker
    thread (pt_gloo_runloop) destroys a finished collective's work, whose tensors drop their last Python
    reference; that decref takes the GIL, and a thread taking the GIL while the interpreter finalizes is ended
    by Python 3.11 with pthread_exit, whose unwinding through the work's noexcept destructor calls
    std::terminate ("terminate called without an active exception", SIGABRT: a finished job exited 1 from
    torchrun, about 1 run in 8 of the 2-rank sweep test). Without finalization there is no such window.
    pytorch/pytorch#190489 tracks it; an exit handler that destroys the process groups was tried upstream
    (pytorch/pytorch#179291) and abandoned."""
    import os
    import sys

    from cft.training import distributed

    if distributed.world_size() <= 1:
        sys.exit(status)
    import atexit
    import logging

    code = status if isinstance(status, int) else (0 if status is None else 1)
    if not isinstance(status, int) and status is not None:
        print(status, file=sys.stderr)
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _strip_local_rank()
    try:
        main()
        _status = 0
    except SystemExit as exc:
        _status = exc.code
    _end(_status)
