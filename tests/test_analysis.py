"""analyze.py on a sweep folder written by hand: tables match hand-made Markdown, figures are PNGs
with their data beside them, bad input (unknown sweep, nothing finished, disagreeing metric keys) is
reported clearly. The helpers here (write_run, scores, paper_sweep) also serve the other analysis tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cft.analysis.publish import Tracking
from cft.analysis.runs import collect_local, collect_wandb
from cft.analysis.similarity import des_report
from cft.analysis.sweep import analyze_sweep
from cft.analysis.tables import Stat, Table
from cft.errors import CftError

OFF = Tracking(mode="disabled")

REPO = Path(__file__).resolve().parent.parent


def write_run(
    root: Path, cell: str, seed: int, metrics: dict, *, done: bool = True, sweep_id: str = "sw", config: dict | None = None
) -> Path:
    """A run folder as train.py leaves it (cell = '<p1>-<p2>/<model>/<strategy>'), metrics.json written sorted."""
    from cft.run import layout

    p1p2, model, strategy = cell.split("/")
    p1, p2 = p1p2.split("-")
    run = layout.run_dir(root, sweep_id, layout.Cell(p1, p2, model, strategy, seed))
    run.mkdir(parents=True)
    choices = {"model": model, "phase1_data": p1, "phase2_data": p2, "strategy": strategy, "eval": "demo", "train": "demo"}
    (run / layout.META).write_text(json.dumps({"sweep_id": sweep_id, "seed": seed, "choices": choices}))
    (run / layout.CONFIG).write_text(yaml.safe_dump({"seed": seed, **(config or {})}))
    (run / layout.METRICS).write_text(json.dumps(metrics, sort_keys=True))
    if done:
        (run / layout.DONE).write_text("")
    return run


def scores(ta1, ta2, la1, la2, **extra) -> dict:
    """Metrics of one run: one TA task (ifeval), one LA task (xquad: de, es = de + 0.1)."""
    out = {}
    for phase, ta, la in (("phase1", ta1, la1), ("phase2", ta2, la2)):
        out.update(
            {
                f"{phase}/ta/ifeval": ta,
                f"{phase}/ta/ifeval:inst_loose": ta,
                f"{phase}/ta_avg": ta,
                f"{phase}/la/xquad": la + 0.05,
                f"{phase}/la/xquad:em": la,
                f"{phase}/la/xquad/de": la,
                f"{phase}/la/xquad/de:em": la - 0.1,
                f"{phase}/la/xquad/es": la + 0.1,
                f"{phase}/la_avg": la + 0.05,
            }
        )
    return {**out, **extra}


# The paper's suites as cft records them (cft.run.keys): AlpacaEval without a judge (not computed),
# three LA benchmarks with their non-English languages, the English parts under `en`.
PAPER_TA = ("ifeval", "mmlu", "hellaswag")
PAPER_LA = {
    "mlqa": ("ar", "de", "es", "hi", "vi", "zh"),
    "xquad": ("ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"),
    "xlsum": ("ar", "zh", "fr", "hi", "ja", "es"),
}
PAPER_CONFIG = {"eval": {"tasks": {task: {"languages": ["en", *langs]} for task, langs in PAPER_LA.items()}}}
PAPER_GAIN = {"full": 0.20, "lf_h2": 0.15, "gr5": 0.18, "lora": 0.05}  # LA gain by strategy
PAPER_LOSS = {"full": 0.10, "lf_h2": 0.04, "gr5": 0.02, "lora": 0.01}  # TA loss by strategy


def paper_metrics(strategy: str, seed: int) -> dict:
    """metrics.json of a paper-shaped cell: every key the paper's suites record, seed-dependent values."""
    from cft.run import keys

    m = {}
    for phase, after in (("phase1", 0.0), ("phase2", 1.0)):
        jitter = 0.01 * seed * after
        ta = {t: 0.6 + 0.05 * i - after * PAPER_LOSS[strategy] + jitter for i, t in enumerate(PAPER_TA)}
        for t, v in ta.items():
            m[keys.score("ta", t, phase=phase)] = v
        m[keys.score("ta", "ifeval", metric="inst_loose", phase=phase)] = ta["ifeval"] + 0.05
        m[keys.not_computed("ta", "alpaca_eval", phase=phase)] = "no judge (eval.tasks.alpaca_eval.annotator is null)"
        m[keys.average("ta", phase=phase)] = sum(ta.values()) / len(ta)
        m[keys.average_tasks("ta", phase=phase)] = len(ta)
        m[keys.average_over("ta", phase=phase)] = ",".join(PAPER_TA)
        m[keys.average_of("ta", phase=phase)] = "ifeval,alpaca_eval,mmlu,hellaswag"  # what the suite defines
        task_means = []
        for k, (task, langs) in enumerate(PAPER_LA.items()):
            per = {lang: 0.2 + 0.02 * i + 0.01 * k + after * PAPER_GAIN[strategy] + jitter for i, lang in enumerate(langs)}
            for lang, v in per.items():
                m[keys.score("la", task, lang, phase=phase)] = v
                m[keys.score("la", task, lang, metric="em", phase=phase)] = v - 0.1
            m[keys.score("la", task, phase=phase)] = sum(per.values()) / len(per)
            m[keys.score("en", task, phase=phase)] = 0.7 - 0.02 * after
            task_means.append(sum(per.values()) / len(per))
        m[keys.average("la", phase=phase)] = sum(task_means) / len(task_means)
        m[keys.average_tasks("la", phase=phase)] = len(PAPER_LA)
        m[keys.average_over("la", phase=phase)] = ",".join(PAPER_LA)
    for ability in ("ta", "la"):
        m[keys.delta(keys.average(ability))] = m[keys.average(ability, phase="phase2")] - m[keys.average(ability, phase="phase1")]
    m["des"] = 0.41
    m[keys.MPD] = 11.0 + seed
    m.update({keys.mpd_layer(i): 1.0 + 0.1 * i for i in range(4)})
    m[keys.strategy("trainable_fraction")] = 1.0
    m[keys.train("phase2", "steps")] = 10
    return m


