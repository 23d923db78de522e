"""mode=dashboard: the sweep's W&B dashboard as code, a workspace view and a report (wandb-workspaces).

    python analyze.py mode=dashboard sweep_id=<id> entity=<e> project=<p>                       # offline: dashboard.json
    python analyze.py mode=dashboard sweep_id=<id> entity=<e> project=<p> tracking.mode=online  # publishes it
    python analyze.py mode=dashboard dashboard.publish=<sweep>/analysis/dashboard.json tracking.mode=online

The definition is built from the sweep itself: runs are filtered to its W&B group (job type
`train`, so analysis runs stay out) and grouped by strategy, and by model, Phase-1 data and Phase-2
data where the sweep varies them (`run_meta.choices.<group>` in each run's W&B config). Panels are
chosen from the keys the runs logged (metrics.json, which is the W&B summary, and the history and
tables of their `.wandb` files): nothing names a benchmark or a language. Sections:

- headline: TA and LA averages per strategy, Phase 1 vs Phase 2 (bars: mean, seed spread), the TA-LA trade-off;
- task ability per benchmark (Tables 1, A1) and language ability per benchmark (Tables 2, A2);
- each LA benchmark per language, Phase 1 and Phase 2 (Tables B3 to B5), and the per-language scores table;
- the English part of the multilingual benchmarks;
- similarity and layer changes: DES, MPD (overall and per layer), the logged tables (layer changes, strategy reports);
- training curves of each phase (loss, learning rate, tokens/s) against that phase's own step.

The definition is written to `<sweep>/analysis/dashboard.json` (a neutral JSON: sections, panels,
keys, filters, grouping); publishing turns it into `wandb_workspaces` objects and saves them, and
records the saved view and report in the JSON, so publishing again updates them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cft.analysis import paper
from cft.analysis.config import AnalyzeConfig
from cft.analysis.runs import Run, Sweep
from cft.analysis.tables import average_footnotes, task_names
from cft.errors import CftError
from cft.run import keys, layout
from cft.run.layout import CELL_KEYS
from cft.run.tracking import RUN_META, SCORES_TABLE, Logged, logged, run_files

log = logging.getLogger(__name__)

DEFINITION = "dashboard.json"
JOB_TYPE = "train"  # the cells' W&B runs (analysis runs are job_type=analyze)
CURVES = ("loss", "lr", "tokens_per_second")  # the training curves shown (of cft.run.keys.CURVES)
CURVE_TITLES = {"loss": "training loss", "lr": "learning rate", "tokens_per_second": "tokens/s"}
AGG, SPREAD = "mean", "stddev"  # grouped panels: mean over a group's runs (seeds), band/bar = std


@dataclass
class Panel:
    kind: str  # bar (summary keys, one bar per group), scatter (x vs y summary keys), line (history vs x), table
    title: str
    metrics: list[str] = field(default_factory=list)  # bar: summary keys; line: history keys
    x: str | None = None  # line: the step key; scatter: the x summary key
    y: str | None = None  # scatter: the y summary key
    table: str | None = None  # table: the logged W&B table's name

    def keys(self) -> list[str]:
        return [k for k in (*self.metrics, self.x, self.y, self.table) if k]


@dataclass
class Section:
    name: str
    question: str  # what the section answers, shown under its heading
    panels: list[Panel] = field(default_factory=list)


@dataclass
class Dashboard:
    sweep_id: str
    entity: str | None
    project: str
    title: str
    filters: dict[str, str]  # W&B run attribute -> value (Group, JobType): AND-ed
    groupby: list[str]  # W&B config paths, e.g. run_meta.choices.strategy
    sections: list[Section]
    runs: int = 0  # runs the definition was built from
    notes: list[str] = field(default_factory=list)  # what was left out and why
    published: dict[str, str] = field(default_factory=dict)  # view name/id, report id (for updates)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Dashboard:
        data = json.loads(text)
        data["sections"] = [
            Section(name=s["name"], question=s["question"], panels=[Panel(**p) for p in s["panels"]]) for s in data["sections"]
        ]
        return cls(**data)

    def panels(self) -> list[Panel]:
        return [p for s in self.sections for p in s.panels]


# ----------------------------------------------------------------------------- what the runs logged


@dataclass
class SweepKeys:
    """The keys a sweep's runs logged: summary (metrics.json / W&B summary), history, tables, config."""

    summary: list[str] = field(default_factory=list)
    history: set[str] = field(default_factory=set)
    tables: set[str] = field(default_factory=set)
    config_groups: set[str] = field(default_factory=set)  # groups with run_meta.choices.<group> in a W&B config
    wandb_runs: int = 0

    def has(self, key: str) -> bool:
        return key in self.summary or key in self.history or key in self.tables


