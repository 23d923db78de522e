"""Analyse a sweep (tables, figures, report, W&B), publish its W&B dashboard, or compare datasets or models.

    python analyze.py sweep_id=<id>                                      # mode=sweep, the default
    python analyze.py sweep_id=<id> source=wandb entity=<e> project=<p>
    python analyze.py mode=dashboard sweep_id=<id> entity=<e> project=<p>
    python analyze.py mode=similarity similarity.datasets=[alpaca,multialpaca]
    python analyze.py mode=representations 'representations.models={phase1: /ckpt/p1, full: /ckpt/full}'
    python analyze.py mode=layers 'layers.models={base: /ckpt/base, phase1: /ckpt/p1}'

See conf/analyze.yaml and conf/mode/ for every option.
"""

from pathlib import Path

import hydra

from cft.config.cli import guarded, hydra_errors_in_one_line

hydra_errors_in_one_line()


@hydra.main(config_path="conf", config_name="analyze", version_base="1.3")
def main(cfg) -> None:
    from cft.analysis import run

    guarded(run, cfg, conf_dir=Path(__file__).resolve().parent / "conf")


if __name__ == "__main__":
    main()
