"""analyze.py on a sweep folder written by hand: tables match hand-made Markdown, figures are PNGs,
bad input (unknown sweep, nothing finished, disagreeing metric keys) is reported clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cft.analysis import analyze_sweep, des_report
from cft.analysis.runs import collect_local, collect_wandb
from cft.analysis.tables import Stat, Table
from cft.errors import CftError

REPO = Path(__file__).resolve().parent.parent


def write_run(root: Path, cell: str, seed: int, metrics: dict, *, done: bool = True, sweep_id: str = "sw") -> Path:
    p1p2, model, strategy = cell.split("/")
    p1, p2 = p1p2.split("-")
    run = root / sweep_id / cell / f"seed{seed}"
    run.mkdir(parents=True)
    choices = {"model": model, "phase1_data": p1, "phase2_data": p2, "strategy": strategy, "eval": "demo", "train": "demo"}
    (run / "run_meta.json").write_text(json.dumps({"sweep_id": sweep_id, "seed": seed, "choices": choices}))
    (run / "config.yaml").write_text(f"seed: {seed}\n")
    (run / "metrics.json").write_text(json.dumps(metrics))
    if done:
        (run / "DONE").write_text("")
    return run


def scores(ta1, ta2, la1, la2, **extra) -> dict:
    """Metrics of one run: one TA task (ifeval), one LA task (xquad: de, es = de + 0.1)."""
    out = {}
    for phase, ta, la in (("phase1", ta1, la1), ("phase2", ta2, la2)):
        out.update(
            {
                f"{phase}/ta/ifeval": ta,
                f"{phase}/ta/ifeval/inst_loose": ta,
                f"{phase}/ta_avg": ta,
                f"{phase}/la/xquad": la + 0.05,
                f"{phase}/la/xquad/de": la,
                f"{phase}/la/xquad/es": la + 0.1,
                f"{phase}/la_avg": la + 0.05,
            }
        )
    return {**out, **extra}


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


SUMMARY_MD = """\
### TA and LA averages (%), Phase 1 vs Phase 2

| Phase 1 data | Phase 2 data | Model | Strategy | Seeds | TA P1 | TA P2 | LA P1 | LA P2 |
|---|---|---|---|---:|---:|---:|---:|---:|
| alpaca | multialpaca | tiny | full | 2 | **50.0 ± 0.0** | 45.0 ± 7.1 | **25.0 ± 0.0** | **40.0 ± 7.1** |
| alpaca | multialpaca | tiny | lf_h2 | 1 | **50.0** | **48.0** | **25.0** | 35.0 |
"""

LANG_MD = """\
### xquad per language (%), Phase 1 vs Phase 2 (paper Tables B3 to B5)

| Phase 1 data | Phase 2 data | Model | Strategy | Seeds | de P1 | de P2 | es P1 | es P2 |
|---|---|---|---|---:|---:|---:|---:|---:|
| alpaca | multialpaca | tiny | full | 2 | **20.0 ± 0.0** | **35.0 ± 7.1** | **30.0 ± 0.0** | **45.0 ± 7.1** |
| alpaca | multialpaca | tiny | lf_h2 | 1 | **20.0** | 30.0 | **30.0** | 40.0 |
"""

STRATEGIES_MD = """\
### Strategies after Phase 2 (%), with the change from Phase 1 (paper Tables 3, C6)

| Phase 1 data | Phase 2 data | Model | Strategy | Seeds | ifeval | TA avg | xquad | LA avg | ΔTA | ΔLA |
|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|
| alpaca | multialpaca | tiny | full | 2 | 45.0 ± 7.1 | 45.0 ± 7.1 | **40.0 ± 7.1** | **40.0 ± 7.1** | -5.0 ± 7.1 | **15.0 ± 7.1** |
| alpaca | multialpaca | tiny | lf_h2 | 1 | **48.0** | **48.0** | 35.0 | 35.0 | **-2.0** | 10.0 |
"""

MPD_MD = """\
### Model parameter distance (MPD) to the base fine-tuned on the Phase-2 data alone