def paper_sweep(root: Path, strategies=("lora", "full", "gr5", "lf_h2"), seeds=(0, 1), sweep_id: str = "paper") -> list[Path]:
    """A Table-3-shaped sweep (Mistral Instruct -> MultiAlpaca, several strategies and seeds), written in a
    shuffled strategy order so the tables' order must come from the paper, not from the folders."""
    return [
        write_run(root, f"instruct-multialpaca/mistral/{s}", seed, paper_metrics(s, seed), sweep_id=sweep_id, config=PAPER_CONFIG)
        for s in strategies
        for seed in seeds
    ]


@pytest.fixture
def sweep_root(tmp_path) -> Path:
    write_run(tmp_path, "alpaca-multialpaca/tiny/full", 0, scores(0.5, 0.4, 0.2, 0.3, des=0.75, mpd=2.0))
    write_run(tmp_path, "alpaca-multialpaca/tiny/full", 1, scores(0.5, 0.5, 0.2, 0.4, des=0.75, mpd=4.0))
    lf = write_run(tmp_path, "alpaca-multialpaca/tiny/lf_h2", 0, scores(0.5, 0.48, 0.2, 0.3, des=0.75, mpd=1.0))
    write_run(tmp_path, "alpaca-multialpaca/tiny/gr5", 0, {}, done=False)
    rows = ["transition,module,layer,change,rank"]
    rows += [
        f"{t},{m},{layer},{0.1 * (layer + 1)},{2 - layer}"
        for t in ("base->phase1", "phase1->phase2")
        for m in ("q_proj", "v_proj")
        for layer in range(2)
    ]
    (lf / "layer_changes.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


NOTES = (
    "*Note: TA avg covers 1 benchmark (ifeval) in 3 run(s), Phase 1 and Phase 2; the paper's TA average covers 4 "
    "(ifeval, alpaca_eval, mmlu, hellaswag): do not compare the two.*\n"
    "*Note: LA avg covers 1 benchmark (xquad) in 3 run(s), Phase 1 and Phase 2; the paper's LA average covers 3 "
    "(mlqa, xquad, xlsum): do not compare the two.*\n"
)

SUMMARY_MD = (
    """\
### TA and LA averages (%), Phase 1 vs Phase 2

| Phase 1 data | Phase 2 data | Model | Strategy | Seeds | TA P1 | TA P2 | LA P1 | LA P2 |
|---|---|---|---|---:|---:|---:|---:|---:|
| alpaca | multialpaca | tiny | full | 2 | **50.0 ± 0.0** | 45.0 ± 7.1 | **25.0 ± 0.0** | **40.0 ± 7.1** |
| alpaca | multialpaca | tiny | lf_h2 | 1 | **50.0** | **48.0** | **25.0** | 35.0 |

"""
    + NOTES
)

LANG_MD = """\
### xquad per language (%), Phase 1 vs Phase 2 (paper Tables B3 to B5)

| Phase 1 data | Phase 2 data | Model | Strategy | Seeds | de P1 | de P2 | es P1 | es P2 |
|---|---|---|---|---:|---:|---:|---:|---:|
| alpaca | multialpaca | tiny | full | 2 | **20.0 ± 0.0** | **35.0 ± 7.1** | **30.0 ± 0.0** | **45.0 ± 7.1** |
| alpaca | multialpaca | tiny | lf_h2 | 1 | **20.0** | 30.0 | **30.0** | 40.0 |
"""

STRATEGIES_MD = (
    """\
### Strategies after Phase 2 (%), with the Phase-1 model and the change from it (paper Tables 3, C6)

| Phase 1 data | Phase 2 data | Model | Strategy | Seeds | ifeval | TA avg | xquad | LA avg | ΔTA | ΔLA |
|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|
| alpaca | multialpaca | tiny | Phase 1 | 2 | 50.0 ± 0.0 | 50.0 ± 0.0 | 25.0 ± 0.0 | 25.0 ± 0.0 | — | — |
| alpaca | multialpaca | tiny | full | 2 | 45.0 ± 7.1 | 45.0 ± 7.1 | **40.0 ± 7.1** | **40.0 ± 7.1** | -5.0 ± 7.1 | **15.0 ± 7.1** |
| alpaca | multialpaca | tiny | lf_h2 | 1 | **48.0** | **48.0** | 35.0 | 35.0 | **-2.0** | 10.0 |

"""
    + NOTES
)

MPD_MD = """\
### Model parameter distance (MPD) to the base fine-tuned on the Phase-2 data alone

| Phase 1 data | Phase 2 data | Model | Strategy | Seeds | MPD | MPD (normalised per model) |
|---|---|---|---|---:|---:|---:|
| alpaca | multialpaca | tiny | full | 2 | 3.000 ± 1.414 | 0.750 ± 0.354 |
| alpaca | multialpaca | tiny | lf_h2 | 1 | 1.000 | 0.250 |
"""


def test_sweep_tables_figures_and_report(sweep_root, capsys):
    result = analyze_sweep("sw", output_root=sweep_root, tracking=OFF)
    out = sweep_root / "sw" / "analysis"
    assert result.out_dir == out
    assert (out / "summary.md").read_text() == SUMMARY_MD
    assert (out / "la_xquad.md").read_text() == LANG_MD
    assert (out / "strategies.md").read_text() == STRATEGIES_MD
    assert (out / "mpd.md").read_text() == MPD_MD
    assert (
        "| Phase 1 data | Phase 2 data | Runs | DES |\n|---|---|---:|---:|\n| alpaca | multialpaca | 3 | 0.750 ± 0.000 |"
        in (out / "des.md").read_text()
    )
    assert "| phase1->phase2 | v_proj | 2 | 1 |" in (out / "layer_ranks_alpaca-multialpaca_tiny_lf_h2.md").read_text()
    ta = (out / "ta.md").read_text()
    assert "| ifeval P1 | ifeval P2 | Avg P1 | Avg P2 |" in ta and "inst_loose" not in ta
    tex = (out / "summary.tex").read_text()
    assert r"\textbf{50.0 $\pm$ 0.0}" in tex and r"lf\_h2" in tex and tex.count(r"\\") == 3
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0] == "phase1_data,phase2_data,model,strategy,column,mean,std,n,best,se,ci_low,ci_high,significant"
    assert "alpaca,multialpaca,tiny,lf_h2,TA P2,0.48,,1,1,,,," in csv_lines
    for name in ("ta_la_phases", "ta_la_tradeoff", "la_gain_per_language", "layer_changes_alpaca-multialpaca_tiny_lf_h2"):
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
        assert (out / f"{name}.svg").stat().st_size > 1000
        assert len((out / f"{name}.csv").read_text().splitlines()) > 1, name
    report = (out / "report.md").read_text()
    assert "Finished runs: 3; failed: 0; unfinished: 1." in report and "- `alpaca-multialpaca/tiny/gr5/seed0`" in report
    assert "## Unfinished cells" in report and "## Failed cells" not in report
    assert "![ta_la_phases](ta_la_phases.png)" in report and SUMMARY_MD in report
    printed = capsys.readouterr().out
    assert SUMMARY_MD in printed and "1 unfinished run(s)" in printed and "alpaca-multialpaca/tiny/gr5/seed0" in printed


