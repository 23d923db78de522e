"""Suites as the paper computes them: the suite-level schema, build_suite's checks before any model
work, zero-shot everywhere, English outside la_avg, la_avg over exactly MLQA/XQuAD/XL-Sum, the
footnote when an average covers fewer benchmarks, per-task limits, and a new benchmark added as a
YAML file with no Python change."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError
from test_evaluation_lmeval import compose_eval, read_samples, write_benchmarks

from cft.errors import ConfigError
from cft.evaluation import Suite, TaskScores, build_suite, flatten
from cft.evaluation.benchmark import available, load_benchmark
from cft.evaluation.config import SuiteConfig
from cft.evaluation.lmeval import LMEvalTask
from cft.evaluation.summary import evaluation_table, summary_table
from cft.run import keys

LMEVAL = "cft.evaluation.lmeval.LMEvalTask"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    return write_benchmarks(tmp_path_factory.mktemp("benchmarks"))


# --- the suite-level schema and build_suite's checks ---------------------------------------------


@pytest.mark.parametrize(
    "change, loc, message",
    [
        ({"limit": 0}, ("limit",), "greater than or equal to 1"),
        ({"backend": "foo"}, ("backend",), "'hf' or 'vllm'"),
        ({"batch_size": 0}, ("batch_size",), "greater than or equal to 1"),
        ({"batch_size": "fast"}, ("batch_size",), "should match pattern"),
        ({"apply_chat_template": "yes"}, ("apply_chat_template",), "'auto' or 'alpaca'"),
        ({"averages": {"en": ["xquad"]}}, ("averages", "en"), "'ta' or 'la'"),
        ({"limitt": 3}, ("limitt",), "Extra inputs are not permitted"),
    ],
)
def test_suite_config_rejects_bad_values(change, loc, message):
    suite = {**compose_eval("paper").eval, **change}
    with pytest.raises(ValidationError) as caught:
        SuiteConfig.model_validate(suite)
    errors = caught.value.errors()
    assert any(e["loc"][: len(loc)] == loc and message in e["msg"] for e in errors), errors
    with pytest.raises(ConfigError, match=f"^eval.{'.'.join(loc)}="):  # build_suite says the same, before any model work
        build_suite(suite)


def test_every_shipped_suite_passes_its_schema():
    from cft.analysis import paper

    validated = {
        s: SuiteConfig.model_validate(dict(compose_eval(s).eval))
        for s in ("demo", "ta", "la", "paper", "quick", "local", "small", "small_ta")
    }
    assert all(v.tasks for v in validated.values())
    # The paper suite's averages are the ones the analysis sets every table against (one owner: conf/eval).
    assert {k: tuple(v) for k, v in validated["paper"].averages.items()} == paper.averages()
    assert validated["local"].tasks["mlqa"] is None and validated["local"].averages == validated["paper"].averages


@pytest.mark.parametrize(
    "tasks, averages, message",
    [
        (
            {"x": {"_target_": LMEVAL, "benchmark": "xquadd"}},
            None,
            "Unknown benchmark 'xquadd': cft has flores, global_mmlu_lite,",
        ),
        (
            {"x": {"_target_": LMEVAL, "benchmark": "xquad", "limitt": 3}},
            None,
            "eval.tasks.x: unknown option(s) limitt; LMEvalTask takes benchmark, ability,",
        ),
        ({"x": {"benchmark": "xquad"}}, None, "eval.tasks.x: expected a node with _target_"),
        (
            {"x": {"_target_": "cft.evaluation.nowhere.Task"}},
            None,
            "eval.tasks.x._target_='cft.evaluation.nowhere.Task' cannot be imported",
        ),
        ({"xquad": {"_target_": LMEVAL, "benchmark": "xquad"}}, {"ta": ["xquad"]}, "eval.averages.ta names 'xquad', a la task"),
        ({"x": None}, None, "every task of the eval suite is switched off"),
    ],
)
def test_build_suite_stops_before_any_model_work(tasks, averages, message):
    with pytest.raises(ConfigError) as caught:
        build_suite({"tasks": tasks, "averages": averages})
    assert str(caught.value).startswith(message), str(caught.value)


# --- the paper's protocol ------------------------------------------------------------------------


def test_paper_suite_is_zero_shot_everywhere():
    assert all(load_benchmark(name).spec.num_fewshot == 0 for name in available())
    suite = build_suite(compose_eval("paper").eval)
    lm_tasks = {name: task for name, task in suite.items() if isinstance(task, LMEvalTask)}
    assert sorted(lm_tasks) == ["global_mmlu_lite", "hellaswag", "ifeval", "mlqa", "mmlu", "xlsum", "xquad"]
    for task in lm_tasks.values():
        assert task.num_fewshot == 0  # passed to lm-eval for its own tasks (IFEval, MMLU, HellaSwag, MLQA on the hub)
        for t in task.lm_tasks():
            assert t.builtin or t.group_of or t.config["num_fewshot"] == 0  # written into every generated task


def test_paper_languages_and_averages():
    suite = build_suite(compose_eval("la").eval)
    assert suite["xquad"].units == ["ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh", "en"]
    assert suite["mlqa"].units == ["ar", "de", "es", "hi", "vi", "zh", "en"]
    assert suite["xlsum"].units == ["ar", "zh", "fr", "hi", "ja", "es", "en"]
    # lm-eval's results for every language of every LA task: English 0.9, the others by language.
    results = []
    for name, task in suite.items():
        fake = {}
        for t in task.lm_tasks():
            value = (
                0.9
                if t.unit == "en"
                else 0.1 + 0.01 * task.units.index(t.unit) + {"mlqa": 0.0, "xquad": 0.2, "xlsum": 0.4}.get(name, 0.6)
            )
            fake[t.name] = {f"{theirs},none": value for theirs in task.bench.spec.metrics.values()}
        results.extend(task.scores(fake, task.lm_tasks()))
    flat = flatten(results, suite.averages)
    la = {name: flat[keys.score("la", name)] for name in ("mlqa", "xquad", "xlsum", "global_mmlu_lite")}
    # la_avg is the mean of exactly MLQA, XQuAD and XL-Sum; Global-MMLU-Lite is recorded beside it.
    assert flat["la_avg"] == pytest.approx((la["mlqa"] + la["xquad"] + la["xlsum"]) / 3)
    assert flat["la_avg_tasks"] == 3 and flat["la_avg_over"] == "mlqa,xquad,xlsum" and flat["la_avg_of"] == "mlqa,xquad,xlsum"
    assert la["global_mmlu_lite"] > max(la["mlqa"], la["xquad"], la["xlsum"])  # it would move la_avg if counted
    # LA counts only the non-English languages; English is recorded under `en`, outside la_avg.
    assert keys.languages(flat, "xquad") == ["ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"]
    assert keys.languages(flat, "mlqa") == ["ar", "de", "es", "hi", "vi", "zh"]
    assert keys.languages(flat, "xlsum") == ["ar", "zh", "fr", "hi", "ja", "es"]
    assert {k: flat[k] for k in flat if k.startswith("en/")} == {
        "en/xquad": 0.9,
        "en/xquad:em": 0.9,
        "en/mlqa": 0.9,
        "en/mlqa:em": 0.9,
        "en/xlsum": 0.9,
    }
    assert flat["la/xquad"] < 0.9 and "la/xquad/en" not in flat and "en_avg" not in flat
    # Metrics after ':' only: no key names em or f1 as a language.
    assert not any((p := keys.parse(k)) and p.lang in ("em", "f1", "acc") for k in flat)


def test_ta_average_without_a_judge_says_what_it_covers():
    """The paper suite's TA average over IFEval, MMLU, HellaSwag when AlpacaEval has no judge: the keys
    and the footnote under the printed tables say so."""
    suite = build_suite(compose_eval("ta").eval)
    reason = suite["alpaca_eval"].why_not_judged()
    results = [
        TaskScores("ifeval", "ta", 0.5, metrics={"inst_loose": 0.7}),
        TaskScores("mmlu", "ta", 0.25),
        TaskScores("hellaswag", "ta", 0.75, metrics={"acc": 0.6}),
        TaskScores("alpaca_eval", "ta", math.nan, not_computed=reason),
    ]
    flat = flatten(results, suite.averages)
    assert flat["ta_avg"] == pytest.approx(0.5) and flat["ta_avg_tasks"] == 3
    assert flat["ta_avg_over"] == "ifeval,mmlu,hellaswag" and flat["ta_avg_of"] == "ifeval,alpaca_eval,mmlu,hellaswag"
    assert flat["not_computed/ta/alpaca_eval"] == reason and "ta/alpaca_eval" not in flat
    note = f"* ta_avg covers 3 of the 4 TA benchmarks (alpaca_eval not computed: {reason}); the paper's average covers 4"
    # evaluate.py's table, and train.py's (the same in both phases: said once).
    assert evaluation_table(flat, "ta").splitlines()[-1] == note
    both = summary_table({**keys.phased("phase1", flat), **keys.phased("phase2", flat)})
    assert both.splitlines()[-1] == note and both.count("* ") == 1
    assert ["ta/alpaca_eval", "not", "computed", "not", "computed", "-"] in [line.split() for line in both.splitlines()]
    # Phase 2 judged, Phase 1 not: each phase says its own.
    judged = flatten([*results[:3], TaskScores("alpaca_eval", "ta", 0.4)], suite.averages)
    lines = summary_table({**keys.phased("phase1", flat), **keys.phased("phase2", judged)}).splitlines()
    assert lines[-1] == "* phase 1: " + note.removeprefix("* ")
    # With every benchmark scored, no footnote.
    assert "* " not in evaluation_table(judged, "ta")


def test_switched_off_task_of_an_average_is_recorded(tiny_model, bench_dir, tmp_path):
    """A real run: HellaSwag scored, AlpacaEval without a judge, IFEval switched off (null)."""
    model, tok = tiny_model
    node = {
        "data_dir": str(bench_dir),
        "batch_size": 4,
        "limit": 2,
        "averages": {"ta": ["ifeval", "alpaca_eval", "hellaswag"]},
        "tasks": {
            "ifeval": None,
            "hellaswag": {"_target_": LMEVAL, "benchmark": "hellaswag"},
            "alpaca_eval": {"_target_": "cft.evaluation.alpaca_eval.AlpacaEvalTask", "max_new_tokens": 2, "batch_size": 2},
        },
    }
    suite = build_suite(node)
    assert isinstance(suite, Suite) and list(suite) == ["hellaswag", "alpaca_eval"]
    assert suite.switched_off == {"ifeval": ("ta", "switched off in the suite (eval.tasks.ifeval=null)")}
    flat = suite.evaluate(model, tok, out_dir=tmp_path)
    assert len(read_samples(tmp_path / "hellaswag" / "samples" / "cft_hellaswag.jsonl")) == 2  # the suite's limit
    assert not (tmp_path / "alpaca_eval" / "model_outputs.json").exists()  # no judge, no save_outputs: nothing generated
    assert flat["ta_avg"] == flat["ta/hellaswag"] and flat["ta_avg_tasks"] == 1 and flat["ta_avg_over"] == "hellaswag"
    # lm-eval's standard error of the mean of 2 items (0 or 1 each), and the average's propagated from it.
    hits = json.loads((tmp_path / "items.json").read_text())["ta/hellaswag"]
    assert len(hits) == 2 and sum(hits.values()) / 2 == pytest.approx(flat["ta/hellaswag"])
    assert flat["ta/hellaswag_stderr"] == pytest.approx(abs(hits["0"] - hits["1"]) / 2)
    assert flat["ta_avg_stderr"] == flat["ta/hellaswag_stderr"]
    assert flat["eval/dtype"] == "float32"
    assert flat["not_computed/ta/ifeval"] == "switched off in the suite (eval.tasks.ifeval=null)"
    assert flat["not_computed/ta/alpaca_eval"].startswith("no AlpacaEval annotator configured")
    assert evaluation_table(flat, "mine").splitlines()[-1] == (
        "* ta_avg covers 1 of the 3 TA benchmarks (ifeval not computed: switched off in the suite "
        f"(eval.tasks.ifeval=null); alpaca_eval not computed: {flat['not_computed/ta/alpaca_eval']}); "
        "the paper's average covers 3"
    )


# --- limits --------------------------------------------------------------------------------------


def test_per_task_limit_and_zero_shot_run(tiny_model, bench_dir, tmp_path):
    cfg = compose_eval(
        "local",
        f"eval.data_dir={bench_dir}",
        "eval.limit=2",
        "eval.tasks.xquad.limit=1",  # its own limit, no `+` needed
        "eval.tasks.xquad.languages=[de]",
        "eval.tasks.mmlu.subjects=[anatomy,virology]",
        "eval.tasks.mmlu.limit=null",  # null: the suite's
        "eval.batch_size=4",
    ).eval
    suite = build_suite(cfg)
    assert (
        suite["xquad"].limit == 1 and suite["mmlu"].limit == 2 and suite["ifeval"].limit == 2 and suite["alpaca_eval"].limit == 2
    )
    model, tok = tiny_model
    run = Suite({"xquad": suite["xquad"], "mmlu": suite["mmlu"]}).evaluate(model, tok, out_dir=tmp_path)
    assert len(read_samples(tmp_path / "xquad" / "samples" / "cft_xquad_de.jsonl")) == 1  # per language
    for subject in ("anatomy", "virology"):  # per subject
        samples = read_samples(tmp_path / "mmlu" / "samples" / f"cft_mmlu_{subject}.jsonl")
        assert len(samples) == 2
        prompt = samples[0]["arguments"]["gen_args_0"]["arg_0"]
        assert prompt.count("<|user|>") == 1 and "<|assistant|>\nB<|end|>" not in prompt  # zero-shot: no example turn
    assert set(run) >= {"la/xquad", "la/xquad/de", "la/xquad:em", "ta/mmlu", "ta_avg", "la_avg"}


# --- a benchmark is data -------------------------------------------------------------------------

TOY_BENCHMARK = """\
# A toy two-language multiple-choice benchmark, written by a test: no Python change needed.
title: Toy colours (a test)
ability: la
english: en
template: toy_task.yaml
task: toy_colours_${lang}
languages:
  fr: {question: "Quelle est la couleur ?"}
  en: {question: "Which colour is it?"}
