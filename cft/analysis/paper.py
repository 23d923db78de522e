"""How the paper lays out its tables (arXiv 2410.16006), written once: the analysis orders rows and
columns by these, and names what an average covers against the paper's.

Benchmarks and strategies the paper does not have come after the paper's, in the order the runs
give them (the benchmarks an average covers, else first seen). Languages follow the run's own eval
config (`eval.tasks.<task>.languages`, where conf/eval lists each benchmark's languages in the order
of the paper's Tables B3 to B5), else alphabetical: the language lists have one owner, conf/eval.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cft.errors import CftError

# Tables 3 and C6: the Phase-1 model first, then full fine-tuning and the strategies against forgetting.
STRATEGY_ORDER = ("full", "lf_h1", "lf_h2", "gr5", "gr10", "er10", "lora", "cofitune", "spectrum")
PHASE1_ROW = "Phase 1"  # the reference row of the strategy comparison (the model before Phase 2)

# The paper's suites: their `averages` (conf/eval/ta.yaml and la.yaml) are the benchmarks of the paper's
# averages (section 4 and Tables 1 to 3), in its column order. The config owns them; this reads them.
PAPER_SUITES = ("ta", "la")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@functools.cache
def averages(conf_dir: Path = CONF_DIR) -> dict[str, tuple[str, ...]]:
    """ability -> the benchmarks of the paper's average of it, from `averages` of the paper's suites."""
    import yaml

    out: dict[str, tuple[str, ...]] = {}
    for suite in PAPER_SUITES:
        path = Path(conf_dir) / "eval" / f"{suite}.yaml"
        try:
            found = (yaml.safe_load(path.read_text()) or {}).get("averages") or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CftError(f"{path}: cannot read the paper's averages ({exc})") from exc
        out.update({ability: tuple(tasks) for ability, tasks in found.items()})
    return out


def columns(ability: str) -> tuple[str, ...]:
    """Benchmark columns of an ability's tables in the paper's order (English parts follow the LA benchmarks)."""
    return averages().get("la" if ability == "en" else ability, ())


ABILITY_NAMES = {"ta": "TA", "la": "LA", "en": "English"}
# Column suffixes and names of the two phases (cft.run.keys.PHASES).
PHASE_SHORT = {"phase1": "P1", "phase2": "P2"}
PHASE_NAMES = {"phase1": "Phase 1", "phase2": "Phase 2"}


def order(items: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """`items` with those in `preferred` first, in its order, then the rest as given."""
    items = list(dict.fromkeys(items))
    return [p for p in preferred if p in items] + [i for i in items if i not in preferred]


def strategy_key(name: str) -> tuple[int, str]:
    """Sort key of a strategy: the paper's order, then others alphabetically."""
    return (STRATEGY_ORDER.index(name), "") if name in STRATEGY_ORDER else (len(STRATEGY_ORDER), name)


def config_languages(config: Mapping[str, Any], task: str) -> list[str]:
    """The language list of `task` in a run's resolved config: the node eval.tasks.<task>, or a node
    whose `tasks` list holds it (the demo suite: one node for several tasks); [] if none lists it."""
    nodes = (config.get("eval") or {}).get("tasks") or {}
    candidates = [nodes.get(task)] + [n for n in nodes.values() if isinstance(n, Mapping) and task in (n.get("tasks") or ())]
    for node in candidates:
        languages = node.get("languages") if isinstance(node, Mapping) else None
        if isinstance(languages, (list, tuple)):
            return [str(lang) for lang in languages]
    return []


def language_order(task: str, languages: Iterable[str], configs: Iterable[Mapping[str, Any]] = ()) -> list[str]:
    """The columns of a per-language table (Tables B3 to B5): the order of the run config's language
    list, else alphabetical. Only the languages given (those with a score) are returned."""
    languages = sorted(set(languages))
    for config in configs:
        listed = config_languages(config, task)
        if listed:
            return order(languages, listed)
    return languages