def test_disagreeing_metric_keys_are_reported(sweep_root):
    write_run(sweep_root, "alpaca-multialpaca/tiny/lora", 0, scores(0.5, 0.45, 0.2, 0.3))  # no des, no mpd
    result = analyze_sweep("sw", output_root=sweep_root, tracking=OFF, echo=False)
    assert result.problems == ["run alpaca-multialpaca/tiny/lora/seed0 lacks 2 metric key(s) that other runs have: des, mpd"]
    assert "## Problems" in result.report.read_text()
    assert "| alpaca | multialpaca | tiny | lora | 1 | — | — |" in (result.out_dir / "mpd.md").read_text()


def test_unknown_sweep_and_nothing_finished(tmp_path):
    write_run(tmp_path, "alpaca-multialpaca/tiny/full", 0, {}, done=False, sweep_id="pending")
    with pytest.raises(CftError, match=r"unknown sweep_id='nope': no folder .*nope\. Sweeps found in .*: pending\."):
        analyze_sweep("nope", output_root=tmp_path, tracking=OFF)
    with pytest.raises(
        CftError,
        match=r"has no finished run .* 1 unfinished run\(s\), left out of the tables:\n  - alpaca-multialpaca/tiny/full/seed0",
    ):
        analyze_sweep("pending", output_root=tmp_path, tracking=OFF)


