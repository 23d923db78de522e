"""Evaluation cost: the wall time of the eval=quick suite (lm-eval tasks on a few examples each),
and the share of a training run's time that goes to evaluation.

    python bench/evaluation.py             # eval=quick on the demo shape + a shortened demo run
    python bench/evaluation.py --smoke     # the demo suite on the tiny model, both parts in seconds

Part 1 runs the real `evaluate.py checkpoint=<demo-shape model> eval=quick eval.data_dir=<data>`
in a subprocess; tasks whose local data is missing from --data-dir are left out (the ones left
out are listed) rather than failing the measurement. Part 2 runs the real `train.py` in a child
process in which cft.recipes.train's `evaluate` and `fit` are wrapped with timers: evaluation (Phase-1
evaluation, cached, and Phase-2 evaluation), training (Phase 1 and Phase 2) and the rest
(loading, DES, saving) as shares of the run's wall time, also without the one-time build of
the base model (the demo base is pre-trained once per cache).
"""

from __future__ import annotations

import argparse
import json
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

MISSING_RE = re.compile(r"eval task (\S+): eval\.data_dir=.* lacks")

DEMO_RUN = ["model=demo", "model.pretrain.steps=20", "train.max_steps=40", "eval.tasks.demo.per_task_language=10"]
SMOKE_RUN = [
    "model=tiny",
    "phase1_data.demo.per_task_language=16",
    "phase2_data.demo.per_task_language=4",
    "phase2_data.languages=[es,de]",
    "train.max_steps=3",
    "train.global_batch_size=8",
    "train.micro_batch_size=8",
    "eval.tasks.demo.per_task_language=2",
    "eval.tasks.demo.languages=[en,es,de]",
    "eval.tasks.demo.max_new_tokens=4",
]

