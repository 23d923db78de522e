"""mode=sweep (analyze.py's default): the paper's tables and figures of one sweep.

Reads every run of `sweep_id` (run folders under paths.output_root, or W&B runs of that group),
writes the tables (Markdown, CSV, LaTeX) and figures (PNG, SVG, CSV) and report.md to the sweep's
`analysis/` folder, prints the summary table and the failed and unfinished cells, and logs it all to
one W&B run (job_type=analyze, group=sweep_id).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cft.analysis.config import AnalyzeConfig
from cft.analysis.publish import AnalysisResult, Tracking, failed_lines, publish, runs_section
from cft.analysis.runs import Sweep, collect_local, collect_wandb, key_disagreements
from cft.errors import CftError
from cft.run import keys, layout

log = logging.getLogger(__name__)


def latest_sweep(output_root: str | Path) -> str | None:
    """The sweep of the most recently finished run under output_root (what a bare analyze.py reads)."""
    run = layout.latest_run(output_root)
    if run is None:
        return None
    sweep_id = json.loads((run / layout.META).read_text()).get("sweep_id")
    log.info("No sweep_id= given: analysing the sweep of the latest finished run, %s (%s)", sweep_id, run)
    return sweep_id


def load_sweep(
    sweep_id: str | None, *, source: str, output_root: str | Path, entity: str | None, project: str, api=None
) -> Sweep:
    """The runs of a sweep from run folders (source=local) or W&B; CftError naming what is missing."""
    if sweep_id in (None, "", "???") and source == "local":
        sweep_id = latest_sweep(output_root)
    if sweep_id in (None, "", "???"):
        raise CftError("no sweep given: pass sweep_id=<id> (the folder name under paths.output_root, or the W&B group)")
    if source == "local":
        return collect_local(output_root, sweep_id)
    if source == "wandb":
        return collect_wandb(entity, project, sweep_id, api=api)
    raise CftError(f"source={source!r} is not one of local, wandb")


def _cell_name(idx) -> str:
    name = f"{idx['phase1_data']}-{idx['phase2_data']}_{idx['model']}_{idx['strategy']}"
    return name + (f"_{idx['variant']}" if idx.get("variant") else "")


def _not_finished_lines(sweep: Sweep) -> list[str]:
    lines = []
    if sweep.failed:
        lines.append(f"{len(sweep.failed)} failed cell(s) (phase: error: message), left out of the tables:")
        lines += [f"  - {line}" for line in failed_lines(sweep)]
    if sweep.unfinished:
        lines.append(f"{len(sweep.unfinished)} unfinished run(s), left out of the tables:")
        lines += [f"  - {r.name}" for r in sweep.unfinished]
    return lines


def analyze_sweep(
    sweep_id: str | None,
    *,
    source: str = "local",
    output_root: str | Path = "outputs",
    out_dir: str | Path | None = None,
    tracking: Tracking | None = None,
    api=None,
    echo: bool = True,
) -> AnalysisResult:
    """Tables, figures and report of one sweep. CftError for an unknown sweep or one with no finished run."""
    import pandas as pd

    from cft.analysis import figures as F
    from cft.analysis.tables import all_tables, group_cells, layer_rank_table

    tracking = tracking or Tracking()
    sweep = load_sweep(
        sweep_id, source=source, output_root=output_root, entity=tracking.entity, project=tracking.project, api=api
    )
    sweep_id = sweep.sweep_id
    out_dir = Path(out_dir) if out_dir else layout.analysis_dir(output_root, sweep_id)
    if not sweep.finished:
        others = "\n".join(_not_finished_lines(sweep))
        raise CftError(
            f"sweep {sweep_id!r} ({sweep.source}) has no finished run (no run folder with DONE). "
            + (others if others else "It holds no runs at all.")
        )
    finished = [r for r in sweep.finished if r.metrics and r.choices]
    problems = list(sweep.problems) + key_disagreements(finished)
    tables = all_tables(finished)

    figs: list[Path] = []
    by_name = {t.name: t for t in tables}
    if "summary" in by_name:
        figs.append(F.phase_bars(by_name["summary"], out_dir))
    for fig in (F.tradeoff(finished, out_dir), F.la_gain_heatmap(finished, out_dir)):
        if fig is not None:
            figs.append(fig)
    for idx, runs in group_cells(finished):
        # Layer changes of one seed per cell: their ranks as a table and the paper's Q/K/V x layer figure.
        with_changes = [r for r in runs if r.path is not None and (r.path / layout.LAYER_CHANGES).exists()]
        if with_changes:
            r = with_changes[0]
            cell = F.safe_stem(_cell_name(idx))
            try:
                frame = pd.read_csv(r.path / layout.LAYER_CHANGES)
                rank_table = layer_rank_table(
                    frame, f"layer_ranks_{cell}", f"Layer-change ranks, {r.name} (1 = largest relative change)"
                )
                if rank_table is not None:
                    tables.append(rank_table)
                figs.append(F.layer_change_heatmap(frame, out_dir, f"layer_changes_{cell}", title=f"Layer changes: {r.name}"))
            except (KeyError, ValueError, pd.errors.ParserError) as exc:
                problems.append(f"{r.path / layout.LAYER_CHANGES}: not drawn ({type(exc).__name__}: {exc})")
    per_layer_mpd = {}
    for idx, runs in group_cells(finished):
        layers = keys.mpd_layers(runs[0].metrics)
        if layers:
            per_layer_mpd[_cell_name(idx)] = layers
    if per_layer_mpd:
        figs.append(F.mpd_layers(per_layer_mpd, out_dir))

    result = publish(
        out_dir,
        title=f"Sweep {sweep_id}",
        tables=tables,
        figures=figs,
        problems=problems,
        sections=runs_section(sweep),
        summary={
            "finished_runs": len(sweep.finished),
            "failed_runs": len(sweep.failed),
            "unfinished_runs": len(sweep.unfinished),
            "problems": len(problems),
        },
        tracking=tracking,
        run_name=f"analyze-{sweep_id}",
        group=str(sweep_id),
        config={
            "sweep_id": sweep_id,
            "source": sweep.source,
            "finished_runs": len(sweep.finished),
            "failed_runs": failed_lines(sweep),
            "unfinished_runs": [r.name for r in sweep.unfinished],
        },
    )
    result.failed = failed_lines(sweep)
    if echo:
        first = tables[0] if tables else None
        print(first.to_markdown() if first else "(no TA/LA metrics in the finished runs)")
        for line in _not_finished_lines(sweep):
            print(line)
        for p in problems:
            print(f"warning: {p}")
        print(f"Report: {result.report}")
    return result


def tracking_of(cfg: AnalyzeConfig) -> Tracking:
    return Tracking(mode=cfg.tracking.mode, project=cfg.project, entity=cfg.entity)


def run(cfg: AnalyzeConfig) -> AnalysisResult:
    return analyze_sweep(
        cfg.sweep_id, source=cfg.source, output_root=cfg.paths.output_root, out_dir=cfg.out_dir, tracking=tracking_of(cfg)
    )
