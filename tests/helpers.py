"""Helpers shared by tests: running the entry scripts, composing the real conf/ tree, tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Small settings for end-to-end runs of the demo pipeline on the tiny model (seconds, not minutes).
SMALL = [
    "model=tiny",
    "phase1_data.demo.per_task_language=16",
    "phase2_data.demo.per_task_language=4",
    "phase2_data.languages=[es,de]",
    "train.max_steps=3",
    "train.global_batch_size=8",
    "train.micro_batch_size=8",
    "eval.tasks.demo.per_task_language=2",
    "eval.tasks.demo.languages=[en,es,de]",
    "eval.tasks.demo.max_new_tokens=4",
]


def run_script(
    script: str, args: list[str], output_root: Path, *, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py / analyze.py as a user would, with outputs under output_root."""
    full_env = {**os.environ, "CFT_OUTPUT_ROOT": str(output_root), "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("CFT_SWEEP_ID", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=output_root, env=full_env, capture_output=True, text=True, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def compose(overrides: list[str], config_name: str = "config", *, hydra: bool = False):
    """The real conf/ tree composed with overrides, as Hydra would for train.py."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cft.config.hydra import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra)


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("run_meta.json"))


def token_rows(n: int = 16, width: int = 12) -> list[dict]:
    """`n` tokenized training examples of `width` random ids (seeded): data for the loop without a tokenizer."""
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 200, (width,), generator=g).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * width, "labels": ids})
    return out


class NanAtThirdStep:
    """Strategy hooks whose penalty turns the loss NaN at micro-batch 5, i.e. optimizer step 3 at 2 micro-batches a step."""

    def __init__(self):
        self.n = 0

    def penalty(self, model, batch):
        import torch

        self.n += 1
        return torch.tensor(float("nan")) if self.n == 5 else None

    def on_before_optimizer_step(self, model):
        pass
