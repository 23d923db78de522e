"""Shared helpers of the bench/ scripts: offline environment, timing, peak memory, model shapes,
instruction data with Alpaca's length spread, and printing the one JSON object of figures.

Every bench script prints exactly one JSON object to stdout and logs to stderr. Figures are
ratios measured within one run (the machine is shared and noisy), from interleaved repetitions
summarised by their median.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def find_data_dir(env: Mapping[str, str] = os.environ, repo: Path = REPO) -> tuple[Path, list[Path]]:
    """(the real data folder, the places looked at in order): CFT_DATA when set (relative to the working
    directory), else the project's git-ignored data/ when it exists, else ../shared/data next to the
    project (where this project's CI machines keep it). The one place bench/ and tests/ resolve it
    (tests/conftest.py exports it as CFT_DATA, which the configs' paths.data_dir reads)."""
    if env.get("CFT_DATA"):
        where = Path(os.path.abspath(os.path.expanduser(env["CFT_DATA"])))
        return where, [where]
    looked = [repo / "data", repo.parent / "shared" / "data"]
    return next((p for p in looked if p.is_dir()), looked[-1]), looked


# The real data (README, "Real data"): read, never copied into the repository.
DATA_DIR, DATA_LOOKED = find_data_dir()
ALPACA = DATA_DIR / "alpaca" / "alpaca_5000.json"

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

_JSON_OUT = None


def claim_stdout() -> None:
    """Keep stdout for the one JSON object: libraries that print there (DeepSpeed's accelerator
    notice, the Trainer's metrics) go to stderr, by pointing file descriptor 1 at it. Called first
    in each script's main() (not at import, so tests can import the modules)."""
    global _JSON_OUT
    if _JSON_OUT is None:
        sys.stdout.flush()
        _JSON_OUT = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)


if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _demo_build() -> dict[str, int]:
    """The demo model's shape as conf/model/demo.yaml builds it (read, not copied: they cannot drift)."""
    import yaml

    build = yaml.safe_load((REPO / "conf" / "model" / "demo.yaml").read_text(encoding="utf-8"))["build"]
    return {k: int(v) for k, v in build.items() if k not in ("seed", "max_position_embeddings")}


# Model shapes built from config (Llama architecture, cft's byte-level tokenizer, ~261 tokens).
SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    # the demo model (conf/model/demo.yaml: 2 layers of width 128)
    "demo": _demo_build(),
    # the bench's earlier "demo" shape (4 layers of width 128, 0.69M parameters)
    "demo4": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8),
    "medium": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8),
    # ~100M parameters (GPT-2-small-like width and depth, SwiGLU MLP)
    "100m": dict(hidden_size=768, intermediate_size=2560, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12),
    # ~1B parameters (Llama-3.2-1B-like body), for GPU runs
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8),
}


def setup_logging() -> logging.Logger:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[bench %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("bench")


def add_threads_arg(parser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch/OpenMP threads per process, children included (default: cft.training.threads' choice, "
        "OMP_NUM_THREADS when set, else one per idle core: on a shared CPU, threads that wait for a busy "
        "core spin, which made 2 threads several times slower than 1 here; see bench/threads.py)",
    )


def apply_threads(n: int | None) -> int:
    """Choose the thread count as cft runs do (cft.training.threads.configure: --threads, else
    OMP_NUM_THREADS, else one per idle core) and pass it on to child processes (train.py runs)."""
    from cft.errors import ConfigError
    from cft.training.threads import configure

    try:
        n = configure(n)
    except ConfigError as exc:
        raise SystemExit(f"--threads: {exc}") from None
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


def shape(name: str, max_positions: int = 1024) -> dict[str, int]:
    if name not in SHAPES:
        raise SystemExit(f"unknown model shape {name!r}; choose from {', '.join(SHAPES)}")
    return {**SHAPES[name], "max_position_embeddings": max_positions}


def loop_batches(n: int, micro: int, steps: int | None = None, *, first: int = 0) -> list[list[int]]:
    """The micro-batches `cft.training.loop.fit` trains on (seed 0, first epoch, one micro-batch per
    step), steps `first` to `steps` (example indices): what a bench counts the tokens of."""
    from cft.training.loop import epoch_batches

    return epoch_batches(n, micro, 1, 0, 0)[first:steps]


def median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def spread(values) -> dict[str, float]:
    """Median, minimum, maximum and count of a figure's values over rounds (the README quotes the
    median and the min-max range)."""
    values = [float(v) for v in values]
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b and not math.isnan(a) and not math.isnan(b) else None


def rnd(x: Any, digits: int = 3) -> Any:
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, dict):
        return {k: rnd(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [rnd(v, digits) for v in x]
    return x


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment(device: str = "cpu") -> dict[str, Any]:
    import torch
    import transformers

    env = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def emit(figures: dict[str, Any], *, indent: int | None = 2) -> None:
    """Print the one JSON object of a bench script to stdout."""
    out = _JSON_OUT or sys.stdout
    out.write(json.dumps(rnd(figures), indent=indent, sort_keys=False) + "\n")
    out.flush()


# ---------------------------------------------------------------- data


def synthetic_alpaca(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Instruction records whose byte lengths follow Alpaca's spread (log-normal fitted to
    alpaca_5000.json: median ~285 bytes, 10th percentile ~100, 90th ~700), a third of them with an input."""
    rng = random.Random(seed)
    words = (
        "the model data task answer question write list explain describe give three example short "
        "reason because people water energy city history science color number simple"
    ).split()

    def text(nbytes: int) -> str:
        out = []
        while sum(len(w) + 1 for w in out) < nbytes:
            out.append(rng.choice(words))
        return " ".join(out)

    records = []
    for _ in range(n):
        total = max(30, int(rng.lognormvariate(math.log(285), 0.71)))
        instr = max(15, int(total * rng.uniform(0.15, 0.35)))
        has_input = rng.random() < 0.39
        inp = int(total * rng.uniform(0.1, 0.3)) if has_input else 0
        records.append(
            {"instruction": text(instr), "input": text(inp) if inp else "", "output": text(max(5, total - instr - inp))}
        )
    return records


def instruction_examples(n: int, *, seed: int = 0, source: str = "auto"):
    """(examples, source name): the first n records of the Alpaca subset in DATA_DIR when
    present (or `source=alpaca` demands it), otherwise synthetic records with its length spread."""
    from cft.data.records import Example

    if source in ("auto", "alpaca") and ALPACA.exists():
        records = json.loads(ALPACA.read_text(encoding="utf-8"))
        rng = random.Random(seed)
        rng.shuffle(records)
        used = "alpaca_5000"
        while len(records) < n:  # repeat the subset for runs that want more than 5000
            records = records + records
        records = records[:n]
    elif source == "alpaca":
        raise SystemExit(f"--data alpaca: {ALPACA} not found")
    else:
        records, used = synthetic_alpaca(n, seed), "synthetic_alpaca_lengths"
    return [Example(instruction=r["instruction"], input=r.get("input") or "", output=r["output"]) for r in records], used


# ---------------------------------------------------------------- subprocesses


def run_json(args: list[str], *, env: dict | None = None, cwd: Path | None = None, timeout: int = 1800) -> dict:
    """Run a python child that prints one JSON object on one line (emit(..., indent=None)) as its last stdout line."""
    proc = subprocess.run(
        [sys.executable, *args],
        env={**os.environ, **OFFLINE_ENV, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
