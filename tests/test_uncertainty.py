"""Standard errors, their propagation, and paired bootstrap intervals of differences on the same
items: by hand, and in the analysis tables of hand-made runs (the demo run of tests/test_spine.py
checks them end to end: metrics.json, items.json, the run's summary and analyze.py's tables)."""

from __future__ import annotations

import json
import math

import pytest

from cft.evaluation.uncertainty import bootstrap_stderr, mean_stderr, paired_interval, propagated, structure
from cft.run import keys, layout


def test_standard_errors_by_hand():
    # 0, 1, 1, 0: mean 0.5, sample sd sqrt(1/3), se sqrt(1/3)/2.
    assert mean_stderr([0, 1, 1, 0]) == pytest.approx(math.sqrt(1 / 3) / 2)
    assert mean_stderr([1.0]) is None
    # The bootstrap agrees with the closed form within its own noise (n = 200, p = 0.3: se 0.0324).
    values = [1.0] * 60 + [0.0] * 140
    assert bootstrap_stderr(values, iters=2000) == pytest.approx(mean_stderr(values), rel=0.1)
    # An average of two independent scores: sqrt(0.03^2 + 0.04^2) / 2 = 0.025.
    assert propagated([0.03, 0.04]) == pytest.approx(0.025)
    assert propagated([0.03, None]) is None


def _flat(over: str) -> dict:
    return {"la_avg_over": over, "ta_avg_over": "a"}


def test_paired_interval_marks_a_real_difference_and_not_noise():
    n = 100
    before = {"ta/a": {str(i): float(i % 2) for i in range(n)}}  # 0.5
    better = {"ta/a": {str(i): 1.0 for i in range(n)}}  # 1.0 on the same items
    same = {"ta/a": {str(i): float((i + 1) % 2) for i in range(n)}}  # 0.5, other items right
    up = paired_interval([((_flat(""), before), (_flat(""), better))], "ta/a")
    assert up.diff == pytest.approx(0.5) and up.low > 0.3 and up.significant and up.items == n
    flat = paired_interval([((_flat(""), before), (_flat(""), same))], "ta/a")
    assert flat.diff == pytest.approx(0.0) and flat.low < 0 < flat.high and not flat.significant
    # ta_avg over its benchmarks, a benchmark over its languages: the structure the scores are defined by.
    items = {"ta/a": before["ta/a"], "la/x/de": {"0": 1.0}, "la/x/fr": {"0": 0.0}}
    assert structure("ta_avg", _flat(""), items) == ("mean", ["ta/a"])
    assert structure("la/x", _flat("x"), items) == ("mean", ["la/x/de", "la/x/fr"])
    assert structure("la/y", _flat("x"), items) is None  # no items: no interval
    assert paired_interval([((_flat(""), before), (_flat(""), {}))], "ta/a") is None


def _cell_metrics(ta_items: dict, la_items: dict) -> dict:
    """metrics.json keys of one phase pair from per-item hits (one TA and one LA benchmark)."""
    from cft.evaluation.uncertainty import mean_stderr

    m = {}
    for phase in keys.PHASES:
        for ability, items in (("ta", ta_items[phase]), ("la", la_items[phase])):
            value = sum(items.values()) / len(items)
            for key in (keys.score(ability, "t", phase=phase), keys.average(ability, phase=phase)):
                m[key], m[keys.stderr(key)] = value, mean_stderr(list(items.values()))
            m[keys.average_over(ability, phase=phase)] = "t"
            m[keys.average_tasks(ability, phase=phase)] = 1
    return m


def test_tables_mark_the_significant_differences(tmp_path):
    """Hand-made runs: LA rises on 40 of 40 items (significant), TA moves by 1 of 40 (not)."""
    from test_analysis import OFF, write_run

    from cft.analysis.sweep import analyze_sweep
    from cft.evaluation.uncertainty import write_items

    n = 40
    hits = lambda k: {str(i): float(i < k) for i in range(n)}  # noqa: E731
    cells = {"full": (hits(30), hits(29), hits(0), hits(40)), "lora": (hits(30), hits(30), hits(0), hits(2))}
    for strategy, (ta1, ta2, la1, la2) in cells.items():
        ta, la = {"phase1": ta1, "phase2": ta2}, {"phase1": la1, "phase2": la2}
        run = write_run(tmp_path, f"alpaca-multialpaca/tiny/{strategy}", 0, _cell_metrics(ta, la), sweep_id="sig")
        for phase in keys.PHASES:
            path = layout.eval_items(run, phase)
            path.parent.mkdir(parents=True)
            write_items(path, {"ta/t": ta[phase], "la/t": la[phase]})
    analyze_sweep("sig", output_root=tmp_path, tracking=OFF)
    table = (tmp_path / "sig" / "analysis" / "strategies.md").read_text()
    rows = {
        line.split(" | ")[3]: [c.strip(" |*") for c in line.split(" | ")[5:]]
        for line in table.splitlines()
        if line.startswith("| alpaca")
    }
    # Columns: t, TA avg, t, LA avg, ΔTA, ΔLA, TA vs full, LA vs full.
    full, lora = rows["full"], rows["lora"]
    assert full[1] == "72.5 ± 7.1" and full[3].startswith("100.0 ± 0.0")  # TA 29/40; LA 40/40
    assert "†" not in full[4] and full[5].endswith("†")  # ΔTA -2.5 (noise), ΔLA +100 (real)
    assert "†" not in lora[6] and lora[7].endswith("†")  # LoRA vs full: TA same, LA -95 (real)
    assert "†" in table and "paired bootstrap 95% interval" in table
    # The per-benchmark table has each change, tested on the same items.
    la = (tmp_path / "sig" / "analysis" / "la.md").read_text()
    assert "| t P1 | t P2 | t Δ | Avg P1 | Avg P2 | Avg Δ |" in la and "100.0 ± 0.0†" in la


