"""What a cell's W&B run logs so its dashboard has data: the training loop's curves of both phases,
each against its own step axis (define_metric), tokens/s among them, the per-language scores as a
table, and run_meta in the config. Checked by reading the offline .wandb file back."""

from __future__ import annotations

import json

from helpers import token_rows

from cft.run import keys
from cft.run.tracking import RUN_META, SCORES_TABLE, Tracker, logged, read_records, run_files


def test_both_phases_log_curves_on_their_own_step_axis(tmp_path, tiny_model_dir, monkeypatch):
    from cft.data.format import PadCollator
    from cft.models import load_model
    from cft.training.loop import TrainSettings, train_phase

    monkeypatch.setenv("WANDB_MODE", "offline")
    meta = {"sweep_id": "sw", "seed": 0, "choices": {"strategy": "lf_h2", "model": "tiny"}}
    tracker = Tracker(mode="offline", project="cft", run_dir=tmp_path, name="cell", group="sw", job_type="train", meta=meta)
    tracker.define_phase_metrics()
    model, tok = load_model(str(tiny_model_dir))
    settings = TrainSettings(lr=1e-3, max_steps=3, global_batch_size=2, micro_batch_size=2, seed=0, log_every=1)
    for phase in keys.PHASES:  # the real loop, Phase 1 then Phase 2, into one W&B run
        model, _ = train_phase(
            model, token_rows(8), collator=PadCollator(tok.pad_token_id), settings=settings, phase=phase, log_fn=tracker.log
        )
    metrics = {
        keys.score("la", "xquad", "de", phase="phase2"): 0.4,
        keys.score("la", "xquad", "de", metric="em", phase="phase2"): 0.3,
        keys.score("la", "xquad", "es", phase="phase1"): 0.2,
        keys.score("la", "xquad", phase="phase2"): 0.4,
    }
    tracker.summary(metrics)
    tracker.log_scores_table(metrics)
    tracker.finish()

    (file,) = run_files(tmp_path)
    lg = logged(file)
    assert (lg.group, lg.job_type, lg.config[RUN_META]) == ("sw", "train", meta)
    for phase in keys.PHASES:
        step = keys.curve(phase, "step")
        for name in ("loss", "lr", "epoch", "tokens_per_second"):
            assert keys.curve(phase, name) in lg.history
            assert lg.step_metrics[keys.curve(phase, name)] == step  # plotted against the phase's own step
    assert lg.tables == {SCORES_TABLE} and set(metrics) <= lg.summary

    # Phase 2's step axis starts again at 1 (W&B's global step goes on): the two never collide.
    rows = []
    for record in read_records(file):
        if record.WhichOneof("record_type") == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            if any(k.endswith("/loss") for k in row):
                rows.append(row)
    assert [(r.get("phase1/step"), r.get("phase2/step")) for r in rows] == [
        (1, None),
        (2, None),
        (3, None),
        (None, 1),
        (None, 2),
        (None, 3),
    ]
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert all(r[k] > 0 for r in rows for k in r if k.endswith("/tokens_per_second"))

    # The per-language table: one row per language score (em is a metric, not a language).
    (table_file,) = (file.parent / "files" / "media" / "table").glob(f"{SCORES_TABLE}_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["phase", "ability", "task", "language", "score"]
    assert sorted(map(tuple, table["data"])) == [("phase1", "la", "xquad", "es", 0.2), ("phase2", "la", "xquad", "de", 0.4)]
