"""The bench/ scripts' smoke runs, shared by the tests/test_bench_smoke*.py modules: each script runs on
its smallest setting (--smoke) and prints one JSON object with the figures the README reports.

The scripts are split over several test modules so that `make test` (pytest-xdist, a whole module per
worker) runs them on both workers; each module runs its own scripts two at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"

# script -> keys its JSON must hold (nested keys as "a.b").
EXPECTED = {
    "train_throughput": [
        "data",
        "shapes.tiny.tokens_per_s.hf_padded",
        "shapes.tiny.tokens_per_s.cft_padded",
        "shapes.tiny.tokens_per_s.cft_packed",
        "shapes.tiny.padding_fraction.hf_padded",
        "shapes.tiny.ratios.cft_packed_vs_hf_padded",
        "environment.device",
    ],
    "generation": ["tokens_per_s.batched", "tokens_per_s.one_at_a_time", "ratio_batched_vs_one_at_a_time"],
    "memory_mpd": [
        "methods.streaming.peak_rss_above_imports_mb",
        "methods.load_both.peak_rss_above_imports_mb",
        "ratio_peak_rss_load_both_vs_streaming",
        "mpd_agrees",
    ],
    "scaling": ["dataset_size", "model_size"],
    "sweep_cost": [
        "phase1_trainings.cft",
        "phase1_trainings.naive",
        "phase1_evaluations.cft",
        "replay_generations.cft",
        "each_built_once",
        "ratio_wall_naive_vs_cft",
    ],
    "evaluation": ["suite.seconds", "run.share_evaluation", "run.share_training", "run.spread.share_evaluation.min"],
    "threads": ["busy_loops.0.step_ms.threads_1.median", "busy_loops.0.ratio_vs_threads_1.threads_2"],
    "strategy_cost": [
        "shapes.tiny.strategies.lf_h2.step_vs_full.median",
        "shapes.tiny.strategies.gr10.phase2_vs_full.max",
        "shapes.tiny.strategies.lora.memory_vs_full",
        "shapes.tiny.goals.freezing_step_at_most_full.lf_h1",
        "shapes.tiny.goals.replay_in_proportion.er10.in_proportion",
        "shapes.tiny.slowest",
    ],
    "run_timeline": ["command", "cells"],
}
GPU = "gpu"  # bench/gpu.sh --cpu-smoke


def _get(obj, dotted):
    for part in dotted.split("."):
        assert isinstance(obj, dict) and part in obj, f"missing {dotted!r}"
        obj = obj[part]
    return obj


def _smoke(name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # one thread each: two run at once
    env.pop("CFT_OUTPUT_ROOT", None)
    return subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )


def _gpu_smoke(out: Path) -> tuple[subprocess.CompletedProcess, Path]:
    env = {**os.environ, "CFT_GPU_SMOKE_OUT": str(out), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), "--cpu-smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    return proc, out


@contextmanager
def started(request, tmp_path_factory, names: list[str]):
    """The smoke runs of those of `names` whose tests this session selected in the asking module, two at a
    time (the other worker keeps one core busy; each script is a separate process writing only to its own
    temporary folders): name -> future of its process (GPU: of (process, its JSON file))."""
    selected = {
        item.callspec.params["name"] if hasattr(item, "callspec") and "name" in item.callspec.params else GPU
        for item in request.session.items
        if getattr(item, "module", None) is request.module and "smoke_runs" in item.fixturenames
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {}
        for name in names:
            if name not in selected:
                continue
            if name == GPU:
                runs[GPU] = pool.submit(_gpu_smoke, tmp_path_factory.mktemp("gpu") / "gpu.json")
            else:
                runs[name] = pool.submit(_smoke, name)
        yield runs


def run_smoke(name: str, runs) -> dict:
    proc = runs[name].result()
    assert proc.returncode == 0, f"{name} --smoke failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)  # the whole of stdout is one JSON object


def check_script(name: str, runs) -> None:
    """`name --smoke` succeeded and its JSON holds the README's keys, with the values each script promises."""
    figures = run_smoke(name, runs)
    assert figures["benchmark"] == name
    for key in EXPECTED[name]:
        _get(figures, key)
    if name == "train_throughput":
        tiny = figures["shapes"]["tiny"]
        assert 0 <= tiny["padding_fraction"]["cft_packed"] < tiny["padding_fraction"]["cft_padded"] < 1
        # The Trainer baseline reads the same micro-batches as the cft loop, so the padding matches.
        assert tiny["padding_fraction"]["hf_padded"] == pytest.approx(tiny["padding_fraction"]["cft_padded"], abs=0.05)
    if name == "memory_mpd":
        assert figures["mpd_agrees"] is True
    if name == "sweep_cost":
        assert figures["phase1_trainings"] == {"cft": 1, "naive": 2}
        assert figures["phase1_evaluations"] == {"cft": 1, "naive": 2}
        assert figures["each_built_once"] is True
    if name == "scaling":
        assert [r["examples"] for r in figures["dataset_size"]] == [16, 32, 64]
    if name == "strategy_cost":
        tiny = figures["shapes"]["tiny"]
        s = tiny["strategies"]
        assert set(s) >= {"full", "lf_h1", "lf_h2", "lf_h2_layer", "gr5", "gr10", "er10", "lora", "cofitune", "spectrum"}
        assert s["full"]["step_vs_full"]["median"] == 1.0 and s["full"]["memory_vs_full"] == 1.0
        # ER adds 10% of the Phase-2 size (72 examples -> 7 more), and its extra tokens are counted
        assert s["er10"]["examples"] == 79 and s["er10"]["tokens_vs_full"] > 1.0
        # frozen parameters get no gradients and no optimizer state: less memory than full
        for strategy in ("lf_h1", "cofitune", "spectrum"):
            assert s[strategy]["trainable_share"] < 1 and s[strategy]["memory_vs_full"] < 1.0, strategy
        assert tiny["profiles"][tiny["slowest"]]["top_ops_self_cpu"]
    if name == "run_timeline":
        cells = figures["cells"]
        assert [(c["strategy"], c["seed"]) for c in cells] == [("full", 0), ("lf_h2", 0)]
        for cell in cells:
            after = cell["after_last_evaluation"]
            assert "rundir.mark_done" in after["steps"] and after["seconds"] >= after["seconds_to_done"] > 0


def check_gpu(runs) -> None:
    """bench/gpu.sh --cpu-smoke: the GPU run's code paths (cft loop padded and packed, ZeRO-2 where
    deepspeed is installed, batched generation) on the tiny shape, and nothing the device image lacks."""
    proc, out = runs[GPU].result()
    assert proc.returncode == 0, f"gpu.sh --cpu-smoke failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    figures = json.loads(out.read_text())
    assert figures == json.loads(proc.stdout)
    assert figures["mode"] == "cpu-smoke" and figures["modules_not_on_device"] == []
    train = figures["train"]
    assert set(train["tokens_per_s"]) >= {"padded_sdpa", "packed_sdpa"} and not train["errors"]
    assert train["mfu"] == {k: None for k in train["tokens_per_s_per_device"]}  # no peak known for a CPU
    if train["zero2"] == "run":
        assert "packed_sdpa_zero2" in train["tokens_per_s"]
    assert figures["generation"]["ratio_batched_vs_one_at_a_time"] > 0
