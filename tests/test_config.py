"""Typed configs checked before any work (issue 13), and what a model choice composes (issue 14).

Every bad value stops train.py with exit status 2, one line naming the key, the value and what is
allowed, no traceback, and nothing written to the output root or the cache."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import REPO, SMALL, compose
from omegaconf import OmegaConf

# (override, what the one-line message must contain)
BAD = [
    ("train.lr=abc", "train.lr='abc': input should be a valid number"),
    ("train.lr=-1", "train.lr=-1: input should be greater than 0"),
    ("train.lr=0", "train.lr=0: input should be greater than 0"),
    ("train.phase2.lr=-1e-5", "train.phase2.lr=-1e-05: input should be greater than 0"),
    ("train.micro_batch_size=0", "train.micro_batch_size=0: input should be greater than or equal to 1"),
    ("train.global_batch_size=0", "train.global_batch_size=0: input should be greater than or equal to 1"),
    (
        "train.micro_batch_size=5",
        "train.global_batch_size=16 must be a multiple of the world size (1) x train.micro_batch_size (5)",
    ),
    ("train.max_steps=-1", "train.max_steps=-1: input should be greater than or equal to 1"),
    ("train.max_steps=0", "train.max_steps=0: input should be greater than or equal to 1"),
    ("train.epochs=0", "train.epochs=0: input should be greater than or equal to 1"),
    ("seed=-1", "seed=-1: input should be greater than or equal to 0"),
    ("seed=4294967296", "seed=4294967296: input should be less than or equal to 4294967295"),
    ("+train.lrr=1", "train.lrr=1: unknown key. Did you mean train.lr?"),
    ("++train.lrr=1", "train.lrr=1: unknown key. Did you mean train.lr?"),
    ("+strategy.nope=1", "strategy.nope=1: unknown key"),
    ("strategy=lf_h1 strategy.k=0", "strategy.k=0: input should be greater than or equal to 1"),
    ("strategy=gr5 strategy.ratio=1.5", "strategy.ratio=1.5: input should be less than or equal to 1"),
    ("phase2_data.on_bad_record=ignore", "phase2_data.on_bad_record='ignore': input should be 'error' or 'skip'"),
    ("tracking.mode=sometimes", "tracking.mode='sometimes': input should be 'offline', 'online' or 'disabled'"),
    ("model.build.num_hidden_layers=0", "model.build.num_hidden_layers=0: input should be greater than or equal to 1"),
    ("sweep_id=../../escape", "sweep_id='../../escape' contains a path separator"),
    ("sweep_id=a/b", "sweep_id='a/b' contains a path separator"),
    ("sweep_id=.hidden", "sweep_id='.hidden' starts with a dot"),
]


@pytest.fixture(scope="module")
def rejected(tmp_path_factory):
    """Run every bad override through train.py (concurrently: each is a short process that stops at the check)."""
    root = tmp_path_factory.mktemp("bad")

    def run(case):
        override, _ = case
        out = root / str(abs(hash(override)))
        out.mkdir()
        env = {**os.environ, "CFT_OUTPUT_ROOT": str(out / "outputs"), "OMP_NUM_THREADS": "1"}
        env.pop("CFT_SWEEP_ID", None)
        proc = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *override.split()],
            cwd=out,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return out, proc

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip([c[0] for c in BAD], pool.map(run, BAD)))


@pytest.mark.parametrize("override,message", BAD, ids=[c[0] for c in BAD])
def test_a_bad_value_stops_before_any_work_with_one_line(rejected, override, message):
    out, proc = rejected[override]
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cft: error:")]
    assert any(message in line for line in errors), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (out / "outputs").exists(), "nothing may be written to the output root or the cache"
    assert sorted(p.name for p in out.iterdir()) == [], "nor next to it"


def test_a_bad_value_in_one_cell_stops_the_sweep_before_its_first_cell(tmp_path):
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path / "outputs")}
    env.pop("CFT_SWEEP_ID", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "strategy=full,lf_h2", "train.lr=1e-3,-1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "cft: error: train.lr=-1: input should be greater than 0" in proc.stderr
    assert "[cell(s): strategy=full train.lr=-1; strategy=lf_h2 train.lr=-1]" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "outputs").exists()


def test_strategy_options_are_checked_against_the_model_shape_before_phase_0(tmp_path):
    """lf_h2 k=3 on the 2-layer demo model stops before the demo base is built (phase 0 takes minutes)."""
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path / "outputs")}
    env.pop("CFT_SWEEP_ID", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "strategy=lf_h2", "strategy.k=3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "strategy.k=3 must be an integer from 1 to 2 (the model has 2 layers, ranked per head)" in proc.stderr
    assert not (tmp_path / "outputs" / "cache" / "base").exists()
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the design-card command (issue 14)

PAPER_TASKS = {"ifeval", "alpaca_eval", "mmlu", "hellaswag", "xquad", "mlqa", "xlsum", "global_mmlu_lite"}
MULTIALPACA = {"fr", "ar", "de", "es", "id", "ja", "ko", "pt", "ru", "th", "vi"}


@pytest.mark.parametrize("model", ["mistral", "llama"])
@pytest.mark.parametrize("strategy", ["gr5", "gr10", "lf_h2", "lora", "er10"])
def test_the_design_card_command_composes_the_papers_cells(model, strategy):
    """python train.py -m model=mistral,llama strategy=gr5,gr10,lf_h2,lora,er10: each cell is the paper's."""
    cfg = compose([f"model={model}", f"strategy={strategy}"], hydra=True)
    c = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    hub = {"mistral": ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1"),
           "llama": ("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct")}[model]  # fmt: skip
    assert (c["model"]["base"], c["model"]["instruct"]) == hub
    assert c["phase1_data"] == {"name": "instruct", "use_instruct_checkpoint": True}  # Table 3: the Instruct model
    assert c["phase2_data"]["name"] == "multialpaca" and set(c["phase2_data"]["languages"]) == MULTIALPACA
    assert c["phase2_data"]["balance"] is True and c["phase2_data"]["counterpart"]["name"] == "alpaca"
    train = c["train"]
    assert (train["lr"], train["epochs"], train["global_batch_size"], train["warmup_steps"]) == (2e-5, 4, 16, 10)
    assert (train["scheduler"], train["weight_decay"], train["max_length"]) == ("cosine", 0.0, 1024)
    assert train["deepspeed"] is None  # one process; ZeRO-3 bf16 when launched on several GPUs (below)
    assert train["multi_gpu_deepspeed"]["zero_optimization"]["stage"] == "auto"  # ZeRO-2 where it fits, else 3
    assert set(c["eval"]["tasks"]) == PAPER_TASKS
    assert c["embedder"]["_target_"] == "cft.measures.similarity.SentenceTransformerEmbedder"
    assert c["embedder"]["model"] == "sentence-transformers/LaBSE"
    assert c["strategy"]["_target_"].startswith("cft.strategies.")
    if strategy == "lf_h2":
        assert (c["strategy"]["k"], c["strategy"]["selection"], c["strategy"]["change"]) == (10, "per_head", "norm")
    if strategy in ("gr5", "gr10", "er10"):
        assert c["strategy"]["ratio"] == {"gr5": 0.05, "gr10": 0.1, "er10": 0.1}[strategy]
    assert c["seed"] == 0 and dict(cfg.hydra.runtime.choices)["setup"] == "paper"
    from cft.config.schema import check_train

    assert check_train(c) == []


