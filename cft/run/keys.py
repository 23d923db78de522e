"""The metric-key schema: every flat key a run records is built here and parsed here, nowhere else.

metrics.json, the W&B summary, the analysis tables and the dashboard all speak these keys:

    <phase>/<ability>/<task>                   headline score of a benchmark (LA: the mean over its languages)
    <phase>/<ability>/<task>/<lang>            the headline score in one language (multilingual benchmarks)
    <phase>/<ability>/<task>:<metric>          another metric of the benchmark (ta/ifeval:inst_loose, la/xquad:em)
    <phase>/<ability>/<task>/<lang>:<metric>   another metric in one language (la/xquad/de:em)
    <phase>/<ability>_avg                      the mean of the headline scores that count in it (ta_avg, la_avg)
    <phase>/<ability>_avg_tasks                how many benchmarks that mean covers (3 where AlpacaEval has no judge)
    <phase>/<ability>_avg_over                 which ones, comma-separated
    <phase>/<ability>_avg_of                   the benchmarks the suite defines the average over (conf/eval `averages`:
                                               the paper's), comma-separated; only where the suite defines it
    <phase>/not_computed/<ability>/<task>      why a score is missing (never recorded as 0)
    <any score or average key>_stderr          its standard error over items (lm-eval's `_stderr`, a bootstrap for
                                               cft's own metrics; an average's is propagated: sqrt(sum se^2)/n)
    <phase>/eval/punkt                         which Punkt model IFEval split sentences with (real, or fallback)
    <phase>/eval/dtype                         the precision the evaluation ran at (eval.dtype)
    <phase>/lower_is_better/<score key>        1 where a lower score is better (FLORES bits per byte; its la_avg)
    delta/<ability>_avg                        Phase 2 minus Phase 1
    delta/<...>_ci_low, delta/<...>_ci_high    its paired bootstrap 95% interval over the same items
    des, mpd, mpd/<...>                        dataset similarity and model distance (the paper's Definitions 1, 2)
    strategy/<...>, data/<...>, train/<phase>/<...>, eval/<phase>/<...>   what the strategy, data and loop did
    <phase>/loss, <phase>/lr, <phase>/epoch, <phase>/step, ...           training curves (W&B history, not metrics.json)

`<phase>` is `phase1` or `phase2` in a training run; evaluate.py records the same keys without it.
Abilities: `ta` (task ability: the paper's English benchmarks), `la` (language ability: the
non-English languages of the multilingual benchmarks, as in the paper's Tables B3 to B5) and `en`
(the English part of the multilingual benchmarks, recorded beside LA, never inside it). A metric
name comes after `:`, so a language segment is never confused with a metric name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PHASES = ("phase1", "phase2")
ABILITIES = ("ta", "la", "en")
# The paper's headline averages (its Tables 1 to 3); other abilities are recorded, not averaged into these.
HEADLINE_AVERAGES = ("ta_avg", "la_avg")
METRIC_SEP = ":"
NOT_COMPUTED = "not_computed"
# A score's standard error over the evaluated items: `<score key>_stderr` (lm-eval's own suffix).
STDERR_SUFFIX = "_stderr"
SCORE_PREFIXES = ("phase1/", "phase2/", "delta/", "des", "mpd")


def _join(*parts: str | None) -> str:
    return "/".join(p for p in parts if p)


def score(ability: str, task: str, lang: str | None = None, metric: str | None = None, *, phase: str | None = None) -> str:
    """The key of a score: score("la", "xquad", "de", "em", phase="phase2") -> 'phase2/la/xquad/de:em'."""
    if ability not in ABILITIES:
        raise ValueError(f"ability must be one of {ABILITIES}, not {ability!r}")
    for name, value in (("task", task), ("lang", lang), ("metric", metric)):
        if value is not None and ("/" in value or METRIC_SEP in value or not value):
            raise ValueError(f"a {name} name may not be empty or contain '/' or '{METRIC_SEP}': {value!r}")
    key = _join(phase, ability, task, lang)
    return f"{key}{METRIC_SEP}{metric}" if metric else key


def stderr(key: str) -> str:
    """The key of the standard error of a score or average key: stderr("phase1/ta/mmlu") -> 'phase1/ta/mmlu_stderr'."""
    if key.endswith(STDERR_SUFFIX):
        raise ValueError(f"{key!r} is already a standard-error key")
    return key + STDERR_SUFFIX


def parse_stderr(key: str) -> str | None:
    """The score key whose standard error `key` is, or None for any other key."""
    return key[: -len(STDERR_SUFFIX)] if key.endswith(STDERR_SUFFIX) and len(key) > len(STDERR_SUFFIX) else None


def punkt(*, phase: str | None = None) -> str:
    """Which Punkt model IFEval's sentence splitting used: 'nltk' (the real one) or 'fallback' (cft's minimal one)."""
    return _join(phase, "eval", "punkt")


LOWER_IS_BETTER = "lower_is_better"


def lower_is_better(key: str) -> str:
    """The marker of a score (or average) key whose lower values are better: 'lower_is_better/la/flores'
    (a phase prefix goes first: phase2/lower_is_better/la_avg)."""
    for phase in PHASES:
        if key.startswith(phase + "/"):
            return f"{phase}/{LOWER_IS_BETTER}/{key[len(phase) + 1 :]}"
    return f"{LOWER_IS_BETTER}/{key}"


def marked_lower_better(metrics: Mapping[str, object], key: str) -> bool:
    """Whether `metrics` mark score `key` lower-is-better: its own marker, or, for one language's score
    (phase2/la/flores/es), its benchmark's (phase2/lower_is_better/la/flores): the marker is written per
    benchmark, and every language of a benchmark is scored in the same unit."""
    if lower_is_better(key) in metrics:
        return True
    p = parse(key)
    return (
        p is not None
        and p.lang is not None
        and p.metric is None
        and lower_is_better(score(p.ability, p.task, phase=p.phase)) in metrics
    )


def eval_dtype(*, phase: str | None = None) -> str:
    """The precision an evaluation ran at: 'float32', 'bfloat16', ..."""
    return _join(phase, "eval", "dtype")


def average(ability: str, *, phase: str | None = None) -> str:
    return _join(phase, f"{ability}_avg")


def average_tasks(ability: str, *, phase: str | None = None) -> str:
    return _join(phase, f"{ability}_avg_tasks")


def average_over(ability: str, *, phase: str | None = None) -> str:
    return _join(phase, f"{ability}_avg_over")


def average_of(ability: str, *, phase: str | None = None) -> str:
    """The benchmarks a suite defines an average over (present only where the suite defines them)."""
    return _join(phase, f"{ability}_avg_of")


def not_computed(ability: str, task: str, *, phase: str | None = None) -> str:
    return _join(phase, NOT_COMPUTED, ability, task)


def parse_not_computed(key: str) -> ScoreKey | None:
    """The phase, ability and task of a `[<phase>/]not_computed/<ability>/<task>` key, or None for any other key."""
    parts = key.split("/")
    phase = None
    if parts and parts[0] in PHASES:
        phase, parts = parts[0], parts[1:]
    if len(parts) != 3 or parts[0] != NOT_COMPUTED or parts[1] not in ABILITIES or not parts[2]:
        return None
    return ScoreKey(ability=parts[1], task=parts[2], phase=phase)


def delta(name: str) -> str:
    return f"delta/{name}"


CI_SUFFIXES = ("_ci_low", "_ci_high")


def interval(key: str) -> tuple[str, str]:
    """The keys of the low and high ends of a difference's 95% interval: interval("delta/ta_avg")."""
    return key + CI_SUFFIXES[0], key + CI_SUFFIXES[1]


