"""The whole pipeline on one GPU in one command (issue 22), run by bench/gpu_e2e.sh:

1. a real `train.py -m` sweep: a model built from config at the 1B Llama shape (bench/common.py
   SHAPES["1b"], no download), Phase 1 once (Alpaca subset), then Phase 2 (MultiAlpaca es+ja subset)
   with full, lf_h2, gr5 (replay generated on the GPU) and lora; evaluation through lm-eval's HF
   backend on small local subsets of MMLU, HellaSwag, IFEval and XQuAD (batch size auto); W&B offline;
2. one more cell (full) under DeepSpeed ZeRO-3 bf16, launched as the README tells users:
   `torchrun --nproc_per_node 1 train.py train=deepspeed_zero3 ...`;
3. `analyze.py` on the sweep;
4. ONE table: per cell, each phase's seconds, tokens/s, MFU and peak memory; the evaluation's seconds
   and items/s; the replay generation's new tokens/s (from each cell's metrics.json: train/<phase>/*,
   eval/<phase>/*, strategy/generation/*; cft/run/keys.py names them).

    python bench/gpu_e2e.py --data-dir bench/gpu_data --out OUT            # on the GPU
    python bench/gpu_e2e.py --cpu-smoke --data-dir DIR --out OUT           # the same scripts, tiny shape, CPU

`--data-dir` holds the subsets `subset_data` writes (bench/gpu_prepare.sh makes bench/gpu_data from
the real data, common.DATA_DIR): alpaca/alpaca_5000.json, multialpaca/{es,ja}.jsonl and the benchmarks in
the data folder's layout. The CPU smoke trains in fp32 (the CPU has no bf16 autocast worth timing); its ZeRO-3
cell runs DeepSpeed's CPU accelerator. Everything else is the GPU run's code path.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SWEEP = "gpu-e2e"
STRATEGIES = ("full", "lf_h2", "gr5", "lora")
MMLU_SUBJECTS = ("anatomy", "virology")
XQUAD_LANGUAGES = ("de", "es", "en")
PHASE2_LANGUAGES = ("es", "ja")

# Sizes: the GPU run fits 6 minutes on one H200 with the step benchmark (bench/gpu_e2e.sh); the smoke
# run takes seconds per cell on 2 CPU cores.
SIZES = {
    "gpu": {
        "phase1_examples": 640,
        "phase2_per_language": 240,
        "phase1_steps": 30,
        "phase2_steps": 20,
        "global_batch": 16,
        "micro_batch": 16,
        "max_length": 512,
        "eval_limit": 8,
        "ifeval_tokens": 64,
    },
    "cpu": {
        "phase1_examples": 32,
        "phase2_per_language": 16,
        "phase1_steps": 2,
        "phase2_steps": 2,
        "global_batch": 8,
        "micro_batch": 8,
        "max_length": 128,
        "eval_limit": 1,
        "ifeval_tokens": 4,
    },
}


def subset_data(src: Path, dst: Path, *, phase1: int = 640, phase2_per_language: int = 240, eval_items: int = 32) -> Path:
    """Small copies of the real files the sweep reads, in the real data folder's layout (what travels)."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "alpaca").mkdir(exist_ok=True)
    records = json.loads((src / "alpaca" / "alpaca_5000.json").read_text(encoding="utf-8"))[:phase1]
    (dst / "alpaca" / "alpaca_5000.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")

    def head(rel: str, n: int) -> None:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(src / rel, encoding="utf-8") as f, open(dst / rel, "w", encoding="utf-8") as g:
            for i, line in enumerate(f):
                if i >= n:
                    break
                g.write(line)

    for lang in PHASE2_LANGUAGES:
        head(f"multialpaca/{lang}.jsonl", phase2_per_language)
    head("hellaswag/hellaswag_val_from_klosax.jsonl", eval_items)
    head("ifeval/input_data.jsonl", eval_items)
    for subject in MMLU_SUBJECTS:
        for split in ("test", "dev"):
            head(f"mmlu/{split}/{subject}_{split}.csv", eval_items if split == "test" else 5)
    for lang in XQUAD_LANGUAGES:  # SQuAD JSON: the first article holds more questions than the run asks
        data = json.loads((src / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))
        (dst / "xquad").mkdir(exist_ok=True)
        (dst / "xquad" / f"xquad.{lang}.json").write_text(
            json.dumps({"data": data["data"][:1], "version": data.get("version", "1.0")}, ensure_ascii=False), encoding="utf-8"
        )
    return dst


