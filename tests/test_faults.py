"""Fault injection: each fault of the README's Reliability table planted on the demo pipeline (the tiny
settings of helpers.SMALL), with real files and processes. Each test asserts the message, the exit
status, and that nothing finished is lost (a rerun does not retrain what was kept; finished cells keep
DONE and metrics).

This module: damaged artifacts (library level, end to end, over two ranks), paths that would leave their
root, a second process on a cell, unreadable or missing checkpoints, inputs that would train on the wrong
data, Hydra's errors, the preflight, and the evaluation key. Disks that refuse writes: test_faults_disk.py;
faults in sweeps: test_faults_sweep.py (three modules, so that xdist's workers share them); what they
share: faults_common.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from faults_common import (
    ARGS,
    REPO,
    _hold,
    _release,
    _safetensors_bytes,
    artifact,
    damage,
    log_lines,
    one_error,
    train,
)
from helpers import SMALL, compose, run_folders, run_script, write_jsonl

from cft.run import artifacts, layout

# ---------------------------------------------------------------- artifacts verify themselves (library level)


def _build_files(files: dict[str, bytes]):
    built = []

    def build(tmp: Path) -> None:
        built.append(tmp)
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)

    return build, built


def test_manifest_in_done_lists_every_file(tmp_path):
    build, _ = _build_files({"model/model.safetensors": _safetensors_bytes(), "metrics.json": b'{"a": 1}'})
    path = artifacts.cached(tmp_path, "phase1", {"k": 1}, build)
    manifest = json.loads((path / "DONE").read_text())
    assert manifest["algorithm"] == "xxh3_64"
    assert set(manifest["files"]) == {"model/model.safetensors", "metrics.json", "spec.json"}
    entry = manifest["files"]["metrics.json"]
    assert entry == {"size": 8, "xxh3_64": artifacts.checksum(path / "metrics.json")}


@pytest.mark.parametrize("how", ["truncate", "scramble", "bitflip", "missing", "truncated_json", "truncated_manifest"])
def test_damaged_artifact_is_named_set_aside_and_rebuilt(tmp_path, caplog, how):
    """Every kind of damage is found on reuse, named, moved to .damaged/ (kept) and rebuilt, once."""
    files = {"model/model.safetensors": _safetensors_bytes(), "metrics.json": json.dumps({"ta_avg": 0.5}).encode()}
    build, built = _build_files(files)
    path = artifacts.cached(tmp_path, "phase1", {"k": how}, build)
    target = {"truncated_json": "metrics.json", "truncated_manifest": "DONE"}.get(how, "model/model.safetensors")
    if how == "missing":
        (path / target).unlink()
    elif how in ("truncated_json", "truncated_manifest"):
        (path / target).write_bytes((path / target).read_bytes()[:-5])
    else:
        damage(path / target, how)
    with caplog.at_level(logging.INFO, logger="cft.run.artifacts"):
        again = artifacts.cached(tmp_path, "phase1", {"k": how}, build)
    assert again == path and len(built) == 2  # rebuilt once
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"Damaged phase1 artifact {path}" in warning and target in warning and "rebuilding it" in warning
    reason = {"missing": "missing", "bitflip": "checksum", "scramble": "checksum", "truncated_manifest": "manifest"}
    assert reason.get(how, "truncated") in warning
    (kept,) = (tmp_path / "phase1" / ".damaged").iterdir()
    assert kept.name.startswith(path.name) and str(kept) in warning
    assert (kept / target).exists() != (how == "missing")  # the damaged copy is kept as it was
    assert (path / "model/model.safetensors").read_bytes() == files["model/model.safetensors"]
    assert artifacts.verify(path).ok
    artifacts.cached(tmp_path, "phase1", {"k": how}, build)
    assert len(built) == 2  # sound again: reused


def test_checksums_read_once_per_process_and_a_rewrite_is_seen(tmp_path):
    build, _ = _build_files({"model.safetensors": _safetensors_bytes()})
    path = artifacts.cached(tmp_path, "phase1", {"k": 1}, build)
    assert artifacts.verify(path).bytes_hashed == 0  # built in this process: checksummed while building
    artifacts._VERIFIED.clear()  # as a new process sees it
    first = artifacts.verify(path)
    assert first.ok and first.bytes_hashed > 0
    assert artifacts.verify(path).bytes_hashed == 0  # unchanged: not read again
    damage(path / "model.safetensors", "bitflip")  # same size, new mtime
    assert "checksum" in artifacts.verify(path).problems[0]


def test_size_mode_checks_sizes_always_and_checksums_small_files(tmp_path, monkeypatch):
    big = _safetensors_bytes()
    build, _ = _build_files({"model.safetensors": big, "metrics.json": b'{"ta_avg": 0.5}'})
    path = artifacts.cached(tmp_path, "phase1", {"k": 1}, build)
    monkeypatch.setattr(artifacts, "CHEAP_BYTES", len(big) - 1)  # the model counts as large here
    artifacts._VERIFIED.clear()
    damage(path / "model.safetensors", "bitflip")
    assert artifacts.verify(path, "size").ok  # a same-size change of a large file passes in size mode ...
    assert not artifacts.verify(path, "checksum").ok  # ... and not in checksum mode
    (path / "metrics.json").write_bytes(b'{"ta_avg": 0.9}')  # same size, small file: checksummed anyway
    assert any("metrics.json: checksum" in p for p in artifacts.verify(path, "size").problems)
    damage(path / "model.safetensors", "truncate")
    assert any("truncated" in p for p in artifacts.verify(path, "size").problems)


def test_artifact_from_before_manifests_is_adopted_when_sound_and_rebuilt_when_not(tmp_path, caplog):
    """An old artifact (empty DONE) is checked by its files' own structure: sound -> manifest written;
    a truncated JSON or safetensors file -> damaged, set aside, rebuilt."""
    files = {"model.safetensors": _safetensors_bytes(), "metrics.json": b'{"ta_avg": 0.5}', "mean.npy": b""}
    import numpy as np

    def build(tmp: Path) -> None:
        for rel, data in files.items():
            (tmp / rel).write_bytes(data)
        np.save(tmp / "mean.npy", np.arange(4.0))

    for kind in ("good", "bad_json", "bad_model"):
        folder = tmp_path / kind / artifacts.key_of({"k": 1})
        folder.mkdir(parents=True)
        build(folder)
        (folder / "DONE").write_text("")  # as cft wrote it before manifests
    (tmp_path / "bad_json" / artifacts.key_of({"k": 1}) / "metrics.json").write_bytes(b'{"ta_av')
    model = tmp_path / "bad_model" / artifacts.key_of({"k": 1}) / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-8])
    rebuilt = []
    with caplog.at_level(logging.INFO, logger="cft.run.artifacts"):
        for kind in ("good", "bad_json", "bad_model"):
            path = artifacts.cached(tmp_path, kind, {"k": 1}, lambda tmp, k=kind: (rebuilt.append(k), build(tmp)))
            assert artifacts.verify(path).ok and not artifacts.verify(path).legacy  # a manifest now
    assert rebuilt == ["bad_json", "bad_model"]
    assert "Adopted good artifact" in caplog.text
    assert "metrics.json: not valid JSON" in caplog.text and "model.safetensors: " in caplog.text
    assert (tmp_path / "bad_json" / ".damaged").is_dir() and (tmp_path / "bad_model" / ".damaged").is_dir()


# ---------------------------------------------------------------- artifacts verify themselves (end to end)


@pytest.mark.parametrize(
    "how", ["bitflip", pytest.param("truncate", marks=pytest.mark.slow), pytest.param("scramble", marks=pytest.mark.slow)]
)
def test_damaged_cached_phase1_model_is_rebuilt(root, prepared, how):
    """A damaged cached Phase-1 model (a bit flip keeps the weights finite: without checksums it would give
    wrong scores with exit 0) is named, set aside and rebuilt; the run finishes; the base is reused."""
    phase1 = artifact(root, "phase1")
    original = (phase1 / "model" / "model.safetensors").read_bytes()
    planted = damage(phase1 / "model" / "model.safetensors", how)
    proc = train(root, "sweep_id=s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (warning,) = log_lines(proc, "Damaged phase1 artifact")
    assert "model/model.safetensors" in warning and ("checksum" if how != "truncate" else "truncated") in warning
    assert log_lines(proc, "Building phase1 artifact") and log_lines(proc, "Reusing base artifact")
    (kept,) = (root / "cache" / "phase1" / ".damaged").iterdir()
    assert (kept / "model" / "model.safetensors").read_bytes() == planted  # kept for inspection, as found
    assert (phase1 / "model" / "model.safetensors").read_bytes() == original  # the same training, rebuilt
    (run,) = run_folders(root / "s")
    assert (run / "DONE").exists() and json.loads((run / "metrics.json").read_text())["phase1/ta_avg"] >= 0


def test_truncated_cached_evaluation_is_rebuilt_not_a_traceback(root, prepared):
    evaluation = artifact(root, "eval")
    scores = json.loads((evaluation / "metrics.json").read_text())
    (evaluation / "metrics.json").write_text((evaluation / "metrics.json").read_text()[:20])
    proc = train(root, "sweep_id=s")
    assert proc.returncode == 0 and "JSONDecodeError" not in proc.stderr, proc.stderr[-3000:]
    (warning,) = log_lines(proc, "Damaged eval artifact")
    assert "metrics.json" in warning and "truncated" in warning
    assert log_lines(proc, "Reusing phase1 artifact") and not log_lines(proc, "Building phase1 artifact")
    assert json.loads((evaluation / "metrics.json").read_text()) == scores
    (run,) = run_folders(root / "s")
    assert json.loads((run / "metrics.json").read_text())["phase1/ta_avg"] == scores["ta_avg"]


# ---------------------------------------------------------------- paths stay inside their root


@pytest.mark.parametrize("sweep_id", ["../../escape", pytest.param("a/b", marks=pytest.mark.slow)])
def test_sweep_id_that_would_leave_or_nest_folders_is_refused(tmp_path, sweep_id):
    out = tmp_path / "out" / "root"
    out.mkdir(parents=True)
    line = one_error(run_script("train.py", [*ARGS, f"sweep_id={sweep_id}"], out, check=False))
    assert f"sweep_id='{sweep_id}' contains a path separator" in line
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.rglob("*")) == ["out", "root"]


def test_sweep_folder_linked_outside_the_root_is_refused(tmp_path):
    out, outside = tmp_path / "root", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "s").symlink_to(outside)
    line = one_error(run_script("train.py", [*ARGS, "sweep_id=s"], out, check=False))
    assert "the run folder" in line and f"outside {out}" in line
    assert list(outside.iterdir()) == []


# ---------------------------------------------------------------- one process per cell


def test_second_process_on_a_cell_stops_naming_the_holder(root, prepared):
    (done,) = run_folders(prepared / "prep")
    run = root / "s" / done.relative_to(prepared / "prep")
    holder = _hold(run)
    try:
        line = one_error(train(root, "sweep_id=s"))
        assert f"process {holder.pid} on " in line and "(since " in line and f"is running this cell ({run})" in line
        assert sorted(p.name for p in run.iterdir()) == [".run.lock", ".run.lock.holder"]  # nothing written
    finally:
        _release(holder)
    from cft.run.folder import RunLock

    RunLock(run).acquire().release()  # killed by SIGKILL, the holder left no stale lock: the same command can run


# ---------------------------------------------------------------- checkpoints that cannot be read


SLOW = pytest.mark.slow
CHECKPOINT_FAULTS = [
    "truncate",
    pytest.param("scramble", marks=SLOW),
    pytest.param("no_weights", marks=SLOW),
    pytest.param("missing_path", marks=SLOW),
]


def _broken_checkpoint(folder: Path, tmp_path: Path, how: str) -> tuple[str, str]:
    """(the checkpoint to give, what the error must say) for a copy of a good checkpoint broken by `how`."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(folder, checkpoint)
    weights = checkpoint / "model.safetensors"
    expected = {
        "truncate": f"{weights} cannot be read: ",
        "scramble": f"{weights} cannot be read: the header length",
        "no_weights": f"checkpoint folder {checkpoint} has no model weights",
        "no_config": f"checkpoint folder {checkpoint} has no config.json",
        "missing_path": f"checkpoint path does not exist: {tmp_path}/gone/model/x",
    }[how]
    if how in ("truncate", "scramble"):
        damage(weights, how)
    elif how == "no_weights":
        weights.unlink()
    elif how == "no_config":
        (checkpoint / "config.json").unlink()
    elif how == "missing_path":
        return "gone/model/x", expected  # relative, not a hub id: it used to get the hub's "Repo id must be ..."
    return str(checkpoint), expected