def test_no_sweep_id_reads_the_sweep_of_the_latest_finished_run(sweep_root):
    later = write_run(sweep_root, "alpaca-multialpaca/tiny/full", 0, scores(0.5, 0.3, 0.2, 0.3), sweep_id="later")
    os.utime(later / "DONE", (time.time() + 60, time.time() + 60))
    assert analyze_sweep(None, output_root=sweep_root, tracking=OFF, echo=False).out_dir == sweep_root / "later" / "analysis"
    os.utime(later / "DONE", (time.time() - 3600, time.time() - 3600))
    assert analyze_sweep(None, output_root=sweep_root, tracking=OFF, echo=False).out_dir == sweep_root / "sw" / "analysis"


def test_cli_unknown_sweep_exits_with_message(tmp_path):
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path), "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "analyze.py", "sweep_id=missing"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "cft: error: unknown sweep_id='missing'" in proc.stderr and "Traceback" not in proc.stderr


def test_analysis_run_is_logged_offline(sweep_root, monkeypatch):
    """One W&B run with every table; a table named after a long overrides folder gets a key W&B accepts."""
    from cft.run.tracking import logged, run_files

    monkeypatch.setenv("WANDB_DIR", str(sweep_root / "wandb"))
    lf = sweep_root / "sw" / "alpaca-multialpaca" / "tiny" / "lf_h2"
    long = "eval.tasks.demo.per_task_language@10+model.pretrain.steps@20+train.max_steps@20+train.phase2.lr@0.0002"
    (lf / long).mkdir()
    (lf / "seed0").rename(lf / long / "seed0")
    result = analyze_sweep("sw", output_root=sweep_root, tracking=Tracking(mode="offline"), echo=False)
    (run,) = run_files(result.out_dir)
    tables = logged(run).tables
    assert {"tables/summary", "tables/strategies", "tables/la_xquad"} <= tables
    (ranks,) = [t for t in tables if t.startswith("tables/layer_ranks_")]
    assert len(ranks) == 96 and ranks[-9] == "~"  # the readable start, then a hash of the whole name


