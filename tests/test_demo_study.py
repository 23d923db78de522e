"""The demo study (issue 8): its data families, the phase-0 base, and a reduced study that must show
the paper's findings 1 and 2 in direction, with the analysis tables and figures made of it."""

from __future__ import annotations

import json

import pytest
from helpers import compose, run_folders, run_script

from cft.data import demo
from cft.errors import ConfigError


def test_pack_cuts_fixed_length_sequences_and_drops_the_tail():
    from cft.models.pretrain import pack

    seqs = pack(list(range(10)), 4)
    assert [s["input_ids"] for s in seqs] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(s["labels"] == s["input_ids"] for s in seqs)
    with pytest.raises(ConfigError, match="seq_len"):
        pack([1, 2, 3], 1)


def test_raw_documents_are_plain_text_in_every_language_and_not_the_training_inputs():
    docs = demo.raw_documents(["repeat", "add"], ["en", "ja"], 6, seed=0, per_document=4)
    assert len(docs) == 6  # 2 languages x 12 examples / 4 per document
    assert docs == demo.raw_documents(["repeat", "add"], ["en", "ja"], 6, seed=0, per_document=4)
    assert not any("<|" in d for d in docs)  # no chat markup: phase 0 is raw text
    assert any("単語を二回繰り返してください" in d for d in docs) and any("Repeat the word twice" in d for d in docs)
    first = docs[0].split("\n\n")[0].split("\n")
    assert len(first) == 2  # instruction line, then its answer
    # Parallel documents: one input in every language, each with its own template, the same answer.
    par = demo.raw_documents(["number"], ["en", "es", "ja"], 5, seed=0, parallel=True)
    assert len(par) == 5
    for doc in par:
        pairs = [block.split("\n") for block in doc.split("\n\n")]
        assert [p[0].split(":")[0] for p in pairs] == [
            demo.TEMPLATES["number"][lang].split(":")[0] for lang in ("en", "es", "ja")
        ]
        assert len({p[1] for p in pairs}) == 1

    # The pre-training inputs are a different random stream from the fine-tuning and test data.
    def words(exs):
        return {e.instruction.rsplit(" ", 1)[-1] for e in exs}

    pre = words(demo.make_examples(["repeat"], ["en"], 200, 0, split="pretrain"))
    train = words(demo.make_examples(["repeat"], ["en"], 200, 0, split="train"))
    assert len(pre & train) < 20


def test_family_a_words_have_fixed_length_and_family_b_answers_follow_the_rule():
    for e in demo.make_examples(["repeat", "reverse"], ["en", "de"], 30, 0):
        word = e.instruction.rsplit(" ", 1)[-1]
        assert len(word) == 4
        assert e.output == (f"{word} {word}" if e.task == "repeat" else word[::-1])
    for e in demo.make_examples(["add", "count", "max"], ["fr"], 30, 0):
        assert e.output.isdigit()


def test_study_configs_pin_the_issue_grid():
    cfg = compose(["experiment=demo_study"])
    assert list(cfg.phase1_data.languages) == ["en"] and list(cfg.phase1_data.demo.tasks) == list(demo.FAMILIES["A"])
    assert list(cfg.phase2_data.demo.tasks) == list(demo.FAMILIES["A"])
    others = list(cfg.phase2_data.languages)
    assert len(others) >= 5 and "en" not in others
    dis = compose(["experiment=demo_study", "phase2_data=demo_dissimilar"])
    assert list(dis.phase2_data.demo.tasks) == list(demo.FAMILIES["B"]) and list(dis.phase2_data.languages) == others
    # GR/ER draw on the English version of the Phase-2 instructions, as in the paper.
    assert list(dis.phase2_data.counterpart.languages) == ["en"] and list(dis.phase2_data.counterpart.demo.tasks) == list(
        demo.FAMILIES["B"]
    )
    assert list(cfg.eval.tasks.demo.tasks) == list(demo.FAMILIES["A"]) and cfg.eval.tasks.demo.languages[0] == "en"
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    import yaml
    from helpers import REPO

    grid = yaml.safe_load((REPO / "conf/experiment/demo_study.yaml").read_text())["hydra"]["sweeper"]["params"]
    assert grid["phase2_data"] == "demo,demo_dissimilar"
    assert grid["strategy"].split(",") == ["full", "lf_h1", "lf_h2", "gr5", "gr10", "er10", "lora"]
    assert grid["seed"] == "0,1,2"
    lf = compose(["experiment=demo_study", "strategy=lf_h2"])
    assert lf.strategy.k == lf.model.lf_k < lf.model.build.num_hidden_layers


