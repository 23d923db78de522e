"""The sweep's W&B dashboard as code (analyze.py mode=dashboard), built without a network for a
paper-shaped sweep and a demo-shaped one: its sections, panels, metric keys, filters and grouping are
checked against the keys the runs really logged (metrics.json and their offline .wandb files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_analysis import paper_sweep, write_run

from cft.analysis.dashboard import Dashboard, build, publish_definition, sweep_keys, to_report, to_workspace
from cft.analysis.runs import collect_local
from cft.errors import CftError
from cft.run import keys
from cft.run.tracking import RUN_META, Tracker, logged, run_files

REPO = Path(__file__).resolve().parent.parent


def log_cell(run: Path, *, steps: int = 3) -> None:
    """What a cell's W&B run holds (offline): the curves of both phases, the summary, the per-language
    table and the layer-change table, and run_meta in its config."""
    meta = json.loads((run / "run_meta.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    tracker = Tracker(
        mode="offline", project="cft", run_dir=run, name=run.name, group=meta["sweep_id"], job_type="train", meta=meta
    )
    tracker.define_phase_metrics()
    for phase in keys.PHASES:
        for step in range(1, steps + 1):
            tracker.log(
                {
                    keys.curve(phase, "loss"): 2.0 / step,
                    keys.curve(phase, "lr"): 1e-4,
                    keys.curve(phase, "tokens_per_second"): 500.0 + step,
                    keys.curve(phase, "step"): step,
                }
            )
    tracker.summary(metrics)
    tracker.log_scores_table(metrics)
    tracker.log_table(
        "layer_changes", ["transition", "module", "layer", "change", "rank"], [["base->phase1", "q_proj", 0, 0.1, 1]]
    )
    tracker.finish()


def logged_keys(root: Path, sweep_id: str) -> set[str]:
    """Every key some run of the sweep logged: its metrics.json (the W&B summary) and its .wandb history and tables."""
    out = set()
    for run in collect_local(root, sweep_id).runs:
        out |= set(run.metrics)
        for f in run_files(run.path):
            lg = logged(f)
            out |= lg.history | lg.tables | lg.summary
    return out


def check_against_logged(d: Dashboard, root: Path) -> None:
    known = logged_keys(root, d.sweep_id)
    for panel in d.panels():
        assert panel.keys(), panel
        missing = [k for k in panel.keys() if k not in known]
        assert not missing, (panel.title, missing)


@pytest.fixture
def paper_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = paper_sweep(tmp_path)
    log_cell(runs[0])  # one cell with its W&B run file; the others have metrics.json only
    return tmp_path


def test_dashboard_of_a_paper_shaped_sweep(paper_root):
    d = build(collect_local(paper_root, "paper"), entity=None, project="proj")
    assert d.filters == {"Group": "paper", "JobType": "train"}
    assert d.groupby == ["run_meta.choices.strategy"]  # only the strategy varies in this sweep
    assert d.runs == 8 and d.notes == []
    names = [s.name for s in d.sections]
    assert names == [
        "Headline: TA and LA, Phase 1 vs Phase 2",
        "Task ability per benchmark (Tables 1, A1)",
        "Language ability per benchmark (Tables 2, A2)",
        "mlqa per language (Tables B3 to B5)",
        "xquad per language (Tables B3 to B5)",
        "xlsum per language (Tables B3 to B5)",
        "English part of the multilingual benchmarks",
        "Similarity and layer changes",
        "Training curves, Phase 1",
        "Training curves, Phase 2",
    ]
    sections = {s.name: s for s in d.sections}
    headline = sections["Headline: TA and LA, Phase 1 vs Phase 2"]
    assert [(p.kind, p.keys()) for p in headline.panels] == [
        ("bar", ["phase1/ta_avg", "phase2/ta_avg"]),
        ("bar", ["phase1/la_avg", "phase2/la_avg"]),
        ("scatter", ["delta/ta_avg", "delta/la_avg"]),
        ("bar", ["delta/ta_avg", "delta/la_avg"]),
    ]
    # AlpacaEval was not computed: the headline says what the TA average covers.
    assert "TA avg covers 3 benchmarks (ifeval, mmlu, hellaswag)" in headline.question
    # Tables B3 to B5 as panels: the paper's languages in its order, English not among them.
    xquad = sections["xquad per language (Tables B3 to B5)"].panels
    assert [p.title for p in xquad] == ["xquad per language, Phase 1", "xquad per language, Phase 2"]
    assert xquad[1].metrics == [
        f"phase2/la/xquad/{lang}" for lang in ("ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
    ]
    xlsum = sections["xlsum per language (Tables B3 to B5)"].panels
    assert xlsum[0].metrics == [f"phase1/la/xlsum/{lang}" for lang in ("ar", "zh", "fr", "hi", "ja", "es")]  # the config's order
    assert xlsum[-1].kind == "table" and xlsum[-1].table == "scores_per_language"
    assert not any(":" in k for p in d.panels() for k in p.keys())  # em/f1 are never shown as languages
    similarity = sections["Similarity and layer changes"].panels
    assert [p.keys() for p in similarity] == [
        ["des"],
        ["mpd"],
        ["mpd/layer/0", "mpd/layer/1", "mpd/layer/2", "mpd/layer/3"],
        ["layer_changes"],
    ]
    curves = sections["Training curves, Phase 2"].panels
    assert [(p.kind, p.metrics, p.x) for p in curves] == [
        ("line", ["phase2/loss"], "phase2/step"),
        ("line", ["phase2/lr"], "phase2/step"),
        ("line", ["phase2/tokens_per_second"], "phase2/step"),
    ]
    check_against_logged(d, paper_root)
    # The grouping key exists in the logged runs' W&B config.
    (file,) = [f for r in collect_local(paper_root, "paper").runs for f in run_files(r.path)]
    assert logged(file).config[RUN_META]["choices"]["strategy"] == "lora"


def test_the_definition_becomes_wandb_objects_offline(paper_root):
    d = Dashboard.from_json(build(collect_local(paper_root, "paper"), entity=None, project="proj").to_json())
    spec = to_workspace(d, "ent")._to_model().model_dump(by_alias=True, exclude_none=True)
    runset = spec["spec"]["section"]["runSets"][0]
    assert [(f["key"]["name"], f["op"], f["value"]) for f in runset["filters"]["filters"]] == [
        ("group", "=", "paper"),
        ("jobType", "=", "train"),
    ]
    assert runset["grouping"] == [{"section": "config", "name": "run_meta.value.choices.strategy"}]
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == [s.name for s in d.sections]
    bars = sections[0]["panels"][0]["config"]
    assert bars["metrics"] == ["summary_metrics.phase1/ta_avg", "summary_metrics.phase2/ta_avg"]
    assert (bars["groupAgg"], bars["groupArea"]) == ("mean", "stddev")
    line = sections[-1]["panels"][0]["config"]
    assert (line["xAxis"], line["metrics"]) == ("phase2/step", ["phase2/loss"])
    report = to_report(d, "ent")  # converting it needs the server (project ids); its blocks are checked here
    grids = [b for b in report.blocks if type(b).__name__ == "PanelGrid"]
    assert len(grids) == len(d.sections) and report.entity == "ent" and report.project == "proj"
    assert grids[0].runsets[0].groupby == ["config.run_meta.choices.strategy"]


# conf/eval/demo.yaml's shape: one node for the three tasks, its languages in the demo's order.
DEMO_CONFIG = {"eval": {"tasks": {"demo": {"tasks": ["repeat", "reverse", "number"], "languages": ["en", "es", "de", "fr"]}}}}


def test_dashboard_of_a_demo_sweep_groups_by_what_varies(tmp_path):
    """The demo's tasks and languages, two Phase-2 datasets: the grouping adds phase2_data, panels come
    from the demo's keys only (nothing of the paper's benchmarks), and without W&B files no curves."""
    for p2 in ("demo", "demo_dissimilar"):
        for strategy in ("full", "lora"):
            metrics = {}
            for phase, ta, la in (("phase1", 1.0, 0.2), ("phase2", 0.9, 0.7)):
                for task in ("repeat", "reverse", "number"):
                    metrics[keys.score("ta", task, phase=phase)] = ta
                    metrics[keys.score("la", task, phase=phase)] = la
                    for lang in ("es", "de", "fr"):
                        metrics[keys.score("la", task, lang, phase=phase)] = la
                metrics[keys.average("ta", phase=phase)] = ta
                metrics[keys.average("la", phase=phase)] = la
                metrics[keys.average_over("la", phase=phase)] = "repeat,reverse,number"  # the suite's order
            write_run(tmp_path, f"demo-{p2}/demo/{strategy}", 0, metrics, sweep_id="demo_study", config=DEMO_CONFIG)
    write_run(tmp_path, "demo-demo/demo/gr5", 0, {}, done=False, sweep_id="demo_study")
    d = build(collect_local(tmp_path, "demo_study"), entity="ent", project="cft")
    assert d.groupby == ["run_meta.choices.strategy", "run_meta.choices.phase2_data"]
    assert [s.name for s in d.sections] == [
        "Headline: TA and LA, Phase 1 vs Phase 2",
        "Task ability per benchmark (Tables 1, A1)",
        "Language ability per benchmark (Tables 2, A2)",
        "repeat per language (Tables B3 to B5)",
        "reverse per language (Tables B3 to B5)",
        "number per language (Tables B3 to B5)",
    ]
    assert d.notes == [
        "no W&B run file (wandb/*run-*/run-*.wandb) in the run folders: training curves and logged tables are left out"
    ]
    repeat = next(s for s in d.sections if s.name.startswith("repeat per language"))
    assert repeat.panels[1].metrics == ["phase2/la/repeat/es", "phase2/la/repeat/de", "phase2/la/repeat/fr"]  # not alphabetical
    demo_keys = set().union(*(r.metrics for r in collect_local(tmp_path, "demo_study").runs))
    assert {k for p in d.panels() for k in p.keys()} <= demo_keys
    assert d.sections[0].panels[2].kind == "scatter" and d.sections[0].panels[2].keys() == ["phase2/ta_avg", "phase2/la_avg"]


def test_publishing_saves_then_updates_the_same_view(paper_root, monkeypatch):
    """The publish step with the W&B server replaced: the first publication creates a view and a report,
    a second one of the same definition updates them (same view name and report id)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.workspaces import internal

    saved = []

    def upsert(view):
        saved.append(view)
        return {"upsertView": {"view": {"name": view.name or "view-1", "id": view.id or "id-1"}}}

    def save_report(self, draft=False, clone=False):
        saved.append(self)
        self.id = self.id or "report-1"
        return self

    monkeypatch.setattr(internal, "upsert_view2", upsert)
    monkeypatch.setattr(internal, "_generate_view_name", lambda: "")
    monkeypatch.setattr(ws.Workspace, "url", property(lambda self: f"https://wandb.example/{self._internal_name}"))
    monkeypatch.setattr(wr.Report, "save", save_report)
    monkeypatch.setattr(wr.Report, "url", property(lambda self: f"https://wandb.example/report/{self.id}"))
    d = build(collect_local(paper_root, "paper"), entity=None, project="proj")
    with pytest.raises(CftError, match="needs entity="):
        publish_definition(d, entity=None)
    publish_definition(d, entity="ent")
    assert d.published == {
        "view_name": "view-1",
        "view_id": "id-1",
        "view_url": "https://wandb.example/view-1",
        "report_id": "report-1",
        "report_url": "https://wandb.example/report/report-1",
    }
    again = Dashboard.from_json(d.to_json())
    publish_definition(again, entity="ent")
    assert saved[2].name == "view-1" and saved[2].id == "id-1"  # the same view, updated
    assert saved[3].id == "report-1"


