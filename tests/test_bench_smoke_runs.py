"""The evaluation share, run timeline, MPD memory, scaling and training throughput benches at their smallest
setting (tests/bench_smoke.py; this module is one share of the bench scripts, split so that both xdist
workers take some)."""

from __future__ import annotations

import bench_smoke
import pytest

SCRIPTS = ["evaluation", "memory_mpd", "run_timeline", "scaling", "train_throughput"]


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    with bench_smoke.started(request, tmp_path_factory, SCRIPTS) as runs:
        yield runs


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_smoke(name, smoke_runs):
    bench_smoke.check_script(name, smoke_runs)
