"""The data configs end to end through train.py: local files, skipped bad records and packing
reported in metrics.json."""

from __future__ import annotations

import json

from helpers import run_folders, run_script, write_jsonl

RUN = [
    "model=tiny",
    "train.max_steps=2",
    "train.global_batch_size=8",
    "train.micro_batch_size=4",
    "eval.tasks.demo.per_task_language=2",
    "eval.tasks.demo.languages=[en,es]",
    "eval.tasks.demo.max_new_tokens=4",
]


def test_local_alpaca_and_multialpaca_layouts_with_skip_and_packing(tmp_path):
    en = tmp_path / "alpaca.json"
    records = [{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(12)] + [
        {"instruction": "", "input": "", "output": "x"}
    ]
    en.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")  # record k on line k + 1
    for lang in ("es", "ja"):
        write_jsonl(
            tmp_path / "multi" / f"{lang}.jsonl",
            [{"instruction": f"{lang} {i}", "input": None, "output": "r" * (1 + 3 * i)} for i in range(5 if lang == "ja" else 9)]
            + [{"instruction": "bad", "input": None, "output": 7}],
        )
    proc = run_script(
        "train.py",
        [
            *RUN,
            "phase1_data=alpaca",
            f"phase1_data.path={en}",
            "phase1_data.on_bad_record=skip",
            "phase2_data=multialpaca",
            f"phase2_data.path={tmp_path / 'multi'}",
            "phase2_data.languages=[es,ja]",
            "phase2_data.on_bad_record=skip",
            "train.packing=true",
            "sweep_id=data",
        ],
        tmp_path,
    )
    (folder,) = run_folders(tmp_path / "data")
    m = json.loads((folder / "metrics.json").read_text())
    assert m["data/phase1/n/en"] == 12 and m["data/phase1/skipped"] == 1
    assert (m["data/phase2/n/es"], m["data/phase2/n/ja"], m["data/phase2/skipped"]) == (5, 5, 2)  # equal proportions
    assert 0 <= m["train/phase2/padding_fraction_packed"] < m["train/phase2/padding_fraction"] < 1
    assert m["train/phase1/tokenize_packing"] is True and m["train/phase2/steps"] == 2
    assert "alpaca.json:14 (record 13): field 'instruction' (instruction) is empty" in proc.stderr + proc.stdout


def test_bad_record_stops_the_run_by_default(tmp_path):
    write_jsonl(
        tmp_path / "multi" / "es.jsonl",
        [{"instruction": "a", "input": None, "output": "b"}, {"instruction": "a", "input": 3, "output": "b"}],
    )
    proc = run_script(
        "train.py",
        [
            *RUN,
            "phase1_data=instruct",
            "phase2_data=multialpaca",
            f"phase2_data.path={tmp_path / 'multi'}",
            "phase2_data.languages=[es]",
            "sweep_id=bad",
        ],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and f"{tmp_path / 'multi' / 'es.jsonl'}:2: field 'input' must be a string or null" in proc.stderr
    assert "Traceback" not in proc.stderr
