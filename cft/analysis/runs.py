"""Collecting the runs of a sweep, from run folders or from W&B.

Run folders are laid out and parsed by `cft.run.layout`; each holds `config.yaml`, `run_meta.json`
(sweep_id, seed, choices), `metrics.json` (the flat keys of `cft.run.keys`) and `DONE`, written
last. A folder with `FAILED` and no `DONE` is a failed cell (its phase and reason are kept); one
with neither is unfinished. Both are listed, never silently dropped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cft.errors import CftError
from cft.run import keys, layout
from cft.run.layout import CELL_KEYS
from cft.run.tracking import Logged

log = logging.getLogger(__name__)

# The keys naming which benchmarks an average covers (text values kept from a W&B summary).
AVERAGE_OVER = {keys.average_over(a, phase=p) for a in keys.ABILITIES for p in (None, *keys.PHASES)}


@dataclass
class Run:
    name: str  # the run's path relative to the sweep folder (or its W&B id)
    choices: dict[str, str]
    seed: int | None
    metrics: dict[str, Any]
    finished: bool
    path: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] | None = None  # the FAILED record (phase, error, message, time) of a failed cell
    logged: Logged | None = None  # what a W&B run (source=wandb) logged; run folders hold their .wandb files

    @property
    def failed(self) -> bool:
        return not self.finished and self.failure is not None

    @property
    def cell(self) -> tuple[str, ...]:
        return tuple(str(self.choices.get(k, "?")) for k in CELL_KEYS)


@dataclass
class Sweep:
    sweep_id: str
    source: str  # a folder, or entity/project on W&B
    runs: list[Run]
    problems: list[str] = field(default_factory=list)

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.finished]

    @property
    def failed(self) -> list[Run]:
        """Cells that stopped with an error (FAILED, no DONE)."""
        return [r for r in self.runs if r.failed]

    @property
    def unfinished(self) -> list[Run]:
        """Cells neither finished nor failed: running, killed, or not started past their first file."""
        return [r for r in self.runs if not r.finished and not r.failed]


def failure_line(run: Run) -> str:
    """One line saying where and why a cell failed: '<cell>: phase2: OSError: disk full'."""
    f = run.failure or {}
    error = f.get("error") or "?"
    message = " ".join(str(f.get("message") or "").split())  # one line, however the message was written
    return f"{run.name}: {f.get('phase') or '?'}: {error}: {message}"


def _read_json(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
        return {}
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a JSON object")
        return {}
    return value


def existing_sweeps(output_root: Path) -> list[str]:
    if not output_root.is_dir():
        return []
    return sorted(
        p.name
        for p in output_root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name != layout.CACHE and any(p.rglob(layout.META))
    )


def sweep_folder(output_root: str | Path, sweep_id: str) -> Path:
    """The folder of a sweep; CftError naming the folder searched and the sweeps that exist."""
    root = Path(output_root).expanduser()
    folder = root / str(sweep_id)
    if not folder.is_dir():
        found = existing_sweeps(root)
        raise CftError(
            f"unknown sweep_id={sweep_id!r}: no folder {folder.resolve()}. "
            + (f"Sweeps found in {root.resolve()}: {', '.join(found)}." if found else f"No sweeps found in {root.resolve()}.")
            + " (Set paths.output_root=... or CFT_OUTPUT_ROOT if the runs live elsewhere.)"
        )
    return folder


def _read_config(path: Path, problems: list[str]) -> dict[str, Any]:
    import yaml

    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"{path}: unreadable ({type(exc).__name__})")
        return {}
    return value if isinstance(value, dict) else {}


def collect_local(output_root: str | Path, sweep_id: str) -> Sweep:
    """All runs of a sweep from its folder: finished (DONE), failed (FAILED) and unfinished ones, plus any problems found."""
    folder = sweep_folder(output_root, sweep_id)
    problems: list[str] = []
    runs: list[Run] = []
    # A seed folder with metrics or DONE but no run_meta.json is a run too (written by hand or an old version).
    for run_dir in layout.run_folders(folder):
        rel = run_dir.relative_to(folder)
        cell = layout.parse_cell(rel)
        meta_file = run_dir / layout.META
        meta = _read_json(meta_file, problems) if meta_file.exists() else {}
        if not meta:
            problems.append(f"{run_dir}: no {layout.META}; the run's cell is read from its folder name")
        choices = {k: str(v) for k, v in (meta.get("choices") or {}).items()} or (cell.choices if cell else {})
        if choices and cell and cell.variant:
            choices["variant"] = cell.variant
        finished = (run_dir / layout.DONE).exists()
        metrics_file = run_dir / layout.METRICS
        metrics = _read_json(metrics_file, problems) if metrics_file.exists() else {}
        if finished and not metrics:
            problems.append(f"{run_dir}: marked DONE but has no metrics.json")
        if meta.get("sweep_id") not in (None, sweep_id):
            problems.append(f"{run_dir}: run_meta.json says sweep_id={meta.get('sweep_id')!r}, not {sweep_id!r}")
        seed = meta.get("seed")
        if seed is None and cell is not None:
            seed = cell.seed
        config_file = run_dir / layout.CONFIG
        config = _read_config(config_file, problems) if config_file.exists() else {}
        runs.append(
            Run(
                name=str(rel),
                choices=choices,
                seed=seed,
                metrics=metrics,
                finished=finished,
                path=run_dir,
                config=config,
                failure=None if finished else layout.read_failure(run_dir),
            )
        )
    return Sweep(sweep_id=str(sweep_id), source=str(folder), runs=runs, problems=problems)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _choices_from_config(config: Mapping[str, Any]) -> dict[str, str]:
    """A W&B run's choices: the recipe logs run_meta (with its choices) into the config; otherwise
    each group's `name` key stands in for the option name."""
    for key in ("run_meta", "_run_meta", "meta"):
        meta = config.get(key)
        if isinstance(meta, Mapping) and isinstance(meta.get("choices"), Mapping):
            return {k: str(v) for k, v in meta["choices"].items()}
    if isinstance(config.get("choices"), Mapping):
        return {k: str(v) for k, v in config["choices"].items()}
    out = {}
    for group in ("model", "phase1_data", "phase2_data", "strategy", "eval", "train"):
        node = config.get(group)
        if isinstance(node, Mapping) and node.get("name") is not None:
            out[group] = str(node["name"])
    return out