# Runs train.py with cft.recipes.train.evaluate / fit timed; the timings go to $CFT_BENCH_TIMINGS at exit.
DRIVER = r"""
import atexit, json, os, runpy, sys, time
import cft.recipes.train as recipe
spent = {"evaluate": 0.0, "fit": 0.0, "base_reference": 0.0, "evaluate_calls": 0, "fit_calls": 0, "base_reference_calls": 0}
def timed(name, fn):
    def wrapper(*a, **k):
        start = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[name] += time.perf_counter() - start
            spent[name + "_calls"] += 1
    return wrapper
recipe.evaluate = timed("evaluate", recipe.evaluate)
recipe.fit = timed("fit", recipe.fit)
recipe.base_reference = timed("base_reference", recipe.base_reference)
start = time.perf_counter()
atexit.register(lambda: open(os.environ["CFT_BENCH_TIMINGS"], "w").write(json.dumps({**spent, "total": time.perf_counter() - start})))
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _env(root: Path) -> dict:
    env = {**os.environ, **common.OFFLINE_ENV, "CFT_OUTPUT_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    env.pop("CFT_SWEEP_ID", None)
    return env


def eval_suite(root: Path, checkpoint: Path, suite: str, overrides: list[str]) -> dict:
    """evaluate.py on one suite, leaving out tasks whose data is missing; returns wall time and what ran."""
    left_out: list[str] = []
    for _ in range(12):
        args = [f"checkpoint={checkpoint}", f"eval={suite}", "tracking=none", *overrides, *[f"~eval.tasks.{t}" for t in left_out]]
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(common.REPO / "evaluate.py"), *args],
            cwd=root,
            env=_env(root),
            capture_output=True,
            text=True,
            timeout=3600,
        )
        seconds = time.perf_counter() - start
        text = proc.stdout + proc.stderr
        if proc.returncode == 0:
            metrics = sorted(root.rglob("metrics.json"), key=lambda p: p.stat().st_mtime)[-1]
            scores = json.loads(metrics.read_text())
            return {"seconds": seconds, "left_out_no_data": left_out, "scores": len(scores)}
        missing = MISSING_RE.search(text)
        if not missing:
            raise RuntimeError(f"evaluate.py {' '.join(args)} failed ({proc.returncode}):\n{text[-5000:]}")
        left_out.append(missing.group(1))
        log.info("eval=%s: no local data for %s; leaving it out", suite, missing.group(1))
    raise RuntimeError("too many eval tasks without data")


def run_share(root: Path, overrides: list[str]) -> dict:
    timings = root / "timings.json"
    env = {**_env(root), "CFT_BENCH_TIMINGS": str(timings)}
    args = ["tracking=none", *overrides]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(common.REPO / "train.py"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0 or not timings.exists():
        raise RuntimeError(f"train.py {' '.join(args)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-5000:]}")
    t = json.loads(timings.read_text())
    total = t["total"]
    # The base model (built, and for the demo pre-trained, once per cache) is a one-time cost.
    per_run = total - t["base_reference"]
    return {
        "run_seconds": total,
        "evaluation_seconds": t["evaluate"],
        "training_seconds": t["fit"],
        "evaluate_calls": t["evaluate_calls"],
        "fit_calls": t["fit_calls"],
        "share_evaluation": t["evaluate"] / total,
        "share_training": t["fit"] / total,
        "share_other": max(0.0, 1 - (t["evaluate"] + t["fit"]) / total),
        "base_model_seconds": t["base_reference"],
        "share_evaluation_without_base_build": t["evaluate"] / per_run,
        "share_training_without_base_build": t["fit"] / per_run,
    }


def main() -> None:
    common.claim_stdout()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--suite", default="quick", help="eval suite timed in part 1 (conf/eval/<suite>.yaml)")
    p.add_argument("--data-dir", default=str(common.DATA_DIR), help="eval.data_dir for part 1 (default: the real data)")
    p.add_argument("--shape", default="demo")
    p.add_argument("--skip-suite", action="store_true", help="only part 2")
    p.add_argument("--rounds", type=int, default=2, help="repetitions of both parts (median and spread)")
    common.add_threads_arg(p)
    args = p.parse_args()
    common.apply_threads(args.threads)
    suite_overrides = [f"eval.data_dir={args.data_dir}"]
    run_overrides = DEMO_RUN
    if args.smoke:
        args.suite, args.shape, run_overrides, args.rounds = "demo", "tiny", SMOKE_RUN, 1
        suite_overrides = [
            "eval.tasks.demo.per_task_language=2",
            "eval.tasks.demo.languages=[en,es]",
            "eval.tasks.demo.max_new_tokens=4",
        ]

    from cft.models import save_built_model

    figures = {"benchmark": "evaluation", "rounds": args.rounds}
    suites: list[dict] = []
    shares: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cft-bench-eval-") as tmp:
        tmp = Path(tmp)
        checkpoint = None
        for r in range(args.rounds):  # part 1 then part 2, then again: both see the same spread of load
            if not args.skip_suite and (args.suite == "demo" or Path(args.data_dir).exists()):
                checkpoint = checkpoint or save_built_model(tmp / "model", common.shape(args.shape, 1024), seed=0)
                (tmp / f"suite-{r}").mkdir()
                res = eval_suite(tmp / f"suite-{r}", checkpoint, args.suite, suite_overrides)
                suites.append(res)
                log.info("round %d eval=%s: %.1fs (left out: %s)", r, args.suite, res["seconds"], res["left_out_no_data"])
            (tmp / f"run-{r}").mkdir()
            share = run_share(tmp / f"run-{r}", run_overrides)
            shares.append(share)
            log.info(
                "round %d run: %.1fs, evaluation %.0f%%, training %.0f%%",
                r,
                share["run_seconds"],
                100 * share["share_evaluation"],
                100 * share["share_training"],
            )
    if suites:
        figures["suite"] = {
            "name": args.suite,
            "shape": args.shape,
            **suites[-1],
            "seconds": common.median(x["seconds"] for x in suites),
            "seconds_spread": common.spread(x["seconds"] for x in suites),
        }
    elif not args.skip_suite:
        figures["suite"] = {"name": args.suite, "skipped": f"no data at {args.data_dir}"}
    run = {k: common.median(x[k] for x in shares) for k in shares[0] if isinstance(shares[0][k], float)}
    run.update({k: shares[-1][k] for k in shares[0] if not isinstance(shares[0][k], float)})
    run["spread"] = {k: common.spread(x[k] for x in shares) for k in ("run_seconds", "share_evaluation", "share_training")}
    figures["run"] = {"overrides": run_overrides, **run}
    figures["environment"] = common.environment()
    common.emit(figures)


if __name__ == "__main__":
    main()