@pytest.mark.parametrize("how", ["truncate", "scramble", "no_weights", "no_config", "missing_path"])
def test_unreadable_checkpoint_is_named_when_read_and_when_loaded(tiny_model_dir, tmp_path, monkeypatch, how):
    """Library level (what the recipe's setup and every load call): one CftError naming the file and why."""
    from cft.errors import CftError
    from cft.models.checkpoints import load_model, read_config

    monkeypatch.chdir(tmp_path)
    ref, expected = _broken_checkpoint(tiny_model_dir, tmp_path, how)
    for read in (read_config, load_model):
        with pytest.raises(CftError) as caught:
            read(ref)
        assert expected in str(caught.value)


@pytest.mark.parametrize("how", CHECKPOINT_FAULTS)
def test_unreadable_checkpoint_given_to_evaluate_names_the_file(prepared, tmp_path, how):
    (done,) = run_folders(prepared / "prep")
    ref, expected = _broken_checkpoint(done / "checkpoint", tmp_path, how)
    proc = run_script("evaluate.py", [f"checkpoint={ref}", "model=tiny", "tracking=none"], tmp_path, check=False)
    assert expected in one_error(proc)


@pytest.mark.parametrize(
    "overrides,setting",
    [
        (["model.instruct=nobody/missing-instruct"], "model.instruct=/path/to/missing-instruct"),
        (["model.base=nobody/missing-base", "phase1_data=alpaca"], "model.base=/path/to/missing-base"),
    ],
)
def test_a_checkpoint_not_on_disk_names_the_key_to_set(tmp_path, overrides, setting):
    """Offline, a hub id that is not on disk stops the cell in setup with the override that fixes it."""
    # The data on disk (the preflight names a hub dataset offline too): the checkpoint is the one cause.
    records = [{"instruction": "q", "input": "", "output": "a"}]
    data = [f"phase2_data.path={write_jsonl(tmp_path / 'data' / 'es.jsonl', records).parent}", "phase2_data.languages=[es]"]
    if "phase1_data=alpaca" in overrides:
        data.append(f"phase1_data.path={write_jsonl(tmp_path / 'alpaca.jsonl', records)}")
    proc = run_script("train.py", ["model=smollm2", *overrides, *data, "tracking=none"], tmp_path, check=False)
    line = one_error(proc)
    assert "Offline? Download the checkpoint" in proc.stderr and setting in proc.stderr, line
    assert not list(tmp_path.rglob("DONE"))


