"""End-to-end behaviour of the spine: train.py, evaluate.py, sweeps, caching, recording, bad input."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import SMALL, run_folders, run_script, write_jsonl


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    proc = run_script("train.py", [*SMALL, "sweep_id=t1"], root)
    return root, proc


def test_demo_run_records_everything(demo_run):
    root, proc = demo_run
    (folder,) = run_folders(root / "t1")
    # Named by its choices: <sweep>/<p1>-<p2>/<model>/<strategy>/<plain overrides>/seed<k>
    rel = folder.relative_to(root / "t1").parts
    assert rel[:3] == ("demo-demo", "tiny", "full") and rel[-1] == "seed0"
    for name in ("config.yaml", "run_meta.json", "metrics.json", "DONE", "checkpoint/config.json"):
        assert (folder / name).exists(), name
    meta = json.loads((folder / "run_meta.json").read_text())
    assert meta["choices"]["strategy"] == "full" and meta["seed"] == 0 and meta["sweep_id"] == "t1"
    assert "torch" in meta["versions"] and "git_sha" in meta
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["train"]["max_steps"] == 3  # resolved config, overrides included
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in (
        "phase1/ta/repeat",
        "phase1/la/repeat/es",
        "phase2/ta/number",
        "phase2/la/reverse/de",
        "phase1/ta_avg",
        "phase2/ta_avg",
        "phase2/la_avg",
        "train/phase2/steps",
        "data/phase2/n/es",
    ):
        assert key in metrics, key
    assert metrics["train/phase2/steps"] == 3
    assert 0.0 < metrics["des"] <= 1.0  # DES of the Phase-1 and Phase-2 data, recorded by every run
    assert metrics["data/phase2/n/es"] == 12  # 3 tasks x 4 examples
    from cft.run import keys

    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if keys.parse(k) or k.endswith("_avg"))
    # What each average covers: every demo task (the demo suite defines no narrower average).
    assert metrics["phase2/ta_avg_tasks"] == 3 and metrics["phase2/ta_avg_over"] == "repeat,reverse,number"
    # TA average is the mean of the per-task English scores.
    tas = [metrics[f"phase2/ta/{t}"] for t in ("repeat", "reverse", "number")]
    assert metrics["phase2/ta_avg"] == pytest.approx(sum(tas) / 3)
    # The summary table is printed at the end.
    assert "phase 1" in proc.stdout and "ta_avg" in proc.stdout
    # DONE is written after metrics.json.
    assert (folder / "DONE").stat().st_mtime_ns >= (folder / "metrics.json").stat().st_mtime_ns
    # Layer changes base -> Phase 1 -> Phase 2, ranked per module type (2 layers x 7 modules x 2 transitions).
    import csv

    rows = list(csv.DictReader((folder / "layer_changes.csv").open()))
    assert {r["transition"] for r in rows} == {"base->phase1", "phase1->phase2"}
    assert {r["rank"] for r in rows if r["module"] == "q_proj"} == {"1", "2"}
    # Where the Phase-1 model is, for analyses that need it.
    assert "phase1_ref" in json.loads((folder / "run_meta.json").read_text())
    # One offline W&B run in the run folder.
    assert len(list((folder / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    # Every score and average carries its standard error; both phases' per-item scores are in the run
    # folder, on the same items; the change of each average has its paired interval; one precision.
    scored = [k for k in metrics if (p := keys.parse(k)) and p.headline]
    scored += [k for k in metrics if k.startswith(keys.PHASES) and k.rsplit("/", 1)[-1] in keys.HEADLINE_AVERAGES]
    assert len(scored) >= 16 and all(isinstance(metrics.get(keys.stderr(k)), float) for k in scored)
    before, after = (json.loads((folder / "eval" / p / "items.json").read_text()) for p in keys.PHASES)
    assert set(before) == set(after) and all(set(before[k]) == set(after[k]) for k in before)
    for name in keys.HEADLINE_AVERAGES:
        low, high = keys.interval(keys.delta(name))
        assert metrics[low] <= metrics[keys.delta(name)] <= metrics[high]
    assert metrics["phase1/eval/dtype"] == metrics["phase2/eval/dtype"] == "float32"
    assert "95% interval (paired)" in proc.stdout and " ± " in proc.stdout


def test_analysis_of_the_demo_run_prints_errors_and_intervals(demo_run):
    root, _ = demo_run
    run_script("analyze.py", ["sweep_id=t1", "tracking.mode=disabled", "embedder=hashing"], root)
    out = root / "t1" / "analysis"
    assert (
        " ± " in (out / "summary.md").read_text()
        and "standard error over the evaluated items" in (out / "summary.md").read_text()
    )
    rows = (out / "strategies.csv").read_text().splitlines()
    assert rows[0].endswith(",se,ci_low,ci_high,significant")
    change = next(r for r in rows if ",full," in r and ",ΔLA," in r).split(",")
    assert change[-3] != "" and change[-2] != ""  # the paired interval of Phase 2 - Phase 1


def test_rerun_of_finished_cell_is_skipped(demo_run):
    root, _ = demo_run
    (folder,) = run_folders(root / "t1")
    before = (folder / "metrics.json").read_text()
    proc = run_script("train.py", [*SMALL, "sweep_id=t1"], root)
    assert "already finished" in proc.stdout + proc.stderr
    assert (folder / "metrics.json").read_text() == before


def test_same_folder_with_other_config_is_refused(demo_run):
    root, _ = demo_run
    # Plain overrides name a subfolder, so a conflict arises when conf/ files change between two runs:
    # simulate that by editing the recorded config.
    (folder,) = run_folders(root / "t1")
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg["train"]["lr"] = 123.0
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_script("train.py", [*SMALL, "sweep_id=t1"], root, check=False)
    assert proc.returncode == 2
    assert "different config" in proc.stderr and "train.lr" in proc.stderr


def test_evaluate_py_on_run_dir(demo_run):
    root, _ = demo_run
    (folder,) = run_folders(root / "t1")
    run_script(
        "evaluate.py",
        [
            f"run_dir={folder}",
            "eval.tasks.demo.per_task_language=1",
            "eval.tasks.demo.languages=[en,es]",
            "eval.tasks.demo.max_new_tokens=3",
        ],
        root,
    )
    scores = json.loads((folder / "evaluations" / "demo" / "metrics.json").read_text())
    assert set(scores) >= {"ta/repeat", "la/repeat/es", "ta_avg", "la_avg"}


def test_bare_evaluate_py_takes_the_latest_finished_run(demo_run, tmp_path):
    root, _ = demo_run
    (folder,) = run_folders(root / "t1")
    proc = run_script(
        "evaluate.py",
        ["eval.tasks.demo.per_task_language=1", "eval.tasks.demo.languages=[en]", "eval.tasks.demo.max_new_tokens=2"],
        root,
    )
    assert f"evaluating the latest finished run, {folder}" in proc.stdout + proc.stderr
    assert set(json.loads((folder / "evaluations" / "demo" / "metrics.json").read_text())) >= {"ta/repeat", "ta_avg"}
    empty = run_script("evaluate.py", [], tmp_path, check=False)
    assert empty.returncode == 2 and f"no finished run under {tmp_path}: give run_dir=" in empty.stderr


def test_multirun_trains_phase1_once(tmp_path):
    proc = run_script("train.py", ["-m", *SMALL, "phase2_data.languages=[es],[de]"], tmp_path)
    out = proc.stdout + proc.stderr
    sweep = next(line.split("sweep_id=")[1].split()[0] for line in out.splitlines() if "cft: sweep_id=" in line)
    folders = run_folders(tmp_path / sweep)
    assert len(folders) == 2 and all((f / "DONE").exists() for f in folders)
    assert len(list((tmp_path / sweep).rglob("offline-run-*/run-*.wandb"))) == 2
    cache = tmp_path / "cache"
    assert len([p for p in (cache / "phase1").iterdir() if p.is_dir()]) == 1
    assert len([p for p in (cache / "eval").iterdir() if p.is_dir()]) == 1
    assert "Reusing phase1 artifact" in out and "Reusing eval artifact" in out
    # Both cells report the same (shared) Phase-1 scores.
    m = [json.loads((f / "metrics.json").read_text()) for f in folders]
    assert m[0]["phase1/ta_avg"] == m[1]["phase1/ta_avg"]
    assert {tuple(sorted(k for k in x if k.startswith("data/phase2/n/"))) for x in m} == {
        ("data/phase2/n/es",),
        ("data/phase2/n/de",),
    }
    # The same command again resumes the same sweep: everything is skipped.
    again = run_script("train.py", ["-m", *SMALL, "phase2_data.languages=[es],[de]"], tmp_path)
    assert f"sweep_id={sweep}" in again.stdout and (again.stdout + again.stderr).count("already finished") == 2


NO_P1 = [o for o in SMALL if not o.startswith("phase1_data.")]


def test_instruct_phase1_skips_training(tmp_path, tiny_model_dir):
    # tracking=none: this test asserts nothing of W&B (test_demo_run_records_everything does), which costs a run ~2 s of CPU.
    args = [*NO_P1, "phase1_data=instruct", f"model.instruct={tiny_model_dir}", "tracking=none", "sweep_id=ins"]
    proc = run_script("train.py", args, tmp_path)
    (folder,) = run_folders(tmp_path / "ins")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "phase1/ta_avg" in metrics and "train/phase2/steps" in metrics
    assert not any(k.startswith("train/phase1/") for k in metrics)
    assert not (tmp_path / "cache" / "phase1").exists()
    assert "no training; using the Instruct checkpoint" in proc.stdout + proc.stderr


def test_instruct_without_checkpoint_is_refused(tmp_path):
    proc = run_script("train.py", [*NO_P1, "phase1_data=instruct", "sweep_id=bad"], tmp_path, check=False)
    assert proc.returncode == 2 and "needs an Instruct checkpoint" in proc.stderr


@pytest.mark.parametrize(
    "records, message",
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', ":2: invalid JSON"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', ":2: missing field 'output'"),
        ('{"instruction": "", "output": "b"}\n', ":1: field 'instruction' (instruction) is empty"),
        ('{"instruction": "a", "output": 3}\n', ":1: field 'output' must be a string"),
        ("", "is empty"),
    ],
    ids=["bad-json", "missing-field", "empty-field", "wrong-type", "empty-dataset"],
)
def test_bad_data_stops_before_training(tmp_path, records, message):
    data = tmp_path / "p1.jsonl"
    data.write_text(records)
    proc = run_script("train.py", [*SMALL, f"phase1_data.path={data}", "sweep_id=bad"], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(data) in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache" / "phase1").exists()  # nothing was trained


def test_missing_data_file(tmp_path):
    proc = run_script("train.py", [*SMALL, f"phase2_data.path={tmp_path}/nope.json", "sweep_id=bad"], tmp_path, check=False)
    assert proc.returncode == 2 and f"{tmp_path}/nope.json: data file not found" in proc.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("strategy=nope", "cft: error: strategy=nope: no such option in config group 'strategy'; available: cofitune"),
        ("train.lrr=1", "cft: error: train.lrr: no such key in this config (Key 'lrr' is not in struct)"),
        ("train.attn_implementation=no_such_kernel", "train.attn_implementation=no_such_kernel: Specified"),
    ],
)
def test_unknown_config_option(tmp_path, override, message):
    proc = run_script("train.py", [*SMALL, override], tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_local_data_file_layout(tmp_path):
    """A local JSONL with null inputs trains through the same path."""
    data = write_jsonl(tmp_path / "en.jsonl", [{"instruction": f"Say {i}", "input": None, "output": str(i)} for i in range(16)])
    run_script("train.py", [*SMALL, f"phase1_data.path={data}", "sweep_id=loc", "similarity.mpd=true", "tracking=none"], tmp_path)
    (folder,) = run_folders(tmp_path / "loc")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["data/phase1/n/en"] == 16
    # MPD asked for: the base fine-tuned on the Phase-2 data alone is a cached artifact of its own.
    assert metrics["mpd"] > 0 and "mpd/layer/0" in metrics
    assert len(list((tmp_path / "cache" / "phase2_alone").glob("*/DONE"))) == 1


@pytest.mark.integration
def test_eval_local_suite_switches_off_tasks_without_local_copies(shared_data):
    from helpers import compose

    from cft.recipes.train import build_eval_tasks

    cfg = compose(["eval=local", f"eval.data_dir={shared_data}"])
    assert sorted(build_eval_tasks(cfg.eval)) == ["alpaca_eval", "hellaswag", "ifeval", "mmlu", "xquad"]
    cfg = compose(["eval=local", f"eval.data_dir={shared_data}", "eval.tasks.mmlu=null"])
    assert "mmlu" not in build_eval_tasks(cfg.eval)


def test_per_phase_train_overrides_as_typed():
    from helpers import compose

    from cft.recipes.train import phase_train_config

    cfg = compose(["train.phase2.lr=1e-5", "train.phase1.max_steps=7"])
    assert phase_train_config(cfg.train, "phase2")["lr"] == 1e-5
    assert phase_train_config(cfg.train, "phase1")["lr"] == cfg.train.lr  # Phase 1 (and its cache key) untouched
    assert phase_train_config(cfg.train, "phase1")["max_steps"] == 7
    assert phase_train_config(cfg.train, "phase2")["max_steps"] == cfg.train.max_steps


def test_summary_table_by_hand():
    """The table train.py prints: averages first, the change per task, a task without a score
    marked as not computed (never 0)."""
    from cft.evaluation.summary import summary_table

    metrics = {
        "phase1/ta/ifeval": 0.5,
        "phase2/ta/ifeval": 0.25,
        "phase1/ta_avg": 0.5,
        "phase2/ta_avg": 0.25,
        "phase1/ta/ifeval:inst_loose": 0.9,
        "phase1/not_computed/ta/alpaca_eval": "no judge",
        "phase2/not_computed/ta/alpaca_eval": "no judge",
        "train/phase2/steps": 3,
    }
    rows = [line.split() for line in summary_table(metrics).splitlines()[2:]]
    assert rows == [
        ["ta_avg", "0.500", "0.250", "-0.250"],
        ["ta/alpaca_eval", "not", "computed", "not", "computed", "-"],
        ["ta/ifeval", "0.500", "0.250", "-0.250"],
    ]
