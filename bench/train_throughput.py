"""Training throughput: tokens/s of the cft loop (padded and packed) against a plain transformers
Trainer that pads each micro-batch to its longest example, on the same model, data and settings.

    python bench/train_throughput.py                       # demo and ~100M shapes, CPU
    python bench/train_throughput.py --smoke               # seconds
    python bench/train_throughput.py --device cuda --dtype bf16 --shapes 1b --steps 30   # GPU, with MFU

Tokens are real (non-padding) tokens; time is the training loop only (after set-up), the same
window for both frameworks. Variants run interleaved for --rounds rounds and each figure is the
median over rounds, so the ratios are measured under the same load. The data is the Alpaca
subset in the real data (common.DATA_DIR) when present, else synthetic records with Alpaca's length spread.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

log = common.setup_logging()

# Peak dense bf16 TFLOPS of known GPUs (spec sheets, no sparsity), for model FLOPs utilization.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}

VARIANTS = ("hf_padded", "cft_padded", "cft_packed")


def model_flops_per_token(arch: dict, n_params: int, mean_context: float) -> float:
    """Training FLOPs per token: 6 x parameters (forward + backward matmuls) plus the attention
    scores, 12 x layers x hidden x context (PaLM appendix B convention, causal halving ignored)."""
    return 6 * n_params + 12 * arch["num_hidden_layers"] * arch["hidden_size"] * mean_context


def utilization(arch: dict, n_params: int, lengths: list[int], tokens_per_s: dict[str, float], peak_tflops: float | None) -> dict:
    """Model FLOPs utilization of each variant: useful FLOPs per second (real tokens x FLOPs per
    token at each example's own length, so padding earns nothing) over the accelerator's peak."""
    fpt = model_flops_per_token(arch, n_params, sum(lengths) / len(lengths))
    return {
        "flops_per_token": fpt,
        "tokens_per_s_per_device": dict(tokens_per_s),
        "peak_tflops_assumed": peak_tflops,
        "mfu": {v: (t * fpt / (peak_tflops * 1e12) if peak_tflops else None) for v, t in tokens_per_s.items()},
    }


def build(arch, tokenizer, dtype, device, attn="sdpa"):
    import torch

    from cft.models import build_model

    model = build_model(arch, tokenizer, seed=0)
    model.set_attn_implementation(attn)
    if dtype == "bf16" and device == "cpu":
        model = model.to(torch.bfloat16)  # pure bf16 on CPU; on GPU bf16 is autocast (fp32 master weights)
    return model


def run_cft(model, tokenizer, examples, tokenized, *, packing, args, steps, micro):
    from cft.training.loop import TrainSettings, fit

    settings = TrainSettings(
        lr=args.lr,
        max_steps=steps,
        global_batch_size=micro,
        micro_batch_size=micro,
        warmup_steps=0,
        scheduler="constant",
        max_grad_norm=1.0,
        precision="bf16" if (args.dtype == "bf16" and args.device != "cpu") else "no",
        log_every=1,
        seed=0,
    )
    cpu: list[float] = []
    _, stats, _ = fit(
        model,
        tokenizer,
        examples,
        settings=settings,
        max_length=args.max_length,
        phase="bench",
        packing=packing,
        log_fn=lambda _: cpu.append(time.process_time()),
    )

    lengths = [len(t["input_ids"]) for t in tokenized]
    later = common.loop_batches(len(tokenized), micro, steps, first=1)  # steps 2..n: the CPU window
    return {
        "tokens": stats.tokens,
        "seconds": stats.seconds,
        "cpu_tokens": sum(lengths[i] for b in later for i in b),
        "cpu_seconds": cpu[-1] - cpu[0] if len(cpu) > 1 else float("nan"),
        "examples": stats.examples,
        "steps": stats.steps,
        "padding_fraction": _padding(model, tokenized, micro, steps, packing),
        "final_loss": stats.final_loss,
    }


def _padding(model, tokenized, micro, steps, packing) -> float:
    """Padding share of the micro-batches the loop trained on (its epoch-0 order, one per step)."""
    from cft.data.packing import padding_fraction, uses_varlen_attention

    batches = common.loop_batches(len(tokenized), micro, steps)
    return padding_fraction(
        [len(t["input_ids"]) for t in tokenized], batches, packed=packing, single_row=uses_varlen_attention(model)
    )


def run_hf(model, tokenizer, tokenized, *, args, steps, micro):
    """A plain transformers Trainer: DataCollatorForSeq2Seq padding to the longest in the batch."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    # Per collated batch: accelerate's data loader fetches one batch ahead, so only the first
    # `steps` batches (sequential order, no accumulation) are the ones trained on.
    collated: list[tuple[int, int, int]] = []
    pad = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt")

    def collate(features):
        batch = pad([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        collated.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel(), len(features)))
        return batch

    window = {}
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            window["start"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            cpu.append(time.process_time())

        def on_train_end(self, *a, **k):
            window["end"] = time.perf_counter()

    # The same micro-batches as the cft loop (its epoch-0 order), read sequentially.

    ordered = [tokenized[i] for b in common.loop_batches(len(tokenized), micro) for i in b]
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=1,
            max_steps=steps,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            adam_beta1=0.9,
            adam_beta2=0.999,
            adam_epsilon=1e-8,
            max_grad_norm=1.0,
            optim="adamw_torch",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=0,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            train_sampling_strategy="sequential",
            use_cpu=args.device == "cpu",
            bf16=args.dtype == "bf16" and args.device != "cpu",
        )
        trainer = Trainer(model=model, args=targs, train_dataset=ordered, data_collator=collate, callbacks=[Clock()])
        result = trainer.train()
    real, slots, examples = (sum(c[k] for c in collated[:steps]) for k in range(3))
    return {
        "tokens": real,
        "seconds": window["end"] - window["start"],
        "cpu_tokens": sum(c[0] for c in collated[1:steps]),
        "cpu_seconds": cpu[-1] - cpu[0] if len(cpu) > 1 else float("nan"),
        "examples": examples,
        "steps": steps,
        "padding_fraction": 1 - real / slots,
        "final_loss": result.training_loss,
    }


def measure_shape(name: str, args, tokenizer, examples) -> dict:
    import torch

    from cft.data.format import tokenize_examples
    from cft.models import count_parameters

    arch = common.shape(name, max_positions=max(args.max_length, 256))
    steps, micro, rounds = args.steps, args.micro_batch_size, args.rounds
    if name in ("100m", "1b") and args.device == "cpu":
        steps, micro, rounds = args.large_steps, args.large_micro_batch_size, min(args.rounds, args.large_rounds)
    tokenized, tok_stats = tokenize_examples(tokenizer, examples, args.max_length)
    n_params = None
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    # One untimed warm-up step per framework: first-call costs (thread pools, allocator) hit no variant.
    for variant in args.variants[:2]:
        model = build(arch, tokenizer, args.dtype, args.device, args.attn_implementation)
        _one(variant, model, tokenizer, examples, tokenized, args, 1, micro)
    for r in range(rounds):
        order = list(args.variants[r % len(args.variants) :]) + list(args.variants[: r % len(args.variants)])
        for variant in order:
            model = build(arch, tokenizer, args.dtype, args.device, args.attn_implementation)
            n_params = count_parameters(model)["total"]
            res = _one(variant, model, tokenizer, examples, tokenized, args, steps, micro)
            res["tokens_per_s"] = res["tokens"] / res["seconds"]
            # tokens per CPU second of this process, steps 2..n: with one torch thread, the work done,
            # which other processes' load hardly moves (the wall-time figure is the one a user sees)
            res["tokens_per_cpu_s"] = res["cpu_tokens"] / res["cpu_seconds"] if res["cpu_seconds"] > 0 else float("nan")
            runs[variant].append(res)
            log.info(
                "%s round %d %s: %.0f tokens/s (%d tokens, %.2fs, padding %.1f%%)",
                name,
                r,
                variant,
                res["tokens_per_s"],
                res["tokens"],
                res["seconds"],
                100 * res["padding_fraction"],
            )
            del model
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    med = {v: common.median(x["tokens_per_s"] for x in runs[v]) for v in args.variants}
    out = {
        "parameters": n_params,
        "architecture": arch,
        "steps": steps,
        "micro_batch_size": micro,
        "rounds": rounds,
        "examples_truncated_share": tok_stats.truncated / max(tok_stats.total, 1),
        "tokens_per_s": med,
        "tokens_per_s_all_rounds": {v: [x["tokens_per_s"] for x in runs[v]] for v in args.variants},
        "tokens_per_s_spread": {v: common.spread(x["tokens_per_s"] for x in runs[v]) for v in args.variants},
        "tokens_per_cpu_s_spread": {v: common.spread(x["tokens_per_cpu_s"] for x in runs[v]) for v in args.variants},
        "padding_fraction": {v: common.median(x["padding_fraction"] for x in runs[v]) for v in args.variants},
        # cft: the loss of the last step; Trainer: its mean over the steps (a sanity check, not a figure)
        "loss": {v: runs[v][-1]["final_loss"] for v in args.variants},
    }
    # Rows per micro-batch, padded (one per example) and packed: packing only pays where it merges rows.
    # Two micro-batches of 4 examples of similar length (the old 100m default) merged none: the same
    # padding share packed and padded, and no speed-up (issue 17's 0.90x).
    from cft.data.packing import pack_rows

    lengths = [len(t["input_ids"]) for t in tokenized]
    batches = common.loop_batches(len(tokenized), micro, steps)
    packed_rows = [len(pack_rows([lengths[i] for i in b], max(lengths[i] for i in b))) for b in batches]
    out["rows_per_micro_batch"] = {"padded": micro, "packed": sum(packed_rows) / len(packed_rows)}
    if sum(packed_rows) == micro * len(batches):
        out["warning"] = (
            f"packing merged no rows in these {len(batches)} micro-batches of {micro}: raise the steps or the "
            "micro-batch size, or the figure measures packing's overhead only"
        )
        log.warning("%s: %s", name, out["warning"])
    out["ratio_spread"] = {}
    for v in args.variants:
        if v != "hf_padded" and "hf_padded" in runs:
            # within each round (same load), over rounds
            out["ratio_spread"][f"{v}_vs_hf_padded"] = common.spread(
                a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs[v], runs["hf_padded"])
            )
    out["cpu_ratio_spread"] = {
        f"{v}_vs_hf_padded": common.spread(
            a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"] for a, b in zip(runs[v], runs["hf_padded"])
        )
        for v in args.variants
        if v != "hf_padded" and "hf_padded" in runs
    }
    if "cft_packed" in runs and "cft_padded" in runs:
        out["ratio_spread"]["cft_packed_vs_cft_padded"] = common.spread(
            a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["cft_packed"], runs["cft_padded"])
        )
    ratios = {}
    if "hf_padded" in med:
        for v in args.variants:
            if v != "hf_padded":
                ratios[f"{v}_vs_hf_padded"] = common.ratio(med[v], med["hf_padded"])
    if "cft_packed" in med and "cft_padded" in med:
        ratios["cft_packed_vs_cft_padded"] = common.ratio(med["cft_packed"], med["cft_padded"])
    out["ratios"] = ratios
    peak = args.peak_tflops
    if peak is None and args.device.startswith("cuda"):
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(0)), None)
    if args.device.startswith("cuda") or args.peak_tflops:
        out.update(utilization(arch, n_params, [len(t["input_ids"]) for t in tokenized], med, peak))
    return out