def run_logged(run: Run) -> list[Logged]:
    """What a run sent to W&B: its `.wandb` files (a resumed run may have several), or what the API said."""
    if run.path is not None:
        return [logged(f) for f in run_files(run.path)]
    return [run.logged] if run.logged is not None else []


def sweep_keys(runs: Iterable[Run]) -> SweepKeys:
    out = SweepKeys()
    summary: dict[str, None] = {}
    for r in runs:
        summary.update(dict.fromkeys(k for k, v in r.metrics.items() if isinstance(v, (int, float))))
        for lg in run_logged(r):
            if lg.job_type and lg.job_type != JOB_TYPE:
                continue
            out.wandb_runs += 1
            summary.update(dict.fromkeys(sorted(lg.summary)))
            out.history |= lg.history
            out.tables |= lg.tables
            choices = (lg.config.get(RUN_META) or {}).get("choices") or {}
            out.config_groups |= set(choices)
    out.summary = list(summary)
    return out


# ----------------------------------------------------------------------------- building


def varied(runs: Sequence[Run]) -> list[str]:
    """Cell axes the sweep varies, strategy always first (the paper's comparison)."""
    axes = ["strategy"] + [k for k in CELL_KEYS if k != "strategy"]
    return [k for k in axes if k == "strategy" or len({r.choices.get(k) for r in runs}) > 1]


def _present(found: SweepKeys, candidates: Iterable[str]) -> list[str]:
    return [k for k in candidates if found.has(k)]


def _bar(title: str, found: SweepKeys, candidates: Iterable[str]) -> list[Panel]:
    metrics = _present(found, candidates)
    return [Panel("bar", title, metrics=metrics)] if metrics else []


def _per_phase(found: SweepKeys, key_of) -> list[str]:
    return _present(found, [key_of(p) for p in keys.PHASES])