def overrides(args, size: dict) -> list[str]:
    """The sweep's settings on the command line, as a user would type them."""
    arch = common.shape(args.shape, size["max_length"] * 2)
    data = Path(args.data_dir).resolve()
    precision = "no" if args.cpu_smoke else "bf16"
    return [
        "model=tiny",  # a model built in code; its shape below
        *[f"model.build.{k}={v}" for k, v in arch.items()],
        f"+model.lf_k={max(arch['num_hidden_layers'] // 4, 1)}",  # lf_h2: a quarter of the layers (paper: 10 of 32)
        "phase1_data=alpaca",
        f"phase1_data.path={data / 'alpaca' / 'alpaca_5000.json'}",
        f"phase1_data.max_examples={size['phase1_examples']}",
        "phase2_data=multialpaca",
        f"phase2_data.path={data / 'multialpaca'}",
        f"phase2_data.languages=[{','.join(PHASE2_LANGUAGES)}]",
        f"phase2_data.max_per_language={size['phase2_per_language']}",
        f"phase2_data.counterpart.path={data / 'alpaca' / 'alpaca_5000.json'}",
        f"train.max_steps={size['phase1_steps']}",
        f"train.phase2.max_steps={size['phase2_steps']}",
        f"train.global_batch_size={size['global_batch']}",
        f"train.micro_batch_size={size['micro_batch']}",
        f"train.max_length={size['max_length']}",
        "train.warmup_steps=2",
        f"train.precision={precision}",
        "train.packing=true",
        f"train.sdpa_backend={'auto' if args.cpu_smoke else 'efficient'}",  # the README's GPU settings
        "train.pack_width_multiple=64",
        "train.log_every=10",
        "eval=local",
        f"eval.data_dir={data}",
        f"eval.limit={size['eval_limit']}",
        f"eval.tasks.mmlu.subjects=[{','.join(MMLU_SUBJECTS)}]",
        f"eval.tasks.xquad.languages=[{','.join(XQUAD_LANGUAGES)}]",
        "eval.tasks.alpaca_eval=null",  # needs a judge (not computed anyway)
        f"++eval.tasks.ifeval.gen_kwargs.max_gen_toks={size['ifeval_tokens']}",
        "similarity.layer_changes=false",  # three full state dicts read per cell: time the kit spends elsewhere
        f"sweep_id={SWEEP}",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], log_path: Path, env: dict, timeout: float) -> tuple[float, str | None]:
    """One step of the kit, its output in log_path: (seconds, None) or (seconds, what went wrong). A step that
    fails or runs out of time does not stop the kit: the table reports the cells that finished."""
    start = time.perf_counter()
    error = None
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(cmd, cwd=common.REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=max(timeout, 1))
            if proc.returncode != 0:
                error = f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            error = f"stopped after {timeout:.0f} s (the kit's time budget)"
    seconds = time.perf_counter() - start
    print(f"[gpu_e2e] {' '.join(cmd[:4])} ... -> {error or 'ok'} in {seconds:.0f} s (log: {log_path})", file=sys.stderr)
    if error:
        error += ": " + log_path.read_text(errors="replace")[-3000:]
        print(error, file=sys.stderr)
    return seconds, error


def cell_rows(root: Path, arch: dict, peak_tflops: float | None) -> list[dict]:
    """One row per finished cell: what the table prints (JSON-ready)."""
    from train_throughput import model_flops_per_token

    from cft.run import keys

    n_params = params_of(arch)
    rows = []
    for meta_path in sorted(root.rglob("run_meta.json")):
        folder = meta_path.parent
        if not (folder / "metrics.json").exists():
            continue
        m = json.loads((folder / "metrics.json").read_text())
        choices = json.loads(meta_path.read_text()).get("choices", {})
        row = {
            "cell": f"{choices.get('strategy')} (train={choices.get('train')})",
            "strategy": choices.get("strategy"),
            "train": choices.get("train"),
            "folder": str(folder.relative_to(root)),
        }
        for phase in keys.PHASES:
            seconds, tokens = m.get(keys.train(phase, "seconds")), m.get(keys.train(phase, "tokens"))
            examples = m.get(keys.train(phase, "examples"))
            tps = tokens / seconds if seconds and tokens else None
            mfu = None
            if tps and peak_tflops and examples:
                mfu = tps * model_flops_per_token(arch, n_params, tokens / examples) / (peak_tflops * 1e12)
            row[phase] = {
                "seconds": seconds,
                "tokens_per_s": tps,
                "mfu": mfu,
                "peak_memory_gb": m.get(keys.train(phase, "peak_memory_gb")),
                "eval_seconds": m.get(keys.evaluation(phase, "seconds")),
                "eval_items_per_s": (
                    m[keys.evaluation(phase, "items")] / m[keys.evaluation(phase, "seconds")]
                    if m.get(keys.evaluation(phase, "seconds"))
                    else None
                ),
                "eval_tasks": {
                    k.split("/")[2]: {"seconds": v, "items": m.get(k.replace("/seconds", "/items"))}
                    for k, v in m.items()
                    if k.startswith(keys.evaluation(phase, "")) and k.count("/") == 3 and k.endswith("/seconds")
                },
            }
        row["replay_new_tokens_per_s"] = m.get(keys.strategy("generation/new_tokens_per_second"))
        rows.append(row)
    return rows


def params_of(arch: dict) -> int:
    import torch

    from cft.models import build_model, build_tokenizer, count_parameters

    with torch.device("meta"):
        return count_parameters(build_model(arch, build_tokenizer(), seed=0))["total"]