@pytest.mark.parametrize("value", ["../../escape", "a/b", "a\\b", "..", ".hidden", "x" * 101, ""])
def test_path_components_are_checked(value):
    from cft.errors import ConfigError

    with pytest.raises(ConfigError, match="it names a folder"):
        layout.check_component(value, "sweep_id")


# ---------------------------------------------------------------- several ranks: rank 0 verifies, the others follow

RANKED = """
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
from cft.run import artifacts
from cft.training import distributed

distributed.init()
builds = []

def build(tmp: Path) -> None:  # collective, as training a Phase-1 model with every rank is
    total = torch.ones(1)
    dist.all_reduce(total)
    builds.append(1)
    if distributed.is_main():
        (tmp / "n.json").write_text(json.dumps(total.item()))

path = artifacts.cached(sys.argv[1], "phase1", {"k": 1}, build, collective=True)
print(json.dumps({"rank": distributed.rank(), "built": len(builds), "n": json.loads((path / "n.json").read_text())}))
"""


def _two_ranks(cache: Path) -> list[dict]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
        env.update(MASTER_PORT=str(port), CFT_DIST_TIMEOUT_MIN="1", PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, "-c", RANKED, str(cache)], env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


@pytest.mark.slow
def test_damaged_artifact_is_rebuilt_by_every_rank_of_a_collective_build(tmp_path):
    """Rank 0 alone verifies; the other ranks wait for its decision, so a damaged artifact with DONE does not
    look finished to them: they join the collective rebuild instead of leaving rank 0 alone in it."""
    cache = tmp_path / "cache"
    assert [r["built"] for r in _two_ranks(cache)] == [1, 1]
    done = artifact(tmp_path, "phase1")
    (done / "n.json").write_text("3.0")  # same size, other contents
    assert [(r["built"], r["n"]) for r in _two_ranks(cache)] == [(1, 2.0), (1, 2.0)]
    assert len(list((cache / "phase1" / ".damaged").iterdir())) == 1
    assert [r["built"] for r in _two_ranks(cache)] == [0, 0]  # sound: reused by both


