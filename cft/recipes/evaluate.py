"""The evaluation recipe (evaluate.py): score a finished run's final checkpoint, or any checkpoint, on a suite."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cft.errors import ConfigError
from cft.evaluation import evaluate
from cft.models import load_model
from cft.recipes.train import _device, build_eval_tasks, check_model
from cft.run import keys, layout
from cft.run.folder import RunDir
from cft.run.tracking import Tracker

log = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: DictConfig, *, out_dir: str | Path, suite: str) -> dict[str, float]:
    """evaluate.py: score a run's final checkpoint (run_dir=) or any checkpoint (checkpoint=)."""
    out_dir = Path(out_dir)
    group = None
    if cfg.get("run_dir"):
        run = RunDir(cfg.run_dir)
        if not run.checkpoint.exists():
            raise ConfigError(f"run_dir={cfg.run_dir}: no final checkpoint at {run.checkpoint} (is the run finished?)")
        ref, gguf_file = str(run.checkpoint), None
        group = json.loads((run.path / layout.META).read_text()).get("sweep_id") if (run.path / layout.META).exists() else None
    elif cfg.get("checkpoint"):
        ref, gguf_file = str(cfg.checkpoint), cfg.model.get("gguf_file")
    else:
        # Neither given: Hydra's output dir (cft.config.hydra.evaluation_dir) already picked the latest
        # finished run, <run>/evaluations/<suite>. Reading it back, rather than scanning again, keeps
        # the evaluated checkpoint and the folder written to the same run if another finishes meanwhile.
        latest = out_dir.parent.parent
        if not ((latest / layout.DONE).is_file() and (latest / layout.META).is_file()):
            raise ConfigError(
                f"no finished run under {cfg.paths.output_root}: give run_dir=<run folder> or "
                "checkpoint=<hub id or folder> (with model=<name> for its settings)"
            )
        log.info("No run_dir= or checkpoint= given: evaluating the latest finished run, %s", latest)
        return evaluate_checkpoint(OmegaConf.merge(cfg, {"run_dir": str(latest)}), out_dir=out_dir, suite=suite)
    tasks = build_eval_tasks(cfg.eval)  # unknown tasks fail here, before the model loads
    check_model(ref, gguf_file=gguf_file, what="checkpoint")
    model, tokenizer = load_model(ref, gguf_file=gguf_file, dtype=str(cfg.model.get("dtype", "auto")), what="checkpoint")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = Tracker(
        mode=cfg.tracking.mode,
        project=cfg.tracking.project,
        entity=cfg.tracking.get("entity"),
        run_dir=out_dir,
        name=f"evaluate/{suite}",
        group=group,
        job_type="evaluate",
        config=resolved,
    )
    try:
        scores = evaluate(model.to(_device()), tokenizer, tasks, limit=cfg.eval.get("limit"), out_dir=out_dir / "samples")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / layout.METRICS).write_text(json.dumps(scores, indent=2, sort_keys=True))
        tracker.summary(scores)
        tracker.log_table(
            "scores_per_language",
            ["phase", "ability", "task", "language", "score"],
            keys.language_rows({f"phase2/{k}": v for k, v in scores.items()}),
        )
    finally:
        tracker.finish()
    from tabulate import tabulate

    print(
        "\n"
        + tabulate(sorted(scores.items()), headers=["score", suite], floatfmt=".3f")
        + f"\n\nWritten to {out_dir / 'metrics.json'}"
    )
    return scores
