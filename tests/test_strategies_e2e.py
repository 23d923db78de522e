"""Strategies end to end: exact freezing and gradient masks under DeepSpeed ZeRO-2/3 on CPU (one process),
and train.py sweeps (generative replay generated once per size, bad options refused before training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_strategies import base_dir, tok  # noqa: F401, F811 (fixtures)

# ---------------------------------------------------------------- DeepSpeed ZeRO on CPU

DS_SCRIPT = r"""
import json, sys
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[4])
from test_strategies import ARCH, HEAD_DIM, context, data, fresh, perturbed_checkpoint, train
from cft.models import load_model
from cft.strategies.compose import Compose
from cft.strategies.lf_h1 import RandomLayerFreeze
from cft.strategies.lf_h2 import ChangeRankedFreeze

stages, base_dir, root = [int(x) for x in sys.argv[1].split(",")], Path(sys.argv[2]), Path(sys.argv[3])
import torch.distributed as dist
if not dist.is_initialized():  # one process: DeepSpeed joins a process group of one
    dist.init_process_group("gloo", rank=0, world_size=1)
tok = load_model(str(base_dir))[1]
from cft.training.gradients import full_value, numel
from cft.training.loop import TrainSettings, zero3_init


def run(stage, tmp):
    phase1 = perturbed_checkpoint(base_dir, tmp / "phase1", {("q_proj", 0, 1): 0.9, ("q_proj", 3, 2): 0.8})
    ds = {"zero_optimization": {"stage": stage}}
    strategy = Compose({"lf": RandomLayerFreeze(k=1), "heads": ChangeRankedFreeze(k=2, modules=["q_proj"], selection="top_heads")})
    with zero3_init(TrainSettings(lr=1e-2, global_batch_size=4, micro_batch_size=2, deepspeed=ds)):
        model = fresh(phase1)  # as the recipe loads it: partitioned from the start under ZeRO-3
    partitioned = sum(p.numel() != numel(p) for p in model.parameters())
    model = strategy.prepare(model, context(tmp, tok, base_dir, phase1_dir=phase1))
    before = {n: full_value(p).clone() for n, p in model.named_parameters()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    model = train(model, tok, data(), strategy, deepspeed=ds)
    after = {n: (p.detach() if p.numel() == numel(p) else full_value(p)) for n, p in model.named_parameters()}
    bad = [n for n in before if (n in frozen) != torch.equal(after[n], before[n])]
    for layer, head in strategy.parts["heads"].selected["q_proj"]:
        name = f"model.layers.{layer}.self_attn.q_proj.weight"
        rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
        if layer != strategy.parts["lf"].layers[0] and not torch.equal(after[name][rows], before[name][rows]):
            bad.append(f"{name} head {head}")
    return {"bad": bad, "frozen": len(frozen), "total": len(before), "partitioned": partitioned,
            "trainable_params": strategy.report()["trainable_params"], "total_params": strategy.report()["total_params"],
            "heads": strategy.parts["heads"].selected["q_proj"], "lf": strategy.parts["lf"].layers,
            "late_masks": strategy.parts["heads"].late_masks}


for stage in stages:  # each stage on its own: one that fails reports its error, the other its result
    try:
        (root / f"stage{stage}").mkdir(parents=True, exist_ok=True)
        result = run(stage, root / f"stage{stage}")
    except Exception:
        import traceback

        result = {"error": traceback.format_exc()}
    print(f"RESULT {stage} " + json.dumps(result), flush=True)
"""


STAGES = [2, 3]


@pytest.fixture(scope="module")
def zero_results(tmp_path_factory, base_dir):  # noqa: F811
    """DS_SCRIPT's result for each ZeRO stage, from one process for both (one start-up and DeepSpeed import,
    about 4 s of CPU, instead of two); each stage runs on its own and reports its own error."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    here = str(Path(__file__).resolve().parent)
    tmp = tmp_path_factory.mktemp("zero")
    stages = ",".join(str(stage) for stage in STAGES)
    proc = subprocess.run(
        [sys.executable, "-c", DS_SCRIPT, stages, str(base_dir), str(tmp), here],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=here,
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            stage, _, result = line[len("RESULT ") :].partition(" ")
            results[int(stage)] = json.loads(result)
    return proc, results


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_freezing_and_gradient_masks_are_exact_under_deepspeed_zero(zero_results, base_dir, stage):  # noqa: F811
    proc, results = zero_results
    assert proc.returncode == 0 and stage in results, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = results[stage]
    assert "error" not in result, result.get("error")
    assert result["bad"] == [], result
    assert result["late_masks"] == 0  # every mask applied by the gradient hook, before ZeRO reduces (no gather)
    assert 0 < result["frozen"] < result["total"]
    assert (result["partitioned"] > 0) == (stage == 3)
    from test_strategies import fresh

    assert result["total_params"] == sum(p.numel() for p in fresh(base_dir).parameters())  # full shapes, also when partitioned
    assert 0 < result["trainable_params"] < result["total_params"]


# ---------------------------------------------------------------- end to end (train.py)


@pytest.mark.slow
def test_generative_replay_sweep_generates_once_per_size_and_reuses_on_rerun(tmp_path):
    from helpers import SMALL, run_folders, run_script

    # `++`: in a multirun Hydra first composes the default strategy (full), which has no max_new_tokens.
    # keep_capped: 4-token replies are cut at the cap, which would leave them all out.
    # tracking=none: nothing here is about W&B (test_spine checks a run's offline W&B run); it costs each of the four
    # cell runs about 2 s of CPU.
    args = ["-m", *SMALL, "strategy=gr5,gr10", "++strategy.max_new_tokens=4", "++strategy.keep_capped=true", "tracking=none"]
    proc = run_script("train.py", [*args, "sweep_id=gr"], tmp_path)
    generated = tmp_path / "cache" / "generative_replay"
    sets = sorted(p for p in generated.iterdir() if p.is_dir())
    assert len(sets) == 2  # one per size; Phase 1 is shared
    sizes = sorted(len((p / "replay.jsonl").read_text().splitlines()) for p in sets)
    assert sizes == [1, 2]  # 5% and 10% of 24 Phase-2 examples, rounded
    metrics = {
        json.loads((f / "run_meta.json").read_text())["choices"]["strategy"]: json.loads((f / "metrics.json").read_text())
        for f in run_folders(tmp_path / "gr")
    }
    assert set(metrics) == {"gr5", "gr10"}
    for name, requested in (("gr5", 1), ("gr10", 2)):
        m = metrics[name]
        assert m["strategy/generation/requested"] == requested
        assert m["strategy/replay_examples"] == requested - m["strategy/generation/empty"]
        assert m["strategy/replay_share"] == pytest.approx(m["strategy/replay_examples"] / 24)
        assert 0 <= m["strategy/replay_trained"] <= m["train/phase2/examples"]  # what the loop fed, beside the share
    # Another sweep over the same sizes reuses both sets: nothing is generated again.
    again = run_script("train.py", [*args, "sweep_id=gr_again"], tmp_path)
    assert (again.stdout + again.stderr).count("Reusing generative_replay artifact") == 2
    assert sorted(p for p in generated.iterdir() if p.is_dir()) == sets
    assert "Building generative_replay" not in again.stdout + again.stderr
    assert "Building generative_replay" in proc.stdout + proc.stderr


def test_bad_strategy_option_stops_before_training(tmp_path):
    from helpers import SMALL, run_script

    proc = run_script("train.py", [*SMALL, "strategy=lf_h2", "strategy.k=3", "sweep_id=bad"], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "strategy.k=3 must be an integer from 1 to 2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache" / "phase1").exists()
