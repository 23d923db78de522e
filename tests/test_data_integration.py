"""The paper's datasets from the real files in CFT_DATA (tests/conftest.py; skipped when absent): each read
through its dataset config with `path=`, then two training steps of the tiny model."""

from __future__ import annotations

import json

import pytest
from helpers import compose, run_folders, run_script
from omegaconf import OmegaConf

from cft.data.sources import load_sft
from cft.errors import DataError

pytestmark = pytest.mark.integration


def _spec(node) -> dict:
    return {
        k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in ("counterpart", "use_instruct_checkpoint")
    }


def test_alpaca_5000(shared_data):
    from cft.data.sources import load_config

    cfg = compose(["phase1_data=alpaca", f"phase1_data.path={shared_data / 'alpaca' / 'alpaca_5000.json'}"])
    node = OmegaConf.to_container(cfg.phase1_data, resolve=True)
    # Two records of the published file have an empty output: phase1_data=alpaca skips and counts them.
    data = load_config(node, "phase1_data")
    assert data.sizes == {"en": 4998} and data.skipped == 0 and data.skipped_by == {"empty_output": 2}
    assert sum(bool(e.input) for e in data.examples) == 1943  # as SOURCES.md counts (no input in the 2 skipped)
    # Without that setting the run stops there, naming the record and the keys that would skip it.
    with pytest.raises(
        DataError,
        match=r"alpaca_5000.json:1 \(record 2336\): field 'output' \(output\) is empty \(the dataset's authors shipped some "
        r"records so: set phase1_data.skip_empty_output=true to skip and count them, or phase1_data.on_bad_record=skip",
    ):
        load_config({**node, "skip_empty_output": False}, "phase1_data")
    # A malformed record still stops the run with file:line, even with skip_empty_output.
    assert load_sft(**{**_spec(cfg.phase1_data), "on_bad_record": "skip", "skip_empty_output": False}).skipped == 2


def test_multialpaca_es_ja_with_null_inputs(shared_data):
    cfg = compose(
        [
            "phase2_data=multialpaca",
            f"phase2_data.path={shared_data / 'multialpaca'}",
            "phase2_data.languages=[es,ja]",
        ]
    )  # ja.jsonl:9554 has an empty output: skipped and counted by phase2_data=multialpaca
    data = load_sft(**_spec(cfg.phase2_data))
    assert data.sizes == {"es": 9958, "ja": 9958} and data.skipped_by == {"empty_output": 1}  # equal proportions: es's size
    assert sum(e.input == "" for e in data.examples if e.lang == "es") == 6062  # null inputs read as empty
    with pytest.raises(Exception, match=r"no file for language\(s\) \['fr'\] \(found: es, ja, pt\)"):
        load_sft(**{**_spec(cfg.phase2_data), "languages": ["fr"]})


def test_openorca_sample_system_question_preferred_output(shared_data):
    path = shared_data / "openorca" / "orca_dpo_pairs_validation.jsonl"
    cfg = compose(
        [
            "phase1_data=openorca",
            f"phase1_data.path={path}",
            "phase1_data.fields.messages=input.messages",
            "phase1_data.fields.output=preferred_output",
        ]
    )
    data = load_sft(**_spec(cfg.phase1_data))
    assert len(data) == 284 and data.skipped == 0
    raw = json.loads(path.read_text().splitlines()[0])
    first = next(e for e in data.examples if e.instruction == raw["input"]["messages"][1]["content"])
    assert first.system == raw["input"]["messages"][0]["content"] and first.output == raw["preferred_output"][0]["content"]


def test_two_training_steps_on_alpaca_and_multialpaca(shared_data, tmp_path):
    """alpaca -> multialpaca (es, ja) through train.py."""
    run_script(
        "train.py",
        [
            "model=tiny",
            "phase1_data=alpaca",
            f"phase1_data.path={shared_data / 'alpaca' / 'alpaca_5000.json'}",
            "phase1_data.max_examples=64",
            "phase2_data=multialpaca",
            f"phase2_data.path={shared_data / 'multialpaca'}",
            "phase2_data.languages=[es,ja]",
            "phase2_data.max_examples=64",
            "train.max_steps=2",
            "train.global_batch_size=8",
            "train.micro_batch_size=4",
            "eval.tasks.demo.per_task_language=1",
            "eval.tasks.demo.languages=[en,es]",
            "eval.tasks.demo.max_new_tokens=2",
            "sweep_id=real",
        ],
        tmp_path,
    )
    (folder,) = run_folders(tmp_path / "real")
    m = json.loads((folder / "metrics.json").read_text())
    assert (m["data/phase1/n/en"], m["data/phase2/n/es"], m["data/phase2/n/ja"]) == (64, 32, 32)
    assert m["train/phase1/steps"] == 2 and m["train/phase2/steps"] == 2
    assert (m["data/phase1/skipped"], m["data/phase2/skipped"]) == (0, 0)  # no malformed record
    assert (m["data/phase1/skipped_empty_output"], m["data/phase2/skipped_empty_output"]) == (2, 1)  # shipped empty


def test_two_training_steps_on_the_openorca_sample(shared_data):
    from conftest import TINY_ARCH

    from cft.models import build_model, build_tokenizer
    from cft.training.loop import TrainSettings, fit

    cfg = compose(
        [
            "phase1_data=openorca",
            f"phase1_data.path={shared_data / 'openorca' / 'orca_dpo_pairs_validation.jsonl'}",
            "phase1_data.fields.messages=input.messages",
            "phase1_data.fields.output=preferred_output",
            "phase1_data.max_examples=16",
        ]
    )
    data = load_sft(**_spec(cfg.phase1_data))
    tok = build_tokenizer()
    settings = TrainSettings(lr=1e-3, max_steps=2, global_batch_size=8, micro_batch_size=4)
    _, stats, tok_stats = fit(build_model(TINY_ARCH, tok), tok, data.examples, settings=settings, max_length=512, packing=True)
    # Long OpenOrca prompts (byte tokens) are dropped, long answers cut: both counted.
    assert stats.steps == 2 and (tok_stats.total, tok_stats.truncated, tok_stats.dropped) == (16, 7, 8)
