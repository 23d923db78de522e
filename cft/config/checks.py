"""Checking a composed config before any work: a Hydra callback that runs the schemas of
`cft.config.schema` when Hydra has composed the config and before it creates any folder.

A bad value stops the command with one line per problem (the key, the value, what is allowed) and
exit status 2: nothing is written to the output root or the cache. In a multirun every cell of the
sweep is composed and checked first, so a bad value in the last cell stops the sweep before the
first cell trains; then every cell's preflight (cft.config.preflight: checkpoints, data, the strategy's
needs) names the cells that cannot run. `check=true` checks and lists the cells, then exits without running anything:

    python train.py -m model=mistral,llama strategy=gr5,gr10,lf_h2,lora,er10 check=true
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cft.config import schema
from cft.errors import ConfigError
from cft.run import layout

CHECKERS = {
    "train": schema.check_train,
    "evaluate": schema.check_evaluate,
    "analyze": schema.check_analyze,
    "translate": schema.check_translate,
}


def resolved(config: DictConfig) -> dict[str, Any]:
    """The config without its hydra node, every interpolation resolved (ConfigError naming a bad one)."""
    from omegaconf.errors import OmegaConfBaseException

    plain = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    try:
        return OmegaConf.to_container(plain, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{key or 'config'}: {str(exc).splitlines()[0]}") from None


def problems_of(kind: str, config: DictConfig, launcher: Any = "this") -> tuple[list[str], dict[str, Any] | None]:
    """(problems, resolved config) of one composed config. `launcher`: the sweep's (ranks, GPUs) per job when a
    launcher submits them elsewhere (default: read from `config`)."""
    try:
        values = resolved(config)
    except ConfigError as exc:
        return [str(exc)], None
    problems = CHECKERS[kind](values)
    if kind == "train" and not problems:
        problems += _cell_problems(config, values)
    if kind == "train" and not problems and not values.get("download"):  # it must fit where it runs (cft.config.launch)
        from cft.config import launch

        problems += launch.problems(values, launcher=_launcher_ranks(config) if launcher == "this" else launcher)
    if not problems:
        problems += _write_problems(kind, config, values)
    return problems, values


def writable_problem(path: str | Path, what: str, hint: str = "choose another folder") -> str | None:
    """Why `path` (a folder, made if missing) cannot be written, naming it, or None when it can: the nearest
    folder that exists is asked (access) and tried (a temporary file made and removed), so a read-only or
    full disk stops the command here instead of as a traceback from Hydra making its folders."""
    target = Path(path).absolute()
    probe = _existing_part(target)
    if not probe.is_dir():
        return f"{what} {target} cannot be made: {probe} is a file"
    problem = None
    if not os.access(probe, os.W_OK | os.X_OK):
        problem = "read-only file system" if _read_only_mount(probe) else "permission denied"
    else:
        try:
            fd, name = tempfile.mkstemp(prefix=".cft-write-check-", dir=probe)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            problem = (exc.strerror or str(exc)).lower()
    if problem is None:
        return None
    at = "" if probe == target else f" (at {probe}, the part that exists)"
    return f"{what} {target} cannot be written: {problem}{at}. Make it writable or {hint}"


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _launcher_ranks(config: DictConfig) -> tuple[int, int] | None:
    """(ranks, GPUs per node) of each job a submitit launcher submits (hydra/launcher=slurm); None otherwise:
    the job is this process (and torchrun's WORLD_SIZE)."""
    try:
        launcher = config.hydra.launcher
        if "submitit" not in str(launcher.get("_target_", "")).lower():
            return None
        nodes, tasks = int(launcher.get("nodes") or 1), int(launcher.get("tasks_per_node") or 1)
        return nodes * tasks, int(launcher.get("gpus_per_node") or 0)
    except Exception:  # no hydra node (a config composed by a test)
        return None


def _write_problems(kind: str, config: DictConfig, values: dict[str, Any]) -> list[str]:
    """The folders the command will write must be writable: the run folder (train) or the evaluation
    folder (evaluate), and the artifact cache (train)."""
    paths = values.get("paths") or {}
    root = paths.get("output_root")
    elsewhere = "set paths.output_root=<a writable folder> (or CFT_OUTPUT_ROOT)"
    where: list[tuple[str, str, str]] = []
    if kind == "train":
        folder = _run_folder(config, values)
        if folder:
            where.append((folder, "the run folder", elsewhere))
        if paths.get("cache_dir"):
            where.append((paths["cache_dir"], "the artifact cache", "set paths.cache_dir=<a writable folder>"))
    elif kind == "evaluate":
        from cft.config.hydra import evaluation_dir

        try:
            suite = str(config.hydra.runtime.choices.get("eval", "eval"))
            out = evaluation_dir(values.get("run_dir"), values.get("checkpoint"), root, suite)
            where.append(
                (out, "the evaluation folder", "evaluate a copy of the run folder" if values.get("run_dir") else elsewhere)
            )
        except Exception:  # no hydra node (a config composed by a test)
            pass
    if not where and root:
        where.append((root, "the output root", elsewhere))
    problems, refused = [], set()
    for path, what, hint in where:
        key = str(Path(path).absolute())
        if key not in _PROBED:
            _PROBED[key] = writable_problem(path, what, hint)
        existing = _existing_part(Path(key))
        if _PROBED[key] and existing not in refused:  # the cache under a read-only root: one message, not two
            problems.append(_PROBED[key])
            refused.add(existing)
    return problems


def _existing_part(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


_PROBED: dict[str, str | None] = {}  # one probe per folder and process (a sweep checks many cells under one root)


def _cell_problems(config: DictConfig, values: dict[str, Any]) -> list[str]:
    """The run folder must be a valid, contained path (names checked by cft.run.layout)."""
    try:
        choices = dict(config.hydra.runtime.choices)
        cell = layout.cell_of(choices, values["seed"], list(config.hydra.overrides.task))
        root = values["paths"]["output_root"]
        layout.inside(layout.run_dir(root, values["sweep_id"], cell), root, "the run folder")
    except ConfigError as exc:
        return [str(exc)]
    except Exception:  # no hydra node (a config composed by a test): nothing to check here
        return []
    return []


def _run_folder(config: DictConfig, values: dict[str, Any]) -> str | None:
    try:
        cell = layout.cell_of(dict(config.hydra.runtime.choices), values["seed"], list(config.hydra.overrides.task))
    except Exception:
        return None
    return str(layout.run_dir(values["paths"]["output_root"], values["sweep_id"], cell))


def _choices(config: DictConfig) -> dict[str, str]:
    try:
        return dict(config.hydra.runtime.choices)
    except Exception:  # no hydra node (a config composed by a test)
        return {}


def fail(problems: list[str], where: str = "") -> None:
    """Print each problem as one line and exit with status 2 (no traceback)."""
    for problem in dict.fromkeys(problems):
        print(f"cft: error: {where}{problem}", file=sys.stderr, flush=True)
    sys.exit(2)


def sweep_cells(config: DictConfig) -> list[list[str]] | None:
    """The override lists of every cell of a multirun (None when the sweeper is not Hydra's basic one)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = str(config.hydra.sweeper.get("_target_", ""))
    if not sweeper.endswith("BasicSweeper"):
        return None
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(cell) for batch in batches for cell in batch]


def _download(cells: list[dict[str, Any]]) -> None:
    """download=true: fetch every checkpoint the cells read (cft.models.download), print where, exit."""
    from cft.errors import CftError
    from cft.models import download

    refs = download.needed(cells)
    try:
        where = download.fetch(refs)
    except CftError as exc:
        fail([str(exc)])
    for ref, path in where.items():
        print(f"cft: {refs[ref]}: {ref} -> {path}", flush=True)
    print(f"cft: {len(where)} checkpoint(s) on disk for {len(cells)} cell(s)", flush=True)
    sys.exit(0)


class Checks(Callback):
    """Validates the composed config (every cell of a multirun) before Hydra creates any folder."""

    def __init__(self, kind: str = "train"):
        if kind not in CHECKERS:
            raise ValueError(f"Checks(kind={kind!r}) must be one of {sorted(CHECKERS)}")
        self.kind = kind

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        problems, values = problems_of(self.kind, config)
        if problems:
            fail(problems)
        if values and values.get("download"):
            _download([values])
        if values and self.kind == "train":
            from cft.config.preflight import preflight

            found = preflight(values, _choices(config))  # one cell: it cannot run, so nothing runs
            if found:
                fail(found)  # the same line the cell would stop with, before Hydra makes its folder
        if values and values.get("check"):
            where = _run_folder(config, values) if self.kind == "train" else None
            print(f"cft: config OK{f': {where}' if where else ''}", flush=True)
            sys.exit(0)
        if values and self.kind == "train" and os.environ.get("RANK", "0") == "0" and os.environ.get("SLURM_PROCID", "0") == "0":
            # Another process running this cell: stop before Hydra writes into its folder (.hydra/, train.log).
            # The recipe takes the lock itself; this only spares the holder's folder. In a sweep the cell
            # stops at its lock instead and the others go on. Rank 0 alone looks: another rank of this very
            # run would find the lock its own rank 0 has just taken.
            from cft.run.folder import RunLock

            folder = _run_folder(config, values)
            try:
                if folder:
                    RunLock(folder).check_free()
            except ConfigError as exc:
                fail([str(exc)])

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra import compose

        cells = sweep_cells(config)
        if cells is None:  # another sweeper (e.g. optuna) chooses cells as it goes: check the primary config
            self.on_run_start(config)
            return
        name = config.hydra.job.config_name
        problems: dict[str, list[str]] = {}  # a problem -> the cells that have it (a bad global value: every cell)
        rows, cell_values = [], []
        grounded: dict[str, list[str]] = {}  # run folder -> why the preflight says it cannot run
        for overrides in cells:
            label = " ".join(overrides) or "(no overrides)"
            try:
                cell_config = compose(config_name=name, overrides=overrides, return_hydra_config=True)
            except Exception as exc:  # Hydra's own errors (an unknown group option) name the override
                from cft.config.cli import hydra_error_line

                problems.setdefault(hydra_error_line(exc) or str(exc).splitlines()[0], []).append(label)
                continue
            found, values = problems_of(self.kind, cell_config, launcher=_launcher_ranks(config))
            for problem in found:
                problems.setdefault(problem, []).append(label)
            if not found and values:
                cell_values.append(values)
            if not found and values and self.kind == "train":
                cell = layout.cell_of(dict(cell_config.hydra.runtime.choices), values["seed"], overrides)
                rows.append(str(cell.path()))
                from cft.config.preflight import preflight

                reasons = preflight(values, dict(cell_config.hydra.runtime.choices))
                if reasons:
                    grounded[str(cell.path())] = reasons
        for problem, where in problems.items():
            scope = (
                "every cell"
                if len(where) == len(cells)
                else f"cell(s): {'; '.join(where[:3])}" + (" ..." if len(where) > 3 else "")
            )
            print(f"cft: error: {problem} [{scope}]", file=sys.stderr, flush=True)
        failed = bool(problems)
        if failed:
            sys.exit(2)
        if OmegaConf.select(config, "download", default=False):
            _download(cell_values)  # before the preflight's verdict: fetching is what makes checkpoints resolve
        check = OmegaConf.select(config, "check", default=False)
        if check:  # the config itself is sound: its cells first, then what the preflight found
            print(f"cft: config OK: {len(cells)} cell(s)" + "".join(f"\n  {row}" for row in rows), flush=True)
        by_reason: dict[str, list[str]] = {}  # a shared cause (a checkpoint offline) once, with its cells
        for row, reasons in grounded.items():
            for reason in reasons:
                by_reason.setdefault(reason, []).append(row)
        for reason, where in by_reason.items():
            scope = (
                "every cell"
                if len(where) == len(cells)
                else "; ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
            )
            print(f"cft: error: preflight: {reason} [{scope}]", file=sys.stderr, flush=True)
        if grounded:
            strict = OmegaConf.select(config, "preflight", default="lenient") == "strict"
            print(
                f"cft: {len(grounded)} of {len(cells)} cell(s) cannot run (above); "
                + (
                    "nothing was run"
                    if check or strict
                    else f"running the other {len(cells) - len(grounded)}; "
                    "those stop at their start with this reason (preflight=strict: stop the sweep instead)"
                ),
                file=sys.stderr,
                flush=True,
            )
            if check or strict:
                sys.exit(2)
        if check:
            print(f"cft: preflight OK: {len(cells)} cell(s) can run", flush=True)
            sys.exit(0)
        if self.kind == "train":  # the end of the sweep reports every cell without DONE, not only those with FAILED
            import json

            from cft.config.hydra import CELLS_ENV

            os.environ[CELLS_ENV] = json.dumps(rows)
            from cft.config.preflight import ENV as PREFLIGHT_ENV

            os.environ[PREFLIGHT_ENV] = json.dumps({row: "; ".join(reasons) for row, reasons in grounded.items()})
