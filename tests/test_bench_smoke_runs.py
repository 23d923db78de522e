"""The bench scripts that run whole cells or sweeps (evaluation share, sweep cost, run timeline) and the
MPD memory bench, at their smallest setting (tests/bench_smoke.py; this module is one share of the bench
scripts, split so that both xdist workers take some)."""

from __future__ import annotations

import bench_smoke
import pytest

SCRIPTS = ["evaluation", "memory_mpd", "run_timeline", "sweep_cost"]


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    with bench_smoke.started(request, tmp_path_factory, SCRIPTS) as runs:
        yield runs


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_smoke(name, smoke_runs):
    bench_smoke.check_script(name, smoke_runs)
