"""Analyse a sweep (tables, figures, report, W&B), the DES of datasets, or models' representations.

    python analyze.py sweep_id=<id>
    python analyze.py sweep_id=<id> source=wandb entity=<entity> project=<project>
    python analyze.py mode=similarity datasets=[alpaca,multialpaca]
    python analyze.py mode=representations 'models={phase1: /ckpt/p1, full: /ckpt/full}'

See conf/analyze.yaml for every option.
"""

from pathlib import Path

import hydra

from cft.config.cli import guarded


@hydra.main(config_path="conf", config_name="analyze", version_base="1.3")
def main(cfg) -> None:
    from cft.analysis import run

    guarded(run, cfg, conf_dir=Path(__file__).resolve().parent / "conf")


if __name__ == "__main__":
    main()