def build(sweep: Sweep, *, entity: str | None, project: str, title: str | None = None) -> Dashboard:
    """The dashboard of a sweep, from the keys its runs logged (see the module docstring)."""
    runs = [r for r in sweep.runs if r.choices]
    if not runs:
        raise CftError(f"sweep {sweep.sweep_id!r} ({sweep.source}) has no run with its choices (run_meta.json): nothing to show")
    found = sweep_keys(runs)
    notes = []
    sections = []

    # 1. The paper's headline.
    headline = _bar(
        "TA average, Phase 1 vs Phase 2 (mean ± std over seeds)", found, _per_phase(found, lambda p: keys.average("ta", phase=p))
    )
    headline += _bar(
        "LA average, Phase 1 vs Phase 2 (mean ± std over seeds)", found, _per_phase(found, lambda p: keys.average("la", phase=p))
    )
    d_ta, d_la = keys.delta(keys.average("ta")), keys.delta(keys.average("la"))
    if found.has(d_ta) and found.has(d_la):
        headline.append(Panel("scatter", "TA-LA trade-off: change from Phase 1 (one point per run)", x=d_ta, y=d_la))
        headline += _bar("Change from Phase 1: ΔTA and ΔLA", found, [d_ta, d_la])
    elif found.has(keys.average("ta", phase="phase2")) and found.has(keys.average("la", phase="phase2")):
        headline.append(
            Panel("scatter", "TA vs LA after Phase 2", x=keys.average("ta", phase="phase2"), y=keys.average("la", phase="phase2"))
        )
    if headline:
        # What the averages cover, where it is not the paper's (AlpacaEval without a judge, the demo's tasks).
        coverage = " ".join(average_footnotes([r for r in runs if r.metrics], ("ta", "la")))
        sections.append(
            Section(
                "Headline: TA and LA, Phase 1 vs Phase 2",
                "Does Phase 2 add language ability, and what does each strategy pay for it in task ability?"
                + (f" {coverage}" if coverage else ""),
                headline,
            )
        )

    # 2. Each benchmark, Phase 1 vs Phase 2.
    titles = {
        "ta": ("Task ability per benchmark (Tables 1, A1)", "Which English benchmarks does Phase 2 forget, per strategy?"),
        "la": (
            "Language ability per benchmark (Tables 2, A2)",
            "Which multilingual benchmarks does Phase 2 improve, per strategy?",
        ),
        "en": (
            "English part of the multilingual benchmarks",
            "Does the English side of the multilingual benchmarks move (recorded beside LA, never in it)?",
        ),
    }
    for ability, (name, question) in titles.items():
        tasks = [t for t in task_names(runs, ability) if t in keys.tasks(found.summary, ability)]
        panels = [
            p
            for t in tasks
            for p in _bar(
                f"{t}: Phase 1 vs Phase 2", found, _per_phase(found, lambda ph, t=t, a=ability: keys.score(a, t, phase=ph))
            )
        ]
        if panels:
            sections.append(Section(name, question, panels))
        if ability == "la":
            # 3. Tables B3 to B5: each LA benchmark per language, the paper's languages in its order.
            configs = [r.config for r in runs]
            for task in tasks:
                langs = paper.language_order(task, keys.languages(found.summary, task, "la"), configs)
                panels = [
                    p
                    for phase in keys.PHASES
                    for p in _bar(
                        f"{task} per language, {paper.PHASE_NAMES[phase]}",
                        found,
                        [keys.score("la", task, lang, phase=phase) for lang in langs],
                    )
                ]
                if panels:
                    sections.append(
                        Section(
                            f"{task} per language (Tables B3 to B5)",
                            f"Which languages of {task} does each strategy learn, and does any lose what Phase 1 had?",
                            panels,
                        )
                    )
            if SCORES_TABLE in found.tables and sections:
                sections[-1].panels.append(Panel("table", "Per-language scores of every run", table=SCORES_TABLE))

    # 4. Similarity and layer changes.
    similarity = _bar("DES of the Phase-1 and Phase-2 data", found, ["des"])
    similarity += _bar("MPD to the base fine-tuned on the Phase-2 data alone", found, [keys.MPD])
    layers = sorted({layer for r in runs for layer in keys.mpd_layers(r.metrics)})
    similarity += _bar("MPD per layer", found, [keys.mpd_layer(i) for i in layers])
    similarity += [Panel("table", f"Logged table: {t}", table=t) for t in sorted(found.tables - {SCORES_TABLE})]
    if similarity:
        sections.append(
            Section(
                "Similarity and layer changes",
                "How similar are the two phases' data (DES, MPD), and which layers changed most (the ranks LF-H2 uses)?",
                similarity,
            )
        )

    # 5. Training curves per phase, each against its own step.
    for phase in keys.PHASES:
        step = keys.curve(phase, "step")
        panels = [
            Panel("line", f"{paper.PHASE_NAMES[phase]}: {CURVE_TITLES[c]}", metrics=[keys.curve(phase, c)], x=step)
            for c in CURVES
            if keys.curve(phase, c) in found.history
        ]
        if panels:
            sections.append(
                Section(
                    f"Training curves, {paper.PHASE_NAMES[phase]}",
                    f"Did {paper.PHASE_NAMES[phase]} train smoothly and how fast (mean ± std over a group's runs)?",
                    panels,
                )
            )
    if not found.wandb_runs:
        notes.append(
            "no W&B run file (wandb/*run-*/run-*.wandb) in the run folders: training curves and logged tables are left out"
        )

    groups = varied(runs)
    missing = [g for g in groups if found.wandb_runs and g not in found.config_groups]
    if missing:
        notes.append(
            f"the runs' W&B config has no {RUN_META}.choices.{missing[0]} (runs logged before Tracker(meta=...)): "
            "grouping by it shows them as one group"
        )
    if not sections:
        raise CftError(f"sweep {sweep.sweep_id!r}: its runs logged no score, curve or table a dashboard could show")
    return Dashboard(
        sweep_id=sweep.sweep_id,
        entity=entity,
        project=project,
        title=title or f"cft sweep {sweep.sweep_id}",
        filters={"Group": sweep.sweep_id, "JobType": JOB_TYPE},
        groupby=[f"{RUN_META}.choices.{g}" for g in groups],
        sections=sections,
        runs=len(runs),
        notes=notes,
    )


# ----------------------------------------------------------------------------- wandb-workspaces


def _filters(d: Dashboard) -> list:
    from wandb_workspaces import expr

    return [expr.Metric(name) == value for name, value in d.filters.items()]


def _panel(p: Panel):
    import wandb_workspaces.reports.v2 as wr

    if p.kind == "bar":
        return wr.BarPlot(
            title=p.title,
            metrics=[wr.SummaryMetric(k) for k in p.metrics],
            orientation="v",
            groupby_aggfunc=AGG,
            groupby_rangefunc=SPREAD,
        )
    if p.kind == "scatter":
        return wr.ScatterPlot(title=p.title, x=wr.SummaryMetric(p.x), y=wr.SummaryMetric(p.y))
    if p.kind == "line":
        return wr.LinePlot(title=p.title, x=p.x, y=list(p.metrics), groupby_aggfunc=AGG, groupby_rangefunc=SPREAD)
    if p.kind == "table":
        return wr.WeavePanelSummaryTable(table_name=p.table)
    raise ValueError(f"unknown panel kind {p.kind!r}")


