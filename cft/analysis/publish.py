"""The one publish step every analysis ends with: tables (Markdown, CSV, LaTeX), figures (already
saved as PNG, SVG and CSV by `cft.analysis.figures`), `report.md`, and one W&B analysis run
(tables as W&B tables, figures as images, a summary)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cft.analysis.runs import Sweep, failure_line
from cft.analysis.tables import Table

log = logging.getLogger(__name__)


@dataclass
class Tracking:
    """Where the analysis run goes on W&B (mode offline | online | disabled)."""

    mode: str = "offline"
    project: str = "cft"
    entity: str | None = None


@dataclass
class AnalysisResult:
    out_dir: Path
    report: Path
    tables: list[Table] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one line per failed cell: where and why


def runs_section(sweep: Sweep) -> list[str]:
    """Markdown: how many runs finished, failed and are unfinished, with each failed cell's phase and reason."""
    lines = [
        f"Source: `{sweep.source}`. Finished runs: {len(sweep.finished)}; failed: {len(sweep.failed)}; "
        f"unfinished: {len(sweep.unfinished)}.",
        "",
    ]
    if sweep.failed:
        lines += ["## Failed cells", "", "Stopped with an error (`FAILED`, no `DONE`); left out of the tables.", ""]
        lines += ["| Cell | Phase | Error | Message |", "|---|---|---|---|"]
        for r in sweep.failed:
            f = r.failure or {}
            message = " ".join(str(f.get("message") or "").split()).replace("|", "\\|")
            lines.append(f"| `{r.name}` | {f.get('phase') or '?'} | {f.get('error') or '?'} | {message} |")
        lines.append("")
    if sweep.unfinished:
        lines += [
            "## Unfinished cells",
            "",
            "No `DONE` and no `FAILED` (running, killed, or not started); left out of the tables.",
            "",
        ]
        lines += [f"- `{r.name}`" for r in sweep.unfinished]
        lines.append("")
    return lines


def write_report(
    path: Path,
    *,
    title: str,
    sections: Sequence[str],
    problems: Sequence[str],
    tables: Sequence[Table],
    figures: Sequence[Path],
) -> Path:
    lines = [f"# {title}", "", *sections]
    if problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in problems] + [""]
    if tables:
        lines += ["## Tables", "", "Each table is also written as `<name>.csv` (tidy numbers) and `<name>.tex` (LaTeX).", ""]
        for t in tables:
            lines += [t.to_markdown(), f"Files: [{t.name}.csv]({t.name}.csv), [{t.name}.tex]({t.name}.tex)", ""]
    if figures:
        lines += ["## Figures", ""]
        for fig in figures:
            fig = Path(fig)
            rel = fig.relative_to(path.parent) if fig.is_relative_to(path.parent) else fig
            lines += [
                f"![{rel.stem}]({rel.as_posix()})",
                f"([SVG]({rel.with_suffix('.svg').as_posix()}), data: [CSV]({rel.with_suffix('.csv').as_posix()}))",
                "",
            ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


WANDB_KEY_MAX = 96  # W&B names a logged table's artifact after its key, and refuses names over 128 characters


def wandb_key(prefix: str, name: str) -> str:
    """`<prefix>/<name>`, its readable start kept and a hash of the whole appended when it is too long for W&B."""
    import hashlib

    key = f"{prefix}/{name}"
    if len(key) <= WANDB_KEY_MAX:
        return key
    return key[: WANDB_KEY_MAX - 9] + "~" + hashlib.sha256(key.encode()).hexdigest()[:8]


def publish(
    out_dir: str | Path,
    *,
    title: str,
    tables: Sequence[Table] = (),
    figures: Sequence[Path] = (),
    problems: Sequence[str] = (),
    sections: Sequence[str] = (),
    summary: Mapping[str, Any] | None = None,
    tracking: Tracking | None = None,
    run_name: str = "analysis",
    group: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> AnalysisResult:
    """Write the tables and report.md into out_dir and log everything to one W&B run (job_type=analyze)."""
    from cft.run.tracking import Tracker

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for t in tables:
        written += t.write(out_dir).values()
    report = write_report(
        out_dir / "report.md", title=title, sections=sections, problems=problems, tables=tables, figures=figures
    )
    written.append(report)
    for fig in figures:
        written += [Path(fig).with_suffix(s) for s in (".png", ".svg", ".csv")]
    remove_stale(out_dir, run_name, written)
    log.info("Wrote %d tables, %d figures and %s", len(tables), len(figures), report)
    tracking = tracking or Tracking()
    tracker = Tracker(
        mode=tracking.mode,
        project=tracking.project,
        entity=tracking.entity,
        run_dir=out_dir,
        name=run_name,
        group=group,
        job_type="analyze",
        config=dict(config or {}),
    )
    try:
        for t in tables:
            columns, rows = t.wandb_rows()
            tracker.log_table(wandb_key("tables", t.name), columns, rows)
        for fig in figures:
            tracker.log_image(wandb_key("figures", Path(fig).stem), fig)
        tracker.summary(dict(summary or {}))
    finally:
        tracker.finish()
    return AnalysisResult(out_dir=out_dir, report=report, tables=list(tables), figures=list(figures), problems=list(problems))


def _manifest(out_dir: Path, run_name: str) -> Path:
    return out_dir / f".written-{run_name}.txt"


def remove_stale(out_dir: Path, run_name: str, written: Sequence[Path]) -> list[Path]:
    """Remove the files the previous analysis of this name wrote and this one did not (a table of a cell
    that is gone, a figure renamed), so that out_dir holds what the report names; then record this
    analysis's files. Only files listed by an earlier analysis are ever removed: nothing a user put there."""
    manifest = _manifest(out_dir, run_name)
    now = sorted({p.name for p in written if Path(p).parent == out_dir and Path(p).exists()})
    removed = []
    if manifest.exists():
        for name in manifest.read_text().split("\n"):
            stale = out_dir / name
            if name and name not in now and "/" not in name and stale.is_file():
                stale.unlink()
                removed.append(stale)
    if removed:
        log.info("Removed %d file(s) of an earlier analysis that this one did not write", len(removed))
    manifest.write_text("\n".join(now) + "\n")
    return removed


def failed_lines(sweep: Sweep) -> list[str]:
    return [failure_line(r) for r in sweep.failed]
