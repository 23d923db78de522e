"""The paper's tables from the finished runs of a sweep, as Markdown, CSV and LaTeX.

Rows are cells of the study (Phase-1 data, Phase-2 data, model, strategy); several seeds of a
cell are shown as mean ± std (sample std). Scores in [0, 1] are shown as percentages. The best
value of each score column is marked (bold in Markdown and LaTeX, `best` in the CSV).

- `summary`        TA and LA averages after Phase 1 and Phase 2 (the table `analyze.py` always prints)
- `ta`             TA per benchmark, Phase 1 vs Phase 2, with averages (Tables 1, A1)
- `la`             LA per benchmark likewise (Tables 2, A2)
- `la_<task>`      one LA benchmark per language (Tables B3 to B5)
- `strategies`     the strategy comparison after Phase 2, with the change from Phase 1 (Tables 3, C6)
- `des`, `mpd`     DES per data pair; MPD per cell, normalised by the largest MPD of the same model
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cft.analysis.runs import CELL_KEYS, Run

INDEX_LABELS = {
    "phase1_data": "Phase 1 data",
    "phase2_data": "Phase 2 data",
    "model": "Model",
    "strategy": "Strategy",
    "variant": "Overrides",
    "transition": "Transition",
    "module": "Module",
}
# Rows follow the paper's order of strategies; unknown ones come after, alphabetically.
STRATEGY_ORDER = ["full", "lf_h1", "lf_h2", "gr5", "gr10", "er10", "lora", "cofitune", "spectrum"]
MISSING = "—"


@dataclass
class Stat:
    mean: float
    std: float | None  # None with one value
    n: int


def stat(values: Sequence[float]) -> Stat | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass
class Table:
    name: str
    title: str
    index_cols: list[str]  # keys of `index` rows, shown with INDEX_LABELS
    index: list[dict[str, str]]
    columns: list[str]
    cells: list[list[Stat | None]]
    scale: float = 100.0
    digits: int = 1
    mark_best: bool = True
    higher_is_better: bool = True
    note: str = ""
    counts: list[int] = field(default_factory=list)  # runs per row (the Seeds column)
    count_label: str = "Seeds"

    def fmt(self, s: Stat | None) -> str:
        if s is None:
            return MISSING
        text = f"{s.mean * self.scale:.{self.digits}f}"
        if s.std is not None:
            text += f" ± {s.std * self.scale:.{self.digits}f}"
        return text

    def best(self) -> list[list[bool]]:
        """Per cell, whether it holds the best value of its column (ties at display precision all marked)."""
        marks = [[False] * len(self.columns) for _ in self.index]
        if not self.mark_best:
            return marks
        for j in range(len(self.columns)):
            shown = {i: round(row[j].mean * self.scale, self.digits) for i, row in enumerate(self.cells) if row[j] is not None}
            if len(shown) < 2:
                continue
            target = max(shown.values()) if self.higher_is_better else min(shown.values())
            for i, v in shown.items():
                marks[i][j] = v == target
        return marks

    def _header(self) -> list[str]:
        return [INDEX_LABELS.get(k, k) for k in self.index_cols] + ([self.count_label] if self.counts else []) + self.columns

    def _rows(self, bold: Callable[[str], str]) -> list[list[str]]:
        marks = self.best()
        out = []
        for i, idx in enumerate(self.index):
            row = [idx[k] for k in self.index_cols] + ([str(self.counts[i])] if self.counts else [])
            row += [bold(self.fmt(s)) if marks[i][j] else self.fmt(s) for j, s in enumerate(self.cells[i])]
            out.append(row)
        return out

    def to_markdown(self) -> str:
        header = self._header()
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" if i < len(self.index_cols) else "---:" for i in range(len(header))) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self._rows(lambda t: f"**{t}**")]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        header = self._header()
        align = "l" * len(self.index_cols) + "r" * (len(header) - len(self.index_cols))
        body = [" & ".join(_latex_escape(c) for c in header) + r" \\", r"\midrule"]
        for row in self._rows(lambda t: "\x00" + t + "\x01"):
            cells = [_latex_escape(c).replace("\x00", r"\textbf{").replace("\x01", "}") for c in row]
            body.append(" & ".join(cells) + r" \\")
        return "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                rf"\caption{{{_latex_escape(self.title)}}}",
                rf"\label{{tab:{self.name}}}",
                rf"\begin{{tabular}}{{{align}}}",
                r"\toprule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
                r"\end{table}",
                "",
            ]
        )

    def to_csv(self, path: str | Path) -> None:
        """Tidy numbers (one line per row and column, unscaled): index columns, column, mean, std, n, best."""
        marks = self.best()
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.index_cols + ["column", "mean", "std", "n", "best"])
            for i, idx in enumerate(self.index):
                for j, col in enumerate(self.columns):
                    s = self.cells[i][j]
                    w.writerow(
                        [idx[k] for k in self.index_cols]
                        + [
                            col,
                            "" if s is None else repr(s.mean),
                            "" if s is None or s.std is None else repr(s.std),
                            0 if s is None else s.n,
                            int(marks[i][j]),
                        ]
                    )

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"md": out_dir / f"{self.name}.md", "csv": out_dir / f"{self.name}.csv", "tex": out_dir / f"{self.name}.tex"}
        paths["md"].write_text(self.to_markdown())
        paths["tex"].write_text(self.to_latex())
        self.to_csv(paths["csv"])
        return paths

    def wandb_rows(self) -> tuple[list[str], list[list[str]]]:
        return self._header(), self._rows(lambda t: t + " *")


def _latex_escape(text: str) -> str:
    text = str(text)
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("^", r"\textasciicircum{}"),
    ):
        text = text.replace(a, b)
    return text.replace("±", r"$\pm$").replace("—", "--").replace("Δ", r"$\Delta$")


# ----------------------------------------------------------------------------- building


def _strategy_key(name: str) -> tuple[int, str]:
    return (STRATEGY_ORDER.index(name), "") if name in STRATEGY_ORDER else (len(STRATEGY_ORDER), name)


def cell_keys(runs: Iterable[Run]) -> tuple[str, ...]:
    """The row keys: the four choices, plus the overrides folder when any run has one."""
    return CELL_KEYS + (("variant",) if any(r.choices.get("variant") for r in runs) else ())


def group_cells(runs: Iterable[Run], keys: Sequence[str] | None = None) -> list[tuple[dict[str, str], list[Run]]]:
    """Runs grouped by cell, in a stable order (data pair, model, then the paper's strategy order)."""
    runs = list(runs)
    keys = cell_keys(runs) if keys is None else keys
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(str(r.choices.get(k, "" if k == "variant" else "?")) for k in keys), []).append(r)

    def order(item):
        values = dict(zip(keys, item[0]))
        return tuple(_strategy_key(values[k]) if k == "strategy" else (0, values[k]) for k in keys)

    return [(dict(zip(keys, k)), v) for k, v in sorted(groups.items(), key=order)]