def test_the_end_of_a_sweep_lists_failed_held_and_killed_cells(tmp_path):
    """The cells a sweep ran, as its end table sees them: finished ones are left out; a failed one gives its
    FAILED record; one another process holds names the holder; one whose process was killed (no DONE, no
    FAILED) is listed too, so a hard crash under a launcher does not end the sweep with exit 0."""
    from cft.config.hydra import unfinished_cells

    sweep = tmp_path / "s"
    cells = {name: sweep / "demo-demo" / "tiny" / name / "seed0" for name in ("done", "failed", "held", "killed")}
    for folder in cells.values():
        folder.mkdir(parents=True)
        (folder / layout.META).write_text("{}")
    (cells["done"] / layout.DONE).write_text("")
    layout.write_failure(cells["failed"], phase="phase2", message="loss is nan at step 2", error="CftError")
    holder = _hold(cells["held"])
    try:
        rel = {name: str(folder.relative_to(sweep)) for name, folder in cells.items()}
        found = dict(unfinished_cells(str(tmp_path), "s", list(rel.values())))
    finally:
        _release(holder)
    assert set(found) == {rel["failed"], rel["held"], rel["killed"]}
    assert found[rel["failed"]]["phase"] == "phase2" and found[rel["failed"]]["message"] == "loss is nan at step 2"
    assert f"process {holder.pid} on " in found[rel["held"]]["message"]
    assert "left no FAILED" in found[rel["killed"]]["message"]