def test_the_model_choice_brings_the_setup_and_the_command_line_wins(monkeypatch):
    demo = OmegaConf.to_container(compose([]), resolve=True)
    assert demo["model"]["name"] == "demo" and demo["phase1_data"]["name"] == "demo_en" and demo["train"]["lr"] == 2e-3
    tiny = compose(["model=tiny"])
    assert tiny.phase2_data.name == "demo_multi" and list(tiny.eval.tasks) == ["demo"]
    smol = compose(["model=smollm2", "phase1_data=alpaca", "train.lr=1e-4"])
    assert (smol.phase1_data.name, smol.phase2_data.name, smol.train.lr, smol.train.epochs) == ("alpaca", "multialpaca", 1e-4, 4)
    assert compose(["model=mistral", "setup=demo"]).phase1_data.name == "demo_en"
    # Launched on several GPUs (torchrun sets WORLD_SIZE), train=paper is a DeepSpeed bf16 run (stage: cft.training.memory).
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("CFT_GPUS", "8")
    deepspeed = OmegaConf.to_container(compose(["model=llama"]).train, resolve=True)["deepspeed"]
    assert deepspeed["zero_optimization"]["stage"] == "auto" and deepspeed["bf16"] == {"enabled": "auto"}
    zero3 = OmegaConf.to_container(compose(["model=llama", "train=deepspeed_zero3"]).train, resolve=True)["deepspeed"]
    assert zero3["zero_optimization"]["stage"] == 3


