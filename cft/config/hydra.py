"""Hydra glue: a sweep id shared by every job of a multirun, and printed for analyze.py.

Unless the user gives `sweep_id=...`, a multirun's id is a short hash of its command-line
overrides, so rerunning the same sweep command lands in the same folders: finished cells are
skipped and unfinished ones resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from hydra.experimental.callback import Callback

from cft.run import layout

log = logging.getLogger(__name__)

ENV = "CFT_SWEEP_ID"
NOT_IN_SWEEP_ID = ("hydra", "tracking", "check=", "preflight=")


def sweep_id_for(overrides: list[str]) -> str:
    for o in overrides:
        if o.startswith("sweep_id="):
            return o.split("=", 1)[1]
    # Overrides that change how the command runs, not what it trains, leave the id alone: `check=true`
    # must print the id that the same command without it uses.
    blob = "\n".join(sorted(o for o in overrides if not o.lstrip("+~").startswith(NOT_IN_SWEEP_ID)))
    return "sweep-" + hashlib.sha256(blob.encode()).hexdigest()[:8]


class SweepId(Callback):
    """Gives every cell of a multirun one sweep id, and ends the sweep with a table of its failed cells."""

    def on_multirun_start(self, config, **kwargs) -> None:
        import time

        from omegaconf import OmegaConf

        # An experiment config may pin sweep_id (a plain value, not the env interpolation).
        pinned = None if OmegaConf.is_interpolation(config, "sweep_id") else config.get("sweep_id")
        sweep = str(pinned) if pinned else sweep_id_for(list(config.hydra.overrides.task))
        os.environ[ENV] = sweep
        os.environ[START_ENV] = str(time.time())
        os.environ.pop(CELLS_ENV, None)  # set by cft.config.checks for this sweep (after this callback)
        if os.environ.get("RANK", "0") == "0":  # one line per job, not per rank
            print(f"cft: sweep_id={sweep}", flush=True)

    def on_multirun_end(self, config, **kwargs) -> None:
        import sys

        sweep = os.environ.get(ENV)
        if not sweep:
            return
        from cft.training import distributed

        failed = None
        if distributed.is_main():
            since = float(os.environ.get(START_ENV, "0"))
            failed = failed_cells(config.paths.output_root, sweep, since=since)
            cells = os.environ.get(CELLS_ENV)
            if cells:  # the cells this command ran (cft.config.checks lists them): also those that left no FAILED
                failed = unfinished_cells(config.paths.output_root, sweep, json.loads(cells), since=since, failed=failed)
        # Several ranks: rank 0 (whose lock held each cell) judges; every rank exits with its verdict, one summary.
        failed = distributed.share(failed)
        if not distributed.is_main():
            if failed:
                sys.exit(1)
            return
        if failed:
            from tabulate import tabulate

            rows = [[cell, record.get("phase", "?"), _one_line(record.get("message", ""))] for cell, record in failed]
            print(
                f"\ncft: {len(failed)} cell(s) of sweep {sweep} failed or did not finish:\n"
                + tabulate(rows, headers=["cell", "step", "reason"], tablefmt="simple")
                + "\nFix the cause and run the same command again: finished cells are skipped, failed and "
                "unfinished ones run again.",
                file=sys.stderr,
                flush=True,
            )
        print(f"cft: sweep {sweep} finished. Tables and figures: python analyze.py sweep_id={sweep}", flush=True)
        if failed:
            sys.exit(1)


START_ENV = "CFT_SWEEP_START"
CELLS_ENV = "CFT_SWEEP_CELLS"  # JSON list of the sweep's cells (run folders relative to the sweep folder)


def _one_line(message: str, width: int = 100) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def failed_cells(output_root: str, sweep_id: str, *, since: float = 0.0) -> list[tuple[str, dict]]:
    """(cell, failure record) of the run folders of a sweep that failed since `since` (a time stamp)."""
    folder = layout.sweep_dir(output_root, sweep_id)
    if not folder.is_dir():
        return []
    out = []
    for run in layout.run_folders(folder):
        path = run / layout.FAILED
        if path.is_file() and not (run / layout.DONE).exists() and path.stat().st_mtime >= since:
            out.append((str(run.relative_to(folder)), layout.read_failure(run) or {}))
    return out


def unfinished_cells(
    output_root: str, sweep_id: str, cells: list[str], *, since: float = 0.0, failed: list[tuple[str, dict]] = ()
) -> list[tuple[str, dict]]:
    """`failed` and, of `cells`, every one without DONE: one another process holds (the run lock), or one
    whose process ended with neither DONE nor FAILED (killed: an out-of-memory kill, a crashed job)."""
    from cft.run.folder import RunLock

    folder = layout.sweep_dir(output_root, sweep_id)
    out = dict(failed)
    for cell in cells:
        run = folder / cell
        if cell in out or (run / layout.DONE).exists():
            continue
        holder = RunLock(run).held_by()
        if holder:
            out[cell] = {"phase": "-", "message": f"not run here: {holder} is running it"}
        elif (run / layout.FAILED).is_file() and (run / layout.FAILED).stat().st_mtime >= since:
            out[cell] = layout.read_failure(run) or {}
        else:
            out[cell] = {"phase": "?", "message": "did not finish and left no FAILED (its process was killed?)"}
    return sorted(out.items())


def evaluation_dir(run_dir: str | None, checkpoint: str | None, output_root: str, suite: str) -> str:
    """Where evaluate.py writes: inside the run folder it re-evaluates (given, or with neither
    run_dir nor checkpoint the latest finished run), else under output_root."""
    if not run_dir and not checkpoint:
        run_dir = str(layout.latest_run(output_root) or "")
    return str(layout.evaluation_dir(run_dir or None, checkpoint, output_root, suite))


def cell_dir(phase1_data: str, phase2_data: str, model: str, strategy: str, overrides, seed) -> str:
    """A cell's run folder relative to its sweep folder (cft.run.layout names it)."""
    choices = {"phase1_data": phase1_data, "phase2_data": phase2_data, "model": model, "strategy": strategy}
    return str(layout.cell_of(choices, seed, list(overrides or [])).path())


def sweep_dir(output_root: str, sweep_id: str) -> str:
    return str(layout.sweep_dir(output_root, sweep_id))


def on_multi_gpu(value):
    """`value` when this process is one of several GPU ranks (torchrun / SLURM set WORLD_SIZE), else None:
    train=paper becomes a DeepSpeed ZeRO-3 run exactly when it is launched on several GPUs."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    from cft.training import memory

    return value if memory.gpus_available() else None  # CFT_GPUS: the rule tested on CPUs


def on_gpu(if_gpu, otherwise):
    """`if_gpu` on a machine with a GPU (CFT_GPUS overrides, for tests), else `otherwise`: e.g. packing on."""
    from cft.training import memory

    return if_gpu if memory.gpus_available() else otherwise


def register_resolvers() -> None:
    """What every entry script sets up before Hydra runs: cft's resolvers, and Hydra's errors in cft's form."""
    from omegaconf import OmegaConf

    from cft.config.cli import hydra_errors_in_one_line

    hydra_errors_in_one_line()

    OmegaConf.register_new_resolver("cft_on_gpu", on_gpu, replace=True)
    OmegaConf.register_new_resolver("cft_on_multi_gpu", on_multi_gpu, replace=True)
    OmegaConf.register_new_resolver("cft_eval_dir", evaluation_dir, replace=True)
    OmegaConf.register_new_resolver("cft_cell_dir", cell_dir, replace=True)
    OmegaConf.register_new_resolver("cft_sweep_dir", sweep_dir, replace=True)
