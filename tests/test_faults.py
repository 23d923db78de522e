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
from helpers import SMALL, run_folders, run_script

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


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The run ended with exit 2 and one `cft: error:` line, no traceback; that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
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


def test_full_disk_saving_the_final_model_keeps_the_weights_and_the_rerun_does_not_retrain(root):
    """OSError(ENOSPC) from save_pretrained during Phase 2: the weights go to the rescue folder the message
    names, FAILED records it, and the same command then saves them without training Phase 2 again."""
    proc = train(root, "sweep_id=s", env=fault_env("*/.checkpoint.tmp", "*/.checkpoint.tmp/*"))
    line = one_error(proc)
    (run,) = run_folders(root / "s")
    assert f"could not write the final model to {run / 'checkpoint'}: No space left on device" in line
    rescued = Path(line.split("The trained weights are kept in ")[1].split(";")[0])
    assert rescued.is_relative_to(root / "tmp" / "cft-rescue") and (rescued / "DONE").exists()
    assert layout.read_failure(run)["phase"] == "phase2" and not (run / "DONE").exists()
    again = train(root, "sweep_id=s")
    assert again.returncode == 0, again.stderr[-3000:]
    assert log_lines(again, f"loading it from {rescued} instead of training again")
    assert not log_lines(again, "phase2: 3 steps") and log_lines(proc, "phase2: 3 steps")
    assert (run / "DONE").exists() and (run / "checkpoint" / "model.safetensors").exists()
    assert not (run / "FAILED").exists() and not rescued.exists()


@pytest.mark.slow
def test_full_disk_writing_metrics_names_the_file_and_what_was_kept(root):
    """ENOSPC on metrics.json: the message names the file and the final model kept in the run folder; the
    rerun loads that model instead of training Phase 2 again."""
    proc = train(root, "sweep_id=s", env=fault_env("*/.metrics.json.tmp"))
    line = one_error(proc)
    (run,) = run_folders(root / "s")
    assert f"could not write {run / 'metrics.json'}: No space left on device" in line
    assert f"Kept: the final model in {run / 'checkpoint'}" in line
    assert not (run / "DONE").exists() and layout.read_failure(run)["phase"] == "record"
    again = train(root, "sweep_id=s")
    assert again.returncode == 0, again.stderr[-3000:]
    assert log_lines(again, "Phase 2 was trained and saved by an earlier attempt") and not log_lines(again, "phase2: 3 steps")
    assert (run / "DONE").exists() and "phase2/ta_avg" in json.loads((run / "metrics.json").read_text())


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
    proc = run_script("train.py", ["model=smollm2", *overrides, "tracking=none"], tmp_path, check=False)
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
