"""Experiment tracking: one W&B run per sweep cell, offline by default.

W&B is a mirror, never the record: runs always write metrics.json themselves, and any W&B failure
(no server, no key, a network error) is logged as a warning and never stops or loses a run.
Modes: `offline` (files under the run folder, `wandb sync` later), `online`, `disabled`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")


class Tracker:
    def __init__(
        self,
        *,
        mode: str,
        project: str,
        run_dir: str | Path,
        name: str,
        group: str | None = None,
        job_type: str | None = None,
        config: Mapping[str, Any] | None = None,
        entity: str | None = None,
        tags: Sequence[str] = (),
    ):
        from cft.errors import ConfigError

        if mode not in MODES:
            raise ConfigError(f"tracking.mode={mode!r} is not one of {', '.join(MODES)}")
        self.run = None
        self.mode = mode
        if mode == "disabled":
            return
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                mode=mode,
                project=project,
                entity=entity,
                name=name,
                group=group,
                job_type=job_type,
                config=dict(config or {}),
                dir=str(run_dir),
                tags=list(tags),
                reinit="create_new",
            )
        except Exception as exc:  # a tracking failure must never stop the experiment
            if mode == "online":
                log.warning(
                    "W&B online init failed (%s); falling back to offline mode: the run is written under %s/wandb "
                    "(upload it later with `wandb sync`)",
                    exc,
                    run_dir,
                )
                try:
                    import wandb

                    self.run = wandb.init(
                        mode="offline",
                        project=project,
                        name=name,
                        group=group,
                        job_type=job_type,
                        config=dict(config or {}),
                        dir=str(run_dir),
                        reinit="create_new",
                    )
                    self.mode = "offline"
                    return
                except Exception as exc2:
                    exc = exc2
            log.warning("W&B disabled for this run: %s", exc)
            self.run = None

    def _safe(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as exc:
            log.warning("W&B %s failed: %s", what, exc)

    def log(self, values: Mapping[str, float]) -> None:
        """Log a step's values. W&B's own step counter is used: both phases log `<phase>/step`
        as a value instead, since a W&B step may never go back."""
        self._safe("log", lambda: self.run.log(dict(values)))

    def summary(self, values: Mapping[str, Any]) -> None:
        def update():
            for k, v in values.items():
                self.run.summary[k] = v

        self._safe("summary", update)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        import wandb

        self._safe("table", lambda: self.run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])}))

    def log_image(self, name: str, path: str | Path) -> None:
        import wandb

        self._safe("image", lambda: self.run.log({name: wandb.Image(str(path))}))

    @property
    def run_path(self) -> str | None:
        return getattr(self.run, "dir", None)

    def finish(self) -> None:
        self._safe("finish", lambda: self.run.finish())
        self.run = None
