"""Shared artifacts under concurrency and kills: built once, never used half-written."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SMALL, run_folders

from cft.run import artifacts

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_jobs_started_together_build_phase1_once(tmp_path):
    """Two cells (Phase-2 languages es and de) at once share one cache: one builds the Phase-1 model (and
    its evaluation), the other waits on the lock and reuses it. The builder is held at its first backward
    pass (tests/fault_inject: CFT_FAULT_PAUSE_AT) until the other job has loaded its data and reached the
    lock, so the wait happens on a busy machine too, where a late second job could find the model finished."""
    import time

    from faults_common import INJECT

    small = [o for o in SMALL if not o.startswith("phase2_data.languages")]
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("CFT_SWEEP_ID", None)
    resume = tmp_path / "resume"
    held = {
        "PYTHONPATH": os.pathsep.join([str(INJECT), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "CFT_FAULT_PAUSE_AT": "1",
        "CFT_FAULT_RESUME": str(resume),
    }
    logs = {lang: tmp_path / f"{lang}.log" for lang in ("es", "de")}

    def start(lang, extra):
        with open(logs[lang], "w") as out:
            return subprocess.Popen(
                [sys.executable, str(REPO / "train.py"), *small, f"phase2_data.languages=[{lang}]", "sweep_id=two"],
                cwd=tmp_path,
                env={**env, **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def wait_for(lang, text, proc):
        deadline = time.monotonic() + 300
        while text not in logs[lang].read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, logs[lang].read_text(errors="replace")[-3000:]
            time.sleep(0.1)

    procs = [start("es", held)]
    try:
        wait_for("es", "cft-fault: paused", procs[0])  # es builds Phase 1, holding the lock
        procs.append(start("de", {}))
        wait_for("de", "Loaded demo_en", procs[1])  # de's Phase-1 data: next comes the artifact's lock
        time.sleep(3)
        resume.touch()
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            p.kill()
    outs = [logs[lang].read_text(errors="replace") for lang in ("es", "de")]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    both = "".join(outs)
    assert both.count("Building phase1 artifact") == 1, both[-4000:]
    assert "Building phase1 artifact" in outs[0]
    assert both.count("Building eval artifact") == 1
    waiter = outs[1]
    assert "Reusing phase1 artifact" in waiter and "(built by another job)" in waiter, waiter[-3000:]
    assert len([p for p in (tmp_path / "cache" / "phase1").iterdir() if p.is_dir()]) == 1
    assert len(run_folders(tmp_path / "two")) == 2


def test_planted_half_artifact_is_rebuilt(tmp_path, caplog):
    spec = {"model": "m", "data": "d"}
    final = tmp_path / "phase1" / artifacts.key_of(spec)
    final.mkdir(parents=True)
    (final / "model.safetensors").write_text("half")  # a killed job's leftover: no DONE
    stale_tmp = tmp_path / "phase1" / f".{artifacts.key_of(spec)}.tmp-99999"
    stale_tmp.mkdir()
    built = []

    def build(tmp: Path) -> None:
        built.append(tmp)
        (tmp / "model.safetensors").write_text("whole")

    with caplog.at_level(logging.INFO):
        path = artifacts.cached(tmp_path, "phase1", spec, build)
    assert path == final and len(built) == 1
    assert (final / "model.safetensors").read_text() == "whole" and artifacts.is_complete(final)
    assert "Removing incomplete phase1 artifact" in caplog.text
    assert not stale_tmp.exists()
    # Complete now: reused, not rebuilt.
    artifacts.cached(tmp_path, "phase1", spec, build)
    assert len(built) == 1


def test_failed_build_leaves_nothing_that_looks_whole(tmp_path):
    spec = {"x": 1}

    def build(tmp: Path) -> None:
        (tmp / "part").write_text("part")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        artifacts.cached(tmp_path, "eval", spec, build)
    root = tmp_path / "eval"
    assert not (root / artifacts.key_of(spec)).exists()
    assert not list(root.glob(".*.tmp-*"))
    path = artifacts.cached(tmp_path, "eval", spec, lambda tmp: (tmp / "ok").write_text("1"))
    assert (path / "ok").exists() and artifacts.is_complete(path)