def test_tables_read_bits_per_byte_as_lower_is_better(tmp_path):
    """An LA average over FLORES bits per byte: shown as bits per byte, the lowest marked best, a footnote."""
    from test_analysis import OFF, write_run

    from cft.analysis.sweep import analyze_sweep

    for strategy, (before, after) in {"full": (1.6, 1.2), "lora": (1.6, 1.5)}.items():
        m = {}
        for phase, value in (("phase1", before), ("phase2", after)):
            for key in (keys.score("la", "flores", phase=phase), keys.average("la", phase=phase)):
                m[key], m[keys.lower_is_better(key)] = value, 1
            m[keys.score("la", "flores", "es", phase=phase)] = value + 0.25  # marked through its benchmark's marker
            m[keys.average_over("la", phase=phase)] = "flores"
            m[keys.average_tasks("la", phase=phase)] = 1
            m[keys.punkt(phase=phase)] = "fallback"  # IFEval scored with the fallback splitter: said under the tables
        write_run(tmp_path, f"alpaca-multialpaca/tiny/{strategy}", 0, m, sweep_id="bpb")
    analyze_sweep("bpb", output_root=tmp_path, tracking=OFF)
    summary = (tmp_path / "bpb" / "analysis" / "summary.md").read_text()
    assert "| alpaca | multialpaca | tiny | full | 1 | — | — | **1.600** | **1.200** |" in summary  # the lower LA P2 is best
    assert "| alpaca | multialpaca | tiny | lora | 1 | — | — | **1.600** | 1.500 |" in summary
    assert "lower is better for la/flores, la_avg" in summary
    # Per language too: bits per byte (not x100 as a percentage), the lowest marked best.
    per_language = (tmp_path / "bpb" / "analysis" / "la_flores.md").read_text()
    assert "| alpaca | multialpaca | tiny | full | 1 | **1.850** | **1.450** |" in per_language
    assert per_language.startswith("### flores per language (bits per byte, lower is better), Phase 1 vs Phase 2")
    # The per-language gain figure draws a drop in bits per byte as a gain (positive), for both strategies.
    import csv

    with open(tmp_path / "bpb" / "analysis" / "la_gain_per_language.csv") as f:
        gains = {row["cell"]: float(row["gain_mean"]) for row in csv.DictReader(f) if row["language"] == "es"}
    assert sorted(gains.values()) == pytest.approx([10.0, 40.0])
    assert "minimal Punkt fallback" in summary


def test_study_times_counts_a_shared_phase1_training_once(tmp_path):
    """examples/study_times.py (the README's study wall times): per finished cell its seconds, and a total that
    counts the Phase-1 training two strategies share once; an unfinished cell is left out."""
    import importlib.util

    from helpers import REPO
    from test_analysis import write_run

    spec = importlib.util.spec_from_file_location("study_times", REPO / "examples" / "study_times.py")
    study_times = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_times)
    base = {"train/phase1/seconds": 100.0, "eval/phase2/mmlu/seconds": 30.0, "eval/phase2/seconds": 30.0}
    write_run(tmp_path, "alpaca-multialpaca/tiny/full", 0, {**base, "train/phase2/seconds": 50.0}, sweep_id="t")
    write_run(
        tmp_path,
        "alpaca-multialpaca/tiny/lora",
        0,
        {**base, "train/phase2/seconds": 20.0, "train/phase2/resumed_from": 3},
        sweep_id="t",
    )
    write_run(tmp_path, "alpaca-multialpaca/tiny/gr5", 0, {**base, "train/phase2/seconds": 99.0}, sweep_id="t", done=False)
    table = study_times.times_table(str(tmp_path), "t").splitlines()
    assert table[0] == "| cell | Phase 1 train | Phase 2 train | eval mmlu | Phase 2 eval |"
    assert table[2] == "| alpaca-multialpaca/tiny/full/seed0 | 100 | 50 | 30 | 30 |"
    assert table[3].startswith("| alpaca-multialpaca/tiny/lora/seed0 (Phase 2 resumed at step 3")
    assert table[-1].startswith("2 finished cell(s); 230 s (0.06 h)")  # 100 + 50 + 30 + 20 + 30


def test_study_times_tells_phase1_models_apart_by_their_recorded_key(tmp_path):
    """Cells share a Phase-1 training when their run_meta.json records the same phase1_key (Phase-2 data
    does not matter); two keys are two trainings, counted twice."""
    import importlib.util

    from helpers import REPO
    from test_analysis import write_run

    from cft.run import layout

    spec = importlib.util.spec_from_file_location("study_times", REPO / "examples" / "study_times.py")
    study_times = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_times)
    base = {"train/phase1/seconds": 100.0, "train/phase2/seconds": 10.0, "eval/phase2/seconds": 0.0}
    for cell, key in (
        ("alpaca-multialpaca/tiny/full", "k1"),
        ("alpaca-orca/tiny/full", "k1"),
        ("alpaca-multialpaca/tiny/lora", "k2"),
    ):
        run = write_run(tmp_path, cell, 0, base, sweep_id="t")
        meta = json.loads((run / layout.META).read_text())
        (run / layout.META).write_text(json.dumps({**meta, "phase1_key": key}))
    assert study_times.times_table(str(tmp_path), "t").splitlines()[-1].startswith("3 finished cell(s); 230 s")
