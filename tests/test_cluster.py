"""Running the study on several ranks (issue 25): ranks stay together through a multirun, launch and
memory rules, sharded generation. Two CPU processes (gloo) stand in for GPUs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import SMALL, run_folders

REPO = Path(__file__).resolve().parent.parent

# model=demo shrunk, with a short phase 0: an empty cache builds the base (trained by both ranks) first.
PHASE0_SMALL = [
    "model=demo",
    "model.build.hidden_size=32",
    "model.build.intermediate_size=64",
    "model.build.max_position_embeddings=256",
    "model.pretrain.per_task_language=2",
    "model.pretrain.seq_len=32",
    "model.pretrain.steps=2",
    "model.pretrain.warmup_steps=0",
    *[o for o in SMALL if not o.startswith("model=")],
    "tracking=none",
    "similarity.layer_changes=false",
]

# train.py with rank 0's Phase-2 evaluation of one cell made slow (a fault planted in the test, not in cft).
SLOW_EVAL = textwrap.dedent("""
    import os, runpy, sys, time
    sys.path.insert(0, os.environ["CFT_REPO"])
    import cft.recipes.train as recipe
    from cft.training import distributed

    real = recipe.TrainRecipe.evaluate

    def slow(self):
        if distributed.is_main() and self.choices.get("strategy") == os.environ["SLOW_CELL"]:
            time.sleep(float(os.environ["SLOW_S"]))
        return real(self)

    recipe.TrainRecipe.evaluate = slow
    sys.argv[0] = os.path.join(os.environ["CFT_REPO"], "train.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_rank_sweep_stays_together_on_an_empty_cache(tmp_path):
    """`torchrun --nproc_per_node 2 train.py -m strategy=full,lf_h2,gr5` on an empty cache: phase 0 and
    Phase 1 are trained by both ranks (no rank waits on one that is in a collective), the last cell's
    evaluation on rank 0 is slow, and rank 1 waits for it instead of running ahead: every cell is DONE
    with its metrics, the job exits 0, and the sweep's summary is printed once."""
    (tmp_path / "slow_train.py").write_text(SLOW_EVAL)
    env = {
        **os.environ,
        "CFT_REPO": str(REPO),
        "PYTHONPATH": str(REPO),
        "CFT_OUTPUT_ROOT": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "SLOW_CELL": "gr5",
        "SLOW_S": "8",
        "CFT_DIST_TIMEOUT_MIN": "2",  # a rank that waited out a collective would fail the test, not hang it
    }
    env.pop("CFT_SWEEP_ID", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(tmp_path / "slow_train.py"),
        "-m",
        *PHASE0_SMALL,
        "strategy=full,lf_h2,gr5",
        "sweep_id=two",
    ]
    start = time.time()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    wall = time.time() - start
    out = proc.stdout + proc.stderr
    logs = "".join(f"\n--- {p}\n" + p.read_text(errors="replace")[-2500:] for p in sorted(tmp_path.rglob("train.log")))
    assert proc.returncode == 0, f"exit {proc.returncode} after {wall:.0f}s:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}{logs}"
    assert "not run here" not in out and "failed or did not finish" not in out, out[-3000:]
    assert out.count("cft: sweep two finished") == 1, out[-3000:]
    assert out.count("cft: sweep_id=two") == 1
    assert out.count("Building base artifact") == 1 and out.count("Building phase1 artifact") == 1, out[-3000:]
    folders = run_folders(tmp_path / "two")
    assert sorted(f.parts[-3] for f in folders) == ["full", "gr5", "lf_h2"], folders
    for folder in folders:
        assert (folder / "DONE").exists(), folder
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["train/phase2/steps"] == 3, metrics
        assert "phase2/avg/all" in metrics or any(k.startswith("phase2/") for k in metrics), sorted(metrics)
    gr = json.loads((next(f for f in folders if f.parts[-3] == "gr5") / "metrics.json").read_text())
    assert any(k.startswith("strategy/") for k in gr), sorted(gr)
    print(f"2-rank 3-cell sweep on an empty cache: {wall:.1f} s")