def phased(phase: str, flat: Mapping[str, Any]) -> dict[str, Any]:
    """Keys of an evaluation (no phase) as the keys of one phase of a training run."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
    return {f"{phase}/{k}": v for k, v in flat.items()}


# Training curves (logged every train.log_every steps; W&B plots them against `<phase>/step`).
CURVES = ("loss", "lr", "epoch", "tokens_per_second")


def curve(phase: str, name: str) -> str:
    """A training curve of one phase: curve("phase2", "loss") -> 'phase2/loss' (its x axis: curve(phase, "step"))."""
    return f"{phase}/{name}"


def train(phase: str, name: str) -> str:
    return f"train/{phase}/{name}"


def evaluation(phase: str, name: str) -> str:
    """What an evaluation of one phase cost: evaluation("phase2", "mmlu/seconds") -> 'eval/phase2/mmlu/seconds'."""
    return f"eval/{phase}/{name}"


def data(phase: str, name: str, lang: str | None = None) -> str:
    return _join("data", phase, name, lang)


def strategy(name: str) -> str:
    return f"strategy/{name}"


MPD = "mpd"


def mpd_layer(layer: int) -> str:
    """MPD of one decoder layer: mpd_layer(3) -> 'mpd/layer/3' (cft.measures.similarity.MPD.metrics records them)."""
    return f"{MPD}/layer/{int(layer)}"


def mpd_layers(metrics: Mapping[str, Any]) -> dict[int, float]:
    """{layer: MPD} of every per-layer MPD key among `metrics`."""
    out = {}
    for key, value in metrics.items():
        head, _, layer = key.rpartition("/")
        if head == f"{MPD}/layer" and layer.isdigit() and isinstance(value, (int, float)):
            out[int(layer)] = float(value)
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class ScoreKey:
    """A parsed score key (see the module docstring)."""

    ability: str
    task: str
    phase: str | None = None
    lang: str | None = None
    metric: str | None = None

    @property
    def headline(self) -> bool:
        """The benchmark's headline score (overall or per language), not one of its other metrics."""
        return self.metric is None


