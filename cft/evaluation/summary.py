"""The table a run prints at its end: Phase-1 vs Phase-2 headline scores per benchmark, with the averages."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def summary_table(metrics: Mapping[str, Any]) -> str:
    """Phase-1 vs Phase-2 headline scores per task, with the TA and LA averages."""
    from tabulate import tabulate

    names = {
        k.split("/", 1)[1]
        for k in metrics
        if k.startswith(("phase1/ta", "phase1/la", "phase2/ta", "phase2/la")) and k.count("/") <= 2
    }
    names |= {k.split("/", 2)[2] for k in metrics if k.startswith(("phase1/not_computed/", "phase2/not_computed/"))}

    def fmt(v, signed=False):
        return "-" if not isinstance(v, (int, float)) else (f"{v:+.3f}" if signed else f"{v:.3f}")

    def cell(phase, name):
        value = metrics.get(f"{phase}/{name}")
        return "not computed" if value is None and f"{phase}/not_computed/{name}" in metrics else fmt(value)

    rows = []
    for name in sorted(names, key=lambda n: (not n.endswith("_avg"), n)):
        p1, p2 = metrics.get(f"phase1/{name}"), metrics.get(f"phase2/{name}")
        delta = p2 - p1 if isinstance(p1, (int, float)) and isinstance(p2, (int, float)) else None
        rows.append([name, cell("phase1", name), cell("phase2", name), fmt(delta, signed=True)])
    return tabulate(
        rows,
        headers=["score", "phase 1", "phase 2", "change"],
        disable_numparse=True,
        colalign=("left", "right", "right", "right"),
    )


def print_summary(metrics: Mapping[str, Any], run_dir: Path) -> None:
    print(f"\n{summary_table(metrics)}\n\nRun folder: {run_dir}")