def _cli(args: list[str], root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(root), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    env.update(
        {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_CONFIG_DIR": str(root / ".wandb-config"), "NETRC": str(root / "netrc")}
    )
    return subprocess.run([sys.executable, "analyze.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_cli_offline_writes_the_definition_and_says_how_to_publish(paper_root):
    proc = _cli(["mode=dashboard", "sweep_id=paper", "entity=ent", "project=proj"], paper_root)
    assert proc.returncode == 0, proc.stderr
    path = paper_root / "paper" / "analysis" / "dashboard.json"
    d = Dashboard.from_json(path.read_text())
    assert (d.entity, d.project, d.sweep_id, len(d.sections)) == ("ent", "proj", "paper", 10)
    assert f"Definition: {path}" in proc.stdout
    command = f"python analyze.py mode=dashboard dashboard.publish={path} tracking.mode=online"
    assert f"Not published (tracking.mode=offline). Publish it with:\n  {command}" in proc.stdout
    # That command reads the JSON; with no W&B login it stops with a message and keeps the definition.
    proc = _cli(["mode=dashboard", f"dashboard.publish={path}", "tracking.mode=online"], paper_root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cft: error: could not publish the dashboard" in proc.stderr and f"the definition is saved in {path}" in proc.stderr
    assert Dashboard.from_json(path.read_text()).published == {}
    proc = _cli(["mode=dashboard", f"dashboard.publish={paper_root / 'nope.json'}"], paper_root)
    assert proc.returncode == 2 and "dashboard.publish=" in proc.stderr and "no such file" in proc.stderr


def test_sweep_keys_read_what_the_wandb_files_hold(paper_root):
    found = sweep_keys(collect_local(paper_root, "paper").runs)
    assert found.wandb_runs == 1 and found.config_groups == {"model", "phase1_data", "phase2_data", "strategy", "eval", "train"}
    assert {keys.curve(p, c) for p in keys.PHASES for c in ("loss", "lr", "tokens_per_second", "step")} <= found.history
    assert found.tables == {"scores_per_language", "layer_changes"}
    assert "phase2/la/xquad/de" in found.summary and "phase2/la/xquad/de:em" in found.summary
