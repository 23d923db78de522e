"""The lm-eval path on the tiny model: benchmarks (cft/evaluation/benchmarks/) on local files the
tests write (MMLU = multiple choice, XQuAD = generative), the same scores as lm-eval's own CLI,
AlpacaEval without a judge, the suites, bad input rejected before any model work; and integration
runs on the real data (CFT_DATA: tests/conftest.py)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cft.errors import CftError, ConfigError, DataError
from cft.evaluation import build_suite, flatten
from cft.evaluation.alpaca_eval import AlpacaEvalTask
from cft.evaluation.benchmark import load_benchmark
from cft.evaluation.lmeval import LMEvalTask
from cft.evaluation.metrics import qa_exact, qa_f1
from cft.evaluation.taskfiles import write_task_configs

REPO = Path(__file__).resolve().parent.parent
FAST = {"batch_size": 4}  # multiple choice
FAST_GEN = {"batch_size": 4, "gen_kwargs": {"max_gen_toks": 6}}  # generative
MMLU_SUBJECTS = load_benchmark("mmlu").spec.subjects
XQUAD_PROMPTS = {lang: v["prompt"] for lang, v in load_benchmark("xquad").spec.languages.items()}

MMLU_ROWS = [
    ["What is 2 + 2?", "3", "4", "5", "6", "B"],
    ["Which is a colour?", "red", "run", "rain", "rock", "A"],
    ["Pick the last letter.", "a", "b", "c", "d", "D"],
]
XQUAD_QAS = [
    ("Anna lives in Berlin.", [("Where does Anna live?", "Berlin"), ("Who lives in Berlin?", "Anna")]),
    ("小明住在北京。", [("小明住在哪里？", "北京")]),
]


def write_benchmarks(root: Path) -> Path:
    """A tiny copy of every benchmark, in the layout of the shared data folder."""
    (root / "ifeval").mkdir(parents=True)
    with open(root / "ifeval" / "input_data.jsonl", "w") as f:
        f.write(
            json.dumps(
                {
                    "key": 1,
                    "prompt": "Write two sentences.",
                    "instruction_id_list": ["length_constraints:number_sentences"],
                    "kwargs": [{"relation": "at least", "num_sentences": 2}],
                }
            )
            + "\n"
        )
        f.write(
            json.dumps(
                {"key": 2, "prompt": "Answer without commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
            )
            + "\n"
        )
    for split, rows in (("test", MMLU_ROWS), ("dev", MMLU_ROWS[:2])):
        (root / "mmlu" / split).mkdir(parents=True)
        for subject in MMLU_SUBJECTS:
            with open(root / "mmlu" / split / f"{subject}_{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows(rows)
    (root / "hellaswag").mkdir()
    with open(root / "hellaswag" / "hellaswag_val.jsonl", "w") as f:
        for i in range(3):
            f.write(
                json.dumps(
                    {
                        "activity_label": "Cooking",
                        "ctx_a": f"A man cuts onion {i}.",
                        "ctx_b": "he",
                        "endings": ["fries it.", "sings.", "flies away.", "sleeps [title] now."],
                        "label": i,
                    }
                )
                + "\n"
            )
    (root / "xquad").mkdir()
    for lang in XQUAD_PROMPTS:
        paragraphs = [
            {
                "context": c,
                "qas": [
                    {"id": f"{lang}-{i}-{j}", "question": q, "answers": [{"text": a, "answer_start": c.find(a)}]}
                    for j, (q, a) in enumerate(qas)
                ],
            }
            for i, (c, qas) in enumerate(XQUAD_QAS)
        ]
        (root / "xquad" / f"xquad.{lang}.json").write_text(
            json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}, ensure_ascii=False)
        )
    (root / "mlqa" / "test").mkdir(parents=True)  # MLQA's layout, German only
    (root / "mlqa" / "test" / "test-context-de-question-de.json").write_text((root / "xquad" / "xquad.de.json").read_text())
    (root / "xlsum").mkdir()
    for _lang, name, text, summary in (
        ("zh", "chinese_simplified", "今天北京下雨了。很多人带了伞。", "北京下雨"),
        ("ar", "arabic", "ذهب الولد إلى المدرسة صباحا.", "ذهب الولد إلى المدرسة"),
    ):
        with open(root / "xlsum" / f"{name}_test.jsonl", "w") as f:
            for i in range(2):
                f.write(
                    json.dumps({"id": str(i), "url": "u", "title": "t", "summary": summary, "text": text}, ensure_ascii=False)
                    + "\n"
                )
    for split in ("test", "dev"):
        (root / "global_mmlu_lite" / "de").mkdir(parents=True, exist_ok=True)
        with open(root / "global_mmlu_lite" / "de" / f"{split}.jsonl", "w") as f:
            for q, a, b, c, d, ans in MMLU_ROWS:
                f.write(
                    json.dumps(
                        {
                            "question": q,
                            "option_a": a,
                            "option_b": b,
                            "option_c": c,
                            "option_d": d,
                            "answer": ans,
                            "subject": "x",
                            "subject_category": "STEM",
                        }
                    )
                    + "\n"
                )
    (root / "alpaca_eval").mkdir()
    with open(root / "alpaca_eval" / "alpaca_eval.jsonl", "w") as f:
        for i in range(3):
            f.write(
                json.dumps(
                    {
                        "instruction": f"Say hello {i}.",
                        "output": f"Hello {i}!",
                        "generator": "text_davinci_003",
                        "dataset": "test",
                    }
                )
                + "\n"
            )
    return root


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    return write_benchmarks(tmp_path_factory.mktemp("benchmarks"))


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- in-process runs on data the tests write ---------------------------------------------------


def test_multiple_choice_task_in_process(tiny_model, bench_dir, tmp_path):
    model, tok = tiny_model
    task = LMEvalTask("mmlu", data_dir=bench_dir, subjects=["anatomy", "virology"], num_fewshot=1, limit=3, **FAST)
    [scores] = task.run(model, tok, out_dir=tmp_path)
    samples = {s: read_samples(tmp_path / "samples" / f"cft_mmlu_{s}.jsonl") for s in ("anatomy", "virology")}
    assert [len(v) for v in samples.values()] == [3, 3]
    first = samples["anatomy"][0]
    assert [s["target"] for s in samples["anatomy"]] == ["1", "0", "3"]  # the letters B, A, D of the CSV
    second = samples["anatomy"][1]["arguments"]["gen_args_0"]["arg_0"]
    # The chat template, one dev shot (the first dev row, with its answer) and the question.
    assert second.count("<|user|>") == 2 and "What is 2 + 2?" in second and "<|assistant|>\nB<|end|>" in second
    assert second.rstrip().endswith("Which is a colour?\nA. red\nB. run\nC. rain\nD. rock\nAnswer:<|end|>\n<|assistant|>")
    assert [first["arguments"][f"gen_args_{i}"]["arg_1"] for i in range(4)] == [" A", " B", " C", " D"] or [
        first["arguments"][f"gen_args_{i}"]["arg_1"] for i in range(4)
    ] == ["A", "B", "C", "D"]
    # The group score is lm-eval's size-weighted mean of the per-document accuracies.
    accs = [s["acc"] for v in samples.values() for s in v]
    assert scores.score == pytest.approx(sum(accs) / len(accs))
    assert scores.name == "mmlu" and scores.ability == "ta" and scores.metrics == {}  # acc is the headline
    assert (tmp_path / "lm_eval_results.json").is_file()


def test_generative_task_in_process(tiny_model, bench_dir, tmp_path):
    model, tok = tiny_model
    task = LMEvalTask("xquad", data_dir=bench_dir, languages=["de", "zh"], **FAST_GEN)
    [scores] = task.run(model, tok, out_dir=tmp_path)
    per_lang, ems = {}, {}
    for lang, n_docs in (("de", 3), ("zh", 3)):
        samples = read_samples(tmp_path / "samples" / f"cft_xquad_{lang}.jsonl")
        assert len(samples) == n_docs
        assert sorted(s["target"] for s in samples) == sorted(a for _, qas in XQUAD_QAS for _, a in qas)
        assert XQUAD_PROMPTS[lang].split(":")[0] in samples[0]["arguments"]["gen_args_0"]["arg_0"]  # the language's prompt
        for s in samples:  # the per-language scorer is wired to each task
            assert s["f1"] == pytest.approx(qa_f1(s["filtered_resps"][0], s["doc"]["answers"]["text"], lang))
            assert s["exact_match"] == qa_exact(s["filtered_resps"][0], s["doc"]["answers"]["text"], lang)
        per_lang[lang] = sum(s["f1"] for s in samples) / len(samples)
        ems[lang] = sum(s["exact_match"] for s in samples) / len(samples)
    assert scores.per_language == pytest.approx(per_lang)
    assert scores.score == pytest.approx((per_lang["de"] + per_lang["zh"]) / 2)
    flat = flatten([scores])
    # F1 is the headline (per language and the mean); exact match comes after ':', never as a language.
    assert set(flat) == {
        "la/xquad", "la/xquad/de", "la/xquad/zh", "la/xquad:em", "la/xquad/de:em", "la/xquad/zh:em",
        "la_avg", "la_avg_tasks", "la_avg_over",
    } | {f"{k}_stderr" for k in ("la/xquad", "la/xquad/de", "la/xquad/zh", "la_avg")}  # fmt: skip
    # lm-eval's standard error of each language's F1 (a mean over 3 questions), propagated to the mean of two.
    from cft.evaluation.uncertainty import mean_stderr

    for lang in ("de", "zh"):
        f1s = [s["f1"] for s in read_samples(tmp_path / "samples" / f"cft_xquad_{lang}.jsonl")]
        assert flat[f"la/xquad/{lang}_stderr"] == pytest.approx(mean_stderr(f1s))
        assert sorted(scores.items[lang].values()) == pytest.approx(sorted(f1s))  # per-item scores from the samples
    assert flat["la/xquad_stderr"] == pytest.approx(
        (flat["la/xquad/de_stderr"] ** 2 + flat["la/xquad/zh_stderr"] ** 2) ** 0.5 / 2
    )
    assert flat["la/xquad/zh:em"] == pytest.approx(ems["zh"]) and flat["la/xquad:em"] == pytest.approx(
        (ems["de"] + ems["zh"]) / 2
    )
    assert flat["la_avg"] == flat["la/xquad"] and flat["la_avg_tasks"] == 1 and flat["la_avg_over"] == "xquad"


@pytest.mark.parametrize("mode, expected", [("auto", "### Instruction:\nKontext: Anna"), (False, "Kontext: Anna")])
def test_prompt_format_without_a_tokenizer_chat_template(mode, expected, tiny_model, bench_dir, tmp_path):
    """Like training, a tokenizer without a chat template gets the Alpaca prompt (unless switched off)."""
    import copy

    model, tok = tiny_model
    tok = copy.deepcopy(tok)
    tok.chat_template = None
    LMEvalTask("xquad", data_dir=bench_dir, languages=["de"], apply_chat_template=mode, limit=1, **FAST_GEN).run(
        model, tok, out_dir=tmp_path
    )
    prompt = read_samples(tmp_path / "samples" / "cft_xquad_de.jsonl")[0]["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith(expected if mode is False else "Below is an instruction") and expected in prompt
    assert "<|user|>" not in prompt
    assert tok.chat_template is None  # the caller's tokenizer is left as it was


def test_project_tasks_xlsum_global_mmlu_lite_mlqa(tiny_model, bench_dir, tmp_path):
    from cft.evaluation.metrics import rouge_l

    model, tok = tiny_model
    [xlsum] = LMEvalTask("xlsum", data_dir=bench_dir, languages=["zh", "ar"], **FAST_GEN).run(model, tok, out_dir=tmp_path / "x")
    for lang in ("zh", "ar"):
        samples = read_samples(tmp_path / "x" / "samples" / f"cft_xlsum_{lang}.jsonl")
        assert len(samples) == 2
        for s in samples:
            assert s["rougeL"] == pytest.approx(rouge_l(s["filtered_resps"][0].strip(), s["doc"]["summary"]))
        assert xlsum.per_language[lang] == pytest.approx(sum(s["rougeL"] for s in samples) / 2)
    assert "Summarize the following Arabic article in one sentence, in Arabic." in samples[0]["arguments"]["gen_args_0"]["arg_0"]
    [gmmlu] = LMEvalTask("global_mmlu_lite", data_dir=bench_dir, languages=["de"], num_fewshot=1, **FAST).run(
        model, tok, out_dir=tmp_path / "g"
    )
    samples = read_samples(tmp_path / "g" / "samples" / "cft_global_mmlu_lite_de.jsonl")
    assert [s["target"] for s in samples] == ["1", "0", "3"]
    assert gmmlu.per_language["de"] == pytest.approx(sum(s["acc"] for s in samples) / 3)
    [mlqa] = LMEvalTask("mlqa", data_dir=bench_dir, languages=["de"], limit=2, **FAST_GEN).run(model, tok, out_dir=tmp_path / "m")
    samples = read_samples(tmp_path / "m" / "samples" / "cft_mlqa_de.jsonl")
    assert len(samples) == 2 and samples[0]["arguments"]["gen_args_0"]["arg_0"].count("Context: Anna lives in Berlin.") == 1
    assert set(mlqa.per_language) == {"de"}


def test_scores_equal_lm_eval_cli(tiny_model_dir, bench_dir, tmp_path):
    """evaluate's in-process scores are those of `lm-eval run` on the same model, task files and settings."""
    from cft.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    mmlu = LMEvalTask("mmlu", data_dir=bench_dir, subjects=["anatomy", "virology"], num_fewshot=1, limit=3, **FAST)
    xquad = LMEvalTask(
        "xquad", data_dir=bench_dir, languages=["de"], num_fewshot=1, limit=3, **FAST_GEN
    )  # the CLI's shots apply to all
    [mmlu_scores] = mmlu.run(model, tok, out_dir=tmp_path / "mmlu")
    [xquad_scores] = xquad.run(model, tok, out_dir=tmp_path / "xquad")

    cli_tasks = tmp_path / "cli_tasks"  # both runs' generated task files, side by side
    cli_tasks.mkdir()
    for run in ("mmlu", "xquad"):
        for f in (tmp_path / run / "lm_eval_tasks").glob("*.yaml"):
            (cli_tasks / f.name).write_text(f.read_text())
    lm_eval_bin = Path(sys.executable).with_name("lm-eval")
    cmd = [
        str(lm_eval_bin),
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tiny_model_dir},dtype=float32",
        "--tasks",
        "cft_mmlu,cft_xquad_de",
        "--include_path",
        str(cli_tasks),
        "--num_fewshot",
        "1",
        "--limit",
        "3",
        "--batch_size",
        "4",
        "--device",
        "cpu",
        "--apply_chat_template",
        "--gen_kwargs",
        "max_gen_toks=6",
        "--seed",
        "1234",
        "--log_samples",
        "--output_path",
        str(tmp_path / "cli_out"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-4000:]
    [results_file] = list((tmp_path / "cli_out").rglob("results_*.json"))
    cli = json.loads(results_file.read_text())["results"]
    assert cli["cft_mmlu"]["acc,none"] == mmlu_scores.score
    assert cli["cft_xquad_de"]["f1,none"] == xquad_scores.per_language["de"]
    assert cli["cft_xquad_de"]["exact_match,none"] == xquad_scores.language_metrics["de"]["em"]
    # Beyond the (tiny, random) model's scores: the same prompts, log-likelihoods and generations.
    for task, run in (("cft_mmlu_anatomy", "mmlu"), ("cft_mmlu_virology", "mmlu"), ("cft_xquad_de", "xquad")):
        [cli_file] = list((tmp_path / "cli_out").rglob(f"samples_{task}_*.jsonl"))
        ours, theirs = read_samples(tmp_path / run / "samples" / f"{task}.jsonl"), read_samples(cli_file)
        assert len(ours) == len(theirs) == 3
        for a, b in zip(ours, theirs):
            assert a["arguments"] == b["arguments"]
            assert a["resps"] == b["resps"]
    assert 0 < mmlu_scores.score < 1  # not a degenerate comparison