def _one(variant, model, tokenizer, examples, tokenized, args, steps, micro):
    if args.device != "cpu":
        model = model.to(args.device)
    if variant == "hf_padded":
        return run_hf(model, tokenizer, tokenized, args=args, steps=steps, micro=micro)
    return run_cft(model, tokenizer, examples, tokenized, packing=variant == "cft_packed", args=args, steps=steps, micro=micro)


def main() -> None:
    common.claim_stdout()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="smallest setting (seconds): tiny shape, 2 steps, 1 round")
    p.add_argument("--shapes", default="demo,100m", help="comma-separated model shapes from bench/common.py SHAPES")
    p.add_argument("--data", default="auto", choices=["auto", "alpaca", "synthetic"])
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument(
        "--max-length",
        type=int,
        default=1024,
        help="tokens (bytes with the byte-level tokenizer); 1024 truncates 2.7%% of Alpaca, 512 truncates "
        "24%% and so narrows its length spread",
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--micro-batch-size", type=int, default=8)
    # 100m on the CPU: 3 steps of 8 examples, 2 rounds. Fewer or smaller micro-batches (the old default,
    # 2 steps of 4) can hold no two examples that fit in one row, and then packing has nothing to do.
    p.add_argument("--large-steps", type=int, default=3, help="steps for the 100m/1b shapes on the CPU")
    p.add_argument("--large-micro-batch-size", type=int, default=8)
    p.add_argument("--large-rounds", type=int, default=2, help="rounds for the 100m/1b shapes on the CPU")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--attn-implementation",
        default="sdpa",
        help="sdpa (packed rows as wide as the longest example) or, on a GPU with flash-attn installed, "
        "flash_attention_2 (one row per micro-batch, variable-length kernel)",
    )
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the accelerator's peak for MFU (default: known GPUs; given on the CPU, MFU is reported there too)",
    )
    common.add_threads_arg(p)
    args = p.parse_args()
    common.apply_threads(args.threads)
    if args.smoke:
        args.shapes, args.examples, args.steps, args.rounds, args.max_length, args.micro_batch_size = "tiny", 64, 2, 1, 256, 4
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")

    import transformers

    from cft.models import build_tokenizer

    transformers.logging.set_verbosity_error()
    tokenizer = build_tokenizer()
    examples, source = common.instruction_examples(args.examples, source=args.data)
    shapes = {}
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its metrics; stdout is for the JSON
        for name in [s for s in args.shapes.split(",") if s]:
            shapes[name] = measure_shape(name, args, tokenizer, examples)
    figures = {
        "benchmark": "train_throughput",
        "data": source,
        "examples": len(examples),
        "max_length": args.max_length,
        "dtype": args.dtype,
        "attn_implementation": args.attn_implementation,
        "rounds": args.rounds,
        "shapes": shapes,
        "target_packing_vs_hf_padded": 1.5,
        "environment": common.environment(args.device),
    }
    figures["environment"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    common.emit(figures)


if __name__ == "__main__":
    main()
