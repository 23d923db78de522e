"""What tests/test_faults*.py share: the prepared demo run and its cache, a fresh output root per test, running
train.py there (with faults planted beneath cft by tests/fault_inject/sitecustomize.py), and the checks of
their one-line errors, rescued weights and kept figures. tests/conftest.py loads it as a plugin (its fixtures
`prepared` and `root`, asserts rewritten); the test modules import the rest."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SMALL, run_folders, run_script

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


def _safetensors_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)})


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
