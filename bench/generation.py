"""Generation for generative replay: tokens/s of cft's batched generator (length-sorted batches,
left padding, KV cache; cft.models.generate.generate) against generating one prompt at a time.

    python bench/generation.py            # demo shape, 64 Alpaca prompts, 3 interleaved rounds
    python bench/generation.py --smoke

The prompts are Alpaca instructions (../shared/data when present, else synthetic ones with its
length spread) rendered with the chat template, as generative replay renders the English
counterpart prompts. The model is randomly initialised, so each
completion is made exactly --max-new-tokens long (EOS suppressed), a fixed workload for both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

log = common.setup_logging()


def fixed_length_generation(model, tokenizer, counter: dict) -> None:
    """Make every completion exactly max_new_tokens long and count the generated tokens.

    A randomly initialised model stops at a random step (often the first: EOS or pad wins the
    argmax), which would make the workload a lottery. Suppressing EOS and pad in the model's own
    generate() gives both methods the same fixed amount of decoding; cft.models.generate is unchanged."""
    inner = model.generate
    banned = [tokenizer.eos_token_id, tokenizer.pad_token_id]

    def generate(*a, **k):
        out = inner(*a, **k, suppress_tokens=banned)
        counter["new_tokens"] += int(out[:, k["input_ids"].shape[1] :].numel())
        return out

    model.generate = generate


def main() -> None:
    common.claim_stdout()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--shape", default="demo")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default="auto", choices=["auto", "alpaca", "synthetic"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--vllm", action="store_true", help="also time vLLM (if installed) on the same prompts")
    common.add_threads_arg(p)
    args = p.parse_args()
    common.apply_threads(args.threads)
    if args.smoke:
        args.shape, args.prompts, args.batch_size, args.max_new_tokens, args.rounds = "tiny", 8, 4, 8, 1

    import torch

    from cft.data.format import render_prompt
    from cft.models import build_model, build_tokenizer
    from cft.models.generate import generate

    tokenizer = build_tokenizer()
    model = build_model(common.shape(args.shape, 1024), tokenizer, seed=0).to(args.device)
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    examples, source = common.instruction_examples(args.prompts, seed=1, source=args.data)
    # Short prompts keep a random model's cost on decoding, as in replay (instructions, not documents).
    prompts = [render_prompt(tokenizer, ex)[:600] for ex in examples]
    prompt_tokens = [len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in prompts]

    counter = {"new_tokens": 0}
    fixed_length_generation(model, tokenizer, counter)
    methods = {
        "batched": lambda: generate(
            model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False
        ),
        "one_at_a_time": lambda: generate(
            model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=1, progress=False
        ),
    }
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    with contextlib.redirect_stdout(sys.stderr):
        generate(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2, progress=False)  # warm-up
        for r in range(args.rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for name in order:
                counter["new_tokens"] = 0
                _, seconds = common.timed(methods[name])
                tokens = counter["new_tokens"]
                runs[name].append({"seconds": seconds, "new_tokens": tokens, "tokens_per_s": tokens / seconds})
                log.info("round %d %s: %.1f new tokens/s (%d tokens, %.2fs)", r, name, tokens / seconds, tokens, seconds)
        vllm = _vllm(args, prompts) if args.vllm else None

    med = {m: common.median(x["tokens_per_s"] for x in runs[m]) for m in methods}
    figures = {
        "benchmark": "generation",
        "data": source,
        "shape": args.shape,
        "prompts": len(prompts),
        "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens),
        "prompt_tokens_max": max(prompt_tokens),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "tokens_per_s": med,
        "tokens_per_s_spread": {m: common.spread(x["tokens_per_s"] for x in runs[m]) for m in methods},
        # the ratio within each round (same load), over rounds
        "ratio_spread": common.spread(
            b["tokens_per_s"] / o["tokens_per_s"] for b, o in zip(runs["batched"], runs["one_at_a_time"])
        ),
        "seconds": {m: common.median(x["seconds"] for x in runs[m]) for m in methods},
        "new_tokens": {m: runs[m][-1]["new_tokens"] for m in methods},
        "ratio_batched_vs_one_at_a_time": common.ratio(med["batched"], med["one_at_a_time"]),
        "environment": common.environment(args.device),
    }
    if vllm is not None:
        figures["vllm"] = vllm
    common.emit(figures)


def _vllm(args, prompts):
    """vLLM on the same prompts, when installed (GPU machines); the model is saved and reloaded by vLLM."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"available": False}
    import tempfile

    from vllm import LLM, SamplingParams

    from cft.models import save_built_model

    with tempfile.TemporaryDirectory() as tmp:
        save_built_model(tmp, common.shape(args.shape, 1024), seed=0)
        llm = LLM(model=tmp, dtype="bfloat16" if args.dtype == "bf16" else "float32")
        params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens)
        outs, seconds = common.timed(lambda: llm.generate(prompts, params))
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"available": True, "tokens_per_s": tokens / seconds, "seconds": seconds, "new_tokens": tokens}


if __name__ == "__main__":
    main()