# --- AlpacaEval --------------------------------------------------------------------------------


def test_alpaca_eval_without_a_judge_generates_nothing(bench_dir, tmp_path):
    class NoModel:  # any model call would fail
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name})")

    [scores] = AlpacaEvalTask(data_dir=bench_dir, limit=2).run(NoModel(), NoModel(), out_dir=tmp_path)
    assert scores.not_computed and "nothing generated" in scores.not_computed and "save_outputs=true" in scores.not_computed
    assert not (tmp_path / "model_outputs.json").exists()


def test_alpaca_eval_saves_outputs_and_records_not_computed(tiny_model, bench_dir, tmp_path):
    model, tok = tiny_model
    task = AlpacaEvalTask(data_dir=bench_dir, max_new_tokens=4, batch_size=2, limit=2, save_outputs=True)
    [scores] = task.run(model, tok, out_dir=tmp_path)
    outputs = json.loads((tmp_path / "model_outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == ["Say hello 0.", "Say hello 1."]
    assert set(outputs[0]) == {"instruction", "output", "generator", "dataset"}
    refs = json.loads((tmp_path / "reference_outputs.json").read_text())
    assert refs[1]["output"] == "Hello 1!"
    assert scores.not_computed and "annotator" in scores.not_computed and math.isnan(scores.score)
    assert "not_computed" in json.loads((tmp_path / "score.json").read_text())
    # Recorded as missing with its reason (metrics.json, W&B), never as 0, and out of the TA average.
    assert flatten([scores]) == {"not_computed/ta/alpaca_eval": scores.not_computed, "ta_avg_tasks": 0, "ta_avg_over": ""}


def test_alpaca_eval_reasons_without_a_judge(bench_dir, monkeypatch):
    task = AlpacaEvalTask(data_dir=bench_dir, annotator="alpaca_eval_gpt4_turbo_fn")
    try:
        import alpaca_eval  # noqa: F401
    except ImportError:
        assert "alpaca_eval package is not installed" in task.why_not_judged()
    else:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        assert "OPENAI_API_KEY" in task.why_not_judged()


def test_alpaca_eval_judged_win_rate(tiny_model, bench_dir, tmp_path, monkeypatch):
    """The alpaca_eval call and the percent -> [0, 1] conversion, with a stand-in for the package."""
    import types

    import pandas as pd

    calls = {}

    def fake_evaluate(**kwargs):
        calls.update(kwargs)
        if kwargs["annotators_config"].endswith("broken"):
            raise RuntimeError("judge crashed")
        n = len(kwargs["model_outputs"])
        frame = {"win_rate": [62.5], "length_controlled_winrate": [50.0], "standard_error": [4.0], "n_total": [n]}
        return pd.DataFrame(frame, index=["cft_model"]), None

    monkeypatch.setitem(sys.modules, "alpaca_eval", types.SimpleNamespace(evaluate=fake_evaluate))
    model, tok = tiny_model
    judge = tmp_path / "local_judge"  # a local annotator config folder
    judge.mkdir()
    [scores] = AlpacaEvalTask(annotator=str(judge), data_dir=bench_dir, max_new_tokens=2, limit=2).run(
        model, tok, out_dir=tmp_path / "a"
    )
    assert scores.not_computed is None and scores.score == 0.625
    assert scores.metrics == {"length_controlled_winrate": 0.5}  # win_rate is the headline
    assert scores.stderr == pytest.approx(0.04)  # alpaca_eval's standard error of the win rate
    assert list(calls["reference_outputs"]["output"]) == ["Hello 0!", "Hello 1!"] and calls["annotators_config"] == str(judge)
    assert flatten([scores])["ta/alpaca_eval"] == 0.625
    assert flatten([scores])["ta/alpaca_eval:length_controlled_winrate"] == 0.5

    broken = tmp_path / "broken"
    broken.mkdir()
    [failed] = AlpacaEvalTask(annotator=str(broken), data_dir=bench_dir, max_new_tokens=2, limit=1).run(
        model, tok, out_dir=tmp_path / "b"
    )
    assert failed.not_computed and "judge crashed" in failed.not_computed
    assert (tmp_path / "b" / "model_outputs.json").is_file()  # the outputs survive a failing judge


def test_hub_mode_uses_lm_eval_built_ins_where_they_work(tmp_path):
    import lm_eval

    builtin_dir = Path(lm_eval.__file__).parent / "tasks"
    expected = {"ifeval": "ifeval/ifeval.yaml", "hellaswag": "hellaswag/hellaswag.yaml", "mmlu": "mmlu/default/_mmlu.yaml"}
    for task, yaml_file in expected.items():
        tasks = LMEvalTask(task).lm_tasks()
        builtin_dirs = write_task_configs(tasks, tmp_path / task)
        assert [t.name for t in tasks] == [task] and not list((tmp_path / task).glob("*.yaml"))
        assert builtin_dirs == [(builtin_dir / yaml_file).parent] and (builtin_dir / yaml_file).is_file()
    [mlqa_de] = LMEvalTask("mlqa", languages=["de"]).lm_tasks()
    assert mlqa_de.name == "mlqa_de_de" and (builtin_dir / "mlqa" / "mlqa_de_de.yaml").is_file()
    # XQuAD, XLSUM, Global-MMLU-Lite and an MMLU subset are the project's tasks on the hub datasets.
    tasks = LMEvalTask("xquad", languages=["th"]).lm_tasks()
    assert not write_task_configs(tasks, tmp_path / "xquad")
    assert tasks[0].config["dataset_path"] == "google/xquad" and tasks[0].config["dataset_name"] == "xquad.th"
    write_task_configs(LMEvalTask("xlsum", languages=["zh"]).lm_tasks(), tmp_path / "x")
    assert 'dataset_name: "chinese_simplified"' in (tmp_path / "x" / "cft_xlsum_zh.yaml").read_text()
    [group, member] = LMEvalTask("mmlu", subjects=["virology"]).lm_tasks()
    assert group.group_of == ["cft_mmlu_virology"] and member.config["dataset_path"] == "cais/mmlu"
    assert member.config["description"].endswith("about virology.\n\n") and member.config["num_fewshot"] == 0


# --- bad input, before any model work ----------------------------------------------------------


def test_bad_input_is_rejected_at_construction(bench_dir, tmp_path):
    with pytest.raises(
        ConfigError, match="Unknown benchmark 'xquadd': cft has flores, global_mmlu_lite, hellaswag, ifeval, mlqa, mmlu,"
    ):
        LMEvalTask("xquadd")
    with pytest.raises(ConfigError, match=r"eval task xquad: languages \['xx'\] not available; xquad has ar, de"):
        LMEvalTask("xquad", languages=["de", "xx"])
    with pytest.raises(
        ConfigError, match=r"eval task ifeval: `languages` does not apply \(ifeval has neither languages nor subjects\)"
    ):
        LMEvalTask("ifeval", languages=["de"])
    with pytest.raises(ConfigError, match=r"eval task xquad: `subjects` does not apply \(xquad has languages\)"):
        LMEvalTask("xquad", subjects=["anatomy"])
    with pytest.raises(ConfigError, match=r"eval task mmlu: subjects \['anatomyy'\] not available"):
        LMEvalTask("mmlu", subjects=["anatomyy"])
    with pytest.raises(ConfigError, match="apply_chat_template must be"):
        LMEvalTask("xquad", apply_chat_template="yes")
    with pytest.raises(ConfigError, match="eval task xquad: metric 'f2' is not one of f1, em"):
        LMEvalTask("xquad", metric="f2")
    with pytest.raises(ConfigError, match="eval task mmlu: gen_kwargs apply to generative benchmarks"):
        LMEvalTask("mmlu", gen_kwargs={"max_gen_toks": 4})
    with pytest.raises(ConfigError, match="eval task xquad: limit must be a positive integer"):
        LMEvalTask("xquad", limit=0)
    with pytest.raises(DataError, match="does not exist"):
        LMEvalTask("ifeval", data_dir=tmp_path / "nowhere")
    with pytest.raises(
        DataError,
        match=r"lacks mlqa/test/test-context-ar-question-ar\.json\. Add the files, or leave the task out.*\(eval\.tasks\.mlqa=null\)$",
    ):
        LMEvalTask("mlqa", languages=["ar", "de"], data_dir=bench_dir)
    with pytest.raises(DataError, match=r"mlqa/dev/dev-context-de-question-de\.json"):  # shots need the dev split
        LMEvalTask("mlqa", languages=["de"], data_dir=bench_dir, num_fewshot=1)
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match=r"mmlu/test/anatomy_test\.csv"):
        LMEvalTask("mmlu", data_dir=tmp_path, subjects=["anatomy"])
    with pytest.raises(DataError, match="alpaca_eval.jsonl"):
        AlpacaEvalTask(data_dir=tmp_path)


def test_vllm_backend_needs_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="vllm package, which is not installed"):
            LMEvalTask("hellaswag", backend="vllm")
    else:
        assert LMEvalTask("hellaswag", backend="vllm").backend == "vllm"