# ---------------------------------------------------------------- inputs that would train on the wrong data


def test_empty_language_list_stops_naming_the_key(tmp_path):
    line = one_error(run_script("train.py", [*ARGS, "phase2_data.languages=[]", "sweep_id=s"], tmp_path, check=False))
    assert "phase2_data.languages" in line and "at least 1" in line
    assert not (tmp_path / "s").exists() and not (tmp_path / "cache").exists()


def test_empty_or_missing_language_file_stops_naming_the_file(tmp_path):
    """A folder with a good es.jsonl and a 0-byte de.jsonl; then de.jsonl missing: stopped before any work."""
    from helpers import write_jsonl

    folder = tmp_path / "data"
    write_jsonl(folder / "es.jsonl", [{"instruction": f"hola {i}", "output": "si"} for i in range(8)])
    (folder / "de.jsonl").write_bytes(b"")
    args = [*ARGS, f"phase2_data.path={folder}", "phase2_data.source=null", "sweep_id=s"]
    line = one_error(run_script("train.py", args, tmp_path, check=False))
    assert f"{folder / 'de.jsonl'}: dataset" in line and "no records for language 'de'" in line
    (folder / "de.jsonl").unlink()
    line = one_error(run_script("train.py", args, tmp_path, check=False))
    assert "no file for language(s) ['de']" in line
    assert not (tmp_path / "s").exists() and not (tmp_path / "cache").exists()


def test_filter_leaving_a_language_without_records(tmp_path):
    from helpers import write_jsonl

    from cft.data.sources import load_sft
    from cft.errors import DataError

    folder = tmp_path / "data"
    write_jsonl(folder / "es.jsonl", [{"instruction": "hola", "output": "si"}])
    write_jsonl(folder / "de.jsonl", [{"instruction": "hallo", "output": ""}])
    with pytest.raises(DataError, match=r"de.jsonl: dataset 'x' has no records for language 'de' \(phase2_data.languages"):
        load_sft(name="x", path=str(folder), languages=["es", "de"], skip_empty_output=True, config_key="phase2_data")


@pytest.mark.parametrize("value", ["inf", "1e400", pytest.param("nan", marks=pytest.mark.slow)])
def test_learning_rate_must_be_finite(tmp_path, value):
    line = one_error(run_script("train.py", [*ARGS, f"train.lr={value}", "check=true"], tmp_path, check=False))
    assert line.startswith("cft: error: train.lr=") and "finite number" in line


# ---------------------------------------------------------------- Hydra's own errors in cft's form


