"""The evaluation recipe (evaluate.py): score a finished run's final checkpoint, or any checkpoint,
on an evaluation suite, read top to bottom.

    EvalRecipe(cfg, out_dir=..., suite=...).run()
        setup()      the suite's tasks built and checked, the checkpoint found and its config read
        evaluate()   the model loaded once and scored
        record()     metrics.json in <run>/evaluations/<suite> (or under the output root), W&B
        cleanup()    W&B finished
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cft.errors import ConfigError
from cft.evaluation import evaluate
from cft.models.handle import Checkpoint
from cft.recipes.common import build_eval_tasks, device
from cft.run import layout
from cft.run.folder import RunDir
from cft.run.tracking import Tracker
from cft.training import threads

log = logging.getLogger(__name__)


class EvalRecipe:
    def __init__(self, cfg: DictConfig, *, out_dir: str | Path, suite: str):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.suite = suite
        self.group: str | None = None
        self.tracker: Tracker | None = None
        self.scores: dict = {}

    def run(self) -> dict:
        try:
            self.setup()
            self.evaluate()
            self.record()
        finally:
            self.cleanup()
        from cft.evaluation.summary import evaluation_table

        print(f"\n{evaluation_table(self.scores, self.suite)}\n\nWritten to {self.out_dir / layout.METRICS}")
        return self.scores

    def setup(self) -> None:
        cfg = self.cfg
        threads.configure(cfg.get("threads"))
        self.checkpoint = self._checkpoint()
        self.tasks = build_eval_tasks(cfg.eval, cfg.model.get("dtype", "auto"))  # unknown tasks fail here, before the model loads
        self.checkpoint.config()
        self.tracker = Tracker(
            mode=cfg.tracking.mode,
            project=cfg.tracking.project,
            entity=cfg.tracking.get("entity"),
            run_dir=self.out_dir,
            name=f"evaluate/{self.suite}",
            group=self.group,
            job_type="evaluate",
            config=OmegaConf.to_container(cfg, resolve=True),
        )

    def evaluate(self) -> None:
        model, tokenizer = self.checkpoint.load(dtype=self.tasks.precision)  # eval.dtype (auto: model.dtype's rule)
        self.scores = evaluate(
            model.to(device()), tokenizer, self.tasks, limit=self.cfg.eval.get("limit"), out_dir=self.out_dir / "samples"
        )

    def record(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / layout.METRICS).write_text(json.dumps(self.scores, indent=2, sort_keys=True))
        self.tracker.summary(self.scores)
        self.tracker.log_scores_table(self.scores)

    def cleanup(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None

    def _checkpoint(self) -> Checkpoint:
        """The run's final checkpoint (run_dir=), any checkpoint (checkpoint=), or the latest finished run's."""
        cfg = self.cfg
        if cfg.get("run_dir"):
            run = RunDir(cfg.run_dir)
            if not run.checkpoint.exists():
                raise ConfigError(f"run_dir={cfg.run_dir}: no final checkpoint at {run.checkpoint} (is the run finished?)")
            meta = run.path / layout.META
            self.group = json.loads(meta.read_text()).get("sweep_id") if meta.exists() else None
            return Checkpoint(str(run.checkpoint), key="", what="checkpoint", setting="run_dir")
        if cfg.get("checkpoint"):
            return Checkpoint(
                str(cfg.checkpoint), key="", what="checkpoint", gguf_file=cfg.model.get("gguf_file"), setting="checkpoint"
            )
        # Neither given: Hydra's output dir (cft.config.hydra.evaluation_dir) already picked the latest
        # finished run, <run>/evaluations/<suite>. Reading it back, rather than scanning again, keeps
        # the evaluated checkpoint and the folder written to the same run if another finishes meanwhile.
        latest = self.out_dir.parent.parent
        if not ((latest / layout.DONE).is_file() and (latest / layout.META).is_file()):
            raise ConfigError(
                f"no finished run under {cfg.paths.output_root}: give run_dir=<run folder> or "
                "checkpoint=<hub id or folder> (with model=<name> for its settings)"
            )
        log.info("No run_dir= or checkpoint= given: evaluating the latest finished run, %s", latest)
        self.cfg = OmegaConf.merge(cfg, {"run_dir": str(latest)})
        return self._checkpoint()


def evaluate_checkpoint(cfg: DictConfig, *, out_dir: str | Path, suite: str) -> dict:
    """evaluate.py's task function."""
    return EvalRecipe(cfg, out_dir=out_dir, suite=suite).run()