def collect_wandb(entity: str | None, project: str, sweep_id: str, *, api=None) -> Sweep:
    """All runs of a sweep from W&B (group = sweep_id; the analysis run itself is skipped).

    Finished means W&B state 'finished'; metrics are the run summary (the same flat keys as metrics.json).
    """
    if api is None:
        if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
            raise CftError(
                f"source=wandb needs the W&B server, but WANDB_MODE={os.environ['WANDB_MODE']} is set. "
                "Unset it (and log in with `wandb login` or WANDB_API_KEY), or use source=local."
            )
        try:
            import wandb

            api = wandb.Api(timeout=30)
        except Exception as exc:
            raise CftError(
                f"could not reach the W&B API ({type(exc).__name__}: {exc}). "
                "Log in with `wandb login` or set WANDB_API_KEY, or use source=local."
            ) from exc
    path = f"{entity}/{project}" if entity else project
    try:
        wb_runs = list(api.runs(path, filters={"group": str(sweep_id)}))
    except Exception as exc:
        raise CftError(
            f"could not list the W&B runs of {path} in group {sweep_id!r} ({type(exc).__name__}: {exc}). "
            "Check entity=..., project=... and your W&B login."
        ) from exc
    runs, problems = [], []
    for r in wb_runs:
        if getattr(r, "job_type", None) == "analyze":
            continue
        config = _plain(dict(r.config))
        # Numbers, and the names an average covers (text); tables and images are dicts, other text is not a score.
        summary = {
            k: v
            for k, v in _plain(dict(r.summary)).items()
            if not k.startswith("_") and (isinstance(v, (int, float)) or (k in AVERAGE_OVER and isinstance(v, str)))
        }
        choices = _choices_from_config(config)
        history = (getattr(r, "_attrs", None) or {}).get("historyKeys") or {}
        seen = history.get("keys") or {} if isinstance(history, Mapping) else {}
        tables = {k for k, v in seen.items() if "table-file" in json.dumps(v)}
        wb_logged = Logged(
            group=str(getattr(r, "group", "") or ""),
            job_type=str(getattr(r, "job_type", "") or ""),
            config=config,
            history={k for k in seen if not k.startswith("_") and k not in tables},
            tables=tables,
            summary=set(summary),
        )
        if not choices:
            problems.append(f"W&B run {r.id} ({r.name}): no choices in its config; it is left out of the tables")
        runs.append(
            Run(
                name=f"{r.name} ({r.id})",
                choices=choices,
                seed=config.get("seed"),
                metrics=summary,
                finished=r.state == "finished",
                config=config,
                failure={"phase": "?", "error": r.state, "message": f"W&B state {r.state}"}
                if r.state in ("failed", "crashed")
                else None,
                logged=wb_logged,
            )
        )
    if not runs:
        raise CftError(f"no W&B runs in {path} with group {sweep_id!r} (is sweep_id right? entity/project?)")
    return Sweep(sweep_id=str(sweep_id), source=f"wandb:{path}", runs=runs, problems=problems)


def key_disagreements(runs: list[Run]) -> list[str]:
    """Messages for score keys present in some finished runs of the sweep but missing in others.

    Only scores are compared (phase1/, phase2/, delta/, des, mpd): strategy reports, data sizes and
    training statistics differ between cells by design."""
    if len(runs) < 2:
        return []

    def scores(metrics) -> set[str]:
        return {k for k in metrics if keys.is_score(k)}

    all_keys = set().union(*(scores(r.metrics) for r in runs))
    messages = []
    for r in runs:
        missing = sorted(all_keys - scores(r.metrics))
        if missing:
            messages.append(
                f"run {r.name} lacks {len(missing)} metric key(s) that other runs have: "
                + ", ".join(missing[:6])
                + (" ..." if len(missing) > 6 else "")
            )
    return messages
