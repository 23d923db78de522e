"""Hooks of the benchmarks' lm-eval task templates and benchmark files: the functions they name as
`!function cft.evaluation.benchmarks.hooks.<name>`. lm-eval imports them by that dotted name, so
the same task YAMLs run in-process and with `lm-eval run --include_path <dir>`.

Documents are normalised here so one YAML serves both the hub copy of a benchmark and a local
copy in the layout of the shared data folder (SQuAD-style nested JSON for XQuAD/MLQA, header-less
CSVs for MMLU, preprocessed JSONL for HellaSwag).

IFEval and NLTK's Punkt: lm-eval's IFEval module calls `nltk.download("punkt_tab")` when it is
imported and needs the Punkt English model for two instructions (number of sentences; capital-word
frequency through `nltk.word_tokenize`). `ensure_punkt()` runs before that import and uses NLTK's real
Punkt wherever it can be had: already installed (e.g. in `$NLTK_DATA`), or downloaded now when the
machine is online (not tried under HF_HUB_OFFLINE=1). Only where neither works (no PyPI package ships the model; offline machines) it
writes a minimal Punkt model (the algorithm unchanged, no trained collocations or sentence starters,
a short list of common English abbreviations) into a private temporary folder and appends that
folder to `nltk.data.path`; NLTK then splits sentences at . ! ? followed by a space, except after the
listed abbreviations. That fallback is said in the log (a warning), and the IFEval task records it
(`<phase>/eval/punkt` = fallback in metrics.json; a footnote of the tables).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

from cft.evaluation import metrics

log = logging.getLogger(__name__)

# `datasets` fingerprints these functions by name, not code: a cached map() result would outlive a
# change of the code.
_NO_CACHE = {"load_from_cache_file": False}

# ---------------------------------------------------------------------------------------------
# IFEval without network

# Common English abbreviations after which a period does not end a sentence (lower case, no final dot).
PUNKT_FALLBACK_ABBREVIATIONS = (
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf al inc ltd co corp dept univ assn bros no vol fig figs "
    "approx est gov gen col lt sgt capt cmdr rev hon mt ft jan feb mar apr jun jul aug sep sept oct nov dec "
    "u.s u.k a.m p.m ph.d m.d b.a m.a"
).split()

_FALLBACK_DIR: Path | None = None
_DOWNLOAD_TRIED = False
PUNKT_REAL, PUNKT_FALLBACK = "nltk", "fallback"
# Which Punkt model IFEval's scorer found since the last clear() (LMEvalTask records it).
PUNKT_USED: set[str] = set()


def _find_punkt() -> str | None:
    import nltk

    try:
        found = str(nltk.data.find("tokenizers/punkt_tab/english/"))
    except LookupError:
        return None
    return None if _FALLBACK_DIR is not None and found.startswith(str(_FALLBACK_DIR)) else found


def punkt_source() -> str:
    """Which Punkt model NLTK finds now: PUNKT_REAL or PUNKT_FALLBACK (after `ensure_punkt`)."""
    return PUNKT_REAL if _find_punkt() is not None else PUNKT_FALLBACK


def ensure_punkt() -> str:
    """Make NLTK's Punkt English model available: the real one (installed, or downloaded once when
    online), else the minimal fallback (with a warning). Returns PUNKT_REAL or PUNKT_FALLBACK."""
    global _DOWNLOAD_TRIED
    import nltk

    if _find_punkt() is not None:
        return PUNKT_REAL
    # HF_HUB_OFFLINE=1 (how cft's tests and offline CI say "no network"): no try, which could wait on a
    # network that drops connections instead of refusing them.
    if not _DOWNLOAD_TRIED and os.environ.get("HF_HUB_OFFLINE") != "1":
        _DOWNLOAD_TRIED = True  # once per process: offline, each try costs a failed connection
        try:
            if nltk.download("punkt_tab", quiet=True, raise_on_error=False) and _find_punkt() is not None:
                log.info("Downloaded NLTK punkt_tab for IFEval")
                return PUNKT_REAL
        except Exception as exc:  # noqa: BLE001 - any failure to download means: use the fallback
            log.debug("NLTK punkt_tab download failed: %s", exc)
    _install_fallback()
    return PUNKT_FALLBACK


def ensure_nltk_offline() -> str:
    """Kept for callers of the old name: `ensure_punkt()`."""
    return ensure_punkt()


def _install_fallback() -> None:
    global _FALLBACK_DIR
    import nltk

    if _FALLBACK_DIR is None:
        root = Path(tempfile.mkdtemp(prefix="cft-nltk-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        english = root / "tokenizers" / "punkt_tab" / "english"
        english.mkdir(parents=True)
        (english / "abbrev_types.txt").write_text("\n".join(PUNKT_FALLBACK_ABBREVIATIONS) + "\n")
        for empty in ("collocations.tab", "sent_starters.txt", "ortho_context.tab"):
            (english / empty).write_text("")
        _FALLBACK_DIR = root
        log.warning(
            "NLTK punkt_tab is not installed and could not be downloaded: IFEval splits sentences with cft's minimal "
            "Punkt model (%s); install punkt_tab (python -m nltk.downloader punkt_tab, or set NLTK_DATA) for the real one",
            root,
        )
    if str(_FALLBACK_DIR) not in nltk.data.path:
        nltk.data.path.append(str(_FALLBACK_DIR))


def ifeval_process_results(doc, results):
    PUNKT_USED.add(ensure_punkt())
    from lm_eval.tasks.ifeval import utils as ifeval_utils

    # JSON loaders fill the kwargs a record lacks with None; lm-eval's scorer drops falsy values.
    return ifeval_utils.process_results(doc, results)


def agg_inst_level_acc(items):
    flat = [item for sublist in items for item in sublist]
    return sum(flat) / len(flat)


# ---------------------------------------------------------------------------------------------
# Extractive QA: XQuAD and MLQA (hub rows are flat; local files are SQuAD's nested JSON)


def _flatten_squad(batch):
    out = {"id": [], "context": [], "question": [], "answers": []}
    for paragraphs in batch["paragraphs"]:
        for paragraph in paragraphs:
            for qa in paragraph["qas"]:
                out["id"].append(str(qa["id"]))
                out["context"].append(paragraph["context"])
                out["question"].append(qa["question"])
                out["answers"].append({"text": [a["text"] for a in qa["answers"]]})
    return out


def process_docs_squad(dataset):
    """Rows with id, context, question and answers.text, from either the hub or SQuAD JSON."""
    if "paragraphs" in dataset.column_names:
        return dataset.map(_flatten_squad, batched=True, remove_columns=dataset.column_names, **_NO_CACHE)
    return dataset


def _qa_results(doc, results, lang, style):
    prediction = results[0]
    answers = doc["answers"]["text"] if isinstance(doc["answers"], dict) else doc["answers"]
    return {
        "exact_match": metrics.qa_exact(prediction, answers, lang, style),
        "f1": metrics.qa_f1(prediction, answers, lang, style),
    }


# Scorer name prefix -> the official script it follows (cft.evaluation.metrics.qa_tokens).
_QA_SCORERS = {"qa_results_": "squad", "mlqa_results_": "mlqa"}


def __getattr__(name: str):
    """`qa_results_<lang>` (XQuAD: SQuAD v1.1's script) and `mlqa_results_<lang>` (MLQA's script): the
    QA scorer of any language, so a benchmark file names it per language without a list here."""
    for prefix, style in _QA_SCORERS.items():
        if name.startswith(prefix) and name != prefix:
            scorer = partial(_qa_results, lang=name.removeprefix(prefix), style=style)
            scorer.__name__ = name  # lm-eval and `datasets` read a function's name
            return scorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# XLSUM

# Articles are cut to this many characters so that the instruction and the start of the article
# fit a 4k-token context in every script (lm-eval would otherwise cut the prompt's beginning).
XLSUM_MAX_ARTICLE_CHARS = 4000


def process_docs_xlsum(dataset):
    return dataset.map(
        lambda d: {"text": d["text"][:XLSUM_MAX_ARTICLE_CHARS].strip(), "summary": d["summary"].strip()}, **_NO_CACHE
    )


def xlsum_results(doc, results):
    return {"rougeL": metrics.rouge_l(results[0].strip(), doc["summary"])}


# ---------------------------------------------------------------------------------------------
# MMLU and Global-MMLU-Lite (local CSVs have no header: question, A, B, C, D, answer letter)


def _mmlu_doc(doc):
    if "choices" in doc and doc["choices"] is not None:
        return {"question": doc["question"], "choices": list(doc["choices"]), "gold": int(doc["answer"])}
    options = [doc[k] for k in ("A", "B", "C", "D")] if "A" in doc else [doc[f"option_{k}"] for k in "abcd"]
    answer = doc["answer"]
    index = "ABCD".index(str(answer).strip().upper()) if not str(answer).strip().isdigit() else int(answer)
    # A new column: map() would cast ints back into an existing string column.
    return {"question": doc["question"], "choices": [str(o) for o in options], "gold": index}


def process_docs_mmlu(dataset):
    return dataset.map(_mmlu_doc, **_NO_CACHE)


# ---------------------------------------------------------------------------------------------
# HellaSwag (hub rows, the official JSONL, or the preprocessed JSONL with `query`)


def _hellaswag_preprocess(text: str) -> str:
    import re

    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_doc(doc):
    if doc.get("query") is not None:
        query = doc["query"]
    else:
        query = doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": _hellaswag_preprocess(query),
        "choices": [_hellaswag_preprocess(e) for e in doc["endings"]],
        "gold": int(doc["label"]),
    }


def process_docs_hellaswag(dataset):
    return dataset.map(_hellaswag_doc, **_NO_CACHE)


# ---------------------------------------------------------------------------------------------
# FLORES-200 (plain-text sentences; rolling log-likelihood)


def flores_results(doc, results):
    """A sentence's bits per byte (`bpb`, averaged over sentences) and lm-eval's (log-likelihood,
    bytes) pair (`bits_per_byte`, pooled over the corpus by lm-eval's aggregation)."""
    import math

    (loglikelihood,) = results
    n_bytes = max(1, len(doc["text"].encode("utf-8")))
    return {"bpb": -loglikelihood / n_bytes / math.log(2), "bits_per_byte": (loglikelihood, n_bytes)}
