"""Sweep cost: a 5-strategy sweep (full, lf_h2, gr5, gr10, er10) with cft's shared artifact cache,
against a naive sweep that rebuilds every artifact per cell (a fresh cache folder per cell).

    python bench/sweep_cost.py           # the demo setup, shortened (5 steps per phase)
    python bench/sweep_cost.py --smoke   # tiny model, strategies full and er10, one round

Both sweeps are the real `train.py -m` in a subprocess. Builds are counted twice: from the log
lines of cft.run.artifacts ("Building <kind> artifact", "Reusing <kind> artifact") and from the
finished artifact folders (with DONE) in the cache. Kinds: phase1 (Phase-1 training), eval
(Phase-1 evaluation), generative_replay (replay generation; gr5 and gr10 ask for different
sizes, so two sets), layer_changes (lf_h2's base -> Phase-1 change table), base (the model
built from config). The wall-time ratio is naive / cft, median over --rounds interleaved rounds.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

log = common.setup_logging()

STRATEGIES = "full,lf_h2,gr5,gr10,er10"
# The demo pipeline, shortened so that ten cells run in minutes on a CPU: 5 steps per phase and
# 20 steps of the demo base's Phase-0 pre-training (300 by default). lf_h2 freezes lf_k=1 layer.
DEMO = [
    "model=demo",
    "model.pretrain.steps=20",
    "++model.lf_k=1",
    "phase1_data.demo.per_task_language=40",
    "phase2_data.demo.per_task_language=10",
    "phase2_data.languages=[es,de]",
    "train.max_steps=5",
    "eval.tasks.demo.per_task_language=2",
    "eval.tasks.demo.languages=[en,es,de]",
    "eval.tasks.demo.max_new_tokens=8",
]
SMOKE = [
    "model=tiny",
    "++model.lf_k=1",
    "phase1_data.demo.per_task_language=16",
    "phase2_data.demo.per_task_language=4",
    "phase2_data.languages=[es,de]",
    "train.max_steps=2",
    "train.global_batch_size=8",
    "train.micro_batch_size=8",
    "eval.tasks.demo.per_task_language=2",
    "eval.tasks.demo.languages=[en,es]",
    "eval.tasks.demo.max_new_tokens=4",
]
BUILD_RE = re.compile(r"Building (\S+) artifact")
REUSE_RE = re.compile(r"Reusing (\S+) artifact")


def run_sweep(root: Path, overrides: list[str], strategies: str, naive: bool) -> dict:
    args = ["-m", f"strategy={strategies}", "tracking=none", "sweep_id=bench", *overrides]
    if naive:
        # A fresh cache per cell: every artifact is rebuilt for every cell, as a sweep without a
        # shared cache would. `paths.*` overrides do not change run folder names.
        args.append("paths.cache_dir=${paths.output_root}/naive_cache/cell${hydra:job.num}")
    env = {**os.environ, **common.OFFLINE_ENV, "CFT_OUTPUT_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    env.pop("CFT_SWEEP_ID", None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(common.REPO / "train.py"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=3600
    )
    seconds = time.perf_counter() - start
    text = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(args)} failed ({proc.returncode}):\n{text[-6000:]}")
    built = collections.Counter(BUILD_RE.findall(text))
    reused = collections.Counter(REUSE_RE.findall(text))
    caches = [root / "cache"] if not naive else sorted((root / "naive_cache").glob("cell*"))
    folders = collections.Counter()
    for cache in caches:
        for kind_dir in cache.iterdir() if cache.exists() else []:
            if kind_dir.is_dir():
                folders[kind_dir.name] += sum(1 for a in kind_dir.iterdir() if (a / "DONE").exists())
    cells = sum(1 for _ in root.rglob("run_meta.json"))
    done = sum(1 for p in root.rglob("run_meta.json") if (p.parent / "DONE").exists())
    return {
        "seconds": seconds,
        "cells": cells,
        "cells_done": done,
        "built": dict(built),
        "reused": dict(reused),
        "artifact_folders": dict(folders),
    }


def main() -> None:
    common.claim_stdout()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--strategies", default=STRATEGIES)
    p.add_argument("--rounds", type=int, default=2, help="interleaved (cft, naive) rounds; wall time is the median")
    p.add_argument("--override", action="append", default=[], help="extra train.py override (repeatable)")
    common.add_threads_arg(p)
    args = p.parse_args()
    common.apply_threads(args.threads)
    overrides = SMOKE if args.smoke else DEMO
    if args.smoke:
        # one round: the build counts are the same in every round, and the smoke's wall time is no figure
        args.strategies, args.rounds = "full,er10", 1
    overrides = overrides + args.override

    runs: dict[str, list[dict]] = {"cft": [], "naive": []}
    with tempfile.TemporaryDirectory(prefix="cft-bench-sweep-") as tmp:
        for r in range(args.rounds):
            for mode in ("cft", "naive") if r % 2 == 0 else ("naive", "cft"):
                root = Path(tmp) / f"{mode}-{r}"
                root.mkdir()
                res = run_sweep(root, overrides, args.strategies, naive=mode == "naive")
                runs[mode].append(res)
                log.info("round %d %s: %.1fs, built %s", r, mode, res["seconds"], res["built"])
    cft, naive = runs["cft"][-1], runs["naive"][-1]
    n_cells = len(args.strategies.split(","))
    wall = {m: common.median(x["seconds"] for x in runs[m]) for m in runs}
    each_once = all(cft["built"].get(k, 0) == 1 for k in ("phase1", "eval")) and cft["built"].get("generative_replay", 0) == len(
        {s for s in args.strategies.split(",") if s.startswith("gr")}
    )
    common.emit(
        {
            "benchmark": "sweep_cost",
            "setting": "smoke (tiny)" if args.smoke else "demo (shortened)",
            "strategies": args.strategies.split(","),
            "overrides": overrides,
            "rounds": args.rounds,
            "cells": n_cells,
            "cft": {k: cft[k] for k in ("cells_done", "built", "reused", "artifact_folders")},
            "naive": {k: naive[k] for k in ("cells_done", "built", "reused", "artifact_folders")},
            "phase1_trainings": {"cft": cft["built"].get("phase1", 0), "naive": naive["built"].get("phase1", 0)},
            "phase1_evaluations": {"cft": cft["built"].get("eval", 0), "naive": naive["built"].get("eval", 0)},
            "replay_generations": {
                "cft": cft["built"].get("generative_replay", 0),
                "naive": naive["built"].get("generative_replay", 0),
            },
            "each_built_once": each_once,
            "wall_seconds": wall,
            "wall_seconds_all_rounds": {m: [x["seconds"] for x in runs[m]] for m in runs},
            "wall_seconds_spread": {m: common.spread(x["seconds"] for x in runs[m]) for m in runs},
            "ratio_wall_naive_vs_cft": common.ratio(wall["naive"], wall["cft"]),
            # the ratio within each round (same load), over rounds
            "ratio_wall_naive_vs_cft_spread": common.spread(
                n["seconds"] / c["seconds"] for c, n in zip(runs["cft"], runs["naive"])
            ),
            "environment": common.environment(),
        }
    )


if __name__ == "__main__":
    main()
