"""analyze.py lays a paper-shaped sweep out like the paper (rows, columns, order of languages),
footnotes averages that do not cover the paper's benchmarks, and lists failed cells with their
phase and reason, apart from unfinished ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_analysis import OFF, PAPER_LA, paper_sweep, write_run

from cft.analysis.sweep import analyze_sweep
from cft.errors import CftError
from cft.run import layout

REPO = Path(__file__).resolve().parent.parent
TA_NOTE = (
    "*Note: TA avg covers 3 benchmarks (ifeval, mmlu, hellaswag) in 8 run(s), Phase 1 and Phase 2; the paper's TA "
    "average covers 4 (ifeval, alpaca_eval, mmlu, hellaswag): do not compare the two.*"
)


def _header(md: str) -> list[str]:
    return next(line for line in md.splitlines() if line.startswith("| Phase 1 data")).strip("| ").split(" | ")


@pytest.fixture
def paper(tmp_path) -> Path:
    paper_sweep(tmp_path)
    return tmp_path


def test_tables_in_the_papers_layout(paper):
    out = analyze_sweep("paper", output_root=paper, tracking=OFF, echo=False).out_dir
    # Tables 3 and C6: the Phase-1 model first, then the strategies in the paper's order (the folders say lora first).
    strategies = (out / "strategies.md").read_text()
    rows = [line.split(" | ")[3] for line in strategies.splitlines() if line.startswith("| instruct")]
    assert rows == ["Phase 1", "full", "lf_h2", "gr5", "lora"]
    assert _header(strategies)[5:] == [
        "ifeval", "mmlu", "hellaswag", "TA avg", "mlqa", "xquad", "xlsum", "LA avg", "ΔTA", "ΔLA",
    ]  # fmt: skip
    # The Phase-1 row is a reference: it is never the bold best, although its TA is the highest.
    phase1_row = next(line for line in strategies.splitlines() if "| Phase 1 |" in line)
    assert "**" not in phase1_row and "| 65.0 ± 0.0 |" in phase1_row
    # Tables B3 to B5: the paper's languages in its order (the config's order where the paper gives none),
    # English not among them; the English parts have their own table.
    for task, langs in PAPER_LA.items():
        header = _header((out / f"la_{task}.md").read_text())
        assert header[5:] == [f"{lang} {p}" for lang in langs for p in ("P1", "P2")], task
    assert _header((out / "en.md").read_text())[5:] == ["mlqa P1", "mlqa P2", "xquad P1", "xquad P2", "xlsum P1", "xlsum P2"]
    assert "em" not in " ".join(_header((out / "la_xquad.md").read_text()))
    # Tables 1 and 2: the paper's benchmark columns.
    assert _header((out / "ta.md").read_text())[5:9] == ["ifeval P1", "ifeval P2", "mmlu P1", "mmlu P2"]
    # AlpacaEval was not computed: every table with the TA average says that it covers 3 of the paper's 4.
    for name in ("summary", "ta", "strategies"):
        assert TA_NOTE in (out / f"{name}.md").read_text(), name
        assert r"\par\footnotesize TA avg covers 3 benchmarks" in (out / f"{name}.tex").read_text(), name
    for name in ("la", "la_xquad", "des", "mpd", "en"):  # the LA average covers the paper's 3: no note
        assert "Note:" not in (out / f"{name}.md").read_text(), name
    assert TA_NOTE in (out / "report.md").read_text()


def test_failed_cells_are_listed_with_phase_and_reason(paper, capsys):
    failed = write_run(paper, "instruct-multialpaca/mistral/er10", 0, {}, done=False, sweep_id="paper")
    layout.write_failure(failed, phase="phase2", error="OutOfMemoryError", message="CUDA out of memory.\nTried to allocate 2 GiB")
    write_run(paper, "instruct-multialpaca/mistral/cofitune", 0, {}, done=False, sweep_id="paper")  # still running
    result = analyze_sweep("paper", output_root=paper, tracking=OFF)
    line = "instruct-multialpaca/mistral/er10/seed0: phase2: OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"
    assert result.failed == [line]
    printed = capsys.readouterr().out
    assert f"1 failed cell(s) (phase: error: message), left out of the tables:\n  - {line}\n" in printed
    assert "1 unfinished run(s), left out of the tables:\n  - instruct-multialpaca/mistral/cofitune/seed0\n" in printed
    report = result.report.read_text()
    assert "Finished runs: 8; failed: 1; unfinished: 1." in report
    assert (
        "| `instruct-multialpaca/mistral/er10/seed0` | phase2 | OutOfMemoryError | CUDA out of memory. Tried to allocate 2 GiB |"
        in report
    )
    failed_part, unfinished_part = report.split("## Failed cells")[1].split("## Unfinished cells")
    assert "cofitune" not in failed_part and "er10" not in unfinished_part and "cofitune" in unfinished_part
    assert "er10" not in (result.out_dir / "strategies.md").read_text()


def test_a_sweep_with_only_failed_cells_says_why(tmp_path):
    run = write_run(tmp_path, "a-b/tiny/full", 0, {}, done=False, sweep_id="bad")
    layout.write_failure(run, phase="phase1", error="DataError", message="alpaca.json:12: empty output")
    with pytest.raises(CftError) as info:
        analyze_sweep("bad", output_root=tmp_path, tracking=OFF)
    assert str(info.value) == (
        "sweep 'bad' (" + str(tmp_path / "bad") + ") has no finished run (no run folder with DONE). "
        "1 failed cell(s) (phase: error: message), left out of the tables:\n"
        "  - a-b/tiny/full/seed0: phase1: DataError: alpaca.json:12: empty output"
    )


def test_cli_prints_failed_cells(paper):
    failed = write_run(paper, "instruct-multialpaca/mistral/er10", 0, {}, done=False, sweep_id="paper")
    layout.write_failure(failed, phase="phase2", error="RuntimeError", message="boom")
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(paper), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "analyze.py", "sweep_id=paper"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    assert "  - instruct-multialpaca/mistral/er10/seed0: phase2: RuntimeError: boom" in proc.stdout
    assert f"Report: {paper / 'paper' / 'analysis' / 'report.md'}" in proc.stdout


def test_the_papers_averages_are_read_from_the_paper_suites_config(tmp_path):
    """conf/eval/ta.yaml and la.yaml own the benchmarks of the paper's averages; the analysis reads them."""
    from cft.analysis import paper

    assert paper.averages() == {"ta": ("ifeval", "alpaca_eval", "mmlu", "hellaswag"), "la": ("mlqa", "xquad", "xlsum")}
    assert paper.columns("en") == paper.columns("la")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "ta.yaml").write_text("averages:\n  ta: [mmlu, ifeval]\n")
    (tmp_path / "eval" / "la.yaml").write_text("averages:\n  la: [xquad]\n")
    assert paper.averages(tmp_path) == {"ta": ("mmlu", "ifeval"), "la": ("xquad",)}
    with pytest.raises(CftError, match=r"missing/eval/ta.yaml: cannot read the paper's averages"):
        paper.averages(tmp_path / "missing")
