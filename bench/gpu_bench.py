"""GPU figures (issue 17), run by bench/gpu.sh on one H100 / H200 in under 10 minutes:

1. bf16 full fine-tuning of a 1B-parameter Llama-shaped model built from config (bench/common.py
   SHAPES["1b"], no download) through cft's loop (cft.training.loop.fit): padded and packed,
   with sdpa attention and, where the liger-kernel wheel was carried, Liger's fused kernels
   (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy); tokens/s per GPU and MFU;
2. the same step under DeepSpeed ZeRO-2 on the one GPU (conf/train/deepspeed_zero2.yaml's block);
3. batched generation for generative replay against one prompt at a time (bench/generation.py);
4. with --levers, each throughput lever of the train settings on its own against packed sdpa, then all
   of them together (levers() below: the SDPA backend, packed widths rounded to 64, fused AdamW, the loss
   read every step as before, a token budget per micro-batch, train.compile, train.liger), with each
   variant's median and max step; and bench/generation.py --levers (each replay generation lever).

    python bench/gpu_bench.py --out gpu.json          # on the GPU (bench/gpu.sh does this)
    python bench/gpu_bench.py --cpu-smoke --out x.json  # the same code paths on the CPU, tiny shape, seconds

Each training variant runs --warmup untimed steps, then --steps timed ones (time per step from the
loop's per-step log call; the loop reads the loss every step, so the GPU is synchronised there);
variants run interleaved for --rounds rounds; figures are medians with min/max. The data is
synthetic instruction records with Alpaca's length spread (the real subset does not travel to the
device machine). It imports nothing that the device image lacks beyond the carried wheels; the JSON
lists any such module it found imported (`modules_not_on_device`, expected empty).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

log = common.setup_logging()

# On the device image (KINDS.md) these are missing and not carried: the GPU run must not need them.
NOT_ON_DEVICE = {"hydra", "omegaconf", "antlr4", "wandb", "datasets", "lm_eval", "gguf", "langdetect", "immutabledict"}
ANCHORS = {
    "torchtitan_llama3_8b_h100_mfu": "33% to 39% (torchtitan, Llama-3.1-8B pre-training, bf16, FSDP, H100)",
    "nemo_packed_sft": "NeMo's packed-sequence SFT guide: packing removes padding and raises throughput several-fold on "
    "instruction data with a wide length spread (its own figures per model and GPU)",
}


def liger_status() -> tuple[bool, str]:
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception as exc:  # not carried, or no triton / GPU
        return False, f"not available: {type(exc).__name__}: {exc}"
    return True, "available"


def build(arch, tokenizer, device: str, kernels: str):
    """The 1B model, made directly on the device (no CPU copy of 1B parameters), fp32 master weights."""
    import torch

    from cft.models import build_model

    with torch.device(device):
        model = build_model(arch, tokenizer, seed=0)
    model.set_attn_implementation("sdpa")
    if kernels == "liger":
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    return model


def _numbers(obj):
    """YAML 1.1 (PyYAML) reads 2.0e8 as a string, where Hydra's YAML reads a number: read it as Hydra does
    (omegaconf is not on the device machine)."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    if isinstance(obj, str):
        try:
            value = float(obj)
        except ValueError:
            return obj
        return int(value) if value.is_integer() else value
    return obj


# Levers the CPU smoke leaves out: Liger's kernels are Triton (CUDA only; the loop refuses them on a CPU), and
# inductor compiles the tiny model for over a minute per graph on 2 CPU cores (tests/test_gpu_kit.py checks
# train.compile's path with the aot_eager backend instead).
NOT_ON_CPU = ("lever_compile", "lever_liger")


def levers(cpu: bool, liger: bool = True) -> dict[str, dict]:
    """Each lever of cft's train settings on its own (name -> TrainSettings fields), then all that pay together.
    On the CPU the memory-efficient SDPA backend does not exist: math stands in for it (the code path).
    `lever_compile`'s time includes compiling (in its warm-up steps, and again for each shape it has not seen:
    the first-pass cost a real run pays too); `lever_liger` runs where the liger-kernel wheel was carried."""
    sdpa = "math" if cpu else "efficient"
    out = {
        "lever_liger": {"liger": True},  # early: the kit's last variants are the ones its time limit may cut
        "lever_sdpa_" + sdpa: {"sdpa_backend": sdpa},
        "lever_width64": {"pack_width_multiple": 64},
        "lever_fused_adamw": {"adamw": "fused"},
        "lever_foreach_adamw": {"adamw": "foreach"},
        "lever_sync_every_step": {"sync_every_step": True},
        "lever_token_budget": {"tokens_per_micro_batch": 8192},
        "lever_compile": {"compile": True},
        "levers_recommended": {"sdpa_backend": sdpa, "pack_width_multiple": 64, "adamw": "fused"},
    }
    return {k: v for k, v in out.items() if not (cpu and k in NOT_ON_CPU) and (liger or k != "lever_liger")}


