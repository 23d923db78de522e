"""Several ranks: DeepSpeed ZeRO-2/3 and DDP through the one loop, and a SLURM-style sweep through
submitit's local launcher. Two CPU processes stand in for GPUs (gloo; DeepSpeed's CPU accelerator)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import SMALL, run_folders, run_script

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

ARCH = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
}

# Trains the tiny model with train_phase under the current launcher, once per (backend, freezing);
# rank 0 saves the final weights. Every variant sees the same data, seed and global batch.
WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from cft.training import distributed
    from cft.data.format import PadCollator
    from cft.training.loop import TrainSettings, train_phase, zero3_init
    from cft.models import load_model

    model_dir, out_dir, variants = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(32):
        ids = torch.randint(5, 200, (int(torch.randint(8, 24, (1,), generator=g)),), generator=g).tolist()
        data.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids})
    cpu_adams = []
    if "zero3offload-full" in variants:  # ZeRO-Offload must run DeepSpeed's CPU Adam, not torch's AdamW
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        real_init = DeepSpeedCPUAdam.__init__

        def counting_init(self, *a, **k):
            cpu_adams.append(k.get("adamw_mode", True))
            real_init(self, *a, **k)

        DeepSpeedCPUAdam.__init__ = counting_init
    for variant in variants:
        backend, freeze = variant.split("-")
        if backend == "ddp":
            ds = None
        elif backend == "zero3offload":  # conf/train/deepspeed_zero3_offload.yaml's blocks
            ds = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}},
                  "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}}
        else:
            ds = {"zero_optimization": {"stage": int(backend[-1])}, "bf16": {"enabled": "auto"}}
        n_cpu_adams = len(cpu_adams)
        settings = TrainSettings(lr=1e-2, max_steps=4, global_batch_size=8, micro_batch_size=4, warmup_steps=1,
                                 deepspeed=ds, seed=0)
        with zero3_init(settings):
            model, tok = load_model(model_dir)
        if freeze == "freeze":  # frozen before the engine is built, as a strategy's prepare() does
            for name, p in model.named_parameters():
                if ".layers.0." in name or "embed" in name:
                    p.requires_grad_(False)
        if backend.startswith("zero3"):
            sizes = {p.numel() for p in model.parameters()}
            assert sizes == {0}, f"ZeRO-3 model was not created partitioned: {sizes}"
        ckpt = None
        if freeze == "resume":  # stopped before its 3rd optimizer step, then rerun: resumes from step 2
            import dataclasses

            class Stop(Exception):
                pass

            class StopAt3:
                n = 0

                def penalty(self, model, batch):
                    return None

                def on_before_optimizer_step(self, model):
                    self.n += 1
                    if self.n == 3:
                        raise Stop

            ckpt = f"{out_dir}/{variant}-checkpoints"
            settings = dataclasses.replace(settings, checkpoint_every=2)
            try:
                train_phase(model, data, collator=PadCollator(tok.pad_token_id), settings=settings, hooks=StopAt3(),
                            phase=variant, checkpoint_dir=ckpt)
            except Stop:
                pass
            with zero3_init(settings):
                model, tok = load_model(model_dir)
        if freeze == "term":  # SIGTERM reaches rank 0 alone during step 2: both ranks stop after it, with a checkpoint
            import os, signal
            from cft.training.loop import Interrupted

            class TermRank0At2:
                n = 0

                def penalty(self, model, batch):
                    return None

                def on_before_optimizer_step(self, model):
                    self.n += 1
                    if self.n == 2 and distributed.rank() == 0:
                        os.kill(os.getpid(), signal.SIGTERM)

            ckpt = f"{out_dir}/{variant}-checkpoints"
            try:
                train_phase(model, data, collator=PadCollator(tok.pad_token_id), settings=settings, hooks=TermRank0At2(),
                            phase=variant, checkpoint_dir=ckpt)
            except Interrupted as exc:
                assert "stopped by SIGTERM after step 2 of 4" in str(exc), exc
            else:
                raise AssertionError(f"rank {distributed.rank()} did not stop on SIGTERM")
            with zero3_init(settings):
                model, tok = load_model(model_dir)
        trained, stats = train_phase(model, data, collator=PadCollator(tok.pad_token_id), settings=settings, phase=variant,
                                     checkpoint_dir=ckpt)
        assert (stats.resumed_from == 2) == (freeze in ("resume", "term")), stats
        if distributed.is_main():
            torch.save({n: p.detach().float().cpu() for n, p in trained.state_dict().items()}, f"{out_dir}/{variant}.pt")
            json.dump({"loss": stats.final_loss, "tokens": stats.tokens, "steps": stats.steps}, open(f"{out_dir}/{variant}.json", "w"))
        elif backend.startswith("zero3"):
            assert trained is None  # gathered on rank 0 only
        if backend == "zero3offload":
            assert cpu_adams[n_cpu_adams:] == [True], cpu_adams  # one DeepSpeedCPUAdam, in AdamW mode
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("CFT_SWEEP_ID", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def single_process(model_dir: Path, freeze: bool) -> dict:
    """The reference: the same training in this process, one rank, plain torch (no DeepSpeed)."""
    from cft.data.format import PadCollator
    from cft.models import load_model
    from cft.training.loop import TrainSettings, train_phase

    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(32):
        ids = torch.randint(5, 200, (int(torch.randint(8, 24, (1,), generator=g)),), generator=g).tolist()
        data.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids})
    model, tok = load_model(str(model_dir))
    if freeze:
        for name, p in model.named_parameters():
            if ".layers.0." in name or "embed" in name:
                p.requires_grad_(False)
    settings = TrainSettings(lr=1e-2, max_steps=4, global_batch_size=8, micro_batch_size=4, warmup_steps=1, seed=0)
    trained, _ = train_phase(model, data, collator=PadCollator(tok.pad_token_id), settings=settings, phase="ref")
    return {n: p.detach().float().cpu() for n, p in trained.state_dict().items()}


def test_two_ranks_match_one_rank_for_zero2_zero3_and_ddp(tmp_path, tiny_model_dir):
    """Two ranks sharing a global batch of 8 reach the weights of one rank with 2 accumulated
    micro-batches of 4: ZeRO-2, ZeRO-3 (model created partitioned, gathered at the end), ZeRO-3 with
    parameters and optimizer offloaded to CPU memory (DeepSpeed's compiled CPU Adam) and DDP;
    parameters frozen before the engine is built stay bit-identical; a DeepSpeed run stopped after
    step 2 and resumed from its checkpoint ends where the uninterrupted one does, and so does a run
    whose rank 0 alone got SIGTERM (both ranks stop at the same step and write one checkpoint)."""
    (tmp_path / "worker.py").write_text(WORKER)
    variants = [
        "zero2-full",
        "zero3-full",
        "zero2-freeze",
        "zero3-freeze",
        "ddp-full",
        "zero3-resume",
        "zero2-resume",
        "zero3offload-full",
        "zero2-term",
        "ddp-term",
    ]
    torchrun([str(tmp_path / "worker.py"), str(tiny_model_dir), str(tmp_path), ",".join(variants)], tmp_path)

    from transformers import AutoModelForCausalLM

    base = {n: p.float() for n, p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict().items()}
    refs = {False: single_process(tiny_model_dir, False), True: single_process(tiny_model_dir, True)}
    for variant in variants:
        got = torch.load(tmp_path / f"{variant}.pt")
        freeze = variant.endswith("freeze")
        ref = refs[freeze]
        assert set(got) == set(ref), variant
        for name in ref:
            moved = (ref[name] - base[name]).abs().max().item()
            assert torch.allclose(got[name], ref[name], atol=1e-5), (variant, name, (got[name] - ref[name]).abs().max().item())
            if freeze and (".layers.0." in name or "embed" in name or name == "lm_head.weight"):  # lm_head is tied to embed
                assert torch.equal(got[name], base[name]), (variant, name)
            else:
                assert moved > 1e-3, (variant, name)  # it trained
        stats = json.loads((tmp_path / f"{variant}.json").read_text())
        assert stats["steps"] == 4
        # tokens are summed over both ranks: every example of 4 global batches of 8
        assert stats["tokens"] == json.loads((tmp_path / "zero2-full.json").read_text())["tokens"]


def _frozen_layers_unchanged(folder: Path, phase1_dir: Path, frozen: list[str]) -> None:
    from safetensors.torch import load_file

    after = load_file(folder / "checkpoint" / "model.safetensors")
    before = load_file(phase1_dir / "model" / "model.safetensors")
    assert frozen, "the strategy froze nothing"
    for name in frozen:
        assert torch.equal(after[name].float(), before[name].float()), name


def test_submitit_local_sweep_with_zero3_ranks(tmp_path):
    """`-m hydra/launcher=slurm_local` with 2 tasks per job: 2 cells (Phase-2 languages es, de) of a
    freezing strategy run at once, each a ZeRO-3 process group of 2 ranks; one run folder per cell,
    written by rank 0 alone; the Phase-1 model both need is built once; frozen q/k/v layers keep
    their Phase-1 values while the rest trains."""
    small = [o for o in SMALL if not o.startswith("phase2_data.languages")]
    args = [
        "-m",
        "hydra/launcher=slurm_local",
        "hydra.launcher.tasks_per_node=2",
        *small,
        "train=deepspeed_zero3",
        "strategy=lf_h2",
        "strategy.k=1",
        "strategy.selection=layer",  # whole q/k/v matrices (per-head masks under ZeRO: test_strategies_e2e)
        "phase2_data.languages=[es],[de]",
        "sweep_id=sub",
    ]
    run_script("train.py", args, tmp_path, env={"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)})
    folders = run_folders(tmp_path / "sub")
    assert len(folders) == 2, folders
    logs = "".join(f.read_text(errors="replace") for f in (tmp_path / "sub" / ".submitit").rglob("*_log.*"))
    assert logs.count("Building phase1 artifact") == 1, logs[-3000:]
    (phase1_dir,) = [p for p in (tmp_path / "cache" / "phase1").iterdir() if p.is_dir()]
    from safetensors.torch import load_file

    before = load_file(phase1_dir / "model" / "model.safetensors")
    for folder in folders:
        assert (folder / "DONE").exists()
        assert len(list((folder / "wandb").glob("offline-run-*"))) == 1  # rank 0 alone tracks
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["train/phase2/steps"] == 3
        assert json.loads((folder / "run_meta.json").read_text())["sweep_id"] == "sub"
        after = load_file(folder / "checkpoint" / "model.safetensors")
        for module in ("q_proj", "k_proj", "v_proj"):
            (layer,) = [int(x) for x in str(metrics[f"strategy/frozen/{module}"]).strip("L").split(",")]
            frozen = f"model.layers.{layer}.self_attn.{module}.weight"
            other = f"model.layers.{1 - layer}.self_attn.{module}.weight"
            assert torch.equal(after[frozen].float(), before[frozen].float()), (folder, frozen)
            assert not torch.equal(after[other].float(), before[other].float()), (folder, other)


@pytest.mark.slow
def test_single_process_deepspeed_run(tmp_path):
    """`python train.py train=deepspeed_zero3` with no launcher: one process, its own process group."""
    args = [
        *SMALL,
        "train=deepspeed_zero3",
        "train.max_steps=2",
        "strategy=lf_h1",
        "strategy.k=1",
        "tracking=none",  # W&B is not what this checks (test_spine checks it): about 2 s of CPU a run
        "sweep_id=ds1",
    ]
    run_script("train.py", args, tmp_path, env={"DS_ACCELERATOR": "cpu"})
    (folder,) = run_folders(tmp_path / "ds1")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["train/phase2/steps"] == 2 and (folder / "DONE").exists()
