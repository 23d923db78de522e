"""Hydra glue: a sweep id shared by every job of a multirun, and printed for analyze.py.

Unless the user gives `sweep_id=...`, a multirun's id is a short hash of its command-line
overrides, so rerunning the same sweep command lands in the same folders: finished cells are
skipped and unfinished ones resume.
"""

from __future__ import annotations

import hashlib
import logging
import os

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

ENV = "CFT_SWEEP_ID"


def sweep_id_for(overrides: list[str]) -> str:
    for o in overrides:
        if o.startswith("sweep_id="):
            return o.split("=", 1)[1]
    blob = "\n".join(sorted(o for o in overrides if not o.startswith(("hydra", "tracking"))))
    return "sweep-" + hashlib.sha256(blob.encode()).hexdigest()[:8]


class SweepId(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        # An experiment config may pin sweep_id (a plain value, not the env interpolation).
        pinned = None if OmegaConf.is_interpolation(config, "sweep_id") else config.get("sweep_id")
        sweep = str(pinned) if pinned else sweep_id_for(list(config.hydra.overrides.task))
        os.environ[ENV] = sweep
        print(f"cft: sweep_id={sweep}", flush=True)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = os.environ.get(ENV)
        if sweep:
            print(f"cft: sweep {sweep} finished. Tables and figures: python analyze.py sweep_id={sweep}", flush=True)


def evaluation_dir(run_dir: str | None, checkpoint: str | None, output_root: str, suite: str) -> str:
    """Where evaluate.py writes: inside the run folder it re-evaluates (given, or with neither
    run_dir nor checkpoint the latest finished run), else under output_root."""
    if not run_dir and not checkpoint:
        from cft.run.folder import latest_run

        run_dir = str(latest_run(output_root) or "")
    if run_dir:
        return f"{run_dir.rstrip('/')}/evaluations/{suite}"
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(checkpoint or "none").strip("/"))
    return f"{output_root}/evaluations/{slug}/{suite}"


# Overrides that do not make a different run (or that are already in the folder name).
_NOT_IN_NAME = ("seed", "sweep_id", "tracking", "paths", "hydra", "eval.batch_size")
MAX_NAME = 96
GROUPS = ("model", "phase1_data", "phase2_data", "strategy", "eval", "train", "tracking", "paths", "experiment")


def overrides_suffix(overrides) -> str:
    """"" for a run named by its group choices alone; else "/<key=value,...>" so that two cells of a
    sweep over a plain value (e.g. train.lr=1e-5,2e-5) never share a folder."""
    kept = []
    for o in overrides or []:
        key = str(o).split("=", 1)[0].lstrip("+~")
        if key in GROUPS or key.startswith(_NOT_IN_NAME):
            continue
        kept.append(str(o).replace("/", "_").replace(" ", ""))
    if not kept:
        return ""
    name = ",".join(sorted(kept))
    if len(name) > MAX_NAME:  # file systems refuse long names; config.yaml keeps the full list
        name = "overrides-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return "/" + name


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("cft_eval_dir", evaluation_dir, replace=True)
    OmegaConf.register_new_resolver("cft_overrides", overrides_suffix, replace=True)