def _table(
    name: str,
    title: str,
    runs: list[Run],
    columns: list[tuple[str, Callable[[dict], float | None]]],
    keys: Sequence[str] | None = None,
    **kwargs,
) -> Table | None:
    """A table whose cell (row, column) is the Stat over the row's runs of column_fn(run.metrics)."""
    keys = cell_keys(runs) if keys is None else keys
    groups = group_cells(runs, keys)
    if not columns or not groups:
        return None
    cells = [[stat([fn(r.metrics) for r in rs]) for _, fn in columns] for _, rs in groups]
    if all(c is None for row in cells for c in row):
        return None
    return Table(
        name=name,
        title=title,
        index_cols=list(keys),
        index=[g for g, _ in groups],
        columns=[c for c, _ in columns],
        cells=cells,
        counts=[len(rs) for _, rs in groups],
        **kwargs,
    )


def _get(key: str) -> Callable[[dict], float | None]:
    return lambda m: m.get(key)


def _delta(after: str, before: str) -> Callable[[dict], float | None]:
    return lambda m: m[after] - m[before] if after in m and before in m else None


def task_names(runs: Iterable[Run], ability: str) -> list[str]:
    """Benchmarks of one ability (ta or la) with a headline score in any run, in first-seen order."""
    pattern = re.compile(rf"^phase[12]/{ability}/([^/]+)$")
    seen: dict[str, None] = {}
    for r in runs:
        for k in r.metrics:
            m = pattern.match(k)
            if m:
                seen[m.group(1)] = None
    return list(seen)


def languages(runs: Iterable[Run], task: str) -> list[str]:
    pattern = re.compile(rf"^phase[12]/la/{re.escape(task)}/([^/]+)$")
    return sorted({m.group(1) for r in runs for k in r.metrics if (m := pattern.match(k))})


def summary_table(runs: list[Run]) -> Table | None:
    cols = [(f"{a} P{p}", _get(f"phase{p}/{a.lower()}_avg")) for a in ("TA", "LA") for p in (1, 2)]
    return _table("summary", "TA and LA averages (%), Phase 1 vs Phase 2", runs, cols)


def phase_table(runs: list[Run], ability: str) -> Table | None:
    tasks = task_names(runs, ability)
    cols = [(f"{t} P{p}", _get(f"phase{p}/{ability}/{t}")) for t in tasks for p in (1, 2)]
    cols += [(f"Avg P{p}", _get(f"phase{p}/{ability}_avg")) for p in (1, 2)]
    which = {
        "ta": "Task ability (TA, %) per benchmark, Phase 1 vs Phase 2 (paper Tables 1, A1)",
        "la": "Language ability (LA, %) per benchmark, Phase 1 vs Phase 2 (paper Tables 2, A2)",
    }[ability]
    return _table(ability, which, runs, cols if tasks else [])