@pytest.mark.parametrize(
    "args, expected",
    [
        (["strategy=nonexistent"], "strategy=nonexistent: no such option in config group 'strategy'; available: cofitune,"),
        (["model=nonexistent"], "model=nonexistent: no such option in config group 'model'; available: demo, llama,"),
        (
            ["-m", "strategy=full,gr5", "strategy.max_new_tokens=128"],
            "strategy.max_new_tokens: no such key in this config (Key 'max_new_tokens' is not in struct); of config "
            "group 'strategy', only strategy=gr10, strategy=gr5 have it",
        ),
    ],
)
def test_hydra_errors_are_one_line_exit_2(tmp_path, args, expected):
    flags = [a for a in args if a.startswith("-")]
    proc = run_script("train.py", [*flags, *[a for a in args if not a.startswith("-")], "check=true"], tmp_path, check=False)
    assert expected in one_error(proc)
    assert proc.stderr.count("\n") == 1


# ---------------------------------------------------------------- the preflight
def test_preflight_names_the_cell_whose_strategy_needs_a_base_that_cannot_resolve(tiny_model_dir, tmp_path):
    """Instruct model on disk, base a hub id that cannot resolve offline: only lf_h2 needs the base (its
    strategy declares it), so only it is named, in seconds, before anything runs."""
    import time

    small = [a for a in SMALL if not a.startswith("phase1_data.")]
    args = ["-m", *small, "phase1_data=instruct", f"model.instruct={tiny_model_dir}", "model.base=cft-test/missing-base"]
    start = time.time()
    proc = run_script(
        "train.py", [*args, "strategy=full,lf_h2", "check=true"], tmp_path, check=False, env={"HF_HUB_OFFLINE": "1"}
    )
    assert time.time() - start < 60
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cft: error: preflight:")]
    assert len(errors) == 1 and "/lf_h2/" in errors[0], proc.stderr
    assert "strategy lf_h2 needs the base model: model.base=cft-test/missing-base" in errors[0]
    assert "not on disk and the hub is offline (HF_HUB_OFFLINE=1)" in errors[0]


# ---------------------------------------------------------------- the preflight of hub datasets

SNAPSHOT = "0" * 40  # the commit a hub-cache snapshot is filed under (refs/main names it)


def _data_node(group: str, **overrides) -> dict:
    """The dataset node the cell reads (the real conf/, resolved), without its counterpart."""
    from omegaconf import OmegaConf

    key = group.split("=")[0]
    node = OmegaConf.to_container(compose(["model=tiny", group])[key], resolve=True)
    node.pop("counterpart", None)
    return {**node, **overrides}


