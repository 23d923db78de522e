"""Metrics the project computes itself, against hand-computed values: XLSUM ROUGE-L in scripts
without spaces and in Arabic/Devanagari, SQuAD-style QA normalisation, lm-eval results turned into
TaskScores and flat keys (metrics after ':', English as `en`, the averages and what they cover),
and IFEval's sentence counting without network."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from cft.evaluation import TaskScores, flatten
from cft.evaluation.lmeval import LMEvalTask
from cft.evaluation.metrics import cut_inside_character, mean, qa_exact, qa_f1, qa_tokens, rouge_l, rouge_tokens
from cft.run import keys

# --- XLSUM ROUGE-L ----------------------------------------------------------------------------


def test_rouge_tokens_keep_words_of_every_script_and_split_cjk():
    assert rouge_tokens("我爱北京。Hello, World!") == ["我", "爱", "北", "京", "hello", "world"]
    # Devanagari vowel signs and virama are marks: they stay inside their word.
    assert rouge_tokens("मेरा नाम, हिन्दी।") == ["मेरा", "नाम", "हिन्दी"]
    assert rouge_tokens("ذهب الولد إلى المدرسة.") == ["ذهب", "الولد", "إلى", "المدرسة"]
    assert rouge_tokens("これはペンです") == list("これはペンです")
    assert rouge_tokens("ภาษาไทย") == list("ภาษาไทย")


def test_rouge_l_chinese_is_character_level():
    # LCS 4 of 7 predicted and 4 reference characters: P = 4/7, R = 1, F = 8/11.
    assert rouge_l("我爱北京天安门", "我爱北京") == pytest.approx(8 / 11)
    assert rouge_l("天安门", "我爱北京") == 0.0


def test_rouge_l_japanese_and_english():
    # 7 vs 5 characters, LCS 5: P = 5/7, R = 1, F = 5/6.
    assert rouge_l("これはペンです", "これはペン") == pytest.approx(5 / 6)
    # "the cat on the mat" is a subsequence of the 6-word prediction: P = 5/6, R = 1, F = 10/11.
    assert rouge_l("The cat sat on the mat.", "the cat on the mat") == pytest.approx(10 / 11)


def test_rouge_l_arabic_scores_where_the_default_tokenizer_gives_zero():
    from rouge_score import rouge_scorer

    pred, ref = "ذهب الولد إلى المدرسة", "ذهب الولد"
    default = rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure
    assert default == 0.0  # the reason the project has its own tokenizer
    # LCS 2: P = 2/4, R = 2/2, F = 2/3.
    assert rouge_l(pred, ref) == pytest.approx(2 / 3)


def test_rouge_l_empty():
    assert rouge_l("", "") == 0.0
    assert rouge_l("", "something") == 0.0


# --- QA F1 / exact match ----------------------------------------------------------------------


def test_qa_normalisation_squad():
    assert qa_tokens("The Cat, sat!") == ["cat", "sat"]
    assert qa_exact("The Cat!", "cat") == 1.0
    assert qa_exact("cats", "cat") == 0.0
    # pred {cat, sat}, gold {cat, sat, down}: P = 1, R = 2/3, F = 0.8.
    assert qa_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # Best over references.
    assert qa_f1("Paris", ["London", "paris."]) == 1.0
    assert qa_f1("", ["Paris"]) == 0.0


def test_qa_mlqa_script_articles_and_characters():
    """MLQA's official script: its articles per language, all Unicode punctuation, Chinese by character."""
    assert qa_exact("der Hund", "Hund", "de", "mlqa") == 1.0
    assert qa_exact("der Hund", "Hund", "en", "mlqa") == 0.0  # "der" is no English article
    assert qa_exact("الكتاب", "كتاب", "ar", "mlqa") == 1.0
    assert qa_exact("el perro", "perro", "es", "mlqa") == 1.0
    # Characters: pred 北京大学 (4), gold 北京 (2), common 2: P = 1/2, R = 1, F = 2/3.
    assert qa_f1("北京大学", "北京", "zh", "mlqa") == pytest.approx(2 / 3)
    # Full-width punctuation is removed like ASCII punctuation.
    assert qa_exact("「北京」。", "北京", "zh", "mlqa") == 1.0
    # Only Chinese is split: a Hindi answer keeps its words (pred 2 words, gold 1 of them: F = 2/3).
    assert qa_tokens("नई दिल्ली", "hi", "mlqa") == ["नई", "दिल्ली"]
    assert qa_f1("नई दिल्ली", "दिल्ली", "hi", "mlqa") == pytest.approx(2 / 3)
    # Repeated tokens count with multiplicity (SQuAD): pred x x y, gold x y y -> common 2, F = 2/3.
    assert qa_f1("x x y", "x y y", style="mlqa") == pytest.approx(2 / 3)