def table(rows: list[dict]) -> str:
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    head = (
        "| cell | P1 s | P1 tok/s | P1 MFU | P1 peak GB | P1 eval s | P1 eval items/s "
        "| P2 s | P2 tok/s | P2 MFU | P2 peak GB | P2 eval s | P2 eval items/s | replay new tok/s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cols = [r["cell"]]
        for phase in ("phase1", "phase2"):
            p = r[phase]
            cols += [
                f(p["seconds"], ".1f"),
                f(p["tokens_per_s"], ".0f"),
                f(p["mfu"], ".1%"),
                f(p["peak_memory_gb"], ".1f"),
                f(p["eval_seconds"], ".1f"),
                f(p["eval_items_per_s"], ".1f"),
            ]
        cols.append(f(r["replay_new_tokens_per_s"], ".0f"))
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shape on the CPU, fp32, a few steps: the code paths only")
    p.add_argument("--data-dir", required=True, help="the subsets (subset_data / bench/gpu_prepare.sh)")
    p.add_argument("--out", required=True, help="folder for the table (gpu_e2e.md, .json, .csv) and the logs")
    p.add_argument("--work", default=None, help="folder for the sweep's runs and W&B files (default: <out>/sweep)")
    p.add_argument("--shape", default=None, help="bench/common.py SHAPES name (default: 1b on GPU, tiny on CPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="default: the GPU's dense bf16 peak")
    p.add_argument("--skip-zero3", action="store_true", help="leave out the torchrun ZeRO-3 cell")
    p.add_argument("--budget", type=float, default=3600, help="seconds for the kit's commands together (each gets what is left)")
    args = p.parse_args()
    args.shape = args.shape or ("tiny" if args.cpu_smoke else "1b")
    size = SIZES["cpu" if args.cpu_smoke else "gpu"]
    out = Path(args.out).resolve()
    root = Path(args.work).resolve() if args.work else out / "sweep"
    root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **common.OFFLINE_ENV,
        "CFT_OUTPUT_ROOT": str(root),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(root),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CFT_SWEEP_ID", None)
    if args.cpu_smoke:
        env.setdefault("DS_ACCELERATOR", "cpu")
    common_args = overrides(args, size)
    py = sys.executable
    deadline = time.perf_counter() + args.budget
    steps = {"sweep": [py, "train.py", "-m", f"strategy={','.join(STRATEGIES)}", *common_args]}
    if not args.skip_zero3:
        launch = [py, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port())]
        steps["zero3_cell"] = [*launch, "train.py", "strategy=full", "train=deepspeed_zero3", *common_args]
    steps["analyze"] = [py, "analyze.py", f"sweep_id={SWEEP}"]
    # Each later step keeps a share of the budget, so a slow sweep still leaves the ZeRO-3 cell and the analysis.
    reserve = {"sweep": 0.0, "zero3_cell": 0.3 * args.budget, "analyze": 0.08 * args.budget}
    seconds, errors = {}, {}
    for i, (name, cmd) in enumerate(steps.items()):
        later = sum(reserve[n] for n in list(steps)[i + 1 :])
        seconds[name], error = run(cmd, out / f"{name}.log", env, deadline - time.perf_counter() - later)
        if error:
            errors[name] = error

    import torch
    from train_throughput import PEAK_TFLOPS

    peak = args.peak_tflops
    if peak is None and torch.cuda.is_available():
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(0)), None)
    arch = common.shape(args.shape, size["max_length"] * 2)
    rows = cell_rows(root / SWEEP, arch, peak)
    analysis = root / SWEEP / "analysis"
    figures = {
        "benchmark": "gpu_e2e",
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "shape": args.shape,
        "parameters": params_of(arch),
        "sizes": size,
        "peak_tflops_assumed": peak,
        "command_seconds": seconds,
        "errors": errors,
        "analysis_files": sorted(str(p.relative_to(analysis)) for p in analysis.rglob("*") if p.is_file())
        if analysis.exists()
        else [],
        "cells": rows,
        "environment": common.environment("cuda" if torch.cuda.is_available() else "cpu"),
    }
    text = table(rows)
    (out / "gpu_e2e.json").write_text(json.dumps(common.rnd(figures), indent=2) + "\n")
    (out / "gpu_e2e.md").write_text(text + "\n")
    print(text)
    with open(out / "gpu_e2e.csv", "w", newline="") as f:  # the same table, for a spreadsheet
        w = csv.writer(f)
        w.writerow(["cell", "phase", "seconds", "tokens_per_s", "mfu", "peak_memory_gb", "eval_seconds", "eval_items_per_s"])
        for r in rows:
            for phase in ("phase1", "phase2"):
                q = r[phase]
                w.writerow(
                    [
                        r["cell"],
                        phase,
                        q["seconds"],
                        q["tokens_per_s"],
                        q["mfu"],
                        q["peak_memory_gb"],
                        q["eval_seconds"],
                        q["eval_items_per_s"],
                    ]
                )
    if errors:
        raise SystemExit(f"[gpu_e2e] {len(errors)} step(s) failed: {', '.join(errors)} (the table holds what finished)")


if __name__ == "__main__":
    main()
