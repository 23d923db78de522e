"""bench/gpu.sh --cpu-smoke and the thread bench at their smallest setting (tests/bench_smoke.py; this module
is one share of the bench scripts, split so that both xdist workers take some)."""

from __future__ import annotations

import bench_smoke
import pytest

SCRIPTS = [bench_smoke.GPU, "threads"]


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    with bench_smoke.started(request, tmp_path_factory, SCRIPTS) as runs:
        yield runs


@pytest.mark.slow
@pytest.mark.parametrize("name", [s for s in SCRIPTS if s != bench_smoke.GPU])
def test_bench_script_smoke(name, smoke_runs):
    bench_smoke.check_script(name, smoke_runs)


@pytest.mark.slow
def test_gpu_script_runs_on_the_cpu_at_its_smallest_setting(smoke_runs):
    """bench/gpu.sh --cpu-smoke: the GPU run's code paths (cft loop padded and packed, ZeRO-2 where
    deepspeed is installed, batched generation) on the tiny shape, and nothing the device image lacks."""
    bench_smoke.check_gpu(smoke_runs)
