"""The study and CoFiTune's coarse search as configs: `experiment=smollm2_study check=true` composes every
cell (no model load) with the issue's item counts; the search's levels compose as sweeps whose candidates
are CoFiTune's repository's blocks and module sets; the analysis walks the levels from finished runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, compose
from omegaconf import OmegaConf


def check(tmp_path, *args) -> list[str]:
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path / "outputs")}
    env.pop("CFT_SWEEP_ID", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", *args, "check=true"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()
    return [line.strip() for line in proc.stdout.splitlines() if line.startswith("  ")]


def test_the_smollm2_study_composes_every_cell_with_the_issues_item_counts(tmp_path):
    from cft.config.schema import check_train

    # check=true composes and preflights every cell without loading a model. The GGUF file is absent here
    # (as on CI; with it, the preflight reads it for a minute): that must be every cell's only reason, with
    # the real data's absence where CFT_DATA (tests/conftest.py) is missing too. With both, the check
    # passes (README).
    data = Path(os.environ["CFT_DATA"])
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path / "outputs"), "CFT_GGUF_DIR": str(tmp_path / "gguf")}
    env.pop("CFT_SWEEP_ID", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "experiment=smollm2_study", "check=true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    reasons = [line for line in proc.stderr.splitlines() if line.startswith("cft: error: preflight: ")]
    assert proc.returncode == 2 and "10 of 10 cell(s) cannot run" in proc.stderr, proc.stderr[-2000:]
    missing = [f"base model path does not exist: {tmp_path / 'gguf'}"] + ([] if data.is_dir() else ["data file not found"])
    assert reasons and all(any(m in r for m in missing) for r in reasons), reasons
    every = {
        f"{p1}-multialpaca/smollm2/{s}/seed0"
        for p1 in ("alpaca5k", "orca_sample")
        for s in ("full", "lf_h2", "gr5", "er10", "lora")
    }
    named = set()  # each line is one cause with the cells it stops: "... [cell; cell]" or "... [every cell]"
    for reason in reasons:
        listed = reason.rpartition(" [")[2].removesuffix("]")
        named |= every if listed == "every cell" else set(listed.split("; "))
    assert named == every, reasons
    assert not (tmp_path / "outputs").exists()
    for p1 in ("alpaca5k", "orca_sample"):
        cfg = compose(["experiment=smollm2_study", f"phase1_data={p1}", "strategy=lora"])
        c = OmegaConf.to_container(cfg, resolve=True)
        assert check_train(c) == []
        tasks, train = c["eval"]["tasks"], c["train"]
        assert len(tasks["mmlu"]["subjects"]) >= 20 and len(tasks["mmlu"]["subjects"]) * tasks["mmlu"]["limit"] >= 500
        assert tasks["hellaswag"]["limit"] >= 500 and tasks["ifeval"]["limit"] >= 100 and tasks["xquad"]["limit"] >= 100
        assert tasks["ifeval"]["gen_kwargs"]["max_gen_toks"] <= 256 and tasks["xquad"]["languages"] == ["es"]
        assert tasks["alpaca_eval"] is None
        # LA: FLORES-200 bits per byte in the three Phase-2 languages and two it does not train, the suite's
        # la_avg (lower is better, not the paper's LA); TA's average stays the paper's.
        flores = tasks["flores"]
        assert flores["languages"][:3] == ["es", "ja", "pt"] and len(set(flores["languages"]) - {"es", "ja", "pt", "en"}) == 2
        assert flores["limit"] >= 100 and c["eval"]["averages"] == {
            "ta": ["ifeval", "alpaca_eval", "mmlu", "hellaswag"],
            "la": ["flores"],
        }
        assert c["eval"]["dtype"] == "bf16"  # both phases of every cell at one precision (the plan's cost)
    from cft.errors import ConfigError
    from cft.evaluation.suite import build_suite

    node = {**c["eval"], "data_dir": None}  # the suite as built before any model work (no files read here)
    suite = build_suite(node)
    assert list(suite) == ["ifeval", "mmlu", "hellaswag", "flores", "xquad"] and not suite["flores"].higher_is_better
    assert suite["flores"].units == flores["languages"] and suite["xquad"].units == ["es"]
    with pytest.raises(ConfigError, match="mix scores where lower is better"):  # bits per byte with F1
        build_suite({**node, "averages": {**node["averages"], "la": ["flores", "xquad"]}})
        assert train["phase1"]["max_steps"] == 32 and train["global_batch_size"] == 8 and train["max_length"] == 256
        assert c["phase2_data"]["languages"] == ["es", "ja", "pt"] and c["model"]["gguf_file"].endswith(".gguf")
        assert c["strategy"]["lr"] == 2e-4 and train["lr"] == 1e-4  # LoRA's own Phase-2 rate
        assert c["similarity"]["des"] and c["embedder"]["_target_"].endswith("USEMultilingualEmbedder")


REAL_FILES = {"alpaca5k": "alpaca/alpaca_5000.json", "orca_sample": "openorca/orca_dpo_pairs_validation.jsonl"}


@pytest.mark.parametrize("group", sorted(REAL_FILES))
def test_the_real_data_paths_resolve_under_paths_data_dir(monkeypatch, tmp_path, group):
    """paths.data_dir owns the real data folder: with CFT_DATA unset, a local dataset resolves under the
    project's relative data/ (as output_root under outputs/); with it set, under it, and so do every path
    of experiment=smollm2_study and translate.py's source; paths.data_dir= on the command line wins."""
    file = REAL_FILES[group]
    monkeypatch.delenv("CFT_DATA", raising=False)  # tests/conftest.py exports it for the other tests
    c = OmegaConf.to_container(compose([f"phase1_data={group}"]), resolve=True)
    assert c["paths"]["data_dir"] == "data" and c["phase1_data"]["path"] == f"data/{file}"
    c = OmegaConf.to_container(compose([f"phase1_data@source={group}"], "translate"), resolve=True)
    assert c["source"]["path"] == f"data/{file}"

    folder = tmp_path / "real"
    monkeypatch.setenv("CFT_DATA", str(folder))
    c = OmegaConf.to_container(compose(["experiment=smollm2_study", f"phase1_data={group}"]), resolve=True)
    assert c["paths"]["data_dir"] == str(folder) and c["phase1_data"]["path"] == f"{folder}/{file}"
    assert c["phase2_data"]["path"] == f"{folder}/multialpaca" and c["eval"]["data_dir"] == str(folder)
    assert c["phase2_data"]["counterpart"]["path"] == f"{folder}/alpaca/alpaca_5000.json"
    c = OmegaConf.to_container(compose([f"phase1_data={group}", "paths.data_dir=/elsewhere"]), resolve=True)
    assert c["phase1_data"]["path"] == f"/elsewhere/{file}"


