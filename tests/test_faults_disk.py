"""Fault injection, disks that refuse writes: a read-only output root, a full disk or tmpfs when the final
model, metrics.json, checkpoints or the cached Phase-1 model is written, a run folder turning read-only
in Phase 2, the rescue places and their fallbacks, and the disk faults' exception types. Each test asserts
the one-line message, the exit status, and that what was trained is kept (the rerun does not train it
again). The other faults: test_faults.py; sweeps: test_faults_sweep.py; shared set-up: faults_common.py.

A full or read-only disk is planted beneath cft by tests/fault_inject/sitecustomize.py (a patched
low-level writer: tests run as root, where chmod does not stop writes); where this machine allows
mounting (root), real full tmpfs mounts and read-only mounts are used too."""

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
    _disk_fault,
    _mount,
    _run_folder_of,
    _safetensors_bytes,
    _tmp,
    _tmpfs,
    _umount,
    artifact,
    assert_rescued_then_resumed,
    assert_train_figures,
    damage,
    fault_env,
    log_lines,
    one_error,
    train,
)
from helpers import run_folders, run_script

from cft.run import artifacts, layout

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


# ---------------------------------------------------------------- trust, second round (issue 21)


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
        if proc.poll() is None:  # a failed assertion above: no train.py left running
            proc.kill()
            proc.wait(timeout=60)
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


# ---------------------------------------------------------------- log files


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