def language_tables(runs: list[Run]) -> list[Table]:
    tables = []
    for task in task_names(runs, "la"):
        cols = [(f"{lang} P{p}", _get(f"phase{p}/la/{task}/{lang}")) for lang in languages(runs, task) for p in (1, 2)]
        t = _table(f"la_{task}", f"{task} per language (%), Phase 1 vs Phase 2 (paper Tables B3 to B5)", runs, cols)
        if t:
            tables.append(t)
    return tables


def strategy_table(runs: list[Run]) -> Table | None:
    cols = [(t, _get(f"phase2/ta/{t}")) for t in task_names(runs, "ta")] + [("TA avg", _get("phase2/ta_avg"))]
    cols += [(t, _get(f"phase2/la/{t}")) for t in task_names(runs, "la")] + [("LA avg", _get("phase2/la_avg"))]
    cols += [("ΔTA", _delta("phase2/ta_avg", "phase1/ta_avg")), ("ΔLA", _delta("phase2/la_avg", "phase1/la_avg"))]
    return _table("strategies", "Strategies after Phase 2 (%), with the change from Phase 1 (paper Tables 3, C6)", runs, cols)


def des_table(runs: list[Run]) -> Table | None:
    return _table(
        "des",
        "Dataset embedding similarity (DES) of the Phase-1 and Phase-2 data",
        runs,
        [("DES", _get("des"))],
        keys=("phase1_data", "phase2_data"),
        scale=1.0,
        digits=3,
        mark_best=False,
        count_label="Runs",
    )


def mpd_table(runs: list[Run]) -> Table | None:
    """MPD per cell, and normalised by the largest MPD among the cells of the same model."""
    per_run_max: dict[str, float] = {}
    for r in runs:
        if isinstance(r.metrics.get("mpd"), (int, float)):
            model = r.choices.get("model", "?")
            per_run_max[model] = max(per_run_max.get(model, 0.0), float(r.metrics["mpd"]))

    table = _table(
        "mpd",
        "Model parameter distance (MPD) to the base fine-tuned on the Phase-2 data alone",
        runs,
        [("MPD", _get("mpd"))],
        scale=1.0,
        digits=3,
        mark_best=False,
    )
    if table is None:
        return None
    norm_cells = []
    for idx, row in zip(table.index, table.cells):
        top = per_run_max.get(idx["model"], 0.0)
        s = row[0]
        norm_cells.append(None if s is None or top <= 0 else Stat(s.mean / top, None if s.std is None else s.std / top, s.n))
    table.columns.append("MPD (normalised per model)")
    for row, extra in zip(table.cells, norm_cells):
        row.append(extra)
    return table


def all_tables(runs: list[Run]) -> list[Table]:
    """Every table the sweep's metrics allow, in report order."""
    tables = [
        summary_table(runs),
        phase_table(runs, "ta"),
        phase_table(runs, "la"),
        *language_tables(runs),
        strategy_table(runs),
        des_table(runs),
        mpd_table(runs),
    ]
    return [t for t in tables if t is not None]


def layer_rank_table(changes, name: str, title: str) -> Table | None:
    """Layer-change ranks (1 = largest relative change) per transition and module type, one column per layer.

    `changes` is a run's layer_changes.csv as a DataFrame (columns transition, module, layer, change[, rank]).
    """
    frame = changes[changes["layer"].notna()].copy()
    if frame.empty:
        return None
    if "transition" not in frame:
        frame["transition"] = "change"
    if "rank" not in frame:
        frame["rank"] = frame.groupby(["transition", "module"])["change"].rank(ascending=False, method="first")
    frame["layer"] = frame["layer"].astype(int)
    layers = sorted(frame["layer"].unique())
    index, cells = [], []
    module_order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for transition in dict.fromkeys(frame["transition"]):
        part = frame[frame["transition"] == transition]
        modules = [m for m in module_order if m in set(part["module"])] + sorted(set(part["module"]) - set(module_order))
        for module in modules:
            ranks = part[part["module"] == module].set_index("layer")["rank"]
            index.append({"transition": str(transition), "module": module})
            cells.append([Stat(float(ranks[layer]), None, 1) if layer in ranks.index else None for layer in layers])
    return Table(
        name=name,
        title=title,
        index_cols=["transition", "module"],
        index=index,
        columns=[f"L{i}" for i in layers],
        cells=cells,
        scale=1.0,
        digits=0,
        mark_best=False,
    )
