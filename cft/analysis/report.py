"""The Markdown report of an analysis: runs found, problems, tables, and links to the figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cft.analysis.runs import Sweep
from cft.analysis.tables import Table


def runs_section(sweep: Sweep) -> list[str]:
    lines = [f"Source: `{sweep.source}`. Finished runs: {len(sweep.finished)}; unfinished runs: {len(sweep.unfinished)}.", ""]
    if sweep.unfinished:
        lines += ["Unfinished runs (no `DONE`; left out of the tables):", ""]
        lines += [f"- `{r.name}`" for r in sweep.unfinished]
        lines.append("")
    return lines


def write_report(
    path: str | Path,
    *,
    title: str,
    sweep: Sweep | None,
    problems: Sequence[str],
    tables: Sequence[Table],
    figures: Sequence[Path],
    extra: Sequence[str] = (),
) -> Path:
    path = Path(path)
    lines = [f"# {title}", ""]
    if sweep is not None:
        lines += runs_section(sweep)
    if problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in problems] + [""]
    lines += list(extra)
    if tables:
        lines += ["## Tables", "", "Each table is also written as `<name>.csv` (tidy numbers) and `<name>.tex` (LaTeX).", ""]
        for t in tables:
            lines += [t.to_markdown(), f"Files: [{t.name}.csv]({t.name}.csv), [{t.name}.tex]({t.name}.tex)", ""]
    if figures:
        lines += ["## Figures", ""]
        for fig in figures:
            rel = Path(fig).relative_to(path.parent) if Path(fig).is_relative_to(path.parent) else Path(fig)
            lines += [f"![{rel.stem}]({rel.as_posix()})", f"([SVG]({rel.with_suffix('.svg').as_posix()}))", ""]
    path.write_text("\n".join(lines))
    return path