def test_settings_that_cannot_change_a_result_stay_out_of_cache_keys():
    from cft.recipes.common import phase_train_config
    from cft.run.artifacts import key_of
    from cft.run.folder import comparable

    def key(*overrides):
        train = phase_train_config(compose([*SMALL, *overrides]).train, "phase1")
        return key_of(comparable({"train": train}))

    base = key()
    assert key("train.checkpoint_every=5", "train.keep_checkpoints=3", "train.log_every=1") == base
    assert key("train.lr=1e-3") != base


def test_train_settings_reject_unknown_keys():
    from cft.errors import ConfigError
    from cft.training.loop import TrainSettings

    with pytest.raises(ConfigError, match=r"train: unknown setting\(s\) \['lrr'\]"):
        TrainSettings.from_config({"lr": 1e-3, "lrr": 1})


@pytest.mark.parametrize(
    "script,override,message",
    [
        ("evaluate.py", "eval.limit=0", "eval.limit=0: input should be greater than or equal to 1"),
        ("evaluate.py", "+threads=0", "threads=0: input should be greater than or equal to 1"),
        ("translate.py", "batch_size=0", "batch_size=0: input should be greater than or equal to 1"),
        ("translate.py", "fields=[body]", "fields[0]='body': input should be 'system', 'instruction', 'input' or 'output'"),
    ],
)
def test_every_entry_script_checks_its_config_first(tmp_path, script, override, message):
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path / "outputs")}
    proc = subprocess.run(
        [sys.executable, str(REPO / script), override], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "experiment,cell,expect",
    [
        ("paper_table1", ["model=llama", "phase1_data=alpaca", "phase2_data=mopenorca"], ("llama", "alpaca", "mopenorca")),
        ("paper_table3", ["model=mistral", "strategy=gr10"], ("mistral", "instruct", "multialpaca")),
        ("paper_table_c6", ["strategy=lf_h2"], ("mistral", "instruct", "mopenorca")),
    ],
)
def test_each_paper_table_has_an_experiment_whose_cells_are_the_papers(experiment, cell, expect):
    from cft.config.schema import check_train

    cfg = compose([f"experiment={experiment}", *cell], hydra=True)
    c = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    assert (c["model"]["name"], c["phase1_data"]["name"], c["phase2_data"]["name"]) == expect
    assert c["train"]["lr"] == 2e-5 and set(c["eval"]["tasks"]) == PAPER_TASKS and c["sweep_id"].startswith("paper_table")
    assert check_train(c) == []


def test_a_bad_counterpart_record_stops_the_cell_before_any_model_work(tmp_path):
    """The English counterpart (GR prompts, ER data) is loaded and checked in setup, not when Phase 2 starts."""
    from helpers import run_script, write_jsonl

    bad = write_jsonl(tmp_path / "en.jsonl", [{"instruction": "Repeat: a", "output": "a"}, {"instruction": "no output"}])
    proc = run_script(
        "train.py", [*SMALL, "strategy=er10", f"phase2_data.counterpart.path={bad}", "sweep_id=cp"], tmp_path, check=False
    )
    assert proc.returncode == 2
    assert (
        f"cft: error: {bad}:2: missing field 'output' (output) (to skip such records and count them, "
        "set phase2_data.counterpart.on_bad_record=skip)" in proc.stderr
    )
    cache = tmp_path / "cache"
    assert not (cache / "phase1").exists() and not (cache / "base").exists(), "no model work before the check"
    assert not (tmp_path / "cp").exists()  # the preflight stops it before Hydra makes the run folder
