"""Train one cell of the study (or a sweep of cells with -m): Phase 1, Phase 2, evaluation, record.

python train.py                                   # the built-in demo, on the CPU, in minutes
python train.py -m strategy=full,lf_h2 seed=0,1   # a sweep; prints its sweep_id
"""

import hydra
from hydra.core.hydra_config import HydraConfig

from cft.config.cli import guarded
from cft.config.hydra import register_resolvers
from cft.training.distributed import exit_process

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


if __name__ == "__main__":
    _strip_local_rank()
    try:
        main()
        _status = 0
    except SystemExit as exc:
        _status = exc.code
    exit_process(_status)
