"""Running the study on several ranks (issue 25): ranks stay together through a multirun, launch and
memory rules, sharded generation. Two CPU processes (gloo) stand in for GPUs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import SMALL, run_folders, token_rows

REPO = Path(__file__).resolve().parent.parent

# model=demo shrunk, with a short phase 0: an empty cache builds the base (trained by both ranks) first.
PHASE0_SMALL = [
    "model=demo",
    "model.build.hidden_size=32",
    "model.build.intermediate_size=64",
    "model.build.max_position_embeddings=256",
    "model.pretrain.per_task_language=2",
    "model.pretrain.seq_len=32",
    "model.pretrain.steps=2",
    "model.pretrain.warmup_steps=0",
    *[o for o in SMALL if not o.startswith("model=")],
    "tracking=none",
    "similarity.layer_changes=false",
]

# train.py with rank 0's Phase-2 evaluation of one cell made slow (a fault planted in the test, not in cft).
SLOW_EVAL = textwrap.dedent("""
    import os, runpy, sys, time
    sys.path.insert(0, os.environ["CFT_REPO"])
    import cft.recipes.train as recipe
    from cft.training import distributed

    real = recipe.TrainRecipe.evaluate

    def slow(self):
        if distributed.is_main() and self.choices.get("strategy") == os.environ["SLOW_CELL"]:
            time.sleep(float(os.environ["SLOW_S"]))
        return real(self)

    recipe.TrainRecipe.evaluate = slow

    import cft.evaluation.demo as demo

    scored = demo.DemoExactMatch.run

    def counted(self, model, tokenizer, *, out_dir, sharded=False):  # which rank scored, and whether sharded
        with open(os.path.join(os.environ["CFT_OUTPUT_ROOT"], f"scored-rank{distributed.rank()}"), "a") as f:
            f.write(f"{sharded}\\n")
        return scored(self, model, tokenizer, out_dir=out_dir, sharded=sharded)

    demo.DemoExactMatch.run = counted
    sys.argv[0] = os.path.join(os.environ["CFT_REPO"], "train.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("world", "status", "code", "err"), [("2", "'cell failed'", 1, "cell failed"), ("2", "3", 3, ""), ("1", "3", 3, "")]
)
def test_a_rank_of_several_exits_with_its_status_after_the_exit_handlers_and_flushes(world, status, code, err):
    """exit_process (train.py's last call): with several ranks the process leaves without the interpreter's
    finalization (where a gloo thread's GIL take aborted finished jobs), yet the exit handlers have run,
    buffered output is written and the status is kept; one process exits as sys.exit does."""
    probe = (
        "import atexit; from cft.training.distributed import exit_process; "
        "atexit.register(lambda: print('handler ran', end='')); print('buffered ', end=''); "
        f"exit_process({status})"
    )
    env = {**os.environ, "WORLD_SIZE": world, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == code and proc.stdout == "buffered handler ran", proc
    assert proc.stderr.strip() == err


@pytest.mark.slow
def test_two_rank_sweep_stays_together_on_an_empty_cache(tmp_path):
    """`torchrun --nproc_per_node 2 train.py -m strategy=full,lf_h2,gr5` on an empty cache: phase 0 and
    Phase 1 are trained by both ranks (no rank waits on one that is in a collective), both ranks score their
    share of every evaluation (the Phase-1 model once, each cell's Phase-2 model), the last cell's
    evaluation on rank 0 is slow, and rank 1 waits for it instead of running ahead: every cell is DONE
    with its metrics, the job exits 0, and the sweep's summary is printed once."""
    (tmp_path / "slow_train.py").write_text(SLOW_EVAL)
    env = {
        **os.environ,
        "CFT_REPO": str(REPO),
        "PYTHONPATH": str(REPO),
        "CFT_OUTPUT_ROOT": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "SLOW_CELL": "gr5",
        "SLOW_S": "8",
        "CFT_DIST_TIMEOUT_MIN": "2",  # a rank that waited out a collective would fail the test, not hang it
    }
    env.pop("CFT_SWEEP_ID", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(tmp_path / "slow_train.py"),
        "-m",
        *PHASE0_SMALL,
        "strategy=full,lf_h2,gr5",
        "sweep_id=two",
    ]
    start = time.time()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    wall = time.time() - start
    out = proc.stdout + proc.stderr
    logs = "".join(f"\n--- {p}\n" + p.read_text(errors="replace")[-2500:] for p in sorted(tmp_path.rglob("train.log")))
    assert proc.returncode == 0, f"exit {proc.returncode} after {wall:.0f}s:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}{logs}"
    assert "not run here" not in out and "failed or did not finish" not in out, out[-3000:]
    assert out.count("cft: sweep two finished") == 1, out[-3000:]
    assert out.count("cft: sweep_id=two") == 1
    assert out.count("Building base artifact") == 1 and out.count("Building phase1 artifact") == 1, out[-3000:]
    folders = run_folders(tmp_path / "two")
    assert sorted(f.parts[-3] for f in folders) == ["full", "gr5", "lf_h2"], folders
    for folder in folders:
        assert (folder / "DONE").exists(), folder
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["train/phase2/steps"] == 3, metrics
        assert "phase2/avg/all" in metrics or any(k.startswith("phase2/") for k in metrics), sorted(metrics)
    # Every rank scored its share of each evaluation: the Phase-1 model's (once, cached) and each cell's Phase 2.
    for rank in (0, 1):
        assert (tmp_path / f"scored-rank{rank}").read_text().split() == ["True"] * 4, rank
    gr = json.loads((next(f for f in folders if f.parts[-3] == "gr5") / "metrics.json").read_text())
    assert any(k.startswith("strategy/") for k in gr), sorted(gr)
    print(f"2-rank 3-cell sweep on an empty cache: {wall:.1f} s")


# ---------------------------------------------------------------- launch rule and memory estimate


def _checks(runs: list[tuple[list[str], dict]], tmp_path: Path) -> list[subprocess.CompletedProcess]:
    """`train.py <args> check=true` for each (args, env), started together (each mostly waits on imports)."""
    procs = []
    for args, env in runs:
        full = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path / "outputs"), **env}
        full.pop("CFT_SWEEP_ID", None)
        for key in ("WORLD_SIZE", "CFT_GPUS", "CFT_GPU_MEMORY_GB"):
            if key not in env:
                full.pop(key, None)
        command = [sys.executable, str(REPO / "train.py"), *args, "check=true"]
        procs.append(
            (
                command,
                subprocess.Popen(command, cwd=tmp_path, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            )
        )
    done = []
    for command, proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return done


def test_the_design_card_command_as_one_process_names_the_problem_and_the_command(tmp_path):
    """One process, no GPU (this machine) and one process on a node of 8 GPUs (injected): both stop at
    compose time, before any folder, naming the torchrun command to run instead; on 8 ranks of 80 GB it
    composes, and on 2 ranks of 24 GB the full fine-tune names the settings to change."""
    design = ["-m", "model=mistral,llama", "strategy=gr5,gr10,lf_h2,lora,er10"]
    here, node, small = _checks(
        [
            (design, {"CFT_GPUS": "0"}),
            (design, {"CFT_GPUS": "8"}),
            (["model=mistral", "strategy=full"], {"CFT_GPUS": "2", "WORLD_SIZE": "2", "CFT_GPU_MEMORY_GB": "24"}),
        ],
        tmp_path,
    )
    assert here.returncode == 2, here.stdout + here.stderr
    assert "as one process needs about" in here.stderr and "this machine has no GPU" in here.stderr
    command = "torchrun --nproc_per_node 8 train.py -m model=mistral,llama strategy=gr5,gr10,lf_h2,lora,er10"
    assert command in here.stderr, here.stderr
    assert "strategy=lora" in here.stderr  # even LoRA's frozen 7B base does not fit this machine's memory
    assert not (tmp_path / "outputs").exists()
    assert node.returncode == 2 and "one process on a machine with 8 GPU(s) of 80 GB" in node.stderr, node.stderr
    assert command in node.stderr
    assert small.returncode == 2, small.stdout
    assert "more than 24 GB per GPU; set train.gradient_checkpointing=true or train.micro_batch_size=2" in small.stderr


def test_memory_estimate_follows_zero_accounting():
    from cft.training import memory

    mistral = memory.Shape(hidden=4096, layers=32, intermediate=14336, vocab=32000, heads=32, kv_heads=8)
    llama = memory.Shape(hidden=4096, layers=32, intermediate=14336, vocab=128256, heads=32, kv_heads=8)
    assert abs(mistral.params - 7.24e9) < 0.01e9 and abs(llama.params - 8.03e9) < 0.01e9  # the hub's counts
    ddp = memory.estimate(mistral, micro_batch=1, seq_len=1)
    assert abs((ddp.weights + ddp.gradients + ddp.optimizer) / mistral.params - 16) < 1e-9  # fp32 + AdamW
    z3 = memory.estimate(mistral, zero_stage=3, world=8, micro_batch=1, seq_len=1)
    assert abs((z3.weights + z3.gradients + z3.optimizer) * 8 / mistral.params - 16) < 1e-9
    z2 = memory.estimate(mistral, zero_stage=2, world=8, micro_batch=1, seq_len=1)
    assert z2.weights == 2 * mistral.params and z2.gradients == z3.gradients
    full = memory.estimate(mistral, zero_stage=3, world=8, micro_batch=4, seq_len=1024)
    ckpt = memory.estimate(mistral, zero_stage=3, world=8, micro_batch=4, seq_len=1024, gradient_checkpointing=True)
    assert ckpt.activations < full.activations / 5
    # ZeRO-2 where it fits (80 GB at micro-batch 4 x 1024 with checkpointing), ZeRO-3 on 40 GB cards
    kwargs = dict(micro_batch=4, seq_len=1024, gradient_checkpointing=True)
    assert memory.stage_that_fits(mistral, world=8, capacity_gb=80, **kwargs) == 2
    assert memory.stage_that_fits(llama, world=8, capacity_gb=40, **kwargs) == 3
    deepspeed = {"zero_optimization": {"stage": "auto", "stage3_param_persistence_threshold": "auto"}}
    assert memory.with_stage(deepspeed, 2) == {"zero_optimization": {"stage": 2}}
    from cft.strategies.lora import LoRA

    assert 0.001 < LoRA(r=8).trainable_share(mistral) < 0.01


def test_memory_estimate_counts_only_what_a_freezing_strategy_trains():
    """lf_h1 (k layers frozen) and lf_h2 with selection=layer (k layers of q, k, v frozen) keep gradients and
    Adam states for the rest only; lf_h2's head masks zero gradient rows of matrices that still hold their
    full gradients and states, so it counts as fully trainable. Numbers by hand for Mistral-7B's shape."""
    from cft.config import launch
    from cft.training import memory

    mistral = memory.PAPER_MODELS["mistral"]
    # one layer: q, o 4096^2; k, v 4096 x 1024 (8 key/value heads of 128); gate, up, down 4096 x 14336; two norms
    layer = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert layer == 218_112_000 and mistral.params == 32 * layer + 2 * 32000 * 4096 + 4096 == 7_241_732_096
    lf_h1 = {"_target_": "cft.strategies.lf_h1.RandomLayerFreeze", "k": 10}
    lf_h2 = {"_target_": "cft.strategies.lf_h2.ChangeRankedFreeze", "k": 10}
    name, share = launch._trainable(lf_h1, mistral)
    assert name == "RandomLayerFreeze" and share == 1 - 10 * 218_112_000 / 7_241_732_096  # 0.6988
    qkv = 10 * (4096**2 + 2 * 4096 * 1024)
    assert launch._trainable({**lf_h2, "selection": "layer"}, mistral)[1] == 1 - qkv / 7_241_732_096
    assert launch._trainable(lf_h2, mistral)[1] == 1.0  # per_head (the paper's): masks, not frozen tensors
    assert launch._trainable({**lf_h1, "modules": ["q_proj"]}, mistral)[1] == 1 - 10 * 4096**2 / 7_241_732_096
    # ZeRO-3 on 8 ranks: bf16 gradients (2 B) and 12 B of optimizer state per trainable parameter, split 8 ways
    full = memory.estimate(mistral, zero_stage=3, world=8, micro_batch=1, seq_len=1)
    frozen = memory.estimate(mistral, trainable=share, zero_stage=3, world=8, micro_batch=1, seq_len=1)
    trained = 7_241_732_096 - 10 * 218_112_000
    assert frozen.weights == full.weights == 2 * 7_241_732_096 / 8
    assert abs(frozen.gradients - 2 * trained / 8) < 1 and abs(frozen.optimizer - 12 * trained / 8) < 1
    assert full.gradients + full.optimizer - frozen.gradients - frozen.optimizer > 3.8e9  # 14 B x 2.18e9 / 8 = 3.82 GB


def test_packing_is_on_by_default_on_gpus(monkeypatch):
    from helpers import compose
    from omegaconf import OmegaConf

    for gpus, packing in (("0", False), ("1", True)):
        monkeypatch.setenv("CFT_GPUS", gpus)
        for model in ("demo", "mistral"):
            train = OmegaConf.to_container(compose([f"model={model}"]).train, resolve=True)
            assert train["packing"] is packing, (gpus, model)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the device files are Linux's")
def test_gpus_are_counted_without_torch_only_where_no_gpu_device_file_exists(tmp_path):
    """A Linux machine with none of memory.GPU_DEVICE_FILES has no GPU torch could use: the count is 0 and
    torch is not imported (the config check of every command pays no `import torch`); with one of them the
    count is torch's."""
    code = textwrap.dedent(
        """
        import sys
        from cft.training import memory
        memory.GPU_DEVICE_FILES = tuple(sys.argv[1:])
        no_device = memory.no_gpu_device()
        print(no_device, memory.gpus_available(), "torch" in sys.modules)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "CFT_GPUS"}
    present = tmp_path / "nvidiactl"
    present.touch()
    for files, want in (([str(tmp_path / "absent")], "True 0 False"), ([str(tmp_path / "absent"), str(present)], None)):
        proc = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if want is not None:
            assert proc.stdout.split() == want.split()
        else:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            assert proc.stdout.split() == ["False", str(gpus), "True"]  # asked torch


# ---------------------------------------------------------------- memory levers of the loop


def _fit(model_dir, hooks=None, ckpt=None, **kw):
    from cft.data.format import PadCollator
    from cft.models import load_model
    from cft.training.loop import TrainSettings, train_phase

    model, tok = load_model(str(model_dir))
    settings = TrainSettings(lr=1e-2, max_steps=4, global_batch_size=4, micro_batch_size=2, seed=0, **kw)
    return train_phase(
        model, token_rows(), collator=PadCollator(tok.pad_token_id), settings=settings, hooks=hooks, checkpoint_dir=ckpt
    )


def test_gradient_checkpointing_trains_the_same_weights_and_is_off_afterwards(tiny_model_dir):
    """train.gradient_checkpointing recomputes activations during training (on while the loop runs) and
    reaches the weights of a run without it; the trained model gets its KV cache back for evaluation."""
    import torch

    class Seen:
        def __init__(self):
            self.on = []

        def penalty(self, model, batch):
            return None

        def on_before_optimizer_step(self, model):
            self.on.append(model.is_activation_checkpointing)

    seen_plain, seen_ckpt = Seen(), Seen()
    plain, _ = _fit(tiny_model_dir, hooks=seen_plain)
    ckpt, _ = _fit(tiny_model_dir, hooks=seen_ckpt, gradient_checkpointing=True)
    assert seen_plain.on == [False] * 4 and seen_ckpt.on == [True] * 4
    assert not ckpt.is_activation_checkpointing and ckpt.config.use_cache
    a, b = plain.state_dict(), ckpt.state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_checkpoints_by_wall_clock_time_keep_one(tiny_model_dir, tmp_path, monkeypatch):
    """train.checkpoint_every_minutes: a checkpoint whenever that much time passed since the last one (a
    tiny interval here: after every step but the last), train.keep_checkpoints=1 of them kept; resumable."""
    from cft.training import loop

    saved = []
    real = loop._save_checkpoint
    monkeypatch.setattr(loop, "_save_checkpoint", lambda root, step, *a, **k: (saved.append(step), real(root, step, *a, **k)))
    _, stats = _fit(tiny_model_dir, ckpt=tmp_path / "ckpt", checkpoint_every_minutes=1e-6, keep_checkpoints=1)
    assert saved == [1, 2, 3] and stats.steps == 4
    assert [p.name for p in (tmp_path / "ckpt").glob("step-*")] == ["step-3"]
    saved.clear()
    _, never = _fit(tiny_model_dir, ckpt=tmp_path / "none", checkpoint_every_minutes=60)
    assert saved == [] and never.steps == 4
    _, resumed = _fit(tiny_model_dir, ckpt=tmp_path / "ckpt", checkpoint_every_minutes=1e-6)
    assert resumed.resumed_from == 3


def test_the_phase1_handle_releases_its_copy(tiny_model_dir):
    """Checkpoint.release drops the shared copy (nothing else holds it: it is freed), and a load in another
    dtype releases the old copy first: the evaluation copy never lives on beside the training one."""
    import gc
    import weakref

    import torch

    from cft.models.handle import Checkpoint

    handle = Checkpoint(str(tiny_model_dir), key="k", what="Phase-1 model")
    model, _ = handle.load(dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16 and handle.load(dtype="bf16")[0] is model
    ref = weakref.ref(model)
    del model
    trained, _ = handle.load(dtype="fp32")  # the training copy: fp32
    gc.collect()
    assert ref() is None and next(trained.parameters()).dtype == torch.float32
    ref = weakref.ref(trained)
    handle.release()
    del trained
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------- generation over ranks

SHARDED = textwrap.dedent("""
    import json, sys
    from cft.models import load_model
    from cft.models.generate import generate
    from cft.training import distributed

    distributed.init()
    model, tok = load_model(sys.argv[1])
    prompts = [("abc " * (i % 5 + 1)) + str(i) for i in range(11)]
    out = generate(model, tok, prompts, max_new_tokens=6, batch_size=2, sharded=True, progress=False)
    json.dump(out, open(f"{sys.argv[2]}/rank{distributed.rank()}.json", "w"))
""")


@pytest.mark.slow
def test_replay_generation_sharded_over_two_ranks_matches_one_rank(tmp_path, tiny_model_dir):
    """Two gloo ranks each generate half of the batches (each batch as one rank makes it) and both get every
    output: the same replay set as one rank's, in the caller's order."""
    from cft.models import load_model
    from cft.models.generate import generate

    (tmp_path / "worker.py").write_text(SHARDED)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    proc = subprocess.run(
        [*cmd, str(tmp_path / "worker.py"), str(tiny_model_dir), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, tok = load_model(str(tiny_model_dir))
    prompts = [("abc " * (i % 5 + 1)) + str(i) for i in range(11)]
    one = generate(model, tok, prompts, max_new_tokens=6, batch_size=2, progress=False)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == one
    assert any(one)


# ---------------------------------------------------------------- lm-eval data-parallel over ranks

# One Suite run: on 2 ranks (torchrun, sharded) or as one process; each lm-eval request type counted per process.
LM_EVAL_WORKER = textwrap.dedent("""
    import json, os, sys
    from lm_eval.models.huggingface import HFLM
    from cft.evaluation import Suite
    from cft.evaluation.lmeval import LMEvalTask
    from cft.models import load_model
    from cft.training import distributed

    counts = {}
    for kind in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        def counting(self, requests, *args, _real=getattr(HFLM, kind), _kind=kind, **kwargs):
            counts[_kind] = counts.get(_kind, 0) + len(requests)
            return _real(self, requests, *args, **kwargs)
        setattr(HFLM, kind, counting)

    class RankZeroOnly:  # a task without `sharded` (AlpacaEval's kind): rank 0 runs it, once
        def run(self, model, tokenizer, *, out_dir):
            from cft.evaluation import TaskScores
            open(f"{out}/whole-{mode}{distributed.rank()}", "w").close()
            return [TaskScores("whole", "ta", 1.0)]

    model_dir, bench, out, mode = sys.argv[1:5]
    if mode == "sharded":
        distributed.init()
    model, tok = load_model(model_dir)
    one = {"batch_size": 1}  # each request alone, so its numbers do not depend on which others share its batch
    tasks = {
        "whole": RankZeroOnly(),
        "mmlu": LMEvalTask("mmlu", data_dir=bench, subjects=["anatomy", "virology"], limit=3, **one),  # log-likelihood
        "xquad": LMEvalTask("xquad", data_dir=bench, languages=["de", "en"], gen_kwargs={"max_gen_toks": 5}, **one),
        "flores": LMEvalTask("flores", data_dir=bench, languages=["de"], **one),  # rolling log-likelihood
        # fewer documents than ranks: lm-eval cannot shard it (a rank without documents fails), so rank 0 scores it
        "mmlu_one": LMEvalTask("mmlu", name="mmlu_one", data_dir=bench, subjects=["anatomy"], limit=1, **one),
    }
    where = f"{out}/{mode}{distributed.rank()}"
    suite = Suite(tasks, averages={"ta": ["mmlu"], "la": ["xquad"]}, dtype="fp32")  # flores: lower is better
    flat = suite.evaluate(model, tok, out_dir=where, sharded=mode == "sharded")
    json.dump({"flat": flat, "counts": counts}, open(f"{where}.json", "w"))
""")


def _outputs(folder: Path) -> dict[str, str]:
    """Every file an evaluation wrote (samples, items.json, lm-eval's results), by relative path; lm-eval's
    results without its timings and environment, which differ between any two runs."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "lm_eval_tasks" not in path.parts:
            text = path.read_text()
            if path.name == "lm_eval_results.json":
                data = json.loads(text)
                data = {k: data[k] for k in ("results", "groups", "group_subtasks", "n-samples", "higher_is_better") if k in data}
                text = json.dumps(data, sort_keys=True)
            out[str(path.relative_to(folder))] = text
    return out


@pytest.mark.slow
def test_lm_eval_data_parallel_over_two_ranks_equals_one_rank(tmp_path, tiny_model_dir):
    """Suite.evaluate(sharded=True) on 2 gloo ranks: each rank scores about half of every request type
    (multiple choice, generation, rolling log-likelihood), and rank 0 records the same metrics, standard
    errors, per-item scores (items.json) and lm-eval samples as one process scoring everything; rank 1
    writes nothing and gets no metrics. A task that cannot shard runs on rank 0 alone. The tasks' documents split unevenly (3 per MMLU subject and XQuAD
    language), so lm-eval's padding of the shorter rank is exercised too."""
    from test_evaluation_lmeval import write_benchmarks

    bench = write_benchmarks(tmp_path / "bench")
    (bench / "flores200" / "devtest").mkdir(parents=True)
    lines = ["Der Hund schläft.", "Es regnet heute.", "Wir essen Brot.", "Das Haus ist alt."]
    (bench / "flores200" / "devtest" / "deu_Latn.devtest").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "worker.py").write_text(LM_EVAL_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [str(tmp_path / "worker.py"), str(tiny_model_dir), str(bench), str(tmp_path)]
    ranks = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in ([*ranks, *args, "sharded"], [sys.executable, *args, "one"])
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    one, r0, r1 = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one0", "sharded0", "sharded1"))
    assert r0["flat"] == one["flat"] and r1["flat"] == {}
    assert {"ta/mmlu", "la/xquad", "la/flores/de", "la/xquad_stderr", "ta/mmlu_one"} <= set(one["flat"]), sorted(one["flat"])
    ours, theirs = _outputs(tmp_path / "sharded0"), _outputs(tmp_path / "one0")
    assert sorted(ours) == sorted(theirs) and "items.json" in ours and any(p.endswith(".jsonl") for p in ours)
    for path, text in theirs.items():
        assert ours[path] == text, path
    assert not (tmp_path / "sharded1").exists()
    assert sorted(p.name for p in tmp_path.glob("whole-*")) == ["whole-one0", "whole-sharded0"]
    kinds = {"loglikelihood", "generate_until", "loglikelihood_rolling"}
    assert set(one["counts"]) == set(r0["counts"]) == set(r1["counts"]) == kinds
    for kind, total in one["counts"].items():
        shares = r0["counts"][kind], r1["counts"][kind]
        # every request once, plus lm-eval's padding of the shorter rank (a copy of its last request); mmlu_one's
        # 4 log-likelihood requests on rank 0 alone
        assert total <= sum(shares) <= total * 1.4 and all(total / 3 <= n <= total * 0.75 for n in shares), (kind, shares, total)


def test_auto_generation_batch_size_is_probed_at_the_requests_length(tiny_model, monkeypatch):
    """batch_size=auto on a model whose context is 32,768 tokens: the generation batch is probed at the longest
    prompt plus max_gen_toks (lm-eval's own probe would run at 32,768), and the answers are those of the batch
    size the probe found, given outright."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from cft.evaluation import harness

    model, tok = tiny_model
    probes = []
    real = HFLM._model_call

    def spy(self, inputs, *args, **kwargs):  # the probe's forward passes (generation goes through _model_generate)
        probes.append(tuple(inputs.shape))
        return real(self, inputs, *args, **kwargs)

    monkeypatch.setattr(HFLM, "_model_call", spy)
    contexts = ["Say abc.", "Repeat after me: one two three four five.", "x"]
    gen = {"until": ["\n"], "max_gen_toks": 7, "do_sample": False}

    def requests():
        return [Instance("generate_until", {}, (c, dict(gen)), i) for i, c in enumerate(contexts)]

    lm = harness.cft_hflm()(pretrained=model, tokenizer=tok, batch_size="auto", max_length=32768)
    answers = lm.generate_until(requests())
    longest = max(len(lm.tok_encode(c)) for c in contexts)
    assert lm.max_length == 32768 and 10 < longest < 100
    assert probes and {width for _, width in probes} == {longest + 7}, probes
    found = probes[-1][0]  # the batch size the probe settled on (64, lm-eval's largest, for this tiny model)
    probes.clear()
    fixed = harness.cft_hflm()(pretrained=model, tokenizer=tok, batch_size=found, max_length=32768)
    assert fixed.generate_until(requests()) == answers and probes == []
    assert any(answers)


# ---------------------------------------------------------------- downloading a sweep's checkpoints once


def _fake_hub_cache(hf_home: Path, repo: str) -> Path:
    """A model as the Hugging Face cache holds it after a download (what snapshot_download finds offline)."""
    folder = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    return snapshot


def test_download_true_fetches_every_checkpoint_of_the_sweep_once(tmp_path):
    """`train.py -m model=mistral strategy=lf_h2,gr5 download=true` composes the cells and fetches the
    Instruct model, the base (lf_h2 reads it) and the DES embedder, each once, then runs nothing; offline
    here, so the hub cache is laid out beforehand and snapshot_download resolves it without a network."""
    hf = tmp_path / "hf"
    repos = ["mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1", "sentence-transformers/LaBSE"]
    snapshots = {repo: _fake_hub_cache(hf, repo) for repo in repos}
    env = {"HF_HOME": str(hf), "HF_HUB_OFFLINE": "1", "CFT_GPUS": "0"}
    full = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path / "outputs"), **env}
    full.pop("CFT_SWEEP_ID", None)
    args = [str(REPO / "train.py"), "-m", "model=mistral", "strategy=lf_h2,gr5", "download=true"]
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for repo, snapshot in snapshots.items():
        assert proc.stdout.count(f" {repo} -> {snapshot}") == 1, proc.stdout
    assert "cft: 3 checkpoint(s) on disk for 2 cell(s)" in proc.stdout
    assert not (tmp_path / "outputs").exists()
    from cft.models import download

    # Only what a cell reads: a gr5 cell with layer changes off needs the Instruct model (and the embedder) alone.
    cell = {
        "model": {"name": "m", "base": "org/base", "instruct": "org/instruct"},
        "phase1_data": {"use_instruct_checkpoint": True},
        "similarity": {"des": False, "mpd": False, "layer_changes": False},
        "strategy": {"_target_": "cft.strategies.gr.GenerativeReplay"},
    }
    assert list(download.needed([cell])) == ["org/instruct"]
    lf = {**cell, "strategy": {"_target_": "cft.strategies.lf_h2.ChangeRankedFreeze"}}
    assert list(download.needed([cell, lf])) == ["org/instruct", "org/base"]


def _readme_cluster_commands() -> list[str]:
    """The train.py commands of the README's "Running the paper on a cluster" (download=true apart: it needs
    the hub, and test_download_true_fetches_every_checkpoint_of_the_sweep_once runs it offline)."""
    text = (REPO / "README.md").read_text()
    start = text.index("## Running the paper on a cluster")
    section = text[start : text.index("\n## ", start + 10)]
    commands = []
    for block in section.split("```bash")[1:]:
        joined = block[: block.index("```")].replace("\\\n", " ")
        lines = [line.strip() for line in joined.splitlines()]
        commands += [line for line in lines if line and not line.startswith("#") and "download=true" not in line]
    return commands


@pytest.mark.slow
def test_the_readme_cluster_commands_compose(tmp_path):
    """Each command of the README's cluster section, with check=true, composes every cell: torchrun's as
    its ranks compose them (WORLD_SIZE; CFT_GPUS stands in for the node's GPUs), SLURM's on a login node
    without GPUs (the jobs' ranks and GPUs come from the launcher's settings)."""
    import shlex

    commands = _readme_cluster_commands()
    assert len(commands) == 5, commands
    runs = []
    for command in commands:
        words = shlex.split(command)
        if words[0] == "torchrun":
            nodes = int(words[words.index("--nnodes") + 1]) if "--nnodes" in words else 1
            ranks = nodes * int(words[words.index("--nproc_per_node") + 1])
            runs.append((words[words.index("train.py") + 1 :], {"WORLD_SIZE": str(ranks), "CFT_GPUS": "8"}))
        else:
            assert words[:2] == ["python", "train.py"], command
            runs.append((words[2:], {"CFT_GPUS": "0"}))
    for (args, _), proc in zip(runs, _checks(runs, tmp_path)):
        strategies = next(w for w in args if w.startswith("strategy=")).split("=")[1].split(",")
        assert f"config OK: {2 * len(strategies)} cell(s)" in proc.stdout, (args, proc.stderr[-2000:])
        # Offline, with no checkpoint downloaded, the preflight (Reliability) names the missing models and
        # nothing else: every other check of every cell passed.
        errors = [line for line in proc.stderr.splitlines() if line.startswith("cft: error:")]
        assert proc.returncode == (2 if errors else 0), (args, proc.stderr[-2000:])
        assert all(line.startswith("cft: error: preflight: ") and "the hub is offline" in line for line in errors), errors
        for model in ("mistral", "llama"):  # the design card's cells, as the README's design-card block lists them
            for strategy in strategies:
                assert f"instruct-multialpaca/{model}/{strategy}/seed0" in proc.stdout
    assert not (tmp_path / "outputs").exists()  # check=true runs nothing


def test_zero_stage_auto_is_two_where_the_model_fits_and_three_above(tmp_path, monkeypatch):
    """train=paper's multi-GPU DeepSpeed config says `stage: auto`; the recipe makes it ZeRO-2 where the
    estimate fits the GPUs (ZeRO-3's own keys dropped) and ZeRO-3 where it does not."""
    from helpers import compose

    from cft.recipes.train import TrainRecipe
    from cft.strategies.base import Strategy

    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("CFT_GPUS", "8")
    cfg = compose(["model=tiny", "train=paper", "train.micro_batch_size=2"])
    recipe = TrainRecipe(cfg, run_dir=tmp_path / "run", choices={})
    recipe.strategy = Strategy()
    llama = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256}
    recipe.shape = {**llama, "num_attention_heads": 32, "num_key_value_heads": 8}
    stages = {}
    for gb in ("80", "40"):
        monkeypatch.setenv("CFT_GPU_MEMORY_GB", gb)
        zero = recipe._train("phase2")["deepspeed"]["zero_optimization"]
        stages[gb] = zero["stage"]
        assert not any(k.startswith("stage3_") for k in zero) or zero["stage"] == 3
    assert stages == {"80": 2, "40": 3}
