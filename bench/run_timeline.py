"""Where the time of a real `train.py` run goes, step by step, and in particular what happens
between the Phase-2 evaluation and DONE (issue 17: lf_h2 spent ~40 s more there than full).

    python bench/run_timeline.py                                   # train.py -m strategy=full,lf_h2 seed=0,1 (the issue's sweep)
    python bench/run_timeline.py --overrides strategy=lf_h2        # one cell
    python bench/run_timeline.py --smoke

train.py runs in this process, unchanged, as `python train.py <overrides>` would run it: the
functions a run calls are wrapped with timers before train.py is imported (the evaluation, the
training loop, the strategy hooks, the W&B tracker, the run folder's writes, the layer-change
table, saving), and each call is recorded with its start and end. The figures are, per cell, the
seconds of each step and the seconds from the end of the last evaluation to DONE, broken down by
the calls made in that window ("unaccounted" is what no wrapper covered).
"""

from __future__ import annotations

import argparse
import functools
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

log = common.setup_logging()

EVENTS: list[dict] = []
T0 = time.perf_counter()


def _wrap(owner, attr: str, label: str, note=None) -> None:
    """Replace owner.attr by a timed version; `note(*args)` adds a string to the event (e.g. the run folder)."""
    fn = getattr(owner, attr)
    if getattr(fn, "_timed", False):
        return

    @functools.wraps(fn)
    def timed(*a, **k):
        start = time.perf_counter() - T0
        try:
            return fn(*a, **k)
        finally:
            event = {"what": label, "start": start, "end": time.perf_counter() - T0}
            if note is not None:
                event["note"] = str(note(*a))
            EVENTS.append(event)

    timed._timed = True
    setattr(owner, attr, timed)


def install() -> None:
    """Wrap what a run calls. Module attributes are replaced before the recipe imports them by name."""
    from transformers import PreTrainedModel

    import cft.evaluation
    import cft.evaluation.summary
    import cft.measures.layers
    import cft.models
    import cft.models.checkpoints
    import cft.run.artifacts
    import cft.run.folder
    import cft.run.tracking
    import cft.training.loop

    _wrap(cft.evaluation, "evaluate", "evaluate")
    _wrap(cft.training.loop, "fit", "train (fit)")
    _wrap(cft.measures.layers, "transition_changes", "layer changes (transition_changes)")
    _wrap(cft.measures.layers, "layer_changes", "layer changes (layer_changes)")
    _wrap(cft.evaluation.summary, "print_summary", "print_summary")
    _wrap(cft.models.checkpoints, "load_model", "load_model")
    _wrap(cft.models, "load_model", "load_model")
    _wrap(PreTrainedModel, "save_pretrained", "save_pretrained")
    _wrap(cft.run.artifacts, "cached", "artifacts.cached")
    for attr in ("__init__", "log_table", "summary", "finish", "log", "log_image"):
        if hasattr(cft.run.tracking.Tracker, attr):
            _wrap(cft.run.tracking.Tracker, attr, f"tracker.{attr}")
    for attr in ("write_json", "mark_done", "start", "check_config"):
        if hasattr(cft.run.folder.RunDir, attr):
            _wrap(cft.run.folder.RunDir, attr, f"rundir.{attr}", note=lambda self, *_: self.path)
    import cft.strategies.base as base

    for module in ("full", "lf_h1", "lf_h2", "gr", "er", "lora", "cofitune", "spectrum", "compose"):
        mod = __import__(f"cft.strategies.{module}", fromlist=["_"])
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, base.Strategy):
                for hook in ("phase2_data", "prepare", "finalize", "report", "tables", "on_before_optimizer_step"):
                    if hook in vars(obj):
                        _wrap(obj, hook, f"strategy.{hook}")
    for hook in ("tables", "report"):
        _wrap(base.Strategy, hook, f"strategy.{hook}")


