"""Fault injection: each fault of the README's Reliability table planted on the demo pipeline (the tiny
settings of helpers.SMALL), with real files and processes. Each test asserts the message, the exit
status, and that nothing finished is lost (a rerun does not retrain what was kept; finished cells keep
DONE and metrics).

A full or read-only disk is planted beneath cft by tests/fault_inject/sitecustomize.py (a patched
low-level writer: tests run as root, where chmod does not stop writes); a read-only output root is
also tried as a real read-only mount where this machine allows mounting.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SMALL, compose, run_folders, run_script, write_jsonl

from cft.run import artifacts, layout

REPO = Path(__file__).resolve().parent.parent
INJECT = Path(__file__).resolve().parent / "fault_inject"
ARGS = [*SMALL, "tracking=none"]


# ---------------------------------------------------------------- shared set-up


@pytest.fixture(scope="session")
def prepared(build_once) -> Path:
    """One finished demo run and its cache (base, Phase-1 model, its evaluation, embeddings), built once
    per test run and shared by the xdist workers (read-only: the tests copy what they change)."""
    return build_once("faults-prepared", lambda root: run_script("train.py", [*ARGS, "sweep_id=prep"], root))


@pytest.fixture
def root(prepared, tmp_path) -> Path:
    """A fresh output root holding a copy of the prepared cache: a run here reuses Phase 1 (no training)."""
    shutil.copytree(prepared / "cache", tmp_path / "cache")
    return tmp_path


def train(root: Path, *args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("-")]  # -m before the overrides (Hydra's argument parser)
    overrides = [a for a in args if not a.startswith("-")]
    env = {"TMPDIR": str(_tmp(root)), **(env or {})}
    return run_script("train.py", [*flags, *ARGS, *overrides], root, check=check, env=env)


def _tmp(root: Path) -> Path:
    tmp = root / "tmp"  # rescued models (tempfile.gettempdir()/cft-rescue) stay inside the test's folder
    tmp.mkdir(exist_ok=True)
    return tmp


def fault_env(*patterns: str, errno_name: str = "ENOSPC") -> dict:
    """Environment for a subprocess whose writes to `patterns` fail (tests/fault_inject/sitecustomize.py)."""
    return {
        "PYTHONPATH": os.pathsep.join([str(INJECT), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "CFT_FAULT_PATHS": os.pathsep.join(patterns),
        "CFT_FAULT_ERRNO": errno_name,
    }


def one_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The run ended with exit `code` (2: a bad input; 1: the machine refused) and one `cft: error:` line,
    no traceback; that line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cft: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def artifact(root: Path, kind: str) -> Path:
    (folder,) = [p for p in (root / "cache" / kind).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return folder


def damage(path: Path, how: str) -> bytes:
    """Damage a file in place (returns the damaged bytes): truncate, scramble (same size, random bytes), or
    flip one low mantissa bit of a float32 in a safetensors file's data (the weights stay finite)."""
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "scramble":
        data = bytearray(os.urandom(len(data)))
    elif how == "bitflip":
        (n,) = struct.unpack("<Q", data[:8])
        data[8 + n + 4 * 17] ^= 0x01  # byte 0 of a little-endian float32: its lowest mantissa bits
    else:
        raise ValueError(how)
    path.write_bytes(bytes(data))
    return bytes(data)


def log_lines(proc: subprocess.CompletedProcess, needle: str) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if needle in line]


# ---------------------------------------------------------------- artifacts verify themselves (library level)


def _build_files(files: dict[str, bytes]):
    built = []

    def build(tmp: Path) -> None:
        built.append(tmp)
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)

    return build, built


def _safetensors_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)})


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


# ---------------------------------------------------------------- disks that refuse writes