config: {doc_to_text: "${question} {{thing}}\\nAnswer:"}
splits: {test_split: test}
metrics: {acc: acc, acc_norm: acc_norm}
headline: acc
local:
  files: {test: ["toy/${lang}.jsonl"]}
hub:
  config: {dataset_path: nobody/toy, dataset_name: "${lang}"}
"""
TOY_TASK = """\
output_type: multiple_choice
doc_to_target: gold
doc_to_choice: "{{choices}}"
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
metadata: {version: 1.0}
"""


def test_a_new_benchmark_is_a_yaml_file(tiny_model, tmp_path):
    folder = tmp_path / "toy_colours"
    folder.mkdir()
    (folder / "benchmark.yaml").write_text(TOY_BENCHMARK)
    (folder / "toy_task.yaml").write_text(TOY_TASK)
    data = tmp_path / "data"
    (data / "toy").mkdir(parents=True)
    for lang, thing in (("fr", "le ciel"), ("en", "the sky")):
        rows = [{"thing": f"{thing} {i}", "choices": ["blue", "green", "red"], "gold": i % 3} for i in range(3)]
        (data / "toy" / f"{lang}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    suite = build_suite(
        {
            "data_dir": str(data),
            "batch_size": 4,
            "tasks": {"toy": {"_target_": LMEVAL, "benchmark": str(folder)}},
        }
    )
    model, tok = tiny_model
    flat = suite.evaluate(model, tok, out_dir=tmp_path / "out")
    fr = read_samples(tmp_path / "out" / "toy" / "samples" / "toy_colours_fr.jsonl")
    assert len(fr) == 3 and "Quelle est la couleur ? le ciel 0\nAnswer:" in fr[0]["arguments"]["gen_args_0"]["arg_0"]
    written = (tmp_path / "out" / "toy" / "lm_eval_tasks" / "toy_colours_fr.yaml").read_text()
    assert f'include: "{folder / "toy_task.yaml"}"' in written and str(data / "toy" / "fr.jsonl") in written
    assert flat["la/toy/fr"] == pytest.approx(sum(s["acc"] for s in fr) / 3) == flat["la/toy"] == flat["la_avg"]
    assert set(flat) == {"la/toy", "la/toy/fr", "la/toy:acc_norm", "la/toy/fr:acc_norm", "en/toy", "en/toy:acc_norm"} | {
        "la_avg",
        "la_avg_tasks",
        "la_avg_over",
        "eval/dtype",
    } | {f"{k}_stderr" for k in ("la/toy", "la/toy/fr", "en/toy", "la_avg")}  # a standard error beside every score


def test_a_bad_benchmark_file_is_named(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "toy_task.yaml").write_text(TOY_TASK)
    (folder / "benchmark.yaml").write_text(TOY_BENCHMARK.replace("headline: acc", "headline: f1"))
    with pytest.raises(
        ConfigError, match=r"broken/benchmark.yaml: headline 'f1' is not one of its metrics \['acc', 'acc_norm'\]"
    ):
        LMEvalTask(str(folder))
    (folder / "benchmark.yaml").write_text(TOY_BENCHMARK.replace("toy_colours_${lang}", "toy_${language}"))
    with pytest.raises(ConfigError, match=r"benchmark.yaml: task: 'toy_\$\{language\}' names an unknown variable 'language'"):
        LMEvalTask(str(folder))


class _DtypeProbe:
    """A task that records the precision the model reached it in."""

    ability = "ta"

    def __init__(self, name: str = "probe"):
        self.name = name

    def run(self, model, tokenizer, *, out_dir):
        import math

        from cft.evaluation.scores import TaskScores

        return [
            TaskScores(
                self.name,
                "ta",
                1.0 if next(model.parameters()).dtype.is_floating_point else math.nan,
                reports={"probe/dtype": str(next(model.parameters()).dtype)},
            )
        ]


def test_every_evaluation_runs_at_the_suite_dtype(tmp_path):
    """Phase 1 loaded in fp32 and Phase 2 held in bf16 are both scored at eval.dtype."""
    import torch

    from cft.evaluation import Suite

    for held in (torch.float32, torch.bfloat16):
        model = torch.nn.Linear(2, 2).to(held)
        flat = Suite({"probe": _DtypeProbe()}, dtype="fp32").evaluate(model, None, out_dir=tmp_path / str(held))
        assert flat["probe/dtype"] == "torch.float32" and flat["eval/dtype"] == "float32"
    flat = Suite({"probe": _DtypeProbe()}, dtype="bf16").evaluate(torch.nn.Linear(2, 2), None, out_dir=tmp_path / "bf16")
    assert flat["eval/dtype"] == "bfloat16"
    assert build_suite({"tasks": {"p": {"_target_": f"{__name__}._DtypeProbe"}}}).dtype == "auto"  # the default
    with pytest.raises(ConfigError, match="eval.dtype"):
        build_suite({"dtype": "int8", "tasks": {"p": {"_target_": f"{__name__}._DtypeProbe"}}})


def test_lower_is_better_scores_carry_the_not_the_papers_la_footnote():
    """FLORES bits per byte (and an LA average over it) are marked in evaluate.py's and train.py's tables:
    the row says lower is better, and a footnote says that this LA is not the paper's."""
    from cft.analysis.tables import lower_better_footnotes

    results = [TaskScores("flores", "la", 1.25, higher_is_better=False), TaskScores("mmlu", "ta", 0.25)]
    flat = flatten(results, {"la": ["flores"]})
    assert flat["lower_is_better/la/flores"] == 1 and flat["lower_is_better/la_avg"] == 1
    note = (
        "* lower is better for la/flores, la_avg (bits per byte: FLORES-200, conf/eval/small.yaml); "
        "a negative change there is a gain. This LA is not the paper's (MLQA, XQuAD, XL-Sum)."
    )
    table = evaluation_table(flat, "small")
    assert "la/flores (lower is better)" in table and table.splitlines()[-1] == note
    both = summary_table({**keys.phased("phase1", flat), **keys.phased("phase2", flat)})
    assert both.splitlines()[-1] == note and both.count(note) == 1
    # Without a lower-is-better score, no such footnote.
    assert "lower is better" not in evaluation_table(flatten(results[1:], {}), "ta")
    # The analysis tables word it the same (one owner).
    run = type("R", (), {"metrics": keys.phased("phase2", flat)})()
    assert lower_better_footnotes([run]) == [note.removeprefix("* ")]


