"""Fault injection in sweeps (-m): a cell another process holds, a cell that fails in setup (basic launcher
and submitit), a GPU out of memory in one cell, and check=true / the preflight naming the cells that cannot
run. Each test asserts that the other cells finish, the sweep's end table and exit status, and that the
same command again runs only what did not finish (finished cells keep DONE and metrics). Shared set-up:
faults_common.py; the other faults: test_faults.py and test_faults_disk.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from faults_common import (
    REPO,
    _hold,
    _release,
    fault_env,
    log_lines,
    train,
)
from helpers import run_folders

from cft.run import layout

# ---------------------------------------------------------------- one process per cell


def test_a_sweep_goes_on_past_a_cell_another_process_holds(root, prepared):
    seed0 = root / "s" / run_folders(prepared / "prep")[0].relative_to(prepared / "prep")
    holder = _hold(seed0)
    try:
        proc = train(root, "-m", "seed=0,1", "sweep_id=s")
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert f"process {holder.pid} on " in proc.stderr and "failed or did not finish" in proc.stderr
        seed1 = seed0.parent / "seed1"
        assert (seed1 / "DONE").exists() and not (seed0 / "DONE").exists() and not (seed0 / "FAILED").exists()
    finally:
        _release(holder)


# ---------------------------------------------------------------- a failing cell does not stop a sweep


def _sweep_with_a_failing_cell(root: Path, *extra: str) -> tuple[list[str], subprocess.CompletedProcess]:
    args = ["-m", "strategy=lf_h1", "strategy.k=1,5,2", "sweep_id=s", *extra]
    return args, train(root, *args, env={"PYTHONPATH": str(REPO)})


def _cells_by_k(root: Path) -> dict[int, Path]:
    import yaml

    return {yaml.safe_load((f / "config.yaml").read_text())["strategy"]["k"]: f for f in run_folders(root / "s")}


def assert_failing_cell_sweep(root: Path, proc: subprocess.CompletedProcess, args: list[str]) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    table = proc.stderr.split("1 cell(s) of sweep s failed or did not finish:")[1]
    assert "setup   strategy.k=5 must be an integer from 1 to 2 (the model has 2 layers)" in table
    assert "Traceback" not in proc.stderr
    cells = _cells_by_k(root)
    assert sorted(cells) == [1, 2, 5] and str(cells[5].relative_to(root / "s")) in table
    failure = layout.read_failure(cells[5])
    assert failure["phase"] == "setup" and "strategy.k=5" in failure["message"] and not (cells[5] / "DONE").exists()
    finished = {k: (cells[k] / "DONE").stat().st_mtime_ns for k in (1, 2)}
    metrics = {k: (cells[k] / "metrics.json").read_text() for k in finished}
    assert all("phase2/ta_avg" in json.loads(m) for m in metrics.values())
    # The same command again: finished cells are skipped (DONE and metrics untouched), the failed one retried.
    again = train(root, *args, env={"PYTHONPATH": str(REPO)})
    assert again.returncode == 1 and "strategy.k=5 must be" in again.stderr
    logs = again.stdout + again.stderr + "".join(p.read_text(errors="replace") for p in (root / "s").glob(".submitit/*/*_log.*"))
    assert logs.count("is already finished (DONE); skipping it") == 2  # the jobs' logs, under submitit
    for k, stamp in finished.items():
        assert (cells[k] / "DONE").stat().st_mtime_ns == stamp and (cells[k] / "metrics.json").read_text() == metrics[k]
    assert (cells[5] / "FAILED").stat().st_mtime_ns > max(finished.values())


def test_failing_cell_in_a_3_cell_sweep(root):
    """Basic launcher: the cell whose k exceeds the model's layers fails in setup, writes FAILED, and the
    other two finish; the sweep ends with the table and exit 1; a rerun retries only that cell."""
    args, proc = _sweep_with_a_failing_cell(root)
    assert_failing_cell_sweep(root, proc, args)


@pytest.mark.slow
def test_failing_cell_in_a_3_cell_sweep_under_submitit(root):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args, proc = _sweep_with_a_failing_cell(root, "hydra/launcher=slurm_local")
    assert_failing_cell_sweep(root, proc, args)
    logs = "".join(p.read_text(errors="replace") for p in (root / "s" / ".submitit").rglob("*_log.*"))
    assert "cft: error:" in logs and "Traceback" not in logs


def test_cuda_out_of_memory_fails_the_cell_with_a_hint_and_the_sweep_goes_on(root):
    """torch.cuda.OutOfMemoryError (planted on the first backward pass) in the first of two cells: FAILED with
    the keys that lower memory, the other cell finishes, exit 1; the rerun runs only the failed cell."""
    args = ["-m", "seed=0,1", "sweep_id=s"]
    proc = train(root, *args, env={**fault_env(), "CFT_FAULT_OOM_AT": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    runs = {p.name: p for p in run_folders(root / "s")}
    failure = layout.read_failure(runs["seed0"])
    for key in ("train.micro_batch_size", "train.gradient_checkpointing", "zero_optimization.stage", "CUDA out of memory"):
        assert key in failure["message"], failure
    assert (runs["seed1"] / "DONE").exists() and "CUDA out of memory" in proc.stderr
    again = train(root, *args)
    assert again.returncode == 0 and (runs["seed0"] / "DONE").exists()
    assert len(log_lines(again, "is already finished (DONE); skipping it")) == 1


# ---------------------------------------------------------------- the preflight and check=true


def test_check_prints_the_sweep_id_the_sweep_uses_and_the_preflight_runs_the_others(root):
    """The issue's command: check=true names the gr5 cell (its counterpart is missing) and the sweep_id; the
    same command without it uses that id, runs full and lf_h2 and lists gr5 as failed at its start."""
    args = ["-m", "strategy=full,lf_h2,gr5", "phase2_data.counterpart.path=X"]
    check = train(root, *args, "check=true")
    assert check.returncode == 2, check.stderr[-3000:]
    (sweep,) = [line.split("=", 1)[1] for line in check.stdout.splitlines() if line.startswith("cft: sweep_id=")]
    errors = [line for line in check.stderr.splitlines() if "/gr5/" in line]
    assert len(errors) == 1 and "phase2_data.counterpart: X: data file not found" in errors[0]
    assert "2 of 3 cell(s) cannot run (above); nothing was run" in check.stderr and not (root / sweep).exists()
    assert "/lf_h2/" in check.stderr  # the tiny model's 2 layers cannot give lf_h2's k=10: named too
    proc = train(root, *args)
    assert f"cft: sweep_id={sweep}" in proc.stdout and proc.returncode == 1
    runs = {p.parent.parent.name: p for p in (root / sweep).glob("demo-demo/tiny/*/*/seed0")}
    assert (runs["full"] / "DONE").exists() and not (runs["lf_h2"] / "DONE").exists()
    assert log_lines(proc, "2 of 3 cell(s) cannot run (above); running the other 1")
    assert sorted(p.name for p in runs["gr5"].iterdir() if not p.name.startswith(".")) == [
        "FAILED",
        "config.yaml",
        "run_meta.json",
        "train.log",
    ]  # stopped at its start: nothing trained, nothing cached for it
    assert layout.read_failure(runs["gr5"])["message"].startswith("phase2_data.counterpart: X: data file not found")
    strict = train(root, *args, "preflight=strict", "sweep_id=strict")
    assert strict.returncode == 2 and not (root / "strict").exists()