def to_workspace(d: Dashboard, entity: str):
    """The workspace view (wandb_workspaces.workspaces.Workspace) of a definition."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    return ws.Workspace(
        entity=entity,
        project=d.project,
        name=d.title,
        sections=[
            ws.Section(name=s.name, panels=[_panel(p) for p in s.panels], is_open=i == 0) for i, s in enumerate(d.sections)
        ],
        runset_settings=ws.RunsetSettings(filters=_filters(d), groupby=[expr.Config(g) for g in d.groupby]),
    )


def to_report(d: Dashboard, entity: str):
    """The report (wandb_workspaces.reports.v2.Report) of a definition: one heading, question and panel grid per section."""
    import wandb_workspaces.reports.v2 as wr

    grouped = ", ".join(g.rsplit(".", 1)[-1] for g in d.groupby)  # a config path, not a metric key
    blocks = [
        wr.P(f"Sweep {d.sweep_id}: {d.runs} runs, grouped by {grouped}. Bars: mean over a group's runs (seeds), whiskers: std.")
    ]
    for s in d.sections:
        runset = wr.Runset(
            entity=entity, project=d.project, name=d.sweep_id, filters=_filters(d), groupby=[f"config.{g}" for g in d.groupby]
        )
        blocks += [wr.H2(s.name), wr.P(s.question), wr.PanelGrid(runsets=[runset], panels=[_panel(p) for p in s.panels])]
    return wr.Report(entity=entity, project=d.project, title=d.title[:128], description=f"cft sweep {d.sweep_id}", blocks=blocks)


def publish_definition(d: Dashboard, *, entity: str | None, report: bool = True) -> Dashboard:
    """Save the workspace view (and the report) on W&B; a view or report saved before (d.published) is updated."""
    entity = d.entity or entity
    if not entity:
        raise CftError("publishing a dashboard needs entity=<W&B entity> (user or team)")
    workspace = to_workspace(d, entity)
    if d.published.get("view_name"):  # update the view saved before rather than adding another
        object.__setattr__(workspace, "_internal_name", d.published["view_name"])
        object.__setattr__(workspace, "_internal_id", d.published.get("view_id", ""))
    workspace.save()
    published = {"view_name": workspace._internal_name, "view_id": workspace._internal_id, "view_url": workspace.url}
    if report:
        rep = to_report(d, entity)
        if d.published.get("report_id"):
            rep.id = d.published["report_id"]
        rep.save()
        published |= {"report_id": rep.id, "report_url": rep.url}
    d.entity, d.published = entity, published
    return d


def publish_command(path: Path, d: Dashboard) -> str:
    entity = "" if d.entity else " entity=<your W&B entity>"
    return f"python analyze.py mode=dashboard dashboard.publish={path}{entity} tracking.mode=online"


def run(cfg: AnalyzeConfig) -> Dashboard:
    """Build (or read, with dashboard.publish) the sweep's dashboard; write dashboard.json; publish when online."""
    from cft.analysis.sweep import load_sweep

    mode = cfg.dashboard
    if mode.publish:
        path = Path(mode.publish)
        if not path.is_file():
            raise CftError(
                f"dashboard.publish={path}: no such file (write one with python analyze.py mode=dashboard sweep_id=<id>)"
            )
        try:
            d = Dashboard.from_json(path.read_text())
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CftError(f"{path}: not a dashboard definition ({type(exc).__name__}: {exc})") from None
    else:
        sweep = load_sweep(
            cfg.sweep_id, source=cfg.source, output_root=cfg.paths.output_root, entity=cfg.entity, project=cfg.project
        )
        d = build(sweep, entity=cfg.entity, project=cfg.project, title=mode.title)
        previous = (Path(cfg.out_dir) if cfg.out_dir else layout.analysis_dir(cfg.paths.output_root, d.sweep_id)) / DEFINITION
        if previous.is_file():  # keep what an earlier publication saved, so publishing updates it
            try:
                d.published = Dashboard.from_json(previous.read_text()).published
            except (json.JSONDecodeError, KeyError, TypeError):
                pass
        path = previous
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(d.to_json())
    panels = d.panels()
    print(
        f"Dashboard of sweep {d.sweep_id}: {len(d.sections)} sections, {len(panels)} panels, {d.runs} runs, grouped by {', '.join(d.groupby)}"
    )
    for s in d.sections:
        print(f"  {s.name}: {len(s.panels)} panel(s)")
    for note in d.notes:
        print(f"note: {note}")
    print(f"Definition: {path}")
    if cfg.tracking.mode != "online":
        print(f"Not published (tracking.mode={cfg.tracking.mode}). Publish it with:\n  {publish_command(path, d)}")
        return d
    try:
        publish_definition(d, entity=cfg.entity, report=mode.report)
    except CftError:
        raise
    except Exception as exc:  # no login, no network, a W&B error: the definition is kept
        raise CftError(
            f"could not publish the dashboard ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"the definition is saved in {path}; publish it later with: {publish_command(path, d)}"
        ) from None
    path.write_text(d.to_json())
    print(
        f"Published: {d.published.get('view_url')}" + (f" and {d.published['report_url']}" if "report_url" in d.published else "")
    )
    return d