def cells(events: list[dict], output_root: Path | None = None) -> list[dict]:
    """Split the events into cells (a cell starts with its rundir.check_config) and summarise each."""
    marks = [e for e in events if e["what"] == "rundir.check_config"]
    starts = [e["start"] for e in marks]
    out = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else float("inf")
        mine = [e for e in events if start <= e["start"] < end]
        done = [e for e in mine if e["what"] == "rundir.mark_done"]
        evals = [e for e in mine if e["what"] == "evaluate"]
        fits = [e for e in mine if e["what"] == "train (fit)"]
        cell = {
            "run_dir": marks[i].get("note"),
            "start": start,
            "seconds": (max(e["end"] for e in mine) - start) if mine else 0.0,
        }
        parsed = _cell_of(marks[i].get("note"), output_root)
        if parsed is not None:
            cell.update(strategy=parsed.strategy, seed=parsed.seed, cell=parsed.name)
        cell["steps"] = _totals(mine)
        if fits:
            cell["phase2_train_seconds"] = fits[-1]["end"] - fits[-1]["start"]
        if evals and done:
            # from the end of the last evaluation to the end of the cell (DONE, then closing W&B and the summary)
            window = (evals[-1]["end"], max(e["end"] for e in mine))
            inside = [e for e in mine if e["start"] >= window[0] and e["end"] <= window[1]]
            top = _outermost(inside)
            cell["after_last_evaluation"] = {
                "seconds": window[1] - window[0],
                "seconds_to_done": done[-1]["end"] - window[0],
                "steps": _totals(top),
                "unaccounted": (window[1] - window[0]) - sum(e["end"] - e["start"] for e in top),
            }
            cell["last_evaluation_seconds"] = evals[-1]["end"] - evals[-1]["start"]
        out.append(cell)
    return out


def _cell_of(run_dir: str | None, output_root: Path | None):
    """The cell (cft.run.layout) a run folder under <output_root>/<sweep_id>/ names, or None."""
    from cft.run import layout

    if not run_dir or output_root is None:
        return None
    try:
        rel = Path(run_dir).resolve().relative_to(Path(output_root).resolve())
    except ValueError:
        return None
    return layout.parse_cell(Path(*rel.parts[1:])) if len(rel.parts) > 1 else None


def _outermost(events: list[dict]) -> list[dict]:
    """Events not nested inside another (so their times add up without double counting)."""
    events = sorted(events, key=lambda e: (e["start"], -e["end"]))
    top, reach = [], -1.0
    for e in events:
        if e["start"] >= reach:
            top.append(e)
            reach = e["end"]
    return top


def _totals(events: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for e in _outermost(events):
        totals[e["what"]] = totals.get(e["what"], 0.0) + e["end"] - e["start"]
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


SMOKE = [
    "model=tiny",
    "++model.lf_k=1",
    "phase1_data.demo.per_task_language=8",
    "phase2_data.demo.per_task_language=4",
    "phase2_data.languages=[es,de]",
    "train.max_steps=2",
    "train.global_batch_size=8",
    "train.micro_batch_size=8",
    "eval.tasks.demo.per_task_language=2",
    "eval.tasks.demo.languages=[en,es]",
    "eval.tasks.demo.max_new_tokens=4",
]


def main() -> None:
    common.claim_stdout()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny sweep of full and lf_h2 (seconds)")
    p.add_argument("--overrides", nargs="*", default=["-m", "strategy=full,lf_h2", "seed=0,1"], help="train.py's arguments")
    p.add_argument("--output-root", default=None, help="CFT_OUTPUT_ROOT of the run (default: a temporary folder)")
    common.add_threads_arg(p)
    args = p.parse_args()
    threads = common.apply_threads(args.threads)
    overrides = list(args.overrides)
    if args.smoke:
        overrides = ["-m", "strategy=full,lf_h2", "seed=0", *SMOKE]
    with tempfile.TemporaryDirectory(prefix="cft-timeline-") as tmp:
        root = Path(args.output_root or tmp)
        os.environ["CFT_OUTPUT_ROOT"] = str(root)
        os.environ.pop("CFT_SWEEP_ID", None)
        install()
        sys.argv = ["train.py", *overrides]
        load_start = os.getloadavg()[0]
        code = 0
        try:
            runpy.run_path(str(common.REPO / "train.py"), run_name="__main__")
        except SystemExit as exc:  # hydra.main exits; a CftError exits 2
            code = exc.code or 0
        if code:
            raise SystemExit(f"train.py {' '.join(overrides)} exited with {code}")
    per_cell = cells(EVENTS, root)
    figures = {
        "benchmark": "run_timeline",
        "command": "python train.py " + " ".join(overrides),
        "threads": threads,
        "cells": per_cell,
        "environment": {**common.environment(), "load_avg_1m_start": round(load_start, 2)},
    }
    common.emit(figures)


if __name__ == "__main__":
    main()
