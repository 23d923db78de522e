"""Memory of MPD / layer-change computation on two checkpoints: cft's streaming readers
(cft.measures.similarity.mpd and cft.measures.layers.layer_changes, one pair of tensors at a time) against the
obvious way, loading both models with from_pretrained and comparing their state dicts.

    python bench/memory_mpd.py            # two ~100M-parameter checkpoints built from config
    python bench/memory_mpd.py --smoke    # the tiny shape

Each method runs in its own fresh process, which reports its peak RSS (VmHWM, reset after a warm-up;
it counts the memory-mapped checkpoint pages it touched) and the peak of its anonymous memory (RssAnon,
sampled every 5 ms: what cannot be dropped under memory pressure), both above the RSS it had
after a warm-up pass on two tiny checkpoints (imports and lazy libraries loaded). The two
checkpoints are the same shape with different random seeds, saved in bf16 like released LLM
checkpoints (--checkpoint-dtype fp32 for fp32 ones); both methods compute MPD in fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

log = common.setup_logging()
METHODS = ("streaming", "load_both")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class AnonPeak:
    """Samples RssAnon of this process in a thread (VmHWM also counts file-backed pages)."""

    def __init__(self, every: float = 0.005):
        self.peak, self.peak_rss, self.every, self._stop = 0, 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kb("RssAnon"))
            self.peak_rss = max(self.peak_rss, _status_kb("VmRSS"))
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kb("RssAnon"))


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) so that import-time peaks do not count (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(method: str, a: str, b: str, warm_a: str, warm_b: str) -> None:
    from cft.measures.layers import layer_changes
    from cft.measures.similarity import mpd

    # A first pass on two tiny checkpoints loads every lazy import and library the method uses,
    # so the figures above this baseline are the checkpoints' cost alone.
    run = (lambda x, y: (mpd(x, y).overall, layer_changes(x, y))) if method == "streaming" else _load_both
    run(warm_a, warm_b)
    peak_resettable = _reset_peak_rss()
    base_rss, base_anon = _status_kb("VmRSS") / 1024, _status_kb("RssAnon") / 1024
    start = time.perf_counter()
    with AnonPeak() as anon:
        value, changes = run(a, b)
    seconds = time.perf_counter() - start
    peak_rss = (_status_kb("VmHWM") if peak_resettable else anon.peak_rss) / 1024
    common.emit(
        {
            "method": method,
            "mpd": value,
            "tensors_compared": int(len(changes)),
            "seconds": seconds,
            "rss_after_imports_mb": base_rss,
            "peak_rss_mb": peak_rss,
            "peak_rss_above_imports_mb": peak_rss - base_rss,
            "peak_from": "VmHWM" if peak_resettable else "sampled VmRSS",
            "peak_anon_above_imports_mb": anon.peak / 1024 - base_anon,
        },
        indent=None,
    )


def _load_both(a: str, b: str):
    """The baseline: both models in memory, then the same MPD and per-tensor relative changes."""
    import torch
    from transformers import AutoModelForCausalLM

    model_a = AutoModelForCausalLM.from_pretrained(a, dtype=torch.float32)
    model_b = AutoModelForCausalLM.from_pretrained(b, dtype=torch.float32)
    # named_parameters() lists a tied embedding / lm_head once, as the safetensors file holds it.
    sd_b = dict(model_b.named_parameters())
    total, changes = 0.0, []
    for name, wa in model_a.named_parameters():
        diff = float(torch.linalg.vector_norm(sd_b[name].float() - wa.float()))
        total += diff**2
        if wa.dim() >= 2:
            changes.append(diff / float(torch.linalg.vector_norm(wa.float())))
    return total**0.5, changes


def main() -> None:
    common.claim_stdout()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--shape", default="100m")
    p.add_argument(
        "--checkpoint-dtype",
        default="bf16",
        choices=["bf16", "fp32"],
        help="dtype the checkpoints are saved in (released LLM checkpoints are bf16); MPD is computed in fp32",
    )
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions per method (median)")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--a", help=argparse.SUPPRESS)
    p.add_argument("--b", help=argparse.SUPPRESS)
    p.add_argument("--warm", nargs=2, help=argparse.SUPPRESS)
    common.add_threads_arg(p)
    args = p.parse_args()
    common.apply_threads(args.threads)
    if args.child:
        return child(args.child, args.a, args.b, *args.warm)
    if args.smoke:
        args.shape, args.rounds = "tiny", 1

    import torch

    from cft.models import build_model, build_tokenizer, count_parameters

    arch = common.shape(args.shape, 1024)
    tokenizer = build_tokenizer()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.checkpoint_dtype]

    def save(path, architecture, seed):
        model = build_model(architecture, tokenizer, seed=seed).to(dtype)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return count_parameters(model)["total"]

    with tempfile.TemporaryDirectory(prefix="cft-bench-mpd-") as tmp:
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        n_params = save(a, arch, 0)
        save(b, arch, 1)
        warm = [os.path.join(tmp, "warm_a"), os.path.join(tmp, "warm_b")]
        save(warm[0], common.shape("tiny", 256), 0)
        save(warm[1], common.shape("tiny", 256), 1)
        size_mb = os.path.getsize(os.path.join(a, "model.safetensors")) / 2**20
        log.info("two %s checkpoints of %d parameters (%.0f MB each) in %s", args.shape, n_params, size_mb, tmp)
        runs: dict[str, list[dict]] = {m: [] for m in METHODS}
        for r in range(args.rounds):
            for method in METHODS if r % 2 == 0 else tuple(reversed(METHODS)):
                res = common.run_json([os.path.abspath(__file__), "--child", method, "--a", a, "--b", b, "--warm", *warm])
                runs[method].append(res)
                log.info(
                    "round %d %s: peak RSS +%.0f MB (anon +%.0f MB), %.1fs",
                    r,
                    method,
                    res["peak_rss_above_imports_mb"],
                    res["peak_anon_above_imports_mb"],
                    res["seconds"],
                )
    med = {
        m: {
            k: common.median(x[k] for x in runs[m])
            for k in ("peak_rss_above_imports_mb", "peak_anon_above_imports_mb", "peak_rss_mb", "seconds")
        }
        for m in METHODS
    }
    agree = abs(runs["streaming"][0]["mpd"] - runs["load_both"][0]["mpd"]) <= 1e-4 * max(1.0, runs["load_both"][0]["mpd"])
    common.emit(
        {
            "benchmark": "memory_mpd",
            "shape": args.shape,
            "parameters": n_params,
            "checkpoint_mb": size_mb,
            "checkpoint_dtype": args.checkpoint_dtype,
            "rounds": args.rounds,
            "methods": med,
            "methods_spread": {
                m: {
                    k: common.spread(x[k] for x in runs[m])
                    for k in ("peak_rss_above_imports_mb", "peak_anon_above_imports_mb", "seconds")
                }
                for m in METHODS
            },
            "mpd_agrees": agree,
            "ratio_peak_rss_load_both_vs_streaming": common.ratio(
                med["load_both"]["peak_rss_above_imports_mb"], med["streaming"]["peak_rss_above_imports_mb"]
            ),
            "ratio_peak_anon_load_both_vs_streaming": common.ratio(
                med["load_both"]["peak_anon_above_imports_mb"], med["streaming"]["peak_anon_above_imports_mb"]
            ),
            "ratio_seconds_load_both_vs_streaming": common.ratio(med["load_both"]["seconds"], med["streaming"]["seconds"]),
            "environment": common.environment(),
        }
    )


if __name__ == "__main__":
    main()
