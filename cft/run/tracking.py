"""Experiment tracking: one W&B run per sweep cell, offline by default.

W&B is a mirror, never the record: runs always write metrics.json themselves, and any W&B failure
(no server, no key, a network error) is logged as a warning and never stops or loses a run.
Modes: `offline` (files under the run folder, `wandb sync` later), `online`, `disabled`.

What a cell's run holds, so the sweep's dashboard (`analyze.py mode=dashboard`) has data to show:
- config: the resolved config, plus `run_meta` (choices, seed, sweep id): the dashboard groups by
  `run_meta.choices.<group>` (pass `meta=` to the Tracker);
- history: the training curves of each phase against that phase's own step (`define_phase_metrics`),
  so Phase 2's curves never continue Phase 1's steps;
- summary: the keys of metrics.json; tables: the per-language scores (`log_scores_table`),
  layer changes and what the strategy did.

`read_records` / `logged` read a run's `.wandb` file back (offline or online runs both write it),
for tests and for the dashboard, which only shows keys that some run really logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cft.run import keys

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")
RUN_META = "run_meta"  # the W&B config key holding run_meta.json's content (choices, seed, sweep id)
SCORES_TABLE = "scores_per_language"  # the W&B table of per-language scores
SCORES_COLUMNS = ("phase", "ability", "task", "language", "score")


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
        meta: Mapping[str, Any] | None = None,
    ):
        from cft.errors import ConfigError

        if mode not in MODES:
            raise ConfigError(f"tracking.mode={mode!r} is not one of {', '.join(MODES)}")
        self.run = None
        self.mode = mode
        if mode == "disabled":
            return
        config = dict(config or {})
        if meta is not None:  # the cell's choices, where the dashboard finds what to group by
            config[RUN_META] = dict(meta)
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
                config=config,
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
                        config=config,
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

    def define_phase_metrics(self, phases: Iterable[str] = keys.PHASES) -> None:
        """Plot each phase's training curves against that phase's own step (`<phase>/step`), so the
        two phases' steps never collide on W&B's one global step. Call once, before training."""

        def define():
            for phase in phases:
                step = keys.curve(phase, "step")
                self.run.define_metric(step)
                for name in keys.CURVES:
                    self.run.define_metric(keys.curve(phase, name), step_metric=step)

        self._safe("define_metric", define)

    def log_scores_table(self, metrics: Mapping[str, Any], name: str = SCORES_TABLE) -> None:
        """The per-language scores of `metrics` (flat keys) as one W&B table: phase, ability, task, language, score."""
        self.log_table(name, SCORES_COLUMNS, keys.language_rows(metrics))

    def summary(self, values: Mapping[str, Any]) -> None:
        def update():
            for k, v in values.items():
                self.run.summary[k] = v

        self._safe("summary", update)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        def table() -> None:
            import wandb  # inside: without a run (tracking=none) the import alone cost half a second of CPU

            self.run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

        self._safe("table", table)

    def log_image(self, name: str, path: str | Path) -> None:
        def image() -> None:
            import wandb  # as in log_table

            self.run.log({name: wandb.Image(str(path))})

        self._safe("image", image)

    @property
    def run_path(self) -> str | None:
        return getattr(self.run, "dir", None)

    def finish(self) -> None:
        """Finish the W&B run; returns once its `.wandb` file is complete (W&B's service writes the last
        records just after `finish()` returns, so a reader or `wandb sync` right away could see a partial file)."""
        run = self.run
        self._safe("finish", lambda: self.run.finish())
        self.run = None
        if run is not None:
            try:
                files = list(Path(run.dir).parent.glob(f"run-{run.id}.wandb"))
            except Exception:  # a run object without a folder (a W&B change): nothing to wait for
                files = []
            for f in files:
                try:
                    wait_complete(f)
                except Exception as exc:  # waiting is a courtesy to readers: it never fails the run
                    log.warning("W&B run file %s could not be checked: %s", f, exc)


# ----------------------------------------------------------------------------- reading a run back


_BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log of 32 KiB blocks
_HEADER = 7  # file header (":W&B", magic, version) and record header (crc32, length, type) are both 7 bytes
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> Iterator[Any]:
    """The records (`wandb.proto.wandb_internal_pb2.Record`) of a run's `.wandb` file, in order."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (no :W&B header)")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding up to the block's end
            pos += left
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FIRST:
            pending = chunk
            continue
        if kind == _MIDDLE:
            pending += chunk
            continue
        raw = pending + chunk if kind == _LAST else chunk
        pending = b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        yield record


def complete(path: str | Path) -> bool:
    """Whether a run's `.wandb` file holds its final (exit) record."""
    try:
        return any(r.WhichOneof("record_type") == "exit" for r in read_records(path))
    except Exception:  # a record still being written reads as corrupt protobuf (DecodeError): not complete yet
        return False


def wait_complete(path: str | Path, timeout: float = 30.0) -> bool:
    """Wait (at most `timeout` seconds) until a run's `.wandb` file is complete; False if it never was."""
    import time

    deadline = time.monotonic() + timeout
    while not complete(path):
        if time.monotonic() > deadline:
            log.warning("W&B run file %s has no final record after %.0f s", path, timeout)
            return False
        time.sleep(0.02)
    return True


@dataclass
class Logged:
    """What one W&B run logged: its group and job type, config keys, history keys (curves),
    tables (by name), summary keys, and the step metric of each defined metric."""

    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: set[str] = field(default_factory=set)
    tables: set[str] = field(default_factory=set)
    summary: set[str] = field(default_factory=set)
    step_metrics: dict[str, str] = field(default_factory=dict)


def _item_key(item) -> list[str]:
    """An item's key path: W&B writes either `key` or `nested_key` (a list, of one element for a flat key)."""
    return list(item.nested_key) if item.nested_key else [item.key]


def _set(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def logged(path: str | Path) -> Logged:
    """What a run's `.wandb` file holds (see `Logged`)."""
    import json

    out = Logged()
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.group, out.job_type = record.run.run_group, record.run.job_type
            for item in record.run.config.update:
                _set(out.config, _item_key(item), json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                _set(out.config, _item_key(item), json.loads(item.value_json))
        elif kind == "metric" and record.metric.step_metric:
            out.step_metrics[record.metric.name] = record.metric.step_metric
        elif kind == "history":
            for item in record.history.item:
                parts = _item_key(item)
                if parts[0].startswith("_"):
                    continue
                if len(parts) > 1 and parts[-1] == "_type" and json.loads(item.value_json) == "table-file":
                    out.tables.add("/".join(parts[:-1]))
                elif len(parts) == 1:
                    out.history.add(parts[0])
        elif kind == "summary":
            for item in record.summary.update:
                parts = _item_key(item)
                if parts and parts[0] and not parts[0].startswith("_"):
                    out.summary.add(parts[0])
    return out


def run_files(folder: str | Path) -> list[Path]:
    """The `.wandb` files under a run folder (`wandb/offline-run-*/run-*.wandb` or `wandb/run-*/run-*.wandb`)."""
    return sorted(Path(folder).glob("wandb/*run-*/run-*.wandb"))