@pytest.fixture
def hub_caches(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(the hub cache, the datasets cache) of this test, empty; the preflight's memory of earlier checks cleared."""
    import datasets.config
    import huggingface_hub.constants

    from cft.config import preflight

    hub, data = tmp_path / "hub", tmp_path / "datasets"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", data)
    reachable = preflight.hub_reachable  # a test may replace it
    preflight._hub_dataset_problem.cache_clear()
    reachable.cache_clear()
    yield hub, data
    preflight._hub_dataset_problem.cache_clear()
    reachable.cache_clear()


def _hub_snapshot(hub: Path, repo: str, files: dict[str, str]) -> Path:
    """A dataset's files as hf_hub_download leaves them in the hub cache (refs/main -> snapshots/<commit>/)."""
    folder = hub / f"datasets--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(SNAPSHOT)
    snapshot = folder / "snapshots" / SNAPSHOT
    for name, text in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(text, encoding="utf-8")
    return snapshot


def _records(n: int, lang: str = "en") -> str:
    return "".join(json.dumps({"instruction": f"{lang} q{i}", "input": None, "output": f"a{i}"}) + "\n" for i in range(n))


def _datasets_cache_copy(data: Path, repo: str, records: str, tmp_path: Path) -> Path:
    """What datasets.load_dataset(repo) leaves in the datasets cache (prepared by datasets' own JSON builder,
    filed under the hub id: <namespace>___<name>/default/0.0.0/<commit>/<name>-train.arrow)."""
    from datasets.packaged_modules.json.json import Json

    source = tmp_path / "download" / "train.jsonl"
    source.parent.mkdir(parents=True)
    source.write_text(records, encoding="utf-8")
    builder = Json(cache_dir=str(tmp_path / "build"), dataset_name=repo.split("/")[-1], data_files={"train": str(source)})
    builder.download_and_prepare()
    dest = data / repo.replace("/", "___") / "default" / "0.0.0" / SNAPSHOT
    dest.parent.mkdir(parents=True)
    shutil.move(builder.cache_dir, dest)
    return dest


def test_preflight_names_a_hub_dataset_not_on_disk_offline(hub_caches):
    """A hub dataset neither cached nor reachable (HF_HUB_OFFLINE=1): one line naming the key, the offline
    cause and the local-copy key, as for a checkpoint; in well under a second (no hub client retries)."""
    import time

    from cft.config import preflight

    start = time.perf_counter()
    alpaca = preflight.data_problems(_data_node("phase1_data=alpaca"), "phase1_data")
    multialpaca = preflight.data_problems(_data_node("phase2_data=multialpaca", languages=["es"]), "phase2_data")
    seconds = time.perf_counter() - start
    assert alpaca == [
        "phase1_data.source=tatsu-lab/alpaca: not on disk and the hub is offline (HF_HUB_OFFLINE=1). "
        "Offline? Download it and pass a local copy (phase1_data.path=/path/to/file_or_folder)"
    ]
    assert multialpaca == [
        "phase2_data.source=DAMO-NLP-MT/multialpaca (es.jsonl): not on disk and the hub is offline (HF_HUB_OFFLINE=1). "
        "Offline? Download it and pass a local copy (phase2_data.path=/path/to/file_or_folder)"
    ]
    assert seconds < 5, seconds  # composing the config is most of it


@pytest.mark.parametrize("fields", ["good", "bad"])
def test_preflight_parses_a_hub_dataset_in_the_hub_cache(hub_caches, fields):
    """Per-language files (MultiAlpaca's hub_files) in the hub cache: the first records of each go through the
    cell's record parser, so a wrong field name is named with its file and line; the real loader reads the
    same files offline; a language whose file is not cached is named as offline."""
    from cft.config import preflight
    from cft.data.sources import load_config

    hub, _ = hub_caches
    snapshot = _hub_snapshot(hub, "DAMO-NLP-MT/multialpaca", {"es.jsonl": _records(30, "es"), "de.jsonl": _records(30, "de")})
    node = _data_node("phase2_data=multialpaca", languages=["es", "de"])
    if fields == "bad":
        node["fields"] = {**node["fields"], "output": "response"}
        (problem,) = preflight.data_problems(node, "phase2_data")
        assert problem.startswith(f"{snapshot / 'es.jsonl'}:1: missing field 'response' (output)"), problem
        assert "phase2_data.on_bad_record=skip" in problem and "\n" not in problem
        return
    assert preflight.data_problems(node, "phase2_data") == []
    assert load_config(node, "phase2_data").sizes == {"de": 30, "es": 30}  # what the cell reads, offline
    (problem,) = preflight.data_problems({**node, "languages": ["es", "fr"]}, "phase2_data")
    assert problem.startswith("phase2_data.source=DAMO-NLP-MT/multialpaca (fr.jsonl): not on disk and the hub is offline")


@pytest.mark.parametrize("fields", ["good", "bad", "split"])
def test_preflight_parses_a_hub_dataset_in_the_datasets_cache(hub_caches, tmp_path, fields):
    """A dataset read whole by datasets.load_dataset (Alpaca) and prepared in the datasets cache: its first rows
    go through the cell's record parser (a wrong field name is named with the row, as the cell names it); a
    split the cached copy lacks is named; the real loader reads the same copy offline."""
    from cft.config import preflight
    from cft.data.sources import load_config

    _, data = hub_caches
    cached = _datasets_cache_copy(data, "tatsu-lab/alpaca", _records(40), tmp_path)
    node = _data_node("phase1_data=alpaca")
    if fields == "good":
        assert preflight.data_problems(node, "phase1_data") == []
        assert len(load_config(node, "phase1_data")) == 40  # what the cell reads, offline
    elif fields == "bad":
        node["fields"] = {**node["fields"], "instruction": "question"}
        (problem,) = preflight.data_problems(node, "phase1_data")
        assert problem.startswith("tatsu-lab/alpaca[train] row 0: missing field 'question' (instruction)"), problem
        assert "phase1_data.on_bad_record=skip" in problem
    else:
        (problem,) = preflight.data_problems({**node, "split": "validation"}, "phase1_data")
        assert problem == (
            f"phase1_data.split=validation: the cached copy of dataset 'tatsu-lab/alpaca' ({cached}) has no split "
            "'validation' (it has: train)"
        )


def test_preflight_resolves_a_hub_dataset_on_a_hub_that_answers(hub_caches, monkeypatch):
    """Not cached, the hub answering: the dataset and the files the cell reads are resolved (dataset_info within
    the preflight's short timeout); a file the hub's dataset lacks, or a dataset it does not give, is named."""
    from types import SimpleNamespace

    import httpx
    import huggingface_hub

    from cft.config import preflight

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(preflight, "hub_reachable", lambda: True)
    asked = []

    def dataset_info(self, repo_id, *, timeout=None, **kwargs):
        asked.append((repo_id, timeout))
        if repo_id == "cft-test/gone":
            url = f"https://huggingface.co/api/datasets/{repo_id}"
            response = httpx.Response(404, request=httpx.Request("GET", url))
            raise huggingface_hub.errors.RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in ("README.md", "es.jsonl")])

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    node = _data_node("phase2_data=multialpaca", languages=["es"])
    assert preflight.data_problems(node, "phase2_data") == []
    (problem,) = preflight.data_problems({**node, "languages": ["es", "de"]}, "phase2_data")
    assert problem == (
        "phase2_data.source=DAMO-NLP-MT/multialpaca: the hub's dataset has no de.jsonl "
        "(phase2_data.languages, phase2_data.hub_files)"
    )
    (problem,) = preflight.data_problems(_data_node("phase1_data=alpaca", source="cft-test/gone"), "phase1_data")
    assert problem.startswith("phase1_data.source=cft-test/gone: the hub does not give this dataset (RepositoryNotFoundError")
    assert {timeout for _, timeout in asked} == {preflight.HUB_TIMEOUT} == {3.0}


