"""mode=cofitune: CoFiTune's coarse tree search (arXiv 2404.10306), scored from a sweep of
experiment=cofitune_search. Each candidate (a layer block and a module set, trained in Phase 2 with
everything else frozen) is scored on speciality (the Phase-2 LA average) and versatility (the TA
average), and on their mean, CoFiTune's balance of the two. The levels are walked in order:

    blocks   the quarter blocks of the layers (FFN trained)      -> the best block
    widen    that block and its "plus" widenings (FFN trained)   -> the best range
    modules  that range with FFN, attention or both trained      -> the final choice

The candidates of each level are read from the experiment's own config (conf/experiment/
cofitune_search.yaml: `search.blocks`, `search.module_sets`, `search.widenings`), so the sweep and
the analysis cannot disagree. A level with a candidate not yet finished stops the walk, and the
analysis prints the command that runs it; with every level done it names the final choice.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cft.analysis.config import AnalyzeConfig
from cft.analysis.publish import AnalysisResult, Tracking, publish
from cft.analysis.tables import Stat, Table, stat
from cft.errors import CftError
from cft.run import keys, layout

LEVELS = ("blocks", "widen", "modules")
EXPERIMENT = "cofitune_search"


def level_candidates(search: dict[str, Any], level: str, block: str | None) -> list[tuple[str, str]]:
    """(block, module set) of every candidate of `level`, from the experiment's `search` node."""
    from omegaconf import OmegaConf

    node = OmegaConf.create({"search": {**search, "level": level, "block": block}})
    blocks = str(OmegaConf.select(node, f"search.blocks.{level}")).split(",")
    module_sets = str(OmegaConf.select(node, f"search.module_sets.{level}")).split(",")
    blocks = [b for b in dict.fromkeys(b.strip() for b in blocks) if b and b != "none"]
    return [(b, m.strip()) for b in blocks for m in module_sets]


def search_node(conf_dir: Path) -> dict[str, Any]:
    """The `search` node of conf/experiment/cofitune_search.yaml (interpolations kept)."""
    from omegaconf import OmegaConf

    path = conf_dir / "experiment" / f"{EXPERIMENT}.yaml"
    if not path.exists():
        raise CftError(f"mode=cofitune reads the search's candidates from {path}, which does not exist")
    return OmegaConf.to_container(OmegaConf.load(path)["search"], resolve=False)  # type: ignore[return-value]


@dataclass
class Candidate:
    block: str
    module_set: str
    layers: str  # the trained layers, as the run recorded them
    speciality: Stat | None
    versatility: Stat | None

    @property
    def score(self) -> Stat | None:
        if self.speciality is None or self.versatility is None:
            return None
        return Stat((self.speciality.mean + self.versatility.mean) / 2, None, self.speciality.n)


def candidates_of(runs, *, speciality: str, versatility: str) -> tuple[dict[tuple[str, str], Candidate], dict[str, Stat | None]]:
    """Finished cofitune runs by (block, module set), their scores averaged over seeds; and the Phase-1 scores."""
    groups: dict[tuple[str, str], list] = {}
    for run in runs:
        strategy = run.config.get("strategy") or {}
        if not run.finished or not strategy.get("block") or not strategy.get("module_set"):
            continue
        groups.setdefault((strategy["block"], strategy["module_set"]), []).append(run)
    out = {}
    for (block, module_set), members in groups.items():
        out[(block, module_set)] = Candidate(
            block,
            module_set,
            str(members[0].metrics.get(keys.strategy("layers"), "")),
            stat([r.metrics.get(keys.average(speciality, phase="phase2")) for r in members]),
            stat([r.metrics.get(keys.average(versatility, phase="phase2")) for r in members]),
        )
    by_seed = {r.seed: r for m in groups.values() for r in m}  # one Phase-1 model per seed, shared by the candidates
    phase1 = {
        "speciality": stat([r.metrics.get(keys.average(speciality, phase="phase1")) for r in by_seed.values()]),
        "versatility": stat([r.metrics.get(keys.average(versatility, phase="phase1")) for r in by_seed.values()]),
    }
    return out, phase1


def best(cands: list[Candidate]) -> Candidate:
    """The highest mean of speciality and versatility; a tie goes to the earlier (narrower) candidate."""
    return max(reversed(cands), key=lambda c: c.score.mean if c.score else float("-inf"))


def command(sweep_id: str, level: str, block: str | None, experiment: str = EXPERIMENT) -> str:
    args = ["python", "train.py", "-m", f"experiment={experiment}", f"sweep_id={sweep_id}"]
    if level != LEVELS[0]:
        args += [f"search.level={level}", f"search.block={block}"]
    return " ".join(shlex.quote(a) for a in args) + "   # plus the model/data/train overrides of the first level"