def test_qa_xquad_uses_squad_v11_whitespace_tokens_in_every_language():
    """XQuAD's official scorer is SQuAD v1.1's evaluate: whitespace tokens, ASCII punctuation, English articles."""
    # The case: a truncated Thai answer shares characters with the gold, not a token: 0 (it was 0.36).
    assert qa_f1("เป็นที่เ", "สี่", "th") == 0.0
    assert qa_exact("เป็นที่เ", "สี่", "th") == 0.0
    # Thai and Chinese answers are whole chunks between spaces.
    assert qa_tokens("สี่ คน", "th") == ["สี่", "คน"]
    assert qa_f1("สี่ คน", "สี่", "th") == pytest.approx(2 / 3)  # P 1/2, R 1
    assert qa_f1("北京大学", "北京", "zh") == 0.0
    assert qa_exact("北京", "北京", "zh") == 1.0
    # Articles are English only; punctuation is ASCII only (a full-width 。 stays part of the token).
    assert qa_exact("der Hund", "Hund", "de") == 0.0
    assert qa_tokens("The Cat, sat!", "th") == ["cat", "sat"]
    assert qa_exact("北京。", "北京", "zh") == 0.0
    # pred {el, perro, grande}, gold {perro}: P 1/3, R 1, F 1/2.
    assert qa_f1("el perro grande.", "perro", "es") == pytest.approx(0.5)


def test_qa_answer_cut_inside_a_character_does_not_score():
    assert cut_inside_character("เป็นที่เ") and not cut_inside_character("เป็นที่")
    assert qa_f1("สี่ \ufffd", "สี่", "th") == 0.0  # bytes decoded mid-character
    assert qa_exact("\u0301cafe", "cafe") == 0.0  # a combining accent with nothing before it
    assert qa_f1("Paris", "Paris") == 1.0 and qa_f1("café", "café") == 1.0  # whole characters still score


