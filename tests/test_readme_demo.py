"""The README's figures stay in step with the code: the demo's score table (Quick start) against a
fresh `python train.py` at the same seed, and the generated performance figures against
bench/results/*.json."""

from __future__ import annotations

import json
import re
import statistics
import sys

import pytest
from helpers import REPO, run_folders, run_script

from cft.run import keys

README = REPO / "README.md"
# Exact-match scores of the demo move in steps of 1/120 (TA: 120 prompts per task) or less; a fresh run
# on another machine or thread count may flip an answer or two. Scores within this of the README's agree.
TOLERANCE = 0.025


def readme_demo_table(text: str) -> dict[str, tuple[float, float, float]]:
    """{row: (phase 1, phase 2, change)} of the score table in the README's Quick start."""
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(score +phase 1 +phase 2 +change.*?\n.*?)```", quick, re.S)
    assert block, "the Quick start has no demo score table (a ``` block starting 'score  phase 1  phase 2  change')"
    rows = {}
    # "<score>  <p1>[ ± <se>]  <p2>[ ± <se>]  <change>  [<interval>]": the standard errors and intervals are read apart.
    row = re.compile(r"^(\S+) +(\d+\.\d+)(?: ± \d+\.\d+)? +(\d+\.\d+)(?: ± \d+\.\d+)? +([+-]\d+\.\d+)")
    for line in block.group(1).splitlines()[2:]:
        m = row.match(line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)), float(m.group(4)))
    return rows


def test_readme_demo_table_is_consistent():
    """Each change is phase 2 - phase 1, and each average the mean of its ability's task rows."""
    rows = readme_demo_table(README.read_text(encoding="utf-8"))
    assert {"ta_avg", "la_avg"} <= set(rows) and len(rows) >= 8
    for name, (p1, p2, change) in rows.items():
        assert change == pytest.approx(p2 - p1, abs=0.0015), name
    for ability in ("ta", "la"):
        tasks = [v for k, v in rows.items() if k.startswith(f"{ability}/")]
        assert len(tasks) == 3
        for phase in (0, 1):
            assert rows[f"{ability}_avg"][phase] == pytest.approx(statistics.mean(t[phase] for t in tasks), abs=0.0015)


def test_readme_prose_quotes_the_demo_table():
    """The sentences that quote the demo's averages (Quick start, and the demo study's time paragraph) say what the table says."""
    text = README.read_text(encoding="utf-8")
    rows = readme_demo_table(text)
    quotes = re.findall(r"\((LA|TA) (\d\.\d\d) -> (\d\.\d\d)\)", text)
    assert {q[0] for q in quotes} == {"LA", "TA"}
    for ability, p1, p2 in quotes:
        want = rows[f"{ability.lower()}_avg"]
        assert (float(p1), float(p2)) == (round(want[0], 2), round(want[1], 2)), ability


def test_readme_bench_figures_are_the_json_ones():
    """The generated block of the Performance section is what bench/readme_figures.py renders from bench/results."""
    sys.path.insert(0, str(REPO / "bench"))
    import readme_figures

    assert readme_figures.readme_block(README.read_text(encoding="utf-8")) == readme_figures.render(), (
        "README.md's performance figures differ from bench/results/*.json: run python bench/readme_figures.py --write"
    )


def test_readme_figures_render_without_results(tmp_path):
    """Every section renders with no JSON at all (a fresh clone before `make bench`), saying so."""
    sys.path.insert(0, str(REPO / "bench"))
    import readme_figures

    block = readme_figures.render(tmp_path)
    assert block.startswith(readme_figures.BEGIN) and block.endswith(readme_figures.END)
    assert block.count("not measured yet") == len(readme_figures.SECTIONS)


@pytest.mark.slow
def test_fresh_demo_run_matches_the_readme_table(tmp_path, demo_cache):
    """`python train.py` with the demo's defaults (seed 0, one thread as on the machine the README was
    measured on) scores what the README's table says, within TOLERANCE. Its phase-0 base and Phase-1
    model come from this test run's demo cache: built by this run or by the demo study's, from the same
    spec (a fresh clone's first test run builds them)."""
    rows = readme_demo_table(README.read_text(encoding="utf-8"))
    run_script("train.py", [f"paths.cache_dir={demo_cache}"], tmp_path, env={"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    (folder,) = run_folders(tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    for name, (p1, p2, _) in rows.items():
        for phase, want in (("phase1", p1), ("phase2", p2)):
            key = next(iter(keys.phased(phase, {name: None})))
            assert metrics[key] == pytest.approx(want, abs=TOLERANCE), f"{key}: README {want}, fresh run {metrics[key]:.3f}"