def test_wandb_source_reads_runs_through_the_api():
    class FakeRun:
        def __init__(self, i, state, job_type="train"):
            self.id, self.name, self.state, self.job_type = f"id{i}", f"run{i}", state, job_type
            self.config = {
                "seed": i,
                "run_meta": {"choices": {"model": "tiny", "phase1_data": "a", "phase2_data": "b", "strategy": "full"}},
            }
            self.summary = {"phase1/ta_avg": 0.5, "phase2/ta_avg": 0.4 + i / 10, "_step": 3, "note": "text"}

    class FakeApi:
        def runs(self, path, filters):
            assert path == "ent/proj" and filters == {"group": "sw"}
            return [FakeRun(0, "finished"), FakeRun(1, "finished"), FakeRun(2, "crashed"), FakeRun(3, "finished", "analyze")]

    sweep = collect_wandb("ent", "proj", "sw", api=FakeApi())
    assert [r.name for r in sweep.finished] == ["run0 (id0)", "run1 (id1)"] and not sweep.unfinished
    assert [r.name for r in sweep.failed] == ["run2 (id2)"] and sweep.failed[0].failure["error"] == "crashed"
    assert sweep.finished[1].metrics == {"phase1/ta_avg": 0.5, "phase2/ta_avg": 0.5}
    assert sweep.finished[0].cell == ("a", "b", "tiny", "full")


def test_wandb_source_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(CftError, match="source=wandb needs the W&B server"):
        collect_wandb("ent", "proj", "sw")


def test_override_folders_are_separate_cells(tmp_path):
    for lr, seed in (("train.lr=1e-5", 0), ("train.lr=2e-5", 0), ("train.lr=2e-5", 1)):
        run = write_run(tmp_path, "a-b/tiny/full", seed, scores(0.5, 0.4, 0.2, 0.3))
        target = run.parent / lr / run.name
        target.parent.mkdir(exist_ok=True)
        run.rename(target)
    sweep = collect_local(tmp_path, "sw")
    assert sorted(r.choices["variant"] for r in sweep.runs) == ["train.lr=1e-5", "train.lr=2e-5", "train.lr=2e-5"]
    md = analyze_sweep("sw", output_root=tmp_path, tracking=OFF, echo=False).out_dir / "summary.md"
    assert "| Overrides | Seeds |" in md.read_text() and "| train.lr=2e-5 | 2 |" in md.read_text()


def test_best_marks_and_missing_cells():
    t = Table(
        name="t",
        title="T",
        index_cols=["model"],
        index=[{"model": "a"}, {"model": "b"}, {"model": "c"}],
        columns=["x", "y"],
        cells=[[Stat(0.5, None, 1), None], [Stat(0.5004, None, 1), Stat(0.1, 0.02, 3)], [Stat(0.2, None, 1), None]],
    )
    assert t.to_markdown().splitlines()[4:] == ["| a | **50.0** | — |", "| b | **50.0** | 10.0 ± 2.0 |", "| c | 20.0 | — |"]


