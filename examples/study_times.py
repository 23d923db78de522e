"""Where a sweep's wall time went, per cell, from its run folders' metrics.json (the README's study wall times).

    python examples/study_times.py smollm2_study                    # under paths.output_root (CFT_OUTPUT_ROOT, default outputs)
    python examples/study_times.py smollm2_study --output-root /data/outputs

Per finished cell: the Phase-1 training's seconds (`train/phase1/seconds`: a Phase-1 model is trained once
and reused, so the cells that share it, by the `phase1_key` in their run_meta.json, count it once in the
total), Phase 2's, and its
evaluation's, per task (`eval/phase2/<task>/seconds`). A Phase-1 evaluation is a cached artifact whose
time is not recorded in the cells; it costs about what a Phase-2 evaluation of the same suite costs.
"""

from __future__ import annotations

import argparse
import json
import os

from cft.analysis.runs import Run, collect_local
from cft.run import layout


def _seconds(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _phase1_identity(run: Run) -> str:
    """The Phase-1 model a cell used: its cache key as train.py recorded it; for a run folder from before
    that record, its Phase-1 data, model, seed and variant (what a Phase-1 model depends on in a sweep)."""
    meta = json.loads((run.path / layout.META).read_text()) if run.path and (run.path / layout.META).exists() else {}
    if meta.get("phase1_key"):
        return meta["phase1_key"]
    cell = layout.parse_cell(run.name)
    return f"{cell.phase1_data}/{cell.model}/{cell.seed}/{cell.variant}" if cell else run.name


def times_table(output_root: str, sweep_id: str) -> str:
    """A Markdown table of each finished cell's seconds, and a total line."""
    sweep = collect_local(output_root, sweep_id)
    runs = sorted(sweep.finished, key=lambda r: r.name)
    tasks = sorted({k.split("/")[2] for r in runs for k in r.metrics if k.startswith("eval/phase2/") and k.count("/") == 3})
    header = ["cell", "Phase 1 train", "Phase 2 train", *[f"eval {t}" for t in tasks], "Phase 2 eval"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    phase1, total = {}, 0.0
    for r in runs:
        m = r.metrics
        row = [
            _seconds(m, "train/phase1/seconds"),
            _seconds(m, "train/phase2/seconds"),
            *[_seconds(m, f"eval/phase2/{t}/seconds") for t in tasks],
            _seconds(m, "eval/phase2/seconds"),
        ]
        phase1[_phase1_identity(r)] = row[0] or 0.0
        total += (row[1] or 0.0) + (row[-1] or 0.0)
        resumed = m.get("train/phase2/resumed_from")
        name = f"{r.name} (Phase 2 resumed at step {resumed}: its seconds are the resumed part's)" if resumed else r.name
        lines.append("| " + " | ".join([name, *("-" if v is None else f"{v:.0f}" for v in row)]) + " |")
    total += sum(phase1.values())
    lines.append(
        f"\n{len(runs)} finished cell(s); {total:.0f} s ({total / 3600:.2f} h) of wall time in these phases "
        f"(each Phase-1 training counted once, Phase-1 evaluations not recorded)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_id")
    parser.add_argument("--output-root", default=os.environ.get("CFT_OUTPUT_ROOT", "outputs"))
    args = parser.parse_args()
    print(times_table(args.output_root, args.sweep_id))


if __name__ == "__main__":
    main()