def test_pretrained_base_is_a_cached_artifact(tmp_path, tiny_arch):
    from omegaconf import OmegaConf

    from cft.recipes.train import base_reference

    pretrain = {
        "source": "demo",
        "tasks": ["repeat"],
        "languages": ["en", "es"],
        "per_task_language": 40,
        "data_seed": 0,
        "seq_len": 32,
        "batch_size": 4,
        "steps": 3,
        "lr": 1e-3,
        "warmup_steps": 0,
    }
    model_cfg = OmegaConf.create({"name": "t", "base": None, "build": {**tiny_arch, "seed": 0}, "pretrain": pretrain})
    ref = base_reference(model_cfg, tmp_path)
    stats = json.loads((tmp_path / "base" / ref.split("/")[-2] / "model" / "pretrain_stats.json").read_text())
    assert stats["steps"] == 3
    assert base_reference(model_cfg, tmp_path) == ref  # reused, not rebuilt
    plain = OmegaConf.create({"name": "t", "base": None, "build": {**tiny_arch, "seed": 0}})
    assert base_reference(plain, tmp_path) != ref
    model_cfg.pretrain.steps = 4
    assert base_reference(model_cfg, tmp_path) != ref


@pytest.fixture(scope="module")
def ci_study(tmp_path_factory, demo_cache):
    """The reduced study as CI runs it (experiment=demo_study_ci), then analyze.py on it: phase 0,
    one Phase-1 model, full fine-tuning on both Phase-2 datasets, MPD off (about 20 CPU-seconds once
    phase 0 and Phase 1 are built). Phase 0 and Phase 1 are those of the demo's defaults, so they go to
    (or come from) this test run's demo cache."""
    root = tmp_path_factory.mktemp("demo_study")
    args = ["-m", "experiment=demo_study_ci", "tracking.mode=disabled", f"paths.cache_dir={demo_cache}"]
    train = run_script("train.py", args, root)
    analysis = run_script("analyze.py", ["sweep_id=demo_study_ci", "embedder=hashing", "tracking.mode=disabled"], root)
    return root, train, analysis


def _cells(root):
    cells = {}
    for folder in run_folders(root / "demo_study_ci"):
        meta = json.loads((folder / "run_meta.json").read_text())
        cells[(meta["choices"]["phase2_data"], meta["choices"]["strategy"])] = json.loads((folder / "metrics.json").read_text())
    return cells


@pytest.mark.slow
def test_reduced_study_shows_findings_1_and_2_in_direction(ci_study):
    root, _, _ = ci_study
    cells = _cells(root)
    assert set(cells) >= {("demo", "full"), ("demo_dissimilar", "full")}
    similar, dissimilar = cells[("demo", "full")], cells[("demo_dissimilar", "full")]
    ta1 = similar["phase1/ta_avg"]
    assert ta1 == dissimilar["phase1/ta_avg"]  # one cached Phase-1 model and evaluation
    assert ta1 >= 0.5, f"Phase 1 did not learn the tasks (TA {ta1:.2f})"
    drop_similar, drop_dissimilar = ta1 - similar["phase2/ta_avg"], ta1 - dissimilar["phase2/ta_avg"]
    # Finding 2: with the dissimilar pair and full fine-tuning, task ability drops clearly.
    assert drop_dissimilar >= 0.3, (dissimilar["phase2/ta_avg"], ta1)
    # Finding 1: with the similar pair, task ability after Phase 2 is not lower than after Phase 1
    # within the seed-to-seed noise of the study (TA std about 0.05 over 3 seeds; see the README),
    # and far better kept than with the dissimilar pair.
    assert drop_similar <= 0.1, (similar["phase2/ta_avg"], ta1)
    assert drop_similar < 0.25 * drop_dissimilar, (drop_similar, drop_dissimilar)
    # Phase 2 on the similar pair teaches the other languages.
    assert similar["phase2/la_avg"] > similar["phase1/la_avg"]


@pytest.mark.slow
def test_analysis_of_the_study_has_its_tables_and_figures(ci_study):
    root, _, analysis = ci_study
    out = root / "demo_study_ci" / "analysis"
    for name in ("summary", "ta", "la", "strategies"):
        assert (out / f"{name}.md").exists(), sorted(p.name for p in out.iterdir())
    assert "demo_dissimilar" in (out / "strategies.md").read_text()
    assert list(out.glob("*.png")), "no figure written"
    assert (out / "report.md").exists()
