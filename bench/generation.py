"""Generation for generative replay: tokens/s of cft's batched generator (length-sorted batches,
left padding, KV cache; cft.models.generate.generate) against generating one prompt at a time.

    python bench/generation.py            # demo shape, 64 Alpaca prompts, 3 interleaved rounds
    python bench/generation.py --smoke
    python bench/generation.py --levers   # also each lever of cft.models.generate on its own (LEVERS below)

With --levers, each of generate()'s throughput levers (the gr5/gr10 options) is timed on its own against one
prompt at a time: 4x the batch size, prompts left unsorted (what sorting by length saves), the static KV
cache with prompt widths rounded to 64, and (on CUDA only: it compiles there only) the static cache with
transformers' compiled decoding step; `ratio_vs_one_at_a_time` gives each one's ratio. --out writes the JSON
after every method too, so a run stopped at its time limit still leaves what it measured.

The prompts are Alpaca instructions (the real data, common.DATA_DIR, when present, else synthetic ones with its
length spread) rendered with the chat template, as generative replay renders the English
counterpart prompts. The model is randomly initialised, so each
completion is made exactly --max-new-tokens long (EOS suppressed), a fixed workload for both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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


def levers(batch_size: int, on_cuda: bool) -> dict[str, dict]:
    """Each lever of cft.models.generate on its own (name -> generate() keyword arguments), beside `batched`
    (batch_size, sorted by length, dynamic cache)."""
    out = {
        "lever_batch_x4": {"batch_size": 4 * batch_size},
        "lever_unsorted": {"batch_size": batch_size, "sort_by_length": False},
        "lever_static_cache": {"batch_size": batch_size, "cache": "static", "width_multiple": 64},
    }
    if on_cuda:  # transformers compiles the static step on CUDA only; on the CPU it would time lever_static_cache again
        out["lever_static_compiled"] = {"batch_size": batch_size, "cache": "static_compiled", "width_multiple": 64}
    return out


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
    p.add_argument("--levers", action="store_true", help="also each generation lever on its own (batch x4, unsorted, static)")
    p.add_argument("--out", default=None, help="also write the JSON here, after every method (partial until the end)")
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

    def method(**kw):
        return lambda: generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, progress=False, **kw)

    methods = {"batched": method(batch_size=args.batch_size), "one_at_a_time": method(batch_size=1)}
    lever_kwargs = levers(args.batch_size, args.device.startswith("cuda")) if args.levers else {}
    methods.update({name: method(**kw) for name, kw in lever_kwargs.items()})
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    errors: dict[str, str] = {}
    with contextlib.redirect_stdout(sys.stderr):
        generate(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2, progress=False)  # warm-up
        for r in range(args.rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for name in order:
                if name in errors:
                    continue
                counter["new_tokens"] = 0
                try:
                    _, seconds = common.timed(methods[name])
                except Exception as exc:  # a lever this device cannot run: keep the other figures
                    errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
                    log.exception("%s failed", name)
                    continue
                tokens = counter["new_tokens"]
                runs[name].append({"seconds": seconds, "new_tokens": tokens, "tokens_per_s": tokens / seconds})
                log.info("round %d %s: %.1f new tokens/s (%d tokens, %.2fs)", r, name, tokens / seconds, tokens, seconds)
                if args.out:
                    _write(args.out, {"partial": True, "runs": runs, "errors": errors})
        vllm = _vllm(args, prompts) if args.vllm else None

    runs = {m: xs for m, xs in runs.items() if xs}
    med = {m: common.median(x["tokens_per_s"] for x in runs[m]) for m in runs}
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
        "tokens_per_s_spread": {m: common.spread(x["tokens_per_s"] for x in runs[m]) for m in runs},
        # the ratio within each round (same load), over rounds
        "ratio_spread": common.spread(
            b["tokens_per_s"] / o["tokens_per_s"] for b, o in zip(runs.get("batched", []), runs.get("one_at_a_time", []))
        ),
        "seconds": {m: common.median(x["seconds"] for x in runs[m]) for m in runs},
        "new_tokens": {m: runs[m][-1]["new_tokens"] for m in runs},
        "ratio_batched_vs_one_at_a_time": common.ratio(med.get("batched", math.nan), med.get("one_at_a_time", math.nan)),
        "environment": common.environment(args.device),
    }
    if args.levers:
        figures["levers"] = lever_kwargs
        figures["ratio_vs_one_at_a_time"] = {
            m: common.ratio(t, med["one_at_a_time"]) for m, t in med.items() if m != "one_at_a_time" and "one_at_a_time" in med
        }
        figures["errors"] = errors
    if vllm is not None:
        figures["vllm"] = vllm
    if args.out:
        _write(args.out, figures)
    common.emit(figures)


def _write(path: str, obj: dict) -> None:
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(common.rnd(obj), indent=2) + "\n")


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