def test_preflight_of_a_cached_hub_dataset_reads_only_its_head(hub_caches):
    """The cost stays small whatever the file's size: the preflight parses the first records of a 40,000-record
    file (a bad record past them passes it, where the cell's full read stops), in a small share of the full read."""
    import time

    from cft.config import preflight
    from cft.data.sources import load_config
    from cft.errors import DataError

    hub, _ = hub_caches
    text = _records(40_000, "es") + "not json\n"
    _hub_snapshot(hub, "DAMO-NLP-MT/multialpaca", {"es.jsonl": text})
    node = _data_node("phase2_data=multialpaca", languages=["es"])
    start = time.perf_counter()
    assert preflight.data_problems(node, "phase2_data") == []
    checked = time.perf_counter() - start
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"es.jsonl:40001: invalid JSON"):
        load_config(node, "phase2_data")
    read = time.perf_counter() - start
    assert checked < 0.5 and checked < read / 5, (checked, read)


# ---------------------------------------------------------------- an evaluation is of the exact weights it scored


def test_evaluation_key_follows_the_checkpoints_manifest(tmp_path, monkeypatch):
    """A Phase-1 artifact rebuilt with other bytes (as on a GPU) gets a new evaluation; the same bytes reuse it."""
    from cft.models.handle import Checkpoint
    from cft.recipes import train as recipe
    from cft.run.artifacts import Cache

    cache = Cache(tmp_path / "cache")
    scored = []

    def fake_evaluate(model, tokenizer, tasks, limit=None, out_dir=None, sharded=False):
        scored.append(model.weights)
        return {"ta_avg": float(len(scored))}

    class Loaded:
        def __init__(self, weights):
            self.weights = weights

        def to(self, device):
            return self

    monkeypatch.setattr(recipe, "evaluate", fake_evaluate)

    def phase1(content: bytes) -> Checkpoint:
        def build(tmp: Path) -> None:
            (tmp / "model").mkdir()
            (tmp / "model" / "weights.bin").write_bytes(content)

        path = cache.artifact("phase1", {"spec": 1}, build)
        ckpt = Checkpoint(str(path / "model"), key="same-spec", what="phase1 model", cache=cache)
        ckpt.load = lambda **kw: (Loaded((path / "model" / "weights.bin").read_bytes()), None)
        return ckpt

    first = recipe.evaluate_cached(phase1(b"A" * 64), {"limit": 1}, {}, cache)
    again = recipe.evaluate_cached(phase1(b"A" * 64), {"limit": 1}, {}, cache)
    assert first == again and scored == [b"A" * 64]
    shutil.rmtree(cache.root / "phase1")  # rebuilt: other bytes under the same spec
    rebuilt = recipe.evaluate_cached(phase1(b"B" * 64), {"limit": 1}, {}, cache)
    assert scored == [b"A" * 64, b"B" * 64] and rebuilt != first
