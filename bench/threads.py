"""Threads on a busy machine: time per training step, and per decoding step of batched generation
(evaluation, generative replay), of the demo model with 1 and with N torch threads, on the machine as
it is and with busy-loop processes started beside it.

    python bench/threads.py                  # 1 vs 2 threads (and 2 with OMP_WAIT_POLICY=passive), 0 and 2 busy loops
    python bench/threads.py --smoke          # seconds (one child per thread count measures both workloads)

Each measurement is a fresh child process (threads are fixed when OpenMP starts) that trains the
demo model (conf/model/demo.yaml) on the demo's Phase-2 data through cft.training.loop.fit with
the demo's batch of 16, and reports the median time of its steps after the first. The variants run
interleaved: in every round, each load level is set up once and every thread setting runs under
it, in an order that rotates between rounds. The figures are each variant's median over rounds and
its ratio to 1 thread under the same load. cft.training.threads chooses the default from these.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

log = common.setup_logging()

BUSY_LOOP = "while True: pass"


def child(args) -> None:
    """One measurement of each of --workload's workloads (comma-separated), each printed as one line of
    JSON: `train` (the median time of a training step after the first) or `generate` (the time of one
    decoding step of a batch, as evaluation and GR decode)."""
    for workload in args.workload.split(","):
        _child(workload, args)


def _child(workload: str, args) -> None:
    import torch

    if workload == "generate":
        print(json.dumps({"threads": torch.get_num_threads(), "step_seconds": _generate_step(args)}), flush=True)
        return

    from cft.data.sources import load_config
    from cft.models import build_model, build_tokenizer
    from cft.training.loop import TrainSettings, fit

    tokenizer = build_tokenizer()
    model = build_model(common.shape(args.shape, 512), tokenizer, seed=0)
    data = load_config(_phase2_data_config())
    clock: list[float] = []
    settings = TrainSettings(
        lr=2e-4, max_steps=args.steps, global_batch_size=16, micro_batch_size=16, warmup_steps=0, log_every=1, seed=0
    )
    clock.append(time.perf_counter())
    fit(model, tokenizer, data.examples, settings=settings, max_length=128, log_fn=lambda _: clock.append(time.perf_counter()))
    steps = [b - a for a, b in zip(clock[1:], clock[2:])]  # the first step (allocations, warm-up) left out
    out = {"threads": torch.get_num_threads(), "step_seconds": common.median(steps), "steps": len(steps)}
    print(json.dumps(out), flush=True)


def _generate_step(args) -> float:
    """Seconds per decoding step: the demo model answers 32 demo prompts, batches of 16, exactly
    --new-tokens tokens each (EOS suppressed: a fixed workload), after one untimed batch."""
    from cft.data.format import render_prompt
    from cft.data.sources import load_config
    from cft.models import build_model, build_tokenizer
    from cft.models.generate import generate

    tokenizer = build_tokenizer()
    model = build_model(common.shape(args.shape, 512), tokenizer, seed=0)
    inner = model.generate
    model.generate = lambda *a, **k: inner(*a, **k, suppress_tokens=[tokenizer.eos_token_id, tokenizer.pad_token_id])
    prompts = [render_prompt(tokenizer, ex) for ex in load_config(_phase2_data_config()).examples[:32]]
    generate(model, tokenizer, prompts[:16], max_new_tokens=args.new_tokens, batch_size=16, progress=False)  # warm-up
    start = time.perf_counter()
    generate(model, tokenizer, prompts, max_new_tokens=args.new_tokens, batch_size=16, progress=False)
    return (time.perf_counter() - start) / (args.new_tokens * len(prompts) / 16)


def _phase2_data_config() -> dict:
    import yaml

    cfg = yaml.safe_load((common.REPO / "conf" / "phase2_data" / "demo.yaml").read_text(encoding="utf-8"))
    cfg.pop("counterpart", None)  # not needed here (and it interpolates)
    return cfg


def start_load(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def measure(group: list[dict], args) -> list[dict]:
    """The measurements of `group`'s variants (the same threads and environment, one of each workload)
    in one fresh child process, in order."""
    variant = group[0]
    env = {
        **os.environ,
        **common.OFFLINE_ENV,
        "OMP_NUM_THREADS": str(variant["threads"]),
        "MKL_NUM_THREADS": str(variant["threads"]),
    }
    env.pop("OMP_WAIT_POLICY", None)
    env.update(variant.get("env", {}))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--steps", str(args.steps), "--shape", args.shape]
    cmd += ["--workload", ",".join(v["workload"] for v in group), "--new-tokens", str(args.new_tokens)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"threads"')]
    if len(results) != len(group):
        raise RuntimeError(f"child printed {len(results)} measurements for {len(group)} workloads:\n{proc.stdout[-3000:]}")
    return results


def groups(order: list[dict], smoke: bool) -> list[list[dict]]:
    """The child processes of a round: one per variant (a fresh process for every measurement), or with
    --smoke one per thread setting, which measures each workload in turn: its figures are no figures, and
    each child costs seconds of imports."""
    if not smoke:
        return [[v] for v in order]
    by_setting: dict[tuple, list[dict]] = {}
    for v in order:
        by_setting.setdefault((v["threads"], tuple(sorted(v.get("env", {}).items()))), []).append(v)
    return list(by_setting.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="smallest setting: tiny shape, 2 steps, 1 round, no added load, no passive variants, one child per thread count",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape", default="demo")
    p.add_argument("--steps", type=int, default=25, help="training steps per measurement (the first is not timed)")
    p.add_argument(
        "--workloads", default="train,generate", help="train: a training step; generate: a decoding step of a batch of 16"
    )
    p.add_argument("--workload", default="train", help=argparse.SUPPRESS)
    p.add_argument("--new-tokens", type=int, default=16, help="new tokens per prompt in the generate workload")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads-list", default="1,2", help="thread counts to compare (1 is the reference)")
    p.add_argument("--loads", default="0,2", help="busy-loop processes started beside the measurement")
    p.add_argument(
        "--passive", action=argparse.BooleanOptionalAction, default=True, help="also N threads with OMP_WAIT_POLICY=passive"
    )
    args = p.parse_args()
    if args.child:
        child(args)
        return
    common.claim_stdout()
    if args.smoke:
        args.shape, args.steps, args.rounds, args.loads, args.new_tokens = "tiny", 2, 1, "0", 4
        args.passive = False  # the passive variants differ only by an environment variable
    counts = [int(x) for x in args.threads_list.split(",") if x]
    loads = [int(x) for x in args.loads.split(",") if x]
    variants = []
    for w in [w for w in args.workloads.split(",") if w]:
        prefix = "" if w == "train" else f"{w}_"
        variants += [{"name": f"{prefix}threads_{n}", "threads": n, "workload": w} for n in counts]
        if args.passive:
            passive = {"OMP_WAIT_POLICY": "passive"}
            variants += [
                {"name": f"{prefix}threads_{n}_passive", "threads": n, "workload": w, "env": passive} for n in counts if n > 1
            ]
    runs: dict[str, dict[str, list[float]]] = {str(load): {v["name"]: [] for v in variants} for load in loads}
    load_seen: dict[str, list[float]] = {str(load): [] for load in loads}
    for r in range(args.rounds):
        for load in loads if r % 2 == 0 else list(reversed(loads)):
            procs = start_load(load)
            try:
                time.sleep(1.0 if load else 0.0)
                order = variants[r % len(variants) :] + variants[: r % len(variants)]
                for group in groups(order, args.smoke):
                    for v, res in zip(group, measure(group, args)):
                        runs[str(load)][v["name"]].append(res["step_seconds"])
                        load_seen[str(load)].append(os.getloadavg()[0])
                        log.info("round %d, %d busy loops, %s: %.1f ms/step", r, load, v["name"], 1000 * res["step_seconds"])
            finally:
                stop_load(procs)
    by_load = {}
    for load, per in runs.items():
        med = {name: common.median(v) for name, v in per.items()}
        ref = {v["name"]: ("" if v["workload"] == "train" else f"{v['workload']}_") + f"threads_{counts[0]}" for v in variants}
        by_load[load] = {
            "step_ms": {name: common.spread(1000 * x for x in v) for name, v in per.items()},
            f"ratio_vs_threads_{counts[0]}": {name: common.ratio(med[name], med[ref[name]]) for name in per},
            "load_avg_1m_seen": common.spread(load_seen[load]),
        }
    figures = {
        "benchmark": "threads",
        "shape": args.shape,
        "steps": args.steps,
        "rounds": args.rounds,
        "busy_loops": by_load,
        "note": "ratio > 1: slower than the reference thread count under the same load",
        "environment": common.environment(),
    }
    common.emit(figures)


if __name__ == "__main__":
    main()