def test_hub_dataset_offline_says_to_use_data_dir(tiny_model, tmp_path):
    model, tok = tiny_model
    with pytest.raises(CftError, match="eval.data_dir"):
        LMEvalTask("xlsum", languages=["ar"], limit=1, **FAST_GEN).run(model, tok, out_dir=tmp_path)


# --- suites --------------------------------------------------------------------------------------


def compose_eval(option: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose(config_name="config", overrides=[f"eval={option}", *overrides])


def test_suites_compose_and_validate_local_files(bench_dir):
    ta = build_suite(compose_eval("ta", f"eval.data_dir={bench_dir}").eval)
    assert list(ta) == ["ifeval", "mmlu", "hellaswag", "alpaca_eval"]
    # The suite's data_dir reaches every task that takes it; zero-shot as the paper.
    assert ta["mmlu"].data_dir == bench_dir and ta["mmlu"].num_fewshot == 0 and ta["alpaca_eval"].data_dir == bench_dir
    assert {t.ability for t in ta.values()} == {"ta"} and ta["alpaca_eval"].batch_size == 16 and ta["mmlu"].batch_size == "auto"

    paper = compose_eval("paper").eval
    assert set(paper.tasks) == {"ifeval", "mmlu", "hellaswag", "alpaca_eval", "xquad", "mlqa", "xlsum", "global_mmlu_lite"}
    assert paper.limit is None and dict(paper.averages) == {
        "ta": ["ifeval", "alpaca_eval", "mmlu", "hellaswag"],
        "la": ["mlqa", "xquad", "xlsum"],
    }
    no_data = ["eval.tasks.mlqa=null", "eval.tasks.xlsum=null", "eval.tasks.global_mmlu_lite=null"]
    quick = build_suite(compose_eval("quick", f"eval.data_dir={bench_dir}", "eval.apply_chat_template=false", *no_data).eval)
    ifeval = quick["ifeval"]
    assert ifeval.limit == 4 and quick["xquad"].limit == 4 and quick["alpaca_eval"].limit == 4
    assert ifeval.gen_kwargs == {"max_gen_toks": 64} and ifeval.apply_chat_template is False and ifeval.backend == "hf"
    off = "switched off in the suite (eval.tasks.{}=null)"
    assert quick.switched_off == {t: ("la", off.format(t)) for t in ("mlqa", "xlsum")}  # recorded as not computed
    removed = build_suite(compose_eval("la", f"eval.data_dir={bench_dir}", "~eval.tasks.mlqa", *no_data[1:]).eval)
    assert {k: reason.split(" (")[0] for k, (_, reason) in removed.switched_off.items()} == {
        "mlqa": "removed from the suite",
        "xlsum": "switched off in the suite",
    }
    # The written data has no MLQA: the LA suite stops before any model work, naming the file.
    la = compose_eval("la", f"eval.data_dir={bench_dir}").eval
    with pytest.raises(DataError, match="lacks mlqa/test/test-context-ar-question-ar.json"):
        build_suite(la)


# --- integration: the real benchmark files ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    "task, kwargs",
    [
        ("ifeval", {"gen_kwargs": {"max_gen_toks": 8}}),
        ("mmlu", {"subjects": ["anatomy", "virology"], "num_fewshot": 2}),
        ("hellaswag", {}),
        ("xquad", {"languages": ["de", "th", "zh"], "gen_kwargs": {"max_gen_toks": 8}}),
    ],
)
def test_real_benchmark_files(task, kwargs, shared_data, tiny_model, tmp_path):
    model, tok = tiny_model
    lm_task = LMEvalTask(task, data_dir=shared_data, batch_size=4, limit=2, **kwargs)
    [scores] = lm_task.run(model, tok, out_dir=tmp_path)
    assert 0.0 <= scores.score <= 1.0 and scores.not_computed is None
    files = sorted((tmp_path / "samples").glob("*.jsonl"))
    assert files and all(len(read_samples(f)) == 2 for f in files)
    if task == "xquad":
        assert set(scores.per_language) == {"de", "th", "zh"}
        doc = read_samples(tmp_path / "samples" / "cft_xquad_th.jsonl")[0]["doc"]
        assert doc["question"] and doc["answers"]["text"][0] in doc["context"]
    if task == "hellaswag":
        doc = read_samples(files[0])[0]["doc"]
        assert doc["query"].startswith("Roof shingle removal: A man is sitting on a roof.") and doc["gold"] == 3
    if task == "ifeval":
        assert set(scores.metrics) == {"inst_strict", "prompt_loose", "inst_loose"}  # prompt_strict is the headline


@pytest.mark.integration
def test_real_alpaca_eval_file(shared_data):
    records = AlpacaEvalTask(data_dir=shared_data).load()
    assert len(records) == 805
    assert records[0]["instruction"].startswith("What are the names of some famous actors")
    assert {r["dataset"] for r in records} == {"selfinstruct", "oasst", "koala", "helpful_base", "vicuna"}