@pytest.mark.parametrize(
    ("cuda", "bf16", "expected"),
    [(False, False, "fp32"), (True, True, "bf16"), (True, False, "fp32")],
    ids=["cpu", "bf16-gpu", "old-gpu"],
)
def test_eval_dtype_auto_is_bf16_on_gpus_that_have_it_and_fp32_on_the_cpu(tmp_path, monkeypatch, cuda, bf16, expected):
    """The default eval.dtype (auto) resolves by the device rule of cft.models.resolve_dtype: bf16 on a CUDA GPU
    that supports it, fp32 on the CPU and on older GPUs; an explicit eval.dtype or model.dtype wins. The suite
    casts to it, and the train recipe loads the Phase-1 model for evaluation and replay in it."""
    import torch

    from cft.evaluation.suite import eval_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    suite = build_suite({"tasks": {"p": {"_target_": f"{__name__}._DtypeProbe"}}})
    assert suite.dtype == "auto" and suite.precision == expected
    flat = suite.evaluate(torch.nn.Linear(2, 2), None, out_dir=tmp_path)
    assert flat["eval/dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[expected]
    assert eval_precision("fp32") == "fp32" and eval_precision("auto", "fp16") == "fp16"  # explicit choices win
    assert build_suite({"tasks": {"p": {"_target_": f"{__name__}._DtypeProbe"}}}, model_dtype="fp32").precision == "fp32"
    from cft.recipes.train import TrainRecipe

    recipe = TrainRecipe.__new__(TrainRecipe)  # the one method under test: what Phase 1 loads in for evaluation
    recipe.eval_tasks = suite
    assert recipe._eval_dtype() == expected