def _mount_read_only(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.parametrize("how", ["mount", "patched"])
def test_read_only_output_root_is_a_config_error(tmp_path, how):
    """Stopped by the config check before Hydra makes any folder: one line naming the path, exit 2."""
    out = tmp_path / "ro"
    env = {}
    if how == "mount":
        if not _mount_read_only(out):
            pytest.skip("cannot mount a read-only tmpfs here (not root, or no CAP_SYS_ADMIN)")
    else:
        out.mkdir()
        env = fault_env(str(out), f"{out}/*", errno_name="EROFS")
    try:
        proc = run_script("train.py", [*ARGS, "sweep_id=s"], out, check=False, env=env)
        line = one_error(proc)
        assert f"{out}/s/demo-demo/tiny/full" in line and "read-only file system" in line
        assert "paths.output_root" in line
        assert list(out.iterdir()) == []
    finally:
        if how == "mount":
            subprocess.run(["umount", str(out)], capture_output=True, timeout=10)


@pytest.mark.slow  # as root, test_full_tmpfs_saving_the_final_model_rescues_it; elsewhere the safetensors case below
def test_full_disk_saving_the_final_model_keeps_the_weights_and_the_rerun_does_not_retrain(root):
    """OSError(ENOSPC) from save_pretrained during Phase 2: the weights go to the rescue folder the message
    names, FAILED records it, and the same command then saves them without training Phase 2 again."""
    proc = train(root, "sweep_id=s", env=fault_env("*/.checkpoint.tmp", "*/.checkpoint.tmp/*"))
    (run,) = run_folders(root / "s")
    assert layout.read_failure(run)["phase"] == "phase2"
    line = one_error(proc, 1)
    assert Path(line.split("kept in ")[1].split(";")[0]).is_relative_to(root / "tmp" / "cft-rescue")
    assert_rescued_then_resumed(root, run, proc, "No space left on device", "sweep_id=s")
    assert not (run / "FAILED").exists()


@pytest.mark.slow
def test_full_disk_writing_metrics_names_the_file_and_what_was_kept(root):
    """ENOSPC on metrics.json: the message names the file and the final model kept in the run folder; the
    rerun loads that model instead of training Phase 2 again."""
    proc = train(root, "sweep_id=s", env=fault_env("*/.metrics.json.tmp"))
    line = one_error(proc, 1)
    (run,) = run_folders(root / "s")
    assert f"could not write {run / 'metrics.json'}: No space left on device" in line
    assert f"Kept: the final model in {run / 'checkpoint'}" in line
    assert not (run / "DONE").exists() and layout.read_failure(run)["phase"] == "record"
    again = train(root, "sweep_id=s")
    assert again.returncode == 0, again.stderr[-3000:]
    assert log_lines(again, "Phase 2 was trained and saved by an earlier attempt") and not log_lines(again, "phase2: 3 steps")
    assert (run / "DONE").exists() and "phase2/ta_avg" in json.loads((run / "metrics.json").read_text())
    assert_train_figures(run)


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


HOLD = """
import sys, time
from cft.run.folder import RunDir
lock = RunDir(sys.argv[1]).lock()
print("holding", flush=True)
time.sleep(600)
"""


def _hold(run: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def _release(holder: subprocess.Popen) -> None:
    holder.send_signal(signal.SIGKILL)  # the OS drops its lock even on SIGKILL
    holder.wait(timeout=30)


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


def test_a_sweep_goes_on_past_a_cell_another_process_holds(root, prepared):
    seed0 = root / "s" / run_folders(prepared / "prep")[0].relative_to(prepared / "prep")
    holder = _hold(seed0)
    try:
        proc = train(root, "-m", "seed=0,1", "sweep_id=s")
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert f"process {holder.pid} on " in proc.stderr and "failed or did not finish" in proc.stderr
        seed1 = seed0.parent / "seed1"
        assert (seed1 / "DONE").exists() and not (seed0 / "DONE").exists() and not (seed0 / "FAILED").exists()
    finally:
        _release(holder)


# ---------------------------------------------------------------- a failing cell does not stop a sweep


def _sweep_with_a_failing_cell(root: Path, *extra: str) -> tuple[list[str], subprocess.CompletedProcess]:
    args = ["-m", "strategy=lf_h1", "strategy.k=1,5,2", "sweep_id=s", *extra]
    return args, train(root, *args, env={"PYTHONPATH": str(REPO)})


def _cells_by_k(root: Path) -> dict[int, Path]:
    import yaml

    return {yaml.safe_load((f / "config.yaml").read_text())["strategy"]["k"]: f for f in run_folders(root / "s")}


def assert_failing_cell_sweep(root: Path, proc: subprocess.CompletedProcess, args: list[str]) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    table = proc.stderr.split("1 cell(s) of sweep s failed or did not finish:")[1]
    assert "setup   strategy.k=5 must be an integer from 1 to 2 (the model has 2 layers)" in table
    assert "Traceback" not in proc.stderr
    cells = _cells_by_k(root)
    assert sorted(cells) == [1, 2, 5] and str(cells[5].relative_to(root / "s")) in table
    failure = layout.read_failure(cells[5])
    assert failure["phase"] == "setup" and "strategy.k=5" in failure["message"] and not (cells[5] / "DONE").exists()
    finished = {k: (cells[k] / "DONE").stat().st_mtime_ns for k in (1, 2)}
    metrics = {k: (cells[k] / "metrics.json").read_text() for k in finished}
    assert all("phase2/ta_avg" in json.loads(m) for m in metrics.values())
    # The same command again: finished cells are skipped (DONE and metrics untouched), the failed one retried.
    again = train(root, *args, env={"PYTHONPATH": str(REPO)})
    assert again.returncode == 1 and "strategy.k=5 must be" in again.stderr
    logs = again.stdout + again.stderr + "".join(p.read_text(errors="replace") for p in (root / "s").glob(".submitit/*/*_log.*"))
    assert logs.count("is already finished (DONE); skipping it") == 2  # the jobs' logs, under submitit
    for k, stamp in finished.items():
        assert (cells[k] / "DONE").stat().st_mtime_ns == stamp and (cells[k] / "metrics.json").read_text() == metrics[k]
    assert (cells[5] / "FAILED").stat().st_mtime_ns > max(finished.values())


def test_failing_cell_in_a_3_cell_sweep(root):
    """Basic launcher: the cell whose k exceeds the model's layers fails in setup, writes FAILED, and the
    other two finish; the sweep ends with the table and exit 1; a rerun retries only that cell."""
    args, proc = _sweep_with_a_failing_cell(root)
    assert_failing_cell_sweep(root, proc, args)


@pytest.mark.slow
def test_failing_cell_in_a_3_cell_sweep_under_submitit(root):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args, proc = _sweep_with_a_failing_cell(root, "hydra/launcher=slurm_local")
    assert_failing_cell_sweep(root, proc, args)
    logs = "".join(p.read_text(errors="replace") for p in (root / "s" / ".submitit").rglob("*_log.*"))
    assert "cft: error:" in logs and "Traceback" not in logs


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


# ---------------------------------------------------------------- trust, second round (issue 21)

TRAIN_FIGURES = ("steps", "tokens", "final_loss", "examples", "seconds", "epochs_done", "padding_fraction")


def assert_train_figures(run: Path) -> None:
    """metrics.json of a run whose Phase 2 was kept by an earlier attempt still has its train/phase2/* keys."""
    metrics = json.loads((run / "metrics.json").read_text())
    missing = [k for k in TRAIN_FIGURES if f"train/phase2/{k}" not in metrics]
    assert not missing, missing
    assert metrics["train/phase2/steps"] == 3


def _run_folder_of(prepared: Path, root: Path, sweep: str) -> Path:
    """Where the prepared command's cell lands under `root` with sweep_id=`sweep`."""
    (done,) = run_folders(prepared / "prep")
    return root / sweep / done.relative_to(prepared / "prep")


def _mount(*args: str) -> bool:
    try:
        return subprocess.run(["mount", *args], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True, timeout=10)


def _tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("a full disk needs a small tmpfs: mounting needs root (CAP_SYS_ADMIN)")


def assert_rescued_then_resumed(root: Path, run: Path, proc, cause: str, *rerun: str) -> None:
    """One line, exit 1, the weights in the rescue place the line names; the rerun (fault cleared) loads
    them instead of training Phase 2 again and writes a complete metrics.json."""
    line = one_error(proc, 1)
    assert f"could not write the final model to {run / 'checkpoint'}: {cause}" in line
    rescued = Path(line.split("train/phase2/* figures are kept in ")[1].split(";")[0].split(" (")[0])
    assert (rescued / "DONE").exists() and (rescued / "model" / "model.safetensors").exists()
    assert not list(run.glob(".*.tmp")) and not (run / "DONE").exists()
    assert "Traceback" not in proc.stdout + proc.stderr
    again = train(root, *rerun)
    assert again.returncode == 0, again.stderr[-3000:]
    assert log_lines(again, f"loading it from {rescued} instead of training again")
    assert not log_lines(again, "phase2: 3 steps") and log_lines(proc, "phase2: 3 steps")
    assert (run / "DONE").exists() and not rescued.exists()
    assert_train_figures(run)


def test_full_tmpfs_saving_the_final_model_rescues_it(root, prepared):
    """A real full disk (a 64 KiB tmpfs on the run folder): safetensors' own error, not an OSError."""
    run = _run_folder_of(prepared, root, "s")
    _tmpfs(run, "64k")
    try:
        proc = train(root, "sweep_id=s")
        assert layout.read_failure(run)["error"] == "DiskError"  # FAILED fits where the model did not
    finally:
        _umount(run)
    shutil.rmtree(run)
    assert_rescued_then_resumed(root, run, proc, "No space left on device", "sweep_id=s")


def test_full_tmpfs_writing_checkpoints_is_a_warning_and_nothing_is_lost(root, prepared):
    """Checkpoints that do not fit (torch's RuntimeError from inline_container.cc) do not end the training
    they insure: each is a warning, the final model and metrics are written."""
    run = _run_folder_of(prepared, root, "s")
    _tmpfs(run, "256k")
    try:
        proc = train(root, "sweep_id=s", "train.checkpoint_every=1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stdout + proc.stderr
        assert log_lines(proc, "phase2: the checkpoint of step 1 was not written (file write failed (a full disk?))")
        assert (run / "DONE").exists() and (run / "checkpoint" / "model.safetensors").exists()
        assert not list(run.glob(".*.tmp")) and not list(run.glob("checkpoints/*/.step-*.tmp"))
        assert_train_figures(run)
    finally:
        _umount(run)


def test_run_folder_turning_read_only_in_phase2(root, prepared, tmp_path):
    """A read-only bind mount laid on the run folder while Phase 2 trains: one line, exit 1, the weights
    and FAILED in the rescue place, no lock error in cleanup; the rerun does not train Phase 2 again.
    Phase 2 is held at its first backward pass while the mount is laid (sitecustomize's CFT_FAULT_PAUSE_AT):
    the mount lands mid-training on every machine, without the long training a timed mount needed."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (CAP_SYS_ADMIN)")
    resume = tmp_path / "resume"
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(root), "PYTHONUNBUFFERED": "1", "TMPDIR": str(_tmp(root))}
    env.update(fault_env(), CFT_FAULT_PAUSE_AT="1", CFT_FAULT_RESUME=str(resume))  # Phase 1 is cached: no backward
    env.pop("CFT_SWEEP_ID", None)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *ARGS, "sweep_id=s"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, mounted = [], None
    try:
        for line in proc.stdout:
            out.append(line)
            if "cft-fault: paused" in line and mounted is None:
                assert any("phase2: padding" in seen for seen in out)  # held in Phase 2's training
                (meta,) = root.joinpath("s").rglob("run_meta.json")
                mounted = meta.parent
                if not (_mount("--bind", str(mounted), str(mounted)) and _mount("-o", "remount,ro,bind", str(mounted))):
                    proc.kill()
                    pytest.skip("cannot remount read-only here")
                resume.touch()
        proc.wait(timeout=600)
    finally:
        resume.touch()  # never leave the run held
        if mounted is not None:
            _umount(mounted)
    text = "".join(out)
    assert mounted is not None, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("cft: error:")]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in text, text[-3000:]
    assert "Read-only file system" in lines[0] and "run.lock" not in text
    rescued = Path(lines[0].split("train/phase2/* figures are kept in ")[1].split(";")[0])
    assert layout.read_failure(rescued)["phase"] == "phase2" and not (mounted / "FAILED").exists()
    again = train(root, "sweep_id=s")
    assert again.returncode == 0, again.stderr[-3000:]
    assert log_lines(again, f"loading it from {rescued}") and not log_lines(again, "phase2: 3 steps")
    metrics = json.loads((mounted / "metrics.json").read_text())
    assert metrics["train/phase2/steps"] == 3 and "train/phase2/final_loss" in metrics


@pytest.mark.parametrize("raised", ["safetensors", pytest.param("oserror", marks=pytest.mark.slow)])
def test_rescue_falls_back_to_paths_rescue_dir(root, tmp_path, raised):
    """The run folder and the temporary folder's rescue place both refuse (SafetensorError, OSError 28): the
    weights go to paths.rescue_dir; the rerun finds them there."""
    second = tmp_path / "second"
    env = fault_env("*/.checkpoint.tmp", "*/.checkpoint.tmp/*", "*/cft-rescue/*")
    if raised == "safetensors":
        env["CFT_FAULT_RAISE"] = "safetensors"
    proc = train(root, "sweep_id=s", f"paths.rescue_dir={second}", env=env)
    (run,) = run_folders(root / "s")
    line = one_error(proc, 1)
    assert f"kept in {second}/" in line and "cft-rescue: No space left on device" in line
    assert_rescued_then_resumed(root, run, proc, "No space left on device", "sweep_id=s", f"paths.rescue_dir={second}")


@pytest.mark.slow
def test_rescue_refused_everywhere_says_so(root, tmp_path):
    """With no place that takes the weights (the second one has too little free space), the line says nothing
    was kept and how to give a place; FAILED is in the run folder."""
    env = fault_env("*/.checkpoint.tmp", "*/.checkpoint.tmp/*", "*/cft-rescue/*")
    small = tmp_path / "small"
    if os.geteuid() == 0 and _mount("-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small.mkdir() or small)):
        try:
            line = one_error(train(root, "sweep_id=s", f"paths.rescue_dir={small}", env=env), 1)
        finally:
            _umount(small)
        assert "MiB free" in line and "MiB needed" in line
    else:
        line = one_error(train(root, "sweep_id=s", "paths.rescue_dir=null", env=env), 1)
    assert "nothing of Phase 2 could be kept" in line and "paths.rescue_dir" in line
    (run,) = run_folders(root / "s")
    assert layout.read_failure(run)["error"] == "DiskError"


# ---------------------------------------------------------------- trained artifacts the cache refuses


def _disk_fault(kind: str) -> BaseException:
    """An exception of the type a full or read-only disk really raises, by writer."""
    import errno

    from safetensors import SafetensorError

    return {
        "safetensors": SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        "torch": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 106624 vs 106516"),
        "enospc": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        "erofs": OSError(errno.EROFS, os.strerror(errno.EROFS)),
    }[kind]


@pytest.mark.parametrize(
    "raised, cause",
    [
        ("safetensors", "No space left on device"),
        ("torch", "file write failed (a full disk?)"),
        ("enospc", "No space left on device"),
        ("erofs", "Read-only file system"),
    ],
)
def test_trained_artifact_the_cache_refuses_is_rescued_and_taken_back(tmp_path, monkeypatch, caplog, raised, cause):
    """A build that trains returns a Trained: when the cache refuses its files (each writer's real exception
    type), they go, sealed with their manifest, to the rescue place the one-line DiskError names; the next
    build of that artifact verifies the copy and moves it into the cache without building (training) again."""
    import tempfile

    from cft.errors import CftError
    from cft.run.disk import DiskError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    weights = _safetensors_bytes()
    trainings = []

    def build(tmp: Path) -> artifacts.Trained:
        trainings.append(tmp)

        def write(folder: Path) -> None:
            (folder / "model").mkdir(parents=True, exist_ok=True)
            (folder / "model" / "config.json").write_text("{}")
            if folder.name.startswith("."):  # the cache's own build folder: its disk refuses the weights
                raise _disk_fault(raised)
            (folder / "model" / "model.safetensors").write_bytes(weights)
            (folder / "train_stats.json").write_text('{"steps": 3}')

        return artifacts.Trained(write, len(weights))

    cache = artifacts.Cache(tmp_path / "cache")
    with pytest.raises(DiskError) as failed:
        cache.artifact("phase1", {"k": 1}, build)
    message = str(failed.value)
    assert failed.value.exit_code == 1 and "\n" not in message
    key = cache.key({"k": 1})
    rescued = tmp_path / "tmp" / "cft-rescue" / f"phase1-{key}"
    assert message.startswith(f"could not write the phase1 artifact {tmp_path / 'cache' / 'phase1' / key}: {cause}.")
    assert f"kept in {rescued}; " in message and "without training again" in message
    assert (rescued / "model" / "model.safetensors").read_bytes() == weights
    assert json.loads((rescued / "train_stats.json").read_text()) == {"steps": 3}
    assert artifacts.verify(rescued).ok and set(json.loads((rescued / "DONE").read_text())["files"]) >= {"spec.json"}
    assert not list((tmp_path / "cache" / "phase1").glob(".*.tmp-*"))  # no half artifact in the cache

    caplog.set_level(logging.WARNING, logger="cft.run.artifacts")
    path = cache.artifact("phase1", {"k": 1}, build)
    assert len(trainings) == 1  # taken from the rescue place, not trained again
    assert (path / "model" / "model.safetensors").read_bytes() == weights and artifacts.verify(path).ok
    assert not rescued.exists()
    assert f"taking it from {rescued} (verified) instead of building it again" in caplog.text

    def not_a_disk_fault(tmp: Path) -> artifacts.Trained:  # a bug in a writer stays a bug: not rescued
        return artifacts.Trained(lambda folder: (_ for _ in ()).throw(ValueError("a bug")))

    with pytest.raises(ValueError, match="a bug"):
        cache.artifact("phase1", {"k": 2}, not_a_disk_fault)
    assert not (tmp_path / "tmp" / "cft-rescue" / f"phase1-{cache.key({'k': 2})}").exists()
    assert isinstance(failed.value, CftError)  # what train.py prints as one line (exit 1)


def test_damaged_rescued_artifact_is_not_taken(tmp_path, monkeypatch, caplog):
    """A rescued copy that no longer matches its manifest is named, removed and the artifact built again."""
    import tempfile

    from cft.run.disk import DiskError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    full = [True]

    def build(tmp: Path) -> artifacts.Trained:
        def write(folder: Path) -> None:
            if folder.name.startswith(".") and full[0]:
                raise _disk_fault("enospc")
            (folder / "weights.safetensors").write_bytes(_safetensors_bytes())

        return artifacts.Trained(write)

    cache = artifacts.Cache(tmp_path / "cache")
    with pytest.raises(DiskError):
        cache.artifact("phase1", {"k": 1}, build)
    (rescued,) = (tmp_path / "tmp" / "cft-rescue").iterdir()
    damage(rescued / "weights.safetensors", "bitflip")
    full[0] = False
    caplog.set_level(logging.WARNING, logger="cft.run.artifacts")
    path = cache.artifact("phase1", {"k": 1}, build)
    assert f"The rescued phase1 artifact {rescued} is damaged (weights.safetensors: checksum" in caplog.text
    assert not rescued.exists() and (path / "weights.safetensors").read_bytes() == _safetensors_bytes()


def test_phase0_base_the_cache_refuses_is_rescued_and_not_pretrained_again(tmp_path, monkeypatch, tiny_arch):
    """Phase 0 (the demo's pre-trained base) goes through the same artifact code: safetensors' own error on
    the cache's disk keeps the base in the rescue place; the next call takes it without pre-training again."""
    import tempfile

    import transformers.modeling_utils

    from cft.models import pretrain as phase0
    from cft.recipes.train import base_reference
    from cft.run.disk import DiskError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    save_file = transformers.modeling_utils.safe_save_file

    def full_cache(tensors, filename, *args, **kwargs):  # what safetensors raises past the end of a full disk
        if "/cache/base/." in str(filename):
            raise _disk_fault("safetensors")
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_cache)
    runs = []
    real_pretrain = phase0.pretrain
    monkeypatch.setattr(phase0, "pretrain", lambda *a, **k: runs.append(1) or real_pretrain(*a, **k))
    pretrain = {"source": "demo", "tasks": ["repeat"], "languages": ["en"], "per_task_language": 8, "data_seed": 0}
    pretrain.update(seq_len=32, batch_size=4, steps=2, lr=1e-3, warmup_steps=0)
    model_cfg = {"name": "t", "base": None, "build": {**tiny_arch, "seed": 0}, "pretrain": pretrain}
    with pytest.raises(
        DiskError, match=r"could not write the base artifact .*: No space left on device\. What it trained is kept in "
    ) as failed:
        base_reference(model_cfg, tmp_path / "cache")
    rescued = Path(str(failed.value).split("kept in ")[1].split(";")[0])
    assert rescued.parent == tmp_path / "tmp" / "cft-rescue" and (rescued / "model" / "model.safetensors").is_file()
    assert json.loads((rescued / "model" / "pretrain_stats.json").read_text())["steps"] == 2
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_file)  # space again
    ref = base_reference(model_cfg, tmp_path / "cache")
    assert runs == [1] and not rescued.exists()  # pre-trained once
    assert Path(ref).parent.parent == tmp_path / "cache" / "base" and artifacts.verify(Path(ref).parent).ok


def assert_phase1_rescued_then_reused(root: Path, proc, cause: str) -> None:
    """One line, exit 1, the Phase-1 model in the rescue place the line names; the rerun takes it (verified)
    instead of training Phase 1 again, and its metrics.json has the train/phase1/* figures."""
    line = one_error(proc, 1)
    assert f"could not write the phase1 artifact {root / 'cache' / 'phase1'}/" in line and f": {cause}." in line
    rescued = Path(line.split("What it trained is kept in ")[1].split(";")[0].split(" (")[0])
    assert rescued.is_relative_to(root / "tmp" / "cft-rescue")
    for rel in ("DONE", "spec.json", "train_stats.json", "model/model.safetensors", "model/config.json"):
        assert (rescued / rel).is_file(), rel
    assert log_lines(proc, "phase1: 3 steps")
    (run,) = run_folders(root / "s")
    assert layout.read_failure(run)["phase"] == "phase1" and not (run / "DONE").exists()
    again = train(root, "sweep_id=s")
    assert again.returncode == 0, again.stderr[-3000:]
    assert log_lines(again, f"taking it from {rescued} (verified) instead of building it again")
    assert not log_lines(again, "phase1: 3 steps") and not log_lines(again, "Building phase1 artifact")
    assert not rescued.exists() and artifact(root, "phase1").joinpath("model", "model.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train/phase1/steps"] == 3 and "train/phase1/final_loss" in metrics
    assert (run / "DONE").exists() and "phase2/ta_avg" in metrics


def _without_phase1(root: Path) -> None:
    shutil.rmtree(root / "cache" / "phase1")  # Phase 1 trains in this run (the base is reused)


@pytest.mark.parametrize("raised", ["safetensors", pytest.param("oserror", marks=pytest.mark.slow)])
def test_full_cache_saving_the_phase1_model_rescues_it(root, raised):
    """SafetensorError (OSError 28: slow) saving the Phase-1 model into the cache, planted: kept in the rescue
    place, one line, exit 1; the rerun does not train Phase 1 again."""
    _without_phase1(root)
    env = fault_env(str(root / "cache" / "phase1" / ".*.tmp-*" / "model" / "*"))
    if raised == "safetensors":
        env["CFT_FAULT_RAISE"] = "safetensors"
    proc = train(root, "sweep_id=s", env=env)
    assert_phase1_rescued_then_reused(root, proc, "No space left on device")


def test_full_tmpfs_cache_saving_the_phase1_model_rescues_it(root):
    """A real full disk (a 64 KiB tmpfs on the cache's phase1 folder): the lock and the build folder fit, the
    weights do not."""
    _without_phase1(root)
    folder = root / "cache" / "phase1"
    _tmpfs(folder, "64k")
    try:
        proc = train(root, "sweep_id=s")
    finally:
        _umount(folder)
    assert_phase1_rescued_then_reused(root, proc, "No space left on device")


@pytest.mark.slow  # as root, the tmpfs test above gets the same error from a real full disk
def test_checkpoint_write_error_of_torch_is_a_warning(root):
    """torch.save's RuntimeError (inline_container.cc) on a resumable checkpoint, planted: training goes on."""
    env = {**fault_env("*/checkpoints/*/optimizer.bin"), "CFT_FAULT_RAISE": "torch"}
    proc = train(root, "sweep_id=s", "train.checkpoint_every=1", env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(log_lines(proc, "was not written (file write failed (a full disk?)); training goes on")) == 2
    (run,) = run_folders(root / "s")
    assert (run / "DONE").exists()
    assert_train_figures(run)


def test_cuda_out_of_memory_fails_the_cell_with_a_hint_and_the_sweep_goes_on(root):
    """torch.cuda.OutOfMemoryError (planted on the first backward pass) in the first of two cells: FAILED with
    the keys that lower memory, the other cell finishes, exit 1; the rerun runs only the failed cell."""
    args = ["-m", "seed=0,1", "sweep_id=s"]
    proc = train(root, *args, env={**fault_env(), "CFT_FAULT_OOM_AT": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    runs = {p.name: p for p in run_folders(root / "s")}
    failure = layout.read_failure(runs["seed0"])
    for key in ("train.micro_batch_size", "train.gradient_checkpointing", "zero_optimization.stage", "CUDA out of memory"):
        assert key in failure["message"], failure
    assert (runs["seed1"] / "DONE").exists() and "CUDA out of memory" in proc.stderr
    again = train(root, *args)
    assert again.returncode == 0 and (runs["seed0"] / "DONE").exists()
    assert len(log_lines(again, "is already finished (DONE); skipping it")) == 1


def test_failed_record_leaves_no_tmp(tmp_path, monkeypatch):
    """FAILED on a full disk: the error goes up (the caller tries elsewhere) and no empty .FAILED.tmp stays."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        layout.write_failure(tmp_path, phase="phase2", message="m", error="E")
    assert list(tmp_path.iterdir()) == []


def test_lock_release_never_raises(tmp_path, monkeypatch):
    from cft.run.folder import RunLock

    lock = RunLock(tmp_path).acquire()

    def read_only(self, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    lock.release()  # in cleanup after a disk fault: must not bury the run's own message (it raised OSError 30 before)
    monkeypatch.undo()
    again = RunLock(tmp_path).acquire()  # and the lock is free again: another run of the cell may take it
    assert isinstance(again, RunLock)
    again.release()


@pytest.mark.parametrize("error", ["safetensors", "torch", "enospc", "erofs", "reader"])
def test_disk_fault_types(error):
    """The exception types a full or read-only disk really raises are told from a bug (a damaged file read)."""
    import errno

    from safetensors import SafetensorError

    from cft.run import disk

    exc = {
        "safetensors": SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        "torch": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 106624 vs 106516"),
        "enospc": OSError(errno.ENOSPC, "No space left on device"),
        "erofs": OSError(errno.EROFS, "Read-only file system"),
        "reader": RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory"),
    }[error]
    expected = {
        "safetensors": "No space left on device",
        "torch": "file write failed (a full disk?)",
        "enospc": "No space left on device",
        "erofs": "Read-only file system",
        "reader": None,
    }[error]
    assert disk.reason(exc) == expected


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


# ---------------------------------------------------------------- the preflight and check=true


def test_check_prints_the_sweep_id_the_sweep_uses_and_the_preflight_runs_the_others(root):
    """The issue's command: check=true names the gr5 cell (its counterpart is missing) and the sweep_id; the
    same command without it uses that id, runs full and lf_h2 and lists gr5 as failed at its start."""
    args = ["-m", "strategy=full,lf_h2,gr5", "phase2_data.counterpart.path=X"]
    check = train(root, *args, "check=true")
    assert check.returncode == 2, check.stderr[-3000:]
    (sweep,) = [line.split("=", 1)[1] for line in check.stdout.splitlines() if line.startswith("cft: sweep_id=")]
    errors = [line for line in check.stderr.splitlines() if "/gr5/" in line]
    assert len(errors) == 1 and "phase2_data.counterpart: X: data file not found" in errors[0]
    assert "2 of 3 cell(s) cannot run (above); nothing was run" in check.stderr and not (root / sweep).exists()
    assert "/lf_h2/" in check.stderr  # the tiny model's 2 layers cannot give lf_h2's k=10: named too
    proc = train(root, *args)
    assert f"cft: sweep_id={sweep}" in proc.stdout and proc.returncode == 1
    runs = {p.parent.parent.name: p for p in (root / sweep).glob("demo-demo/tiny/*/*/seed0")}
    assert (runs["full"] / "DONE").exists() and not (runs["lf_h2"] / "DONE").exists()
    assert log_lines(proc, "2 of 3 cell(s) cannot run (above); running the other 1")
    assert sorted(p.name for p in runs["gr5"].iterdir() if not p.name.startswith(".")) == [
        "FAILED",
        "config.yaml",
        "run_meta.json",
        "train.log",
    ]  # stopped at its start: nothing trained, nothing cached for it
    assert layout.read_failure(runs["gr5"])["message"].startswith("phase2_data.counterpart: X: data file not found")
    strict = train(root, *args, "preflight=strict", "sweep_id=strict")
    assert strict.returncode == 2 and not (root / "strict").exists()


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


def test_log_file_on_a_full_disk_is_one_warning_not_a_traceback_per_record(tmp_path, capsys):
    import errno

    from cft.run import disk

    handler = logging.FileHandler(tmp_path / "train.log")
    logger = logging.getLogger()
    logger.addHandler(handler)

    def emit(record):  # what a full disk does to a log file's write
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            handler.handleError(record)

    handler.emit = emit
    try:
        disk.quiet_log_files()
        logger.warning("one")
        logger.warning("two")
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert err == f"cft: warning: the log file {tmp_path / 'train.log'} cannot be written: No space left on device\n"
