"""Robustness of a run: resume after SIGKILL, a full disk while saving, a NaN loss, W&B unreachable."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import SMALL, NanAtThirdStep, run_folders, run_script, token_rows

REPO = Path(__file__).resolve().parent.parent

# A strategy that trains like `full` but slowly, so that a test can kill the run mid-Phase 2.
SLOW = textwrap.dedent("""
    import time
    from cft.strategies.full import Full

    class SlowFull(Full):
        def penalty(self, model, batch):
            time.sleep(0.15)
            return None
""")

RESUME = [
    *SMALL,
    "+train.phase2.max_steps=12",
    "+train.phase2.checkpoint_every=2",
    "+train.phase2.keep_checkpoints=2",
    "strategy._target_=slowhooks.SlowFull",
]


def _start(args: list[str], root: Path, env: dict) -> subprocess.Popen:
    full_env = {**os.environ, "CFT_OUTPUT_ROOT": str(root), "PYTHONUNBUFFERED": "1", **env}
    full_env.pop("CFT_SWEEP_ID", None)
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=root,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_mid_phase2_then_resume_matches_uninterrupted(tmp_path):
    (tmp_path / "slowhooks.py").write_text(SLOW)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    # The uninterrupted reference (it also builds the shared Phase-1 artifact).
    run_script("train.py", [*RESUME, "sweep_id=ref"], tmp_path, env=env)
    (ref,) = run_folders(tmp_path / "ref")

    proc = _start([*RESUME, "sweep_id=kill"], tmp_path, env)
    deadline = time.time() + 300
    ckpts = []
    while time.time() < deadline and proc.poll() is None:
        ckpts = list((tmp_path / "kill").rglob("checkpoints/phase2/step-*/DONE"))
        if ckpts:
            break
        time.sleep(0.05)
    assert ckpts, f"no checkpoint appeared before the run ended: {proc.stdout.read()[-3000:] if proc.poll() is not None else ''}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (folder,) = run_folders(tmp_path / "kill")
    assert not (folder / "DONE").exists() and not (folder / "metrics.json").exists()

    again = run_script("train.py", [*RESUME, "sweep_id=kill"], tmp_path, env=env)
    out = again.stdout + again.stderr
    assert "phase2: resuming from checkpoint" in out
    a = json.loads((ref / "metrics.json").read_text())
    b = json.loads((folder / "metrics.json").read_text())
    assert b["train/phase2/resumed_from"] >= 2 and "train/phase2/resumed_from" not in a
    assert b["train/phase2/steps"] == a["train/phase2/steps"] == 12
    assert b["train/phase2/tokens"] == a["train/phase2/tokens"]  # counted across the kill
    assert b["train/phase2/final_loss"] == pytest.approx(a["train/phase2/final_loss"], abs=1e-5)
    for key in a:
        if key.startswith(("phase1/", "phase2/", "delta/")):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
    from safetensors.torch import load_file

    wa, wb = load_file(ref / "checkpoint" / "model.safetensors"), load_file(folder / "checkpoint" / "model.safetensors")
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-5), name
    assert not (folder / "checkpoints").exists()  # resumable checkpoints are removed once the run is done


# ---------------------------------------------------------------- in-process faults


def _train(tiny_model_dir, ckpt_dir, hooks=None, **kw):
    from cft.data.format import PadCollator
    from cft.models import load_model
    from cft.training.loop import TrainSettings, train_phase

    model, tok = load_model(str(tiny_model_dir))
    settings = TrainSettings(
        **{
            "lr": 1e-3,
            "max_steps": 4,
            "global_batch_size": 4,
            "micro_batch_size": 2,
            "seed": 0,
            "checkpoint_every": 1,
            "keep_checkpoints": 1,
            **kw,
        }
    )
    return train_phase(
        model,
        token_rows(),
        collator=PadCollator(tok.pad_token_id),
        settings=settings,
        hooks=hooks,
        phase="phase2",
        checkpoint_dir=ckpt_dir,
    )


def test_full_disk_while_saving_a_checkpoint_is_a_warning_and_keeps_the_previous_one(
    tmp_path, tiny_model_dir, monkeypatch, caplog
):
    """A periodic checkpoint is insurance: a full disk while writing one does not end the training it insures."""
    from accelerate import Accelerator

    real_save = Accelerator.save_state
    calls = []

    def save_then_fill_disk(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: half written, then the disk is full
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        if len(calls) > 2:  # the disk stays full: step-1 is the checkpoint left
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_then_fill_disk)
    ckpt = tmp_path / "ckpt"
    with caplog.at_level("WARNING", logger="cft.training.loop"):
        _, stats = _train(tiny_model_dir, ckpt)
    assert stats.steps == 4
    assert (
        f"the checkpoint of step 2 was not written (No space left on device); training goes on (a rerun would resume from {ckpt / 'step-1'})"
        in caplog.text
    )
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-1"]  # no half checkpoint left, the previous one kept


def test_resume_restores_optimizer_scheduler_and_data_order(tmp_path, tiny_model_dir):
    """In process: 4 steps straight == 2 steps, stop, resume for 2 more (Adam moments, LR schedule, batches)."""
    ref, _ = _train(tiny_model_dir, tmp_path / "a", checkpoint_every=0, warmup_steps=1)

    class Stop(Exception):
        pass

    class StopAfter2:
        def penalty(self, model, batch):
            return None

        def on_before_optimizer_step(self, model):
            self.n = getattr(self, "n", 0) + 1
            if self.n == 3:  # before the 3rd optimizer step: the checkpoint of step 2 exists
                raise Stop

    with pytest.raises(Stop):
        _train(tiny_model_dir, tmp_path / "b", hooks=StopAfter2(), checkpoint_every=2, warmup_steps=1)
    resumed, stats = _train(tiny_model_dir, tmp_path / "b", checkpoint_every=2, warmup_steps=1)
    assert stats.resumed_from == 2
    for (n, p), (_, q) in zip(ref.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_sigterm_saves_a_checkpoint_at_the_step_and_resume_matches(tmp_path, tiny_model_dir):
    """SIGTERM during step 2 (no periodic checkpoints): the loop finishes that step, writes step-2,
    raises Interrupted (exit 143), and the rerun ends with the uninterrupted weights."""
    from cft.training.loop import Interrupted

    ref, _ = _train(tiny_model_dir, tmp_path / "a", checkpoint_every=0, warmup_steps=1)

    class TermDuring2:
        n = 0

        def penalty(self, model, batch):
            return None

        def on_before_optimizer_step(self, model):
            self.n += 1
            if self.n == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # a handler that died here would kill pytest

    with pytest.raises(Interrupted, match=r"phase2: stopped by SIGTERM after step 2 of 4; checkpoint saved") as err:
        _train(tiny_model_dir, tmp_path / "b", hooks=TermDuring2(), checkpoint_every=0, warmup_steps=1)
    assert err.value.exit_code == 143
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["step-2"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back
    resumed, stats = _train(tiny_model_dir, tmp_path / "b", checkpoint_every=0, warmup_steps=1)
    assert stats.resumed_from == 2 and stats.steps == 4
    for (n, p), (_, q) in zip(ref.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n

    # Under a launcher that handles SIGTERM itself (submitit requeues on SIGUSR2 and only logs
    # SIGTERM), the checkpoint is written, that handler runs, and training goes on.
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        model, stats = _train(tiny_model_dir, tmp_path / "c", hooks=TermDuring2(), checkpoint_every=0, warmup_steps=1)
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the launcher's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert calls == [signal.SIGTERM] and stats.steps == 4
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["step-2"]
    for (n, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


@pytest.mark.slow
def test_sigterm_to_train_py_exits_143_with_a_checkpoint_then_resumes(tmp_path):
    (tmp_path / "slowhooks.py").write_text(SLOW)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    args = [*RESUME, "++train.phase2.checkpoint_every=0", "sweep_id=term"]  # only the signal writes one
    proc = _start(args, tmp_path, env)
    out = []
    for line in proc.stdout:  # wait until Phase 2 has made progress (its bar shows a loss)
        out.append(line)
        if "phase2:" in line and "loss=" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)
    text = "".join(out) + rest
    assert proc.returncode == 143, text[-3000:]
    assert "stopped by SIGTERM after step" in text and "rerun the same command to resume" in text
    assert "Traceback" not in text
    assert list((tmp_path / "term").rglob("checkpoints/phase2/step-*/DONE"))
    again = run_script("train.py", args, tmp_path, env=env)
    assert "phase2: resuming from checkpoint" in again.stdout + again.stderr
    (folder,) = run_folders(tmp_path / "term")
    assert json.loads((folder / "metrics.json").read_text())["train/phase2/steps"] == 12


def test_nan_loss_stops_with_phase_and_step(tmp_path, tiny_model_dir):
    from cft.training.loop import TrainingError

    with pytest.raises(TrainingError, match=r"phase2: loss is nan at step 3 \(epoch 0, rank 0, learning rate [0-9.e-]+[;)]"):
        _train(tiny_model_dir, tmp_path / "c", hooks=NanAtThirdStep())


def test_wandb_online_unreachable_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    import wandb

    from cft.run.tracking import Tracker

    real_init = wandb.init
    modes = []

    def init(*args, **kwargs):
        modes.append(kwargs.get("mode"))
        if kwargs.get("mode") == "online":
            raise wandb.errors.CommError("could not reach api.wandb.ai")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    with caplog.at_level("WARNING"):
        tracker = Tracker(
            mode="online", project="cft-test", run_dir=tmp_path, name="cell", group="g", job_type="train", config={"lr": 1.0}
        )
    assert modes == ["online", "offline"] and tracker.mode == "offline"
    assert "falling back to offline" in caplog.text
    tracker.log({"phase2/loss": 1.5, "phase2/step": 1})
    tracker.summary({"phase2/ta_avg": 0.5})
    tracker.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
