"""Per-item costs of the smollm2_study suite's tasks on the SmolLM2 GGUF model: wall and CPU seconds.

    PYTHONPATH=. python examples/smollm2_study_costs.py --threads 1 --dtype bf16 [--items 8] [--tasks mmlu,ifeval]

Each task of `experiment=smollm2_study`'s eval suite runs on a few items (MMLU: 2 subjects x N; HellaSwag
2N; FLORES N per language; IFEval, XQuAD es N) with the study's settings (generation caps, batch size),
and prints one JSON line per task: items, wall seconds, CPU seconds of this process (user + system, all
threads; on a shared machine the CPU time is what an idle core would take, the wall time is not), per
item. The README's "The SmolLM2 study" plan multiplies these by the study's item counts. Needs the GGUF
in CFT_GGUF_DIR (default .cache/gguf) and the benchmark files in CFT_DATA (paths.data_dir, default data/;
README, "Real data").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"], help="evaluation precision")
    parser.add_argument("--items", type=int, default=8, help="N, the items per task (see above)")
    parser.add_argument("--tasks", default="mmlu,hellaswag,flores,ifeval,xquad", help="comma-separated")
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cft.config.hydra import register_resolvers
    from cft.evaluation.config import SHARED
    from cft.evaluation.suite import build_task
    from cft.models import resolve_dtype
    from cft.models.checkpoints import load_model

    torch.set_num_threads(args.threads)
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=smollm2_study", "phase1_data=alpaca5k", "strategy=full"])
    values = OmegaConf.to_container(cfg, resolve=True)
    suite, n = values["eval"], args.items
    suite["tasks"]["mmlu"].update(subjects=["anatomy", "astronomy"], limit=n)
    suite["tasks"]["hellaswag"]["limit"] = 2 * n
    for name in ("ifeval", "xquad", "flores"):
        suite["tasks"][name]["limit"] = n
    shared = {k: suite[k] for k in SHARED if k in suite}
    model, tokenizer = load_model(values["model"]["base"], gguf_file=values["model"]["gguf_file"], dtype="fp32")
    model = model.to(resolve_dtype(args.dtype))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            task = build_task(name, suite["tasks"][name], shared)
            out = Path(tmp) / name
            cpu, wall = cpu_seconds(), time.perf_counter()
            scores = task.run(model, tokenizer, out_dir=out)
            cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
            items = sum(sum(1 for _ in f.open(encoding="utf-8")) for f in out.rglob("*.jsonl"))
            row = {"task": name, "threads": args.threads, "dtype": args.dtype, "items": items, "wall_s": round(wall, 1)}
            row.update(cpu_s=round(cpu, 1), wall_per_item=round(wall / items, 3), cpu_per_item=round(cpu / items, 3))
            row.update(score=scores[0].score, load=round(os.getloadavg()[0], 1))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
