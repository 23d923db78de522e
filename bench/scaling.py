"""Scaling: how the cft loop's training time grows with dataset size (3 sizes, one model shape)
and with model size (3 shapes, one dataset), as a small table.

    python bench/scaling.py            # sizes 64/128/256 examples on the demo shape; demo/small/medium shapes
    python bench/scaling.py --smoke

Each setting trains one epoch with cft.training.loop.fit (padded micro-batches, fp32, CPU by default) from
a fresh model; the time is the loop's own (TrainStats.seconds). Settings run interleaved for
--rounds rounds and each time is the median. Linear cost shows as a `time_ratio` close to the
`size_ratio` (data) or the `flops_ratio` (model: parameters x tokens, relative to the smallest).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

log = common.setup_logging()


def train_once(shape_name, examples, args, tokenizer) -> dict:
    from cft.models import build_model, count_parameters
    from cft.training.loop import TrainSettings, fit

    model = build_model(common.shape(shape_name, max(args.max_length, 256)), tokenizer, seed=0).to(args.device)
    settings = TrainSettings(
        lr=1e-4,
        epochs=1,
        global_batch_size=args.batch_size,
        micro_batch_size=args.batch_size,
        scheduler="constant",
        log_every=10**9,
        seed=0,
    )
    _, stats, _ = fit(model, tokenizer, examples, settings=settings, max_length=args.max_length, phase="scaling")
    return {
        "seconds": stats.seconds,
        "tokens": stats.tokens,
        "steps": stats.steps,
        "parameters": count_parameters(model)["total"],
    }


def main() -> None:
    common.claim_stdout()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--sizes", default="64,128,256", help="dataset sizes (examples), on --data-shape")
    p.add_argument("--data-shape", default="demo")
    p.add_argument("--shapes", default="demo,small,medium", help="model shapes, on --model-examples examples")
    p.add_argument("--model-examples", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data", default="auto", choices=["auto", "alpaca", "synthetic"])
    p.add_argument("--device", default="cpu")
    common.add_threads_arg(p)
    args = p.parse_args()
    common.apply_threads(args.threads)
    if args.smoke:
        args.sizes, args.data_shape, args.shapes, args.model_examples, args.max_length, args.batch_size, args.rounds = (
            "16,32,64",
            "tiny",
            "tiny,demo",
            16,
            128,
            8,
            1,
        )

    import transformers

    from cft.models import build_tokenizer

    transformers.logging.set_verbosity_error()
    tokenizer = build_tokenizer()
    sizes = [int(s) for s in args.sizes.split(",")]
    shapes = [s for s in args.shapes.split(",") if s]
    pool, source = common.instruction_examples(max(sizes + [args.model_examples]), source=args.data)
    settings = [("data", n, args.data_shape) for n in sizes] + [("model", args.model_examples, s) for s in shapes]
    runs: dict[tuple, list[dict]] = {s: [] for s in settings}
    with contextlib.redirect_stdout(sys.stderr):
        train_once(args.data_shape, pool[: args.batch_size * 2], args, tokenizer)  # warm-up
        for r in range(args.rounds):
            order = settings if r % 2 == 0 else list(reversed(settings))
            for setting in order:
                axis, n, shape_name = setting
                res = train_once(shape_name, pool[:n], args, tokenizer)
                runs[setting].append(res)
                log.info("round %d %s: %d examples, %s: %.2fs (%d tokens)", r, axis, n, shape_name, res["seconds"], res["tokens"])

    def row(setting):
        xs = runs[setting]
        return {
            "examples": setting[1],
            "shape": setting[2],
            "parameters": xs[0]["parameters"],
            "tokens": xs[0]["tokens"],
            "steps": xs[0]["steps"],
            "seconds": common.median(x["seconds"] for x in xs),
            "seconds_spread": common.spread(x["seconds"] for x in xs),
        }

    data_rows = [row(s) for s in settings if s[0] == "data"]
    model_rows = [row(s) for s in settings if s[0] == "model"]
    for rows, work in ((data_rows, lambda r: r["tokens"]), (model_rows, lambda r: r["parameters"] * r["tokens"])):
        first = rows[0]
        for r in rows:
            r["time_ratio"] = common.ratio(r["seconds"], first["seconds"])
            r["size_ratio" if rows is data_rows else "flops_ratio"] = common.ratio(work(r), work(first))
    common.emit(
        {
            "benchmark": "scaling",
            "data": source,
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "dataset_size": data_rows,
            "model_size": model_rows,
            "environment": common.environment(args.device),
        }
    )


if __name__ == "__main__":
    main()