| Phase 1 data | Phase 2 data | Model | Strategy | Seeds | MPD | MPD (normalised per model) |
|---|---|---|---|---:|---:|---:|
| alpaca | multialpaca | tiny | full | 2 | 3.000 ± 1.414 | 0.750 ± 0.354 |
| alpaca | multialpaca | tiny | lf_h2 | 1 | 1.000 | 0.250 |
"""


def test_sweep_tables_figures_and_report(sweep_root, capsys):
    result = analyze_sweep("sw", output_root=sweep_root, tracking_mode="disabled")
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
    assert "| phase1->phase2 | v_proj | 2 | 1 |" in (out / "layer_changes_alpaca-multialpaca_tiny_lf_h2.md").read_text()
    ta = (out / "ta.md").read_text()
    assert "| ifeval P1 | ifeval P2 | Avg P1 | Avg P2 |" in ta and "inst_loose" not in ta
    tex = (out / "summary.tex").read_text()
    assert r"\textbf{50.0 $\pm$ 0.0}" in tex and r"lf\_h2" in tex and tex.count(r"\\") == 3
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0] == "phase1_data,phase2_data,model,strategy,column,mean,std,n,best"
    assert "alpaca,multialpaca,tiny,lf_h2,TA P2,0.48,,1,1" in csv_lines
    for name in ("ta_la_phases", "ta_la_tradeoff", "layer_changes_alpaca-multialpaca_tiny_lf_h2"):
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
        assert (out / f"{name}.svg").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "Finished runs: 3; unfinished runs: 1." in report and "- `alpaca-multialpaca/tiny/gr5/seed0`" in report
    assert "![ta_la_phases](ta_la_phases.png)" in report and SUMMARY_MD in report
    printed = capsys.readouterr().out
    assert SUMMARY_MD in printed and "1 unfinished run(s)" in printed and "alpaca-multialpaca/tiny/gr5/seed0" in printed


def test_disagreeing_metric_keys_are_reported(sweep_root):
    write_run(sweep_root, "alpaca-multialpaca/tiny/lora", 0, scores(0.5, 0.45, 0.2, 0.3))  # no des, no mpd
    result = analyze_sweep("sw", output_root=sweep_root, tracking_mode="disabled", echo=False)
    assert result.problems == ["run alpaca-multialpaca/tiny/lora/seed0 lacks 2 metric key(s) that other runs have: des, mpd"]
    assert "## Problems" in result.report.read_text()
    assert "| alpaca | multialpaca | tiny | lora | 1 | — | — |" in (result.out_dir / "mpd.md").read_text()


def test_unknown_sweep_and_nothing_finished(tmp_path):
    write_run(tmp_path, "alpaca-multialpaca/tiny/full", 0, {}, done=False, sweep_id="pending")
    with pytest.raises(CftError, match=r"unknown sweep_id='nope': no folder .*nope\. Sweeps found in .*: pending\."):
        analyze_sweep("nope", output_root=tmp_path, tracking_mode="disabled")
    with pytest.raises(CftError, match=r"has no finished run .* Unfinished runs:\n  - alpaca-multialpaca/tiny/full/seed0"):
        analyze_sweep("pending", output_root=tmp_path, tracking_mode="disabled")


def test_no_sweep_id_reads_the_sweep_of_the_latest_finished_run(sweep_root):
    later = write_run(sweep_root, "alpaca-multialpaca/tiny/full", 0, scores(0.5, 0.3, 0.2, 0.3), sweep_id="later")
    os.utime(later / "DONE", (time.time() + 60, time.time() + 60))
    assert (
        analyze_sweep(None, output_root=sweep_root, tracking_mode="disabled", echo=False).out_dir
        == sweep_root / "later" / "analysis"
    )
    os.utime(later / "DONE", (time.time() - 3600, time.time() - 3600))
    assert (
        analyze_sweep(None, output_root=sweep_root, tracking_mode="disabled", echo=False).out_dir
        == sweep_root / "sw" / "analysis"
    )


def test_cli_unknown_sweep_exits_with_message(tmp_path):
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path), "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "analyze.py", "sweep_id=missing"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "cft: error: unknown sweep_id='missing'" in proc.stderr and "Traceback" not in proc.stderr


def test_analysis_run_is_logged_offline(sweep_root, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(sweep_root / "wandb"))
    result = analyze_sweep("sw", output_root=sweep_root, tracking_mode="offline", echo=False)
    runs = list((result.out_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


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
    assert [r.name for r in sweep.finished] == ["run0 (id0)", "run1 (id1)"] and [r.name for r in sweep.unfinished] == [
        "run2 (id2)"
    ]
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
    md = analyze_sweep("sw", output_root=tmp_path, tracking_mode="disabled", echo=False).out_dir / "summary.md"
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
        n=10,
        out_dir=tmp_path / "out",
        conf_dir=REPO / "conf",
        tracking_mode="disabled",
        echo=False,
    )
    md = (result.out_dir / "des.md").read_text()
    assert "| dataset | a | b | demo |" in md and "| a | 1.000 |" in md
    assert (result.out_dir / "des.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(CftError, match="'nosuch' is not an option of conf/phase1_data or conf/phase2_data"):
        des_report(
            ["nosuch"],
            embedder={"_target_": "cft.measures.similarity.HashingEmbedder"},
            conf_dir=REPO / "conf",
            out_dir=tmp_path / "x",
            tracking_mode="disabled",
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
            f"datasets={{a: {tmp_path / 'a.jsonl'}, b: {tmp_path / 'a.jsonl'}}}",
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
        ["mode=layers", f"models={{base: {tiny_model_dir}, phase1: {tmp_path / 'p1'}, phase2: {tmp_path / 'p2'}}}"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    frame = __import__("pandas").read_csv(tmp_path / "layers" / "layer_changes.csv")
    k1 = frame[(frame.module == "k_proj") & (frame.layer == 1)].set_index("transition")["change"]
    assert k1["base->phase1"] == pytest.approx(1.0, rel=1e-5) and k1["phase1->phase2"] == pytest.approx(0.5, rel=1e-5)
    assert "| base->phase1 | k_proj | 2 | 1 |" in (tmp_path / "layers" / "layer_ranks.md").read_text()
    assert (tmp_path / "layers" / "layer_ranks.png").read_bytes()[:4] == b"\x89PNG"
    proc = _cli(["mode=layers", f"models={{base: {tiny_model_dir}}}"], tmp_path)
    assert proc.returncode == 2 and "mode=layers needs models=" in proc.stderr