def test_mean():
    assert mean([0.5, 0.25, 0.0]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        mean([])


# --- lm-eval results -> TaskScores -> flat keys and the paper's averages ------------------------


def test_per_language_scores_and_averages():
    xquad = LMEvalTask("xquad", languages=["de", "zh", "en"])
    lm_results = {
        "cft_xquad_de": {"f1,none": 0.5, "exact_match,none": 0.25, "f1_stderr,none": 0.1},
        "cft_xquad_zh": {"f1,none": 0.3, "exact_match,none": 0.0},
        "cft_xquad_en": {"f1,none": 0.9, "exact_match,none": 0.8},
    }
    scores, english = xquad.scores(lm_results, xquad.lm_tasks())
    # LA counts the non-English languages only; English is its own ability.
    assert (scores.ability, english.ability) == ("la", "en")
    assert scores.score == pytest.approx(0.4) and scores.per_language == {"de": 0.5, "zh": 0.3}
    assert scores.metrics == {"em": pytest.approx(0.125)} and scores.language_metrics == {"de": {"em": 0.25}, "zh": {"em": 0.0}}
    assert english.score == 0.9 and english.metrics == {"em": 0.8} and not english.per_language

    ifeval = LMEvalTask("ifeval", metric="inst_loose")
    [ife] = ifeval.scores(
        {
            "ifeval": {
                "prompt_level_strict_acc,none": 0.2,
                "inst_level_strict_acc,none": 0.3,
                "prompt_level_loose_acc,none": 0.4,
                "inst_level_loose_acc,none": 0.5,
            }
        },
        ifeval.lm_tasks(),
    )
    assert ife.score == 0.5 and ife.metrics == {"prompt_strict": 0.2, "inst_strict": 0.3, "prompt_loose": 0.4}

    skipped = TaskScores("alpaca_eval", "ta", math.nan, not_computed="no annotator")
    flat = flatten([scores, english, ife, TaskScores("mmlu", "ta", 0.3), skipped])
    assert flat == {
        "la/xquad": pytest.approx(0.4),
        "la/xquad/de": 0.5,
        "la/xquad/de_stderr": 0.1,  # lm-eval's; zh has none, so the mean over languages has none either
        "la/xquad/zh": 0.3,
        "la/xquad:em": pytest.approx(0.125),
        "la/xquad/de:em": 0.25,
        "la/xquad/zh:em": 0.0,
        "en/xquad": 0.9,
        "en/xquad:em": 0.8,
        "ta/ifeval": 0.5,
        "ta/ifeval:prompt_strict": 0.2,
        "ta/ifeval:inst_strict": 0.3,
        "ta/ifeval:prompt_loose": 0.4,
        "ta/mmlu": 0.3,
        "not_computed/ta/alpaca_eval": "no annotator",
        # Not-computed AlpacaEval is left out, not 0, and the average says what it covers.
        "ta_avg": pytest.approx((0.5 + 0.3) / 2),
        "ta_avg_tasks": 2,
        "ta_avg_over": "ifeval,mmlu",
        "la_avg": pytest.approx(0.4),  # English (0.9) is not in it
        "la_avg_tasks": 1,
        "la_avg_over": "xquad",
    }
    # Every key parses back to what it says: the metric after ':' is never a language.
    assert keys.parse("la/xquad/de:em") == keys.ScoreKey("la", "xquad", lang="de", metric="em")
    assert keys.languages(flat, "xquad") == ["de", "zh"] and keys.metrics_of(flat, "xquad", "la") == ["em"]


def test_missing_lm_eval_metric_is_an_error_not_a_zero():
    task = LMEvalTask("hellaswag")
    with pytest.raises(RuntimeError, match="acc_norm"):
        task.scores({"hellaswag": {"acc,none": 0.3}}, task.lm_tasks())


# --- IFEval without network -------------------------------------------------------------------

_IFEVAL_OFFLINE = r"""
import nltk
def no_download(*a, **k):
    raise AssertionError("nltk.download called")
nltk.download = no_download
from cft.evaluation.benchmarks.hooks import ensure_nltk_offline, ifeval_process_results
ensure_nltk_offline()
from lm_eval.tasks.ifeval import instructions_util
assert instructions_util.count_sentences("Hello Mr. Smith. How are you? I am fine! See e.g. this one.") == 4, \
    instructions_util.count_sentences("Hello Mr. Smith. How are you? I am fine! See e.g. this one.")
doc = {"key": 1, "prompt": "p", "instruction_id_list": ["length_constraints:number_sentences", "change_case:capital_word_frequency"],
       "kwargs": [{"relation": "less than", "num_sentences": 3}, {"capital_relation": "at least", "capital_frequency": 2}]}
two = ifeval_process_results(doc, ["FIRST sentence here. SECOND one."])
four = ifeval_process_results(doc, ["One. Two. Three. FOUR."])
assert two["inst_level_strict_acc"] == [True, True], two
assert four["inst_level_strict_acc"] == [False, False], four
print("ok")
"""


def test_ifeval_sentence_instructions_score_offline(tmp_path):
    env = dict(os.environ, NLTK_DATA=str(tmp_path / "no-nltk-data"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", _IFEVAL_OFFLINE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_ifeval_punkt_real_where_it_can_be_had_else_the_fallback_said(monkeypatch, caplog):
    import nltk

    from cft.evaluation.benchmarks import hooks
    from cft.evaluation.summary import PUNKT_NOTE, summary_table

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online: a download is tried
    monkeypatch.setattr(hooks, "_DOWNLOAD_TRIED", False)
    monkeypatch.setattr(hooks, "_FALLBACK_DIR", None)  # as in a fresh process (the warning comes with the first install)
    monkeypatch.setattr(hooks, "_find_punkt", lambda: None)  # not installed
    monkeypatch.setattr(nltk, "download", lambda *a, **k: calls.append(a) or False)  # offline
    with caplog.at_level("WARNING"):
        assert hooks.ensure_punkt() == hooks.PUNKT_FALLBACK
    assert calls == [("punkt_tab",)] and "could not be downloaded" in caplog.text
    assert hooks.ensure_punkt() == hooks.PUNKT_FALLBACK and len(calls) == 1  # one try per process
    monkeypatch.setattr(hooks, "_DOWNLOAD_TRIED", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # declared offline: no try at all
    assert hooks.ensure_punkt() == hooks.PUNKT_FALLBACK and len(calls) == 1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hooks, "_find_punkt", lambda: "/nltk_data/tokenizers/punkt_tab/english")  # installed
    assert hooks.ensure_punkt() == hooks.PUNKT_REAL
    # Online: downloaded, then found.
    found = iter([None, "/downloaded/punkt_tab/english"])
    monkeypatch.setattr(hooks, "_DOWNLOAD_TRIED", False)
    monkeypatch.setattr(hooks, "_find_punkt", lambda: next(found))
    monkeypatch.setattr(nltk, "download", lambda *a, **k: True)
    assert hooks.ensure_punkt() == hooks.PUNKT_REAL
    # The run says which one scored IFEval: metrics.json's key, and a footnote under its table.
    flat = flatten([TaskScores("ifeval", "ta", 0.5, reports={"eval/punkt": "fallback"})])
    assert flat["eval/punkt"] == "fallback"
    metrics = {**{f"{p}/{k}": v for p in ("phase1", "phase2") for k, v in flat.items()}}
    assert PUNKT_NOTE in summary_table(metrics)
