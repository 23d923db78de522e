"""The run-folder layout, written once: Hydra's run and sweep folders are built here, the analysis
parses them back here, and every file name inside a run folder is named here.

    <output_root>/                               paths.output_root (CFT_OUTPUT_ROOT, default outputs/)
      <sweep_id>/                                one sweep (W&B group)
        <phase1_data>-<phase2_data>/<model>/<strategy>[/<variant>]/seed<k>/    one cell = one run folder
        analysis/                                analyze.py's tables, figures, report, dashboard
      cache/                                     paths.cache_dir: shared artifacts (cft.run.artifacts)
      evaluations/<checkpoint>/<suite>/          evaluate.py checkpoint=... (a run's own: <run>/evaluations/<suite>)

`<variant>` names the plain-value overrides of a cell (`train.lr@1e-05`), so two cells of a sweep over
a value never share a folder. It uses only characters that Hydra takes unquoted, so a printed run
folder can be passed back (`evaluate.py run_dir=<folder>`); where a value had to be shortened (a path
to its last component, a list to `a.b`) or the name would be too long, a hash of the exact overrides
ends it.

Every name that becomes a path component (sweep id, group choices, variant parts) is checked:
no separators, no `..`, no leading dot, at most `MAX_COMPONENT` characters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cft.errors import ConfigError

# The axes that name a cell of the study, in folder order (a row of the analysis tables; seeds are aggregated).
CELL_KEYS = ("phase1_data", "phase2_data", "model", "strategy")
SEED_PREFIX = "seed"
ANALYSIS = "analysis"
CACHE = "cache"
EVALUATIONS = "evaluations"

# Files and folders of a run folder.
CONFIG = "config.yaml"  # the resolved config
META = "run_meta.json"  # choices, seed, sweep id, git SHA, versions, where its Phase-1 model is
METRICS = "metrics.json"  # the flat keys of cft.run.keys
DONE = "DONE"  # written last: the run is finished
FAILED = "FAILED"  # a failed run: JSON with the phase and the message (no DONE)
LOCK = ".run.lock"  # held by the process that runs the cell
CHECKPOINT = "checkpoint"  # the final Phase-2 model
CHECKPOINTS = "checkpoints"  # resumable checkpoints while training (removed at the end)
TRAIN_METRICS = "train_metrics.json"  # beside a saved or rescued Phase-2 model: its train/phase2/* figures
EVAL_SAMPLES = "eval"  # lm-eval's samples of the run's evaluations
# Per-item headline scores of one evaluation, {score key: {item id: score}}, written beside its samples
# (<run>/eval/<phase>/items.json): the paired bootstrap of differences reads them (cft.evaluation.uncertainty).
EVAL_ITEMS = "items.json"
LAYER_CHANGES = "layer_changes.csv"
TRAIN_LOG = "train.log"

MAX_COMPONENT = 100
MAX_VARIANT = 96
# Settings that cannot change a result (written once, here): two invocations of one run may differ in
# them, they stay out of every cache key (how often a checkpoint is written must not retrain Phase 1),
# and out of a run folder's name.
_LOOP_BOOKKEEPING = (
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "sync_every_step",
    "checkpoint_every_minutes",
    "gradient_checkpointing",  # recomputes activations: the same gradients, less memory
)
RESULT_NEUTRAL = (
    "tracking",
    "paths",
    "eval.batch_size",
    "threads",
    "check",
    "preflight",
    "search",  # a search's level and choice pick cells; a candidate met at two levels is one folder
    "download",
    *(f"train.{phase}{key}" for phase in ("", "phase1.", "phase2.") for key in _LOOP_BOOKKEEPING),
)
# Overrides that do not make a different cell, or that the folder names already (group choices).
NOT_IN_VARIANT = ("seed", "sweep_id", "hydra", *RESULT_NEUTRAL)
GROUPS = (
    "model",
    "phase1_data",
    "phase2_data",
    "strategy",
    "eval",
    "train",
    "tracking",
    "paths",
    "experiment",
    "embedder",
    "setup",
    "hydra/launcher",
)


def check_component(value: Any, what: str) -> str:
    """`value` as one safe path component, or ConfigError naming `what`, the value and what is allowed."""
    text = str(value)
    problem = None
    if not text:
        problem = "is empty"
    elif "/" in text or "\\" in text or "\0" in text:
        problem = "contains a path separator"
    elif text in (".", "..") or text.startswith("."):
        problem = "starts with a dot"
    elif len(text) > MAX_COMPONENT:
        problem = f"is {len(text)} characters long"
    if problem:
        raise ConfigError(
            f"{what}={text!r} {problem}: it names a folder, so it must be 1 to {MAX_COMPONENT} characters "
            "without '/', '\\' or a leading '.'"
        )
    return text


def _short_value(value: str) -> str:
    """A path-like override value shortened to its last component (the folder name stays readable)."""
    if "/" in value or "\\" in value:
        tail = PurePosixPath(value.replace("\\", "/").rstrip("/")).name
        return tail or "root"
    return value


# Characters a variant name keeps: those Hydra's override grammar takes unquoted, so a run folder can be
# passed back as a value (evaluate.py run_dir=<folder>) without quotes; lists [a,b] read as a.b.
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _safe(text: str) -> str:
    out = "".join(c if c in _SAFE else ("." if c == "," else "") for c in text)
    return out.strip(".") or "_"


def variant_name(overrides: Iterable[Any] | None) -> str:
    """The variant level of a cell from its command-line overrides ('' for a cell named by its choices):
    `key@value` items joined by '+', e.g. `train.lr@1e-05+train.phase2.epochs@2`. Where a value had to be
    shortened (a path, a list, characters a folder name or an override value cannot hold) or the name
    would be too long, a hash of the exact overrides ends it (`+h1a2b3c4d`), so two cells never share a folder."""
    kept, exact, altered = [], [], False
    for o in overrides or []:
        text = str(o)
        key, eq, value = text.partition("=")
        deleted = key.startswith("~")
        key = key.lstrip("+~")
        if "@" in key:  # group@package (strategy=combine's parts): the package names the place
            key = key.split("@", 1)[1]
        if key in GROUPS or key.startswith(NOT_IN_VARIANT):
            continue
        if deleted and not eq:
            item = f"{_safe(key)}@null"
        elif eq:
            item = f"{_safe(key)}@{_safe(_short_value(value))}"
        else:
            continue
        altered |= item != f"{key}@{value}"
        kept.append(item)
        exact.append(text)
    if not kept:
        return ""
    name = "+".join(sorted(kept))
    if altered or len(name) > MAX_VARIANT:
        digest = hashlib.sha256("\n".join(sorted(exact)).encode()).hexdigest()[:8]
        name = name[: MAX_VARIANT - 10].rstrip("+.") + f"+h{digest}"
    return name


@dataclass(frozen=True)
class Cell:
    """One cell of the study, as its run folder names it."""

    phase1_data: str
    phase2_data: str
    model: str
    strategy: str
    seed: int
    variant: str = ""

    @property
    def choices(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in CELL_KEYS}

    def path(self) -> PurePosixPath:
        """The run folder relative to the sweep folder."""
        parts = [f"{self.phase1_data}-{self.phase2_data}", self.model, self.strategy]
        if self.variant:
            parts.append(self.variant)
        return PurePosixPath(*parts, f"{SEED_PREFIX}{self.seed}")

    @property
    def name(self) -> str:
        return str(self.path())


def cell_of(choices: Mapping[str, Any], seed: Any, overrides: Iterable[Any] | None = None) -> Cell:
    """The cell of a run from its group choices, seed and overrides (names checked)."""
    values = {k: check_component(choices.get(k), k) for k in CELL_KEYS}
    if "-" in values["phase1_data"]:
        raise ConfigError(
            f"phase1_data={values['phase1_data']!r}: a dataset option name may not contain '-' "
            "(the run folder joins the two datasets with it)"
        )
    variant = variant_name(overrides)
    if variant:
        check_component(variant, "the overrides of this cell")
    return Cell(**values, seed=int(seed), variant=variant)


def parse_cell(rel: str | Path | PurePosixPath) -> Cell | None:
    """The cell a run folder names, from its path relative to the sweep folder (None if it is not one)."""
    parts = PurePosixPath(str(rel).replace("\\", "/")).parts
    if len(parts) < 4 or not parts[-1].startswith(SEED_PREFIX) or not parts[-1][len(SEED_PREFIX) :].isdigit():
        return None
    p1, dash, p2 = parts[0].partition("-")
    if not dash:
        return None
    return Cell(
        phase1_data=p1,
        phase2_data=p2,
        model=parts[1],
        strategy=parts[2],
        seed=int(parts[-1][len(SEED_PREFIX) :]),
        variant="/".join(parts[3:-1]),
    )


def sweep_dir(output_root: str | Path, sweep_id: str) -> Path:
    return Path(output_root) / check_component(sweep_id, "sweep_id")


def analysis_dir(output_root: str | Path, sweep_id: str) -> Path:
    return sweep_dir(output_root, sweep_id) / ANALYSIS


def run_dir(output_root: str | Path, sweep_id: str, cell: Cell) -> Path:
    return sweep_dir(output_root, sweep_id) / cell.path()


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


def inside(path: str | Path, root: str | Path, what: str) -> Path:
    """`path` resolved, or ConfigError when it resolves outside `root` (a traversal through a symlink or '..')."""
    resolved, top = Path(path).resolve(), Path(root).resolve()
    if resolved != top and top not in resolved.parents:
        raise ConfigError(f"{what} {path} resolves to {resolved}, outside {top}")
    return resolved


def run_folders(sweep_folder: str | Path) -> list[Path]:
    """Every run folder of a sweep (a folder with run_meta.json, or a seed folder with metrics or DONE)."""
    folder = Path(sweep_folder)
    found = {p.parent for p in folder.rglob(META)}
    found |= {
        p.parent
        for name in (METRICS, DONE, FAILED)
        for p in folder.rglob(name)
        if parse_cell(p.parent.relative_to(folder)) is not None
    }
    return sorted(d for d in found if d.relative_to(folder).parts[:1] != (ANALYSIS,))


def latest_run(output_root: str | Path) -> Path | None:
    """The most recently finished run folder under output_root (by its DONE marker's time), or None.
    Cached artifacts also end with DONE; a run folder is the one with run_meta.json beside it."""
    root = Path(output_root)
    if not root.is_dir():
        return None
    done = [d for d in root.rglob(DONE) if (d.parent / META).is_file()]
    return max(done, key=lambda d: (d.stat().st_mtime, str(d))).parent if done else None


def evaluation_dir(run: str | Path | None, checkpoint: str | None, output_root: str | Path, suite: str) -> Path:
    """Where evaluate.py writes: inside the run folder it re-evaluates, else under output_root by checkpoint."""
    if run:
        return Path(str(run).rstrip("/")) / EVALUATIONS / check_component(suite, "eval")
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(checkpoint or "none").strip("/")).lstrip(".")
    return Path(output_root) / EVALUATIONS / (slug[-MAX_COMPONENT:] or "checkpoint") / check_component(suite, "eval")


def eval_items(run: str | Path, phase: str) -> Path:
    """The per-item scores of one phase's evaluation of a run."""
    return Path(run) / EVAL_SAMPLES / phase / EVAL_ITEMS


def write_failure(run: str | Path, *, phase: str, message: str, error: str) -> Path:
    """Record why a run failed: `<run>/FAILED`, a JSON object with the phase it was in, the error's
    type and its message (read back by `read_failure`, listed by the analysis). No DONE is written."""
    import json
    import os
    import time

    path = Path(run) / FAILED
    tmp = path.with_name(f".{FAILED}.tmp")
    record = {"phase": phase, "error": error, "message": message, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False))
        os.replace(tmp, path)
    except BaseException:
        try:  # a full disk leaves no empty .FAILED.tmp behind
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return path


def read_failure(run: str | Path) -> dict[str, Any] | None:
    """The failure record of a run folder, or None if it has none (a truncated file reads as its raw text)."""
    import json

    path = Path(run) / FAILED
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"phase": "?", "error": "?", "message": text.strip()[:500]}
    return value if isinstance(value, dict) else {"phase": "?", "error": "?", "message": str(value)}