def test_des_matrix_command(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"instruction": f"Add {i} and {i + 1}", "output": str(2 * i + 1)}) + "\n" for i in range(20))
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "es.jsonl").write_text(
        "".join(json.dumps({"instruction": f"Traduce la frase {i}", "output": "hola"}) + "\n" for i in range(20))
    )
    result = des_report(
        {"a": tmp_path / "a.jsonl", "b": tmp_path / "b", "demo": None},
        embedder={"_target_": "cft.measures.similarity.HashingEmbedder"},
        n=30,
        out_dir=tmp_path / "out",
        conf_dir=REPO / "conf",
        tracking=OFF,
        echo=False,
    )
    md = (result.out_dir / "des.md").read_text()
    assert "| dataset | a | b | demo |" in md and "| a | 1.000 |" in md
    assert (result.out_dir / "des_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # n is a cap: a and b have 20 examples and use all of them; the demo option (900 examples) uses 30.
    report = result.report.read_text()
    assert "at most 30 samples per dataset (a dataset with fewer uses all of them)" in report
    assert "Samples embedded: a: 20 of 20 (all of them); b: 20 of 20 (all of them); demo: 30 of 900." in report
    assert "| demo | 900 | 30 |" in (result.out_dir / "des_samples.md").read_text()
    with pytest.raises(CftError, match="'nosuch' is not an option of conf/phase1_data or conf/phase2_data"):
        des_report(
            ["nosuch"],
            embedder={"_target_": "cft.measures.similarity.HashingEmbedder"},
            conf_dir=REPO / "conf",
            out_dir=tmp_path / "x",
            tracking=OFF,
        )


def _cli(args, tmp_path):
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "analyze.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_cli_similarity_and_layers(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"instruction": f"Sum {i} and 2", "output": "x"}) + "\n" for i in range(5))
    )
    proc = _cli(
        [
            "mode=similarity",
            f"similarity.datasets={{a: {tmp_path / 'a.jsonl'}, b: {tmp_path / 'a.jsonl'}}}",
            "embedder=hashing",
            "similarity.n=3",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| a | 1.000 | 1.000 |" in (tmp_path / "similarity" / "des.md").read_text()

    tensors = load_file(str(tiny_model_dir / "model.safetensors"))
    name = "model.layers.1.self_attn.k_proj.weight"
    for phase, factor in (("p1", 2.0), ("p2", 3.0)):
        (tmp_path / phase).mkdir()
        save_file({**tensors, name: tensors[name] * factor}, str(tmp_path / phase / "model.safetensors"))
    proc = _cli(
        ["mode=layers", f"layers.models={{base: {tiny_model_dir}, phase1: {tmp_path / 'p1'}, phase2: {tmp_path / 'p2'}}}"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    frame = __import__("pandas").read_csv(tmp_path / "layers" / "layer_changes.csv")
    k1 = frame[(frame.module == "k_proj") & (frame.layer == 1)].set_index("transition")["change"]
    assert k1["base->phase1"] == pytest.approx(1.0, rel=1e-5) and k1["phase1->phase2"] == pytest.approx(0.5, rel=1e-5)
    assert "| base->phase1 | k_proj | 2 | 1 |" in (tmp_path / "layers" / "layer_ranks.md").read_text()
    assert (tmp_path / "layers" / "layer_changes_qkv.png").read_bytes()[:4] == b"\x89PNG"
    proc = _cli(["mode=layers", f"layers.models={{base: {tiny_model_dir}}}"], tmp_path)
    assert proc.returncode == 2 and "mode=layers needs layers.models=" in proc.stderr


def test_an_overrides_folder_shared_by_every_cell_is_not_a_column():
    from cft.analysis.runs import Run
    from cft.analysis.tables import cell_keys

    def run(strategy, variant):
        choices = {"phase1_data": "a", "phase2_data": "b", "model": "m", "strategy": strategy, "variant": variant}
        return Run(name=strategy, choices=choices, seed=0, metrics={}, finished=True)

    shared = [run("full", "eval.limit@5"), run("lf_h2", "eval.limit@5")]
    assert "variant" not in cell_keys(shared)  # settings given once for the sweep: every row would repeat them
    swept = [run("full", "train.lr@1e-05"), run("full", "train.lr@2e-05")]
    assert cell_keys(swept)[-1] == "variant"  # a sweep over a value: the column tells the cells apart


def test_reanalysis_removes_only_the_files_an_earlier_analysis_wrote(tmp_path):
    from cft.analysis.publish import publish

    def table(name):
        return Table(name=name, title=name, index_cols=["m"], index=[{"m": "a"}], columns=["x"], cells=[[Stat(0.5, None, 1)]])

    out = tmp_path / "analysis"
    publish(out, title="first", tables=[table("kept"), table("gone")], tracking=OFF, run_name="analyze-s")
    (out / "notes.md").write_text("mine")  # a user's file in the folder
    publish(out, title="other", tables=[table("other")], tracking=OFF, run_name="analyze-t")  # another analysis
    assert {p.name for p in out.glob("gone.*")} == {"gone.md", "gone.csv", "gone.tex"}

    publish(out, title="second", tables=[table("kept")], tracking=OFF, run_name="analyze-s")
    assert not list(out.glob("gone.*")) and (out / "other.md").exists()
    assert (out / "kept.md").exists() and (out / "report.md").exists() and (out / "notes.md").read_text() == "mine"
    assert "# second" in (out / "report.md").read_text()