def train_variant(
    args, arch, tokenizer, examples, *, packing: bool, kernels: str, zero2: bool, lever: dict | None = None
) -> dict:
    import torch

    from cft.data.format import tokenize_examples
    from cft.training.loop import TrainSettings, fit

    model = build(arch, tokenizer, args.device, kernels)
    ds = None
    if zero2:
        import yaml

        ds = _numbers(yaml.safe_load((common.REPO / "conf" / "train" / "deepspeed_zero2.yaml").read_text())["deepspeed"])
    settings = TrainSettings(
        lr=1e-5,
        max_steps=args.warmup + args.steps,
        global_batch_size=args.micro_batch_size,
        micro_batch_size=args.micro_batch_size,
        warmup_steps=0,
        scheduler="constant",
        precision=args.precision,
        deepspeed=ds,
        log_every=1,
        seed=0,
        **(lever or {}),
    )
    clock: list[float] = []
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        fit(
            model,
            tokenizer,
            examples,
            settings=settings,
            max_length=args.max_length,
            packing=packing,
            phase="gpu",
            log_fn=lambda _: clock.append(time.perf_counter()),
        )
    wall = time.perf_counter() - start
    tokenized, _ = tokenize_examples(tokenizer, examples, args.max_length)
    lengths = [len(t["input_ids"]) for t in tokenized]
    batches = common.loop_batches(len(tokenized), args.micro_batch_size)
    timed = batches[args.warmup : args.warmup + args.steps]
    tokens = sum(lengths[i] for b in timed for i in b)
    seconds = clock[-1] - clock[args.warmup - 1] if args.warmup >= 1 else clock[-1] - start
    steps_ms = [1000 * (b - a) for a, b in zip(clock[args.warmup - 1 : -1], clock[args.warmup :])] if args.warmup >= 1 else []
    out = {
        "tokens_per_s": tokens / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "step_ms_median": common.median(steps_ms) if steps_ms else None,
        "step_ms_max": max(steps_ms) if steps_ms else None,
        "wall_seconds": wall,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
    }
    del model
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def generation(args) -> dict:
    """bench/generation.py in a child process (its own JSON), on the same device and shape."""
    cmd = [sys.executable, str(common.REPO / "bench" / "generation.py")]
    cmd += ["--smoke"] if args.cpu_smoke else ["--device", args.device, "--dtype", "bf16", "--shape", args.shape]
    cmd += [] if args.cpu_smoke else ["--prompts", "64", "--batch-size", "16", "--max-new-tokens", "64", "--rounds", "2"]
    cmd += ["--levers"] if args.levers else []  # each generation lever against one prompt at a time too
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env={**os.environ, **common.OFFLINE_ENV})
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _partial(path: str, obj: dict) -> None:
    """Write what there is so far: a run cut off at its time limit still leaves its figures."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(common.rnd(obj), indent=2) + "\n")


def main() -> None:
    common.claim_stdout()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shape on the CPU, fp32, 2 steps: the code paths only")
    p.add_argument("--out", required=True, help="where the JSON goes (also printed)")
    p.add_argument("--shape", default="1b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16", help="the loop's precision: bf16 autocast, fp32 master weights")
    p.add_argument("--examples", type=int, default=2048)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="default: the GPU's dense bf16 peak (train_throughput.PEAK_TFLOPS)"
    )
    p.add_argument("--skip", default="", help="comma-separated parts to skip: zero2, liger, generation")
    p.add_argument("--levers", action="store_true", help="also each train-settings lever on its own (packed sdpa + one)")
    common.add_threads_arg(p)
    args = p.parse_args()
    if args.cpu_smoke:
        args.shape, args.device, args.precision = "tiny", "cpu", "no"
        args.examples, args.max_length, args.micro_batch_size, args.warmup, args.steps, args.rounds = 64, 256, 4, 1, 2, 1
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    common.apply_threads(args.threads)
    # DeepSpeed in one process: the rank variables it reads (ENVIRONMENT.md: without them it asks for mpi4py)
    # a free port, not a fixed one: a second run on the machine (a test, another bench) would hold it
    port = str(_free_port())
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}.items():
        os.environ.setdefault(k, v)
    skip = {s for s in args.skip.split(",") if s}

    import torch
    import transformers
    from train_throughput import PEAK_TFLOPS, utilization

    from cft.models import build_tokenizer, count_parameters

    transformers.logging.set_verbosity_error()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or pass --cpu-smoke")
    tokenizer = build_tokenizer()
    arch = common.shape(args.shape, args.max_length)
    examples, source = common.instruction_examples(args.examples, source="synthetic")
    with torch.device("meta"):
        from cft.models import build_model

        n_params = count_parameters(build_model(arch, tokenizer, seed=0))["total"]
    liger_ok, liger_note = liger_status()
    # With --levers, Liger is the train.liger lever (packed, through the loop's setting), not two more variants.
    kernels = ["sdpa"] + (["liger"] if liger_ok and "liger" not in skip and not args.levers else [])
    variants = [
        {"name": f"{'packed' if packing else 'padded'}_{k}", "packing": packing, "kernels": k, "zero2": False}
        for k in kernels
        for packing in (False, True)
    ]
    zero2_note = "skipped"
    if "zero2" not in skip:
        try:
            import deepspeed  # noqa: F401

            variants += [{"name": "packed_sdpa_zero2", "packing": True, "kernels": "sdpa", "zero2": True}]
            zero2_note = "run"
        except Exception as exc:
            zero2_note = f"not available: {type(exc).__name__}: {exc}"
    if args.levers:
        variants += [
            {"name": name, "packing": True, "kernels": "sdpa", "zero2": False, "lever": lever}
            for name, lever in levers(args.device == "cpu", liger=liger_ok and "liger" not in skip).items()
        ]
    runs: dict[str, list[dict]] = {v["name"]: [] for v in variants}
    errors: dict[str, str] = {}
    for r in range(args.rounds):
        for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
            if v["name"] in errors:
                continue
            try:
                res = train_variant(
                    args,
                    arch,
                    tokenizer,
                    examples,
                    packing=v["packing"],
                    kernels=v["kernels"],
                    zero2=v["zero2"],
                    lever=v.get("lever"),
                )
            except Exception as exc:  # a path never run on this device kind: keep the other figures
                errors[v["name"]] = f"{type(exc).__name__}: {exc}"[:2000]
                log.exception("%s failed", v["name"])
                gc.collect()
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            runs[v["name"]].append(res)
            log.info("round %d %s: %.0f tokens/s, %.1f ms/step", r, v["name"], res["tokens_per_s"], res["step_ms"])
            _partial(args.out, {"partial": True, "runs": runs, "errors": errors})
    runs = {name: xs for name, xs in runs.items() if xs}
    med = {name: common.median(x["tokens_per_s"] for x in xs) for name, xs in runs.items()}
    peak = args.peak_tflops
    if peak is None and args.device.startswith("cuda"):
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(0)), None)
    from cft.data.format import tokenize_examples

    lengths = [len(t["input_ids"]) for t in tokenize_examples(tokenizer, examples, args.max_length)[0]]
    train = {
        "shape": args.shape,
        "parameters": n_params,
        "precision": args.precision,
        "micro_batch_size": args.micro_batch_size,
        "max_length": args.max_length,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "tokens_per_s": {name: common.spread(x["tokens_per_s"] for x in xs) for name, xs in runs.items()},
        "step_ms": {name: common.spread(x["step_ms"] for x in xs) for name, xs in runs.items()},
        "peak_memory_gb": {name: xs[-1]["peak_memory_gb"] for name, xs in runs.items()},
        "step_ms_median_max": {name: [xs[-1]["step_ms_median"], xs[-1]["step_ms_max"]] for name, xs in runs.items()},
        "levers": {v["name"]: v["lever"] for v in variants if v.get("lever")},
        "liger": liger_note,
        "zero2": zero2_note,
        "errors": errors,
        **utilization(arch, n_params, lengths, med, peak),
    }
    if "packed_sdpa" in med:
        train["ratio_vs_packed_sdpa"] = {
            name: common.ratio(t, med["packed_sdpa"]) for name, t in med.items() if name.startswith("lever")
        }
    if "padded_sdpa" in med and "packed_sdpa" in med:
        train["ratio_packed_vs_padded_sdpa"] = common.ratio(med["packed_sdpa"], med["padded_sdpa"])
    figures = {
        "benchmark": "gpu",
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "data": source,
        "train": train,
        "generation": "skipped",
        "anchors": ANCHORS,
        "environment": common.environment(args.device),
    }
    _partial(args.out, figures)  # the training figures, before generation runs
    if "generation" not in skip:
        figures["generation"] = generation(args)
    figures["modules_not_on_device"] = sorted({m.split(".")[0] for m in sys.modules} & NOT_ON_DEVICE)
    _partial(args.out, figures)
    common.emit(figures)


if __name__ == "__main__":
    main()