def test_a_missing_real_data_file_is_named_at_its_resolved_path(tmp_path):
    """CFT_DATA names a folder without the study's files: check=true stops with one line per cause, which
    names the file where paths.data_dir put it (not the ${paths.data_dir} it is written as)."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    env = {**os.environ, "CFT_OUTPUT_ROOT": str(tmp_path / "outputs"), "CFT_GGUF_DIR": str(tmp_path / "gguf")}
    env["CFT_DATA"] = str(empty)
    env.pop("CFT_SWEEP_ID", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "experiment=smollm2_study", "phase1_data=alpaca5k",
         "strategy=full", "check=true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    reasons = [line for line in proc.stderr.splitlines() if line.startswith("cft: error: preflight: ")]
    assert proc.returncode == 2 and "1 of 1 cell(s) cannot run" in proc.stderr, proc.stderr[-2000:]
    assert any(f"{empty}/alpaca/alpaca_5000.json: data file not found" in r for r in reasons), reasons
    assert not any("${" in r for r in reasons) and not (tmp_path / "outputs").exists()


def test_the_coarse_search_levels_are_sweeps_of_cofitunes_candidates(tmp_path):
    from cft.analysis.cofitune import LEVELS, level_candidates, search_node
    from cft.strategies.cofitune import BLOCKS, MODULE_SETS, block_layers

    # The blocks of CoFiTune's repository for a 32-layer model (train_layers_7B).
    assert [block_layers(b, 32) for b in ("bottom1", "bottom2", "middle", "top")] == [
        list(range(a, a + 8)) for a in (0, 8, 16, 24)
    ]
    assert block_layers("bottom_plus", 32) == list(range(16)) and block_layers("middle_plus", 32) == list(range(8, 24))
    assert block_layers("top_plus", 32) == list(range(16, 32)) and block_layers("bottom2", 4) == [1]
    search = search_node(REPO / "conf")

    def cells(*overrides):  # the sweep's cells as check=true lists them (cft.config.checks.sweep_cells)
        from cft.config.checks import sweep_cells

        cfg = compose(["experiment=cofitune_search_demo", *overrides], hydra=True)
        picked = [dict(o.split("=", 1) for o in cell) for cell in sweep_cells(cfg)]
        return [(c["strategy.block"], c["strategy.module_set"]) for c in picked]

    assert check(tmp_path, "experiment=cofitune_search_demo") == [
        f"demo-demo/demo/cofitune/strategy.block@{b}+strategy.module_set@ffn/seed0"
        for b in ("bottom1", "bottom2", "middle", "top")
    ]
    assert level_candidates(search, "blocks", None) == [(b, "ffn") for b in ("bottom1", "bottom2", "middle", "top")]
    widen = [("middle", "ffn"), ("middle_plus", "ffn"), ("top_plus", "ffn")]
    assert cells("search.level=widen", "search.block=middle") == widen == level_candidates(search, "widen", "middle")
    modules = [("top_plus", m) for m in ("ffn", "attention", "ffn_attention")]
    assert sorted(cells("search.level=modules", "search.block=top_plus")) == sorted(modules)
    assert level_candidates(search, "modules", "top_plus") == modules
    assert set(LEVELS) == set(search["blocks"]) and {b for b, _ in level_candidates(search, "blocks", None)} <= set(BLOCKS)
    assert set(search["module_sets"]["modules"].split(",")) == set(MODULE_SETS)


def test_the_analysis_walks_the_levels_and_names_the_next_one_or_the_choice():
    from cft.analysis.cofitune import candidates_of, search_node, walk
    from cft.analysis.runs import Run

    search = search_node(REPO / "conf")

    def run(block, module_set, la, ta, seed=0):
        metrics = {"phase1/la_avg": 0.2, "phase1/ta_avg": 0.5, "phase2/la_avg": la, "phase2/ta_avg": ta}
        config = {"strategy": {"block": block, "module_set": module_set}}
        return Run(f"{block}/{module_set}/{seed}", {"strategy": "cofitune"}, seed, metrics, True, config=config)

    runs = [run("bottom1", "ffn", 0.30, 0.40), run("bottom2", "ffn", 0.30, 0.48), run("middle", "ffn", 0.35, 0.40)]
    done, phase1 = candidates_of(runs, speciality="la", versatility="ta")
    levels, next_command, final = walk(done, search, "s")
    assert final is None and len(levels) == 1 and "experiment=cofitune_search sweep_id=s" in next_command
    runs.append(run("top", "ffn", 0.31, 0.30))
    runs += [run("bottom2", "ffn", 0.32, 0.50, seed=1)]  # two seeds: the mean of both
    done, _ = candidates_of(runs, speciality="la", versatility="ta")
    levels, next_command, final = walk(done, search, "s")
    assert levels[0][3].block == "bottom2" and done[("bottom2", "ffn")].speciality.mean == pytest.approx(0.31)
    assert "search.level=widen search.block=bottom2" in next_command
    runs += [run("bottom_plus", "ffn", 0.36, 0.45), run("middle_plus", "ffn", 0.40, 0.45)]
    runs += [run("middle_plus", m, 0.38, 0.44) for m in ("attention", "ffn_attention")]
    done, _ = candidates_of(runs, speciality="la", versatility="ta")
    levels, next_command, final = walk(done, search, "s")
    assert [lv[3].block for lv in levels] == ["bottom2", "middle_plus", "middle_plus"] and next_command is None
    assert (final.block, final.module_set) == ("middle_plus", "ffn") and phase1["speciality"].mean == pytest.approx(0.2)


def test_mode_cofitune_reads_run_folders_and_names_the_next_level(tmp_path, capsys):
    """analyze.py mode=cofitune on run folders as train.py lays them out (written here): the tables and
    report are written, and the next level's command names the experiment the sweep ran."""
    import json

    import yaml

    from cft.analysis import run as analyze
    from cft.run import layout

    for block, la in (("bottom1", 0.30), ("bottom2", 0.34), ("middle", 0.33), ("top", 0.31)):
        cell = layout.Cell("demo", "demo", "demo", "cofitune", 0, f"strategy.block@{block}+strategy.module_set@ffn")
        folder = layout.run_dir(tmp_path, "cs", cell)
        folder.mkdir(parents=True)
        choices = {"phase1_data": "demo", "phase2_data": "demo", "model": "demo", "strategy": "cofitune"}
        meta = {"sweep_id": "cs", "seed": 0, "choices": {**choices, "experiment": "cofitune_search_demo"}}
        (folder / layout.META).write_text(json.dumps(meta))
        (folder / layout.CONFIG).write_text(yaml.safe_dump({"strategy": {"block": block, "module_set": "ffn"}}))
        metrics = {"phase1/la_avg": 0.2, "phase1/ta_avg": 1.0, "phase2/la_avg": la, "phase2/ta_avg": 1.0, "strategy/layers": "1"}
        (folder / layout.METRICS).write_text(json.dumps(metrics))
        (folder / layout.DONE).write_text("")
    values = {
        "mode": "cofitune",
        "sweep_id": "cs",
        "paths": {"output_root": str(tmp_path), "cache_dir": str(tmp_path / "c"), "data_dir": "data"},
    }
    result = analyze({**values, "tracking": {"mode": "disabled"}, "embedder": {}}, conf_dir=REPO / "conf")
    out = capsys.readouterr().out
    assert "| bottom2 (chosen) | ffn | 1 | **34.0** | **100.0** | **67.0** |" in out
    assert "Next: python train.py -m experiment=cofitune_search_demo sweep_id=cs search.level=widen search.block=bottom2" in out
    assert (tmp_path / "cs" / "analysis" / "cofitune" / "cofitune_blocks.md").exists() and result.report.exists()