def walk(done: dict[tuple[str, str], Candidate], search: dict[str, Any], sweep_id: str, experiment: str = EXPERIMENT):
    """The levels reached: [(level, its candidates, the chosen one or None)], the next command or None, the final choice."""
    levels, block = [], None
    for level in LEVELS:
        wanted = level_candidates(search, level, block)
        found = [done[c] for c in wanted if c in done and done[c].score is not None]
        if len(found) < len(wanted):
            levels.append((level, wanted, found, None))
            return levels, command(sweep_id, level, block, experiment), None
        chosen = best(found)
        levels.append((level, wanted, found, chosen))
        block = chosen.block
    return levels, None, levels[-1][3]


def level_table(level: str, found: list[Candidate], chosen: Candidate | None, phase1: dict[str, Stat | None]) -> Table:
    rows = [
        *([{"candidate": "Phase 1 (reference)", "modules": "", "layers": ""}] if phase1["speciality"] else []),
        *[
            {"candidate": c.block + (" (chosen)" if c is chosen else ""), "modules": c.module_set, "layers": c.layers}
            for c in found
        ],
    ]
    cells = [[c.speciality, c.versatility, c.score] for c in found]
    if phase1["speciality"]:
        p1 = Stat((phase1["speciality"].mean + phase1["versatility"].mean) / 2, None, 1) if phase1["versatility"] else None
        cells.insert(0, [phase1["speciality"], phase1["versatility"], p1])
    return Table(
        name=f"cofitune_{level}",
        title=f"CoFiTune search, level {LEVELS.index(level) + 1} ({level})",
        index_cols=["candidate", "modules", "layers"],
        index=rows,
        columns=["Speciality (LA)", "Versatility (TA)", "Mean"],
        cells=cells,
        reference_rows={0} if phase1["speciality"] else set(),
        footnotes=["Mean: the mean of speciality and versatility, by which a level's candidate is chosen (ties: the narrower)."],
    )


def cofitune_report(
    sweep_id: str,
    *,
    output_root: str | Path,
    conf_dir: Path,
    speciality: str = "la",
    versatility: str = "ta",
    out_dir: str | Path | None = None,
    tracking: Tracking | None = None,
) -> AnalysisResult:
    from cft.analysis.runs import collect_local

    sweep = collect_local(output_root, sweep_id)
    done, phase1 = candidates_of(sweep.runs, speciality=speciality, versatility=versatility)
    if not done:
        raise CftError(
            f"sweep {sweep_id} has no finished run of experiment={EXPERIMENT} (strategy=cofitune with strategy.block "
            f"and strategy.module_set); run: {command(sweep_id, LEVELS[0], None)}"
        )
    # The experiment the sweep ran (e.g. cofitune_search_demo), for the next level's command.
    experiment = next((r.choices.get("experiment") for r in sweep.runs if r.choices.get("experiment")), EXPERIMENT)
    levels, next_command, final = walk(done, search_node(conf_dir), sweep_id, experiment)
    tables = [level_table(level, found, chosen, phase1) for level, _, found, chosen in levels if found]
    lines = []
    for level, wanted, found, chosen in levels:
        if chosen is None:
            missing = [f"{b}/{m}" for b, m in wanted if (b, m) not in {(c.block, c.module_set) for c in found}]
            lines.append(f"Level {level}: {len(found)} of {len(wanted)} candidates finished (missing: {', '.join(missing)}).")
        else:
            lines.append(f"Level {level}: chosen {chosen.block} / {chosen.module_set} (layers {chosen.layers}).")
    if final is not None:
        lines.append(
            f"Final choice: strategy.block={final.block} strategy.module_set={final.module_set} (layers {final.layers}); "
            f"train it with the fine level (and the search's model, data and train settings): python train.py "
            f"strategy=cofitune strategy.block={final.block} strategy.module_set={final.module_set}"
        )
    else:
        lines.append(f"Next: {next_command}")
    result = publish(
        Path(out_dir) if out_dir else layout.analysis_dir(output_root, sweep_id) / "cofitune",
        title=f"CoFiTune coarse search: {sweep_id}",
        tables=tables,
        problems=sweep.problems,
        sections=[*lines, ""],
        tracking=tracking,
        run_name="cofitune",
        group=sweep_id,
        config={"sweep_id": sweep_id, "speciality": speciality, "versatility": versatility},
        summary={"cofitune/final": f"{final.block}/{final.module_set}" if final else "", "cofitune/levels_done": len(tables)},
    )
    for table in tables:
        print(table.to_markdown())
    for line in lines:
        print(line)
    print(f"Report: {result.report}")
    return result


def run(cfg: AnalyzeConfig, *, conf_dir: Path | None = None) -> AnalysisResult:
    from cft.analysis.sweep import latest_sweep, tracking_of

    sweep_id = cfg.sweep_id or latest_sweep(cfg.paths.output_root)
    if not sweep_id:
        raise CftError(f"mode=cofitune needs sweep_id=<the search's sweep> (none found under {cfg.paths.output_root})")
    options = cfg.cofitune
    return cofitune_report(
        sweep_id,
        output_root=cfg.paths.output_root,
        conf_dir=conf_dir or Path(__file__).resolve().parents[2] / "conf",
        speciality=options.speciality,
        versatility=options.versatility,
        out_dir=cfg.out_dir,
        tracking=tracking_of(cfg),
    )