def parse(key: str) -> ScoreKey | None:
    """The parts of a score key, or None for any other key (averages, not_computed, standard errors, train/...)."""
    if key.endswith(STDERR_SUFFIX):
        return None
    head, sep, metric = key.partition(METRIC_SEP)
    parts = head.split("/")
    phase = None
    if parts and parts[0] in PHASES:
        phase, parts = parts[0], parts[1:]
    if len(parts) not in (2, 3) or parts[0] not in ABILITIES:
        return None
    if sep and not metric:
        return None
    return ScoreKey(
        ability=parts[0], task=parts[1], phase=phase, lang=parts[2] if len(parts) == 3 else None, metric=metric or None
    )


def is_score(key: str) -> bool:
    """Scores compare across cells (phase scores, averages, deltas, DES, MPD); reports and statistics
    (standard errors included) do not."""
    return key.startswith(SCORE_PREFIXES) and not key.endswith((STDERR_SUFFIX, *CI_SUFFIXES))


def tasks(keys: Iterable[str], ability: str) -> list[str]:
    """Benchmarks of one ability with a headline score among `keys`, in first-seen order."""
    seen: dict[str, None] = {}
    for k in keys:
        p = parse(k)
        if p and p.ability == ability and p.lang is None and p.headline:
            seen[p.task] = None
    return list(seen)


def languages(keys: Iterable[str], task: str, ability: str = "la") -> list[str]:
    """Languages with a headline score of `task` among `keys`, in first-seen order."""
    seen: dict[str, None] = {}
    for k in keys:
        p = parse(k)
        if p and p.ability == ability and p.task == task and p.lang and p.headline:
            seen[p.lang] = None
    return list(seen)


def metrics_of(keys: Iterable[str], task: str, ability: str) -> list[str]:
    """Names of the non-headline metrics recorded for `task` (e.g. ['em'] for XQuAD)."""
    seen: dict[str, None] = {}
    for k in keys:
        p = parse(k)
        if p and p.ability == ability and p.task == task and p.metric:
            seen[p.metric] = None
    return list(seen)


def language_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """(phase, ability, task, language, score) rows of every per-language headline score."""
    rows = []
    for key, value in sorted(metrics.items()):
        p = parse(key)
        if p and p.lang and p.headline and isinstance(value, (int, float)):
            rows.append([p.phase or "", p.ability, p.task, p.lang, value])
    return rows
