"""The bench/ scripts: each runs on its smallest setting (--smoke) and prints one JSON object with
the figures the README reports (tests/bench_smoke.py; the scripts are split over this module and
tests/test_bench_smoke_*.py, so that both xdist workers take a share); plus the helpers the figures rest on."""

from __future__ import annotations

import logging
import statistics
import sys
from pathlib import Path

import bench_smoke
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

# This module's share of the scripts (about 75 CPU-seconds of the bench smoke's 220, as are the others').
SCRIPTS = ["generation", "strategy_cost", "sweep_cost"]


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    with bench_smoke.started(request, tmp_path_factory, SCRIPTS) as runs:
        yield runs


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_smoke(name, smoke_runs):
    bench_smoke.check_script(name, smoke_runs)


def test_every_bench_script_has_a_smoke_test():
    """The split over modules drops no script: each of bench/'s scripts with --smoke is in exactly one module."""
    import test_bench_smoke_gpu
    import test_bench_smoke_runs

    modules = [SCRIPTS, test_bench_smoke_gpu.SCRIPTS, test_bench_smoke_runs.SCRIPTS]
    listed = [name for scripts in modules for name in scripts]
    assert sorted(listed) == sorted([*bench_smoke.EXPECTED, bench_smoke.GPU])
    with_smoke = {p.stem for p in bench_smoke.BENCH.glob("*.py") if "--smoke" in p.read_text(encoding="utf-8")}
    assert with_smoke == {*bench_smoke.EXPECTED, "gpu_bench"}  # gpu_bench.py: through gpu.sh --cpu-smoke


def test_synthetic_data_has_alpacas_length_spread():
    import common

    lengths = sorted(len((r["instruction"] + r["input"] + r["output"]).encode()) for r in common.synthetic_alpaca(2000, seed=0))
    q = statistics.quantiles(lengths, n=10)
    # alpaca_5000.json: median 285 bytes, 10th percentile 98, 90th 706
    assert 230 < statistics.median(lengths) < 340
    assert 70 < q[0] < 150 and 550 < q[-1] < 850


def test_build_counter_reads_the_artifact_log(tmp_path, caplog):
    """sweep_cost counts builds from cft.run.artifacts' own log lines; a reworded line must fail here."""
    import sweep_cost

    from cft.run import artifacts

    with caplog.at_level(logging.INFO, logger="cft.run.artifacts"):
        artifacts.cached(tmp_path, "phase1", {"a": 1}, lambda tmp: (tmp / "x").write_text("1"))
        artifacts.cached(tmp_path, "phase1", {"a": 1}, lambda tmp: None)
        artifacts.cached(tmp_path, "eval", {"a": 1}, lambda tmp: None)
    assert sweep_cost.BUILD_RE.findall(caplog.text) == ["phase1", "eval"]
    assert sweep_cost.REUSE_RE.findall(caplog.text) == ["phase1"]


def test_mfu_by_hand():
    """6 x parameters + 12 x layers x hidden x context FLOPs per token, at the examples' mean length."""
    from train_throughput import utilization

    arch = {"num_hidden_layers": 2, "hidden_size": 10}
    got = utilization(arch, 1000, [30, 50], {"cft_packed": 2e6, "hf_padded": 1e6}, peak_tflops=1.0)
    fpt = 6 * 1000 + 12 * 2 * 10 * 40  # = 15,600
    assert got["flops_per_token"] == fpt
    assert got["mfu"] == {"cft_packed": pytest.approx(2e6 * fpt / 1e12), "hf_padded": pytest.approx(1e6 * fpt / 1e12)}
    assert utilization(arch, 1000, [30, 50], {"x": 1.0}, peak_tflops=None)["mfu"] == {"x": None}
