"""The cost of each Phase-2 strategy: time per optimizer step, time of the whole Phase 2 and peak
memory, each relative to full fine-tuning, on the same data and the same Phase-1 model.

    python bench/strategy_cost.py                  # demo shape (whole Phase 2, 3 rounds) and 100m shape (a few steps)
    python bench/strategy_cost.py --shapes demo    # one shape
    python bench/strategy_cost.py --smoke          # seconds

Every strategy is built from its real config (conf/strategy/*.yaml composed with Hydra, as train.py
does) and trained through the real loop (cft.training.loop.fit) with its hooks, after its own
`phase2_data` and `prepare` hooks. The base and the Phase-1 checkpoints they need (lf_h2's change
table, GR's generator, CoFiTune's importance) are made here in code: a model built from config and
saved (base), then fine-tuned a little on the demo's English Phase-1 data (Phase 1). Artifacts the
strategies cache (GR's generated set, lf_h2's change table, CoFiTune's importance) are built in the
first round and reused after, as in a sweep; their set-up time is reported apart from Phase 2.

Time: in every round each strategy runs between two runs of full (full, s1, full, s2, ..., full),
in an order that rotates between rounds; a strategy's step time is the median of its steps after
the first, and its ratio to full is taken against the mean of the two full runs beside it (seconds
apart, so a change of the machine's load cancels out), then summarised over rounds (median, min,
max). The demo shape trains a whole Phase 2
(one epoch of the demo's Phase-2 data), so replay strategies train on their extra examples and
their Phase-2 time is measured; the 100m shape trains a few steps per strategy, and its Phase-2
time is derived: wall time as the median step time x steps of one epoch, CPU time as the CPU time
per real token of the timed steps x the tokens of one epoch (its few steps draw other batches than
full's when replay data changes the order, so per token is the fair comparison there).

Memory: one extra, untimed optimizer step per strategy under torch.profiler(profile_memory=True):
the peak of tensor memory during the first step (activations, gradients, optimizer states, made
during that step) plus the model's parameters, which exist before it. On a GPU,
torch.cuda.max_memory_allocated gives the same. It does not depend on the machine's load.

Profile: one step of the slowest strategy per shape (and of --profile's: full, to compare, and
lf_h2, whose gradient masks are the one extra pass a strategy adds; --smoke: the slowest only) under
torch.profiler; the top-ops tables are written beside the JSON (--profile-dir).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

log = common.setup_logging()

# name -> Hydra overrides of the strategy group (the same configs train.py composes)
STRATEGIES: dict[str, list[str]] = {
    "full": ["strategy=full"],
    "lf_h1": ["strategy=lf_h1"],
    "lf_h2": ["strategy=lf_h2"],  # the paper's per-head selection (gradient rows of frozen head slices zeroed)
    "lf_h2_layer": ["strategy=lf_h2", "strategy.selection=layer"],  # whole q/k/v matrices frozen (requires_grad=False)
    "gr5": ["strategy=gr5"],
    "gr10": ["strategy=gr10"],
    "er10": ["strategy=er10"],
    "lora": ["strategy=lora"],
    # LoRA without its dropout: peft draws one dropout mask per adapter, which the profile shows is a
    # large share of a LoRA step on the CPU (not one of the study's strategies; for the comparison)
    "lora_dropout0": ["strategy=lora", "strategy.dropout=0"],
    "cofitune": ["strategy=cofitune"],
    "spectrum": ["strategy=spectrum"],
}
FREEZING = ("lf_h1", "lf_h2", "lf_h2_layer", "cofitune", "spectrum")  # goal: at most 1.0x full per step
REPLAY = ("gr5", "gr10", "er10")  # goal: Phase 2 in proportion to their extra data
# The 100m shape's Phase-1 model is trained for 2 steps only: short generations, kept even when
# empty, so that GR's extra data exists (its Phase-2 steps are what is measured there).
GR_LARGE = ["strategy.max_new_tokens=32", "strategy.keep_empty=true"]


def compose_strategy(overrides: list[str]):
    """The strategy object train.py would build for these overrides (a fresh one on every call)."""
    from hydra.utils import instantiate

    cfg = _composed(tuple(overrides))
    return instantiate(cfg.strategy), cfg


@functools.cache
def _composed(overrides: tuple[str, ...]):
    """The composed config of these overrides, read-only. Composing gives the same config every time and
    costs 0.1 s to 0.2 s of CPU (Hydra reads and merges the conf/ files); a strategy is prepared for each of
    its runs, its memory pass and its profile, so it is composed once."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cft.config.hydra import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(common.REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    OmegaConf.set_readonly(cfg, True)  # shared between calls: nobody may change it
    return cfg


def load_data(node):
    from omegaconf import OmegaConf

    from cft.data.sources import load_config

    return load_config(OmegaConf.to_container(node, resolve=True))


class Setup:
    """One shape's base and Phase-1 checkpoints, data and settings, shared by every strategy."""

    def __init__(self, name: str, args, workdir: Path):
        import torch

        from cft.models import load_model, save_built_model
        from cft.training.loop import TrainSettings, fit

        large = name in ("100m", "1b")
        self.name, self.workdir, self.large = name, workdir, large
        self.arch = common.shape(name, 512)
        self.lf_k = max(1, round(self.arch["num_hidden_layers"] * 10 / 32))  # the paper's 10 of 32 layers
        self.batch = args.large_batch if large else args.batch
        self.steps = args.large_steps if large else None  # None: a whole epoch (the demo shape)
        self.rounds = args.large_rounds if large else args.rounds
        self.overrides = [
            f"model.lf_k={self.lf_k}",
            f"phase2_data.demo.per_task_language={args.large_per_task_language if large else args.per_task_language}",
        ]
        _, cfg = compose_strategy(["strategy=full", *self.overrides])
        self.data2 = load_data(cfg.phase2_data)
        self.counterpart_node = cfg.phase2_data.counterpart
        data1 = load_data(cfg.phase1_data)
        self.base = workdir / "base"
        self.phase1 = workdir / "phase1"
        self.cache = workdir / "cache"
        save_built_model(self.base, self.arch, seed=0)
        model, tokenizer = load_model(str(self.base), dtype="fp32")
        self.tokenizer = tokenizer
        p1 = TrainSettings(
            lr=2e-3, max_steps=args.phase1_steps if not large else 2, global_batch_size=16, micro_batch_size=16, log_every=10**9
        )
        log.info("%s: Phase 1 (%s steps) to make the Phase-1 checkpoint", name, p1.max_steps)
        model, _, _ = fit(model, tokenizer, data1.examples, settings=p1, max_length=args.max_length, phase="bench_phase1")
        model.save_pretrained(self.phase1)
        tokenizer.save_pretrained(self.phase1)
        del model
        gc.collect()
        self.max_length = args.max_length
        self.lr = 2e-4
        self.device = args.device
        self.torch = torch

    def context(self, strategy_name: str):
        from cft.models import load_model
        from cft.strategies.base import StrategyContext

        counterpart = self.counterpart_node
        return StrategyContext(
            base_ref=str(self.base),
            phase1_dir=self.phase1,
            tokenizer=self.tokenizer,
            cache_dir=self.cache,
            run_dir=self.workdir / "runs" / strategy_name,
            seed=0,
            phase2_size=len(self.data2),
            counterpart=lambda: load_data(counterpart).examples,
            counterpart_spec={"bench": self.name},
            phase1_key=f"bench-{self.name}",
            load_phase1=lambda: load_model(str(self.phase1), dtype="fp32")[0].to(self.device),
            max_length=self.max_length,
        )

    def settings(self, max_steps: int | None, log_every: int = 1):
        from cft.training.loop import TrainSettings

        return TrainSettings(
            lr=self.lr,
            epochs=1,
            max_steps=max_steps,
            global_batch_size=self.batch,
            micro_batch_size=self.batch,
            warmup_steps=0,
            scheduler="constant",
            precision="no",
            log_every=log_every,
            seed=0,
        )

    def prepared(self, strategy_name: str):
        """(strategy, model on the device, Phase-2 examples, set-up seconds) after phase2_data and prepare."""
        from cft.models import load_model

        strategy, _ = compose_strategy([*STRATEGIES[strategy_name], *self.overrides, *self.strategy_overrides(strategy_name)])
        model, _ = load_model(str(self.phase1), dtype="fp32")
        model = model.to(self.device)
        ctx = self.context(strategy_name)
        start = time.perf_counter()
        examples = strategy.phase2_data(list(self.data2.examples), ctx)
        model = strategy.prepare(model, ctx)
        return strategy, model, examples, time.perf_counter() - start

    def strategy_overrides(self, strategy_name: str) -> list[str]:
        # On the large shape on a CPU, keep the one-time set-up short: fewer importance examples,
        # shorter generations. Phase-2 steps are not affected.
        if not self.large:
            return []
        return {
            "cofitune": ["strategy.importance_examples=16"],
            "gr5": ["strategy.max_new_tokens=32"],
            "gr10": ["strategy.max_new_tokens=32"],
        }.get(strategy_name, [])


def _fit(setup: Setup, model, examples, strategy, settings, log_fn=None):
    from cft.training.loop import fit

    with contextlib.redirect_stdout(sys.stderr):
        return fit(
            model,
            setup.tokenizer,
            examples,
            settings=settings,
            max_length=setup.max_length,
            hooks=strategy,
            phase="phase2",
            log_fn=log_fn,
        )


def time_phase2(setup: Setup, name: str) -> dict:
    """Prepare the strategy and train Phase 2; per-step times from the loop's per-step log call."""
    from cft.data.format import tokenize_examples

    strategy, model, examples, setup_seconds = setup.prepared(name)
    clock = [time.perf_counter()]
    cpu = [time.process_time()]

    def tick(_):
        clock.append(time.perf_counter())
        cpu.append(time.process_time())

    _, stats, tok = _fit(setup, model, examples, strategy, setup.settings(setup.steps), tick)
    steps = [b - a for a, b in zip(clock[1:], clock[2:])]  # the first step (optimizer state, warm-up) left out
    cpu_steps = [b - a for a, b in zip(cpu[1:], cpu[2:])]
    report = strategy.report()
    out = {
        "step_seconds": common.median(steps),
        # CPU time of this process per step: the work done, which other processes' load hardly changes
        # (with one torch thread; on a GPU, wall time is the figure)
        "step_cpu_seconds": common.median(cpu_steps),
        "phase2_seconds": stats.seconds,
        "steps": stats.steps,
        "examples": len(examples),
        "tokens": stats.tokens,
        "setup_seconds": setup_seconds,
        "trainable_share": report.get("trainable_share"),
        "replay_examples": report.get("replay_examples"),
        "final_loss": stats.final_loss,
    }
    # Phase 2 as its steps at the median step time (plus the first step): robust to a load spike in one step
    out["phase2_seconds_from_steps"] = (clock[1] - clock[0] if len(clock) > 1 else 0.0) + out["step_seconds"] * max(
        stats.steps - 1, 0
    )
    # The whole Phase 2's CPU time: CPU time is hardly moved by other processes, so the sum needs no median
    out["phase2_cpu_seconds_from_steps"] = cpu[-1] - cpu[0]
    tokenized = tokenize_examples(setup.tokenizer, examples, setup.max_length)[0]
    lengths = [len(t["input_ids"]) for t in tokenized]
    out["tokens_per_epoch"] = sum(lengths)
    # Real tokens of the timed steps (the loop's own batch order): CPU time per token compares strategies
    # whose few steps drew different batches (replay data changes the order).
    batches = common.loop_batches(len(lengths), setup.batch, stats.steps, first=1)
    timed_tokens = sum(lengths[i] for b in batches for i in b)
    out["cpu_seconds_per_token"] = sum(cpu_steps) / timed_tokens if timed_tokens else float("nan")
    if setup.steps is not None:  # a few steps only: an epoch's worth derived from them
        epoch_steps = len(examples) // setup.batch
        out["phase2_steps_per_epoch"] = epoch_steps
        out["phase2_seconds_derived"] = out["step_seconds"] * epoch_steps
        out["phase2_cpu_seconds_derived"] = out["cpu_seconds_per_token"] * out["tokens_per_epoch"]
    del model, strategy
    gc.collect()
    return out


def memory_pass(setup: Setup, name: str) -> dict:
    """Peak tensor memory of one optimizer step (parameters + what the step allocates)."""
    import torch

    strategy, model, _, _ = setup.prepared(name)
    # The same first batch for every strategy (the Phase-2 data without replay): a step's memory
    # depends on its batch, and replay adds steps, not memory per step.
    examples = list(setup.data2.examples)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if setup.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        _fit(setup, model, examples, strategy, setup.settings(1, 10**9))
        torch.cuda.synchronize()
        step_peak = torch.cuda.max_memory_allocated() - start
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            _fit(setup, model, examples, strategy, setup.settings(1, 10**9))
        events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
        running = step_peak = 0
        for e in events:
            running += e.nbytes()
            step_peak = max(step_peak, running)
    del model, strategy
    gc.collect()
    return {"params_mb": param_bytes / 2**20, "step_peak_mb": step_peak / 2**20, "peak_mb": (param_bytes + step_peak) / 2**20}


def profile_step(setup: Setup, name: str, out_dir: Path | None) -> dict:
    """torch.profiler over the third optimizer step of `name`; the top-ops table (self CPU time) is saved."""
    from torch.profiler import ProfilerActivity, profile, schedule

    strategy, model, examples, _ = setup.prepared(name)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.startswith("cuda") else [])
    with profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=1), record_shapes=True) as prof:
        _fit(setup, model, examples, strategy, setup.settings(3), lambda _: prof.step())
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=30)
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    total = sum(e.self_cpu_time_total for e in averages) or 1
    out = {
        "strategy": name,
        "step": 3,
        "top_ops_self_cpu": [
            {"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total}
            for e in top
        ],
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"strategy_cost_profile_{setup.name}_{name}.txt"
        path.write_text(f"# torch.profiler, one optimizer step of {name} on the {setup.name} shape\n{table}\n", encoding="utf-8")
        out["table_file"] = str(path.relative_to(common.REPO) if path.is_relative_to(common.REPO) else path)
    del model, strategy
    gc.collect()
    return out


NOISE = 0.03  # step-time ratios within 3% of a limit are not told apart on this shared machine


def verdict(ratios: dict, limit: float) -> str:
    """'met' when the median ratio is at most `limit`; 'within noise' when it is at most limit + NOISE
    or some round met the limit; else 'missed'."""
    if ratios["median"] <= limit:
        return "met"
    return "within noise" if ratios["median"] <= limit + NOISE or ratios["min"] <= limit else "missed"


def _timed(setup: Setup, shape: str, r: int, s: str, runs: dict) -> dict:
    res = time_phase2(setup, s)
    runs[s].append(res)
    log.info(
        "%s round %d %s: %.1f ms/step, Phase 2 %.2fs (%d steps), set-up %.2fs",
        shape,
        r,
        s,
        1000 * res["step_seconds"],
        res["phase2_seconds"],
        res["steps"],
        res["setup_seconds"],
    )
    return res


def measure_shape(name: str, args, workdir: Path) -> dict:
    setup = Setup(name, args, workdir / name)
    # Every fit ends in a full garbage collection (accelerate's free_memory), as does every strategy's run
    # here (to free its model before the next), each of them 0.15 s spent walking the 220,000 objects of the
    # modules imported by now (the Setup trained once). Frozen, they are left out; what a run makes, and
    # its model, is still collected. Outside the timed steps, so only the bench's own time changes.
    gc.collect()
    gc.freeze()
    names = [s for s in args.strategies if s in STRATEGIES]
    runs: dict[str, list[dict]] = {s: [] for s in names}
    ratios: dict[str, dict[str, list[float]]] = {
        s: {k: [] for k in ("step", "step_cpu", "token_cpu", "phase2", "phase2_cpu", "phase2_wall")} for s in names
    }
    p2 = "phase2_seconds_derived" if setup.steps is not None else "phase2_seconds_from_steps"
    p2_cpu = "phase2_cpu_seconds_derived" if setup.steps is not None else "phase2_cpu_seconds_from_steps"
    others = [s for s in names if s != "full"]
    for r in range(setup.rounds):
        # full, s1, full, s2, ..., full: each strategy is compared with the full runs just before and
        # after it (seconds apart), so a change of the machine's load within a round cancels out.
        order = others[r % len(others) :] + others[: r % len(others)]
        previous = _timed(setup, name, r, "full", runs)
        for s in order:
            res = _timed(setup, name, r, s, runs)
            after = _timed(setup, name, r, "full", runs)
            for key, field in (
                ("step", "step_seconds"),
                ("step_cpu", "step_cpu_seconds"),
                ("token_cpu", "cpu_seconds_per_token"),
                ("phase2", p2),
                ("phase2_cpu", p2_cpu),
                ("phase2_wall", "phase2_seconds"),
            ):
                ratios[s][key].append(res[field] / ((previous[field] + after[field]) / 2))
            previous = after
        for key in ratios["full"]:
            ratios["full"][key].append(1.0)
    memory = {s: memory_pass(setup, s) for s in names}
    for s in names:
        log.info("%s memory %s: %.1f MB peak (%.1f MB parameters)", name, s, memory[s]["peak_mb"], memory[s]["params_mb"])
    full_runs = runs["full"]
    strategies = {}
    for s in names:
        last = runs[s][-1]
        entry = {
            "step_ms": common.spread(1000 * x["step_seconds"] for x in runs[s]),
            "step_vs_full": common.spread(ratios[s]["step"]),
            "step_cpu_ms": common.spread(1000 * x["step_cpu_seconds"] for x in runs[s]),
            "step_cpu_vs_full": common.spread(ratios[s]["step_cpu"]),
            "token_cpu_vs_full": common.spread(ratios[s]["token_cpu"]),
            "phase2_seconds": common.spread(x[p2] for x in runs[s]),
            "phase2_vs_full": common.spread(ratios[s]["phase2"]),
            "phase2_cpu_vs_full": common.spread(ratios[s]["phase2_cpu"]),
            # the demo shape: the loop's own wall time of Phase 2 too (includes any load spike)
            "phase2_wall_seconds": common.spread(x["phase2_seconds"] for x in runs[s]) if setup.steps is None else None,
            "phase2_wall_vs_full": common.spread(ratios[s]["phase2_wall"]) if setup.steps is None else None,
            "phase2_measured": setup.steps is None,
            "steps": last.get("phase2_steps_per_epoch", last["steps"]),
            "examples": last["examples"],
            "examples_vs_full": last["examples"] / full_runs[-1]["examples"],
            "replay_examples": last["replay_examples"],
            "setup_seconds_first": runs[s][0]["setup_seconds"],
            "setup_seconds_cached": common.spread(x["setup_seconds"] for x in runs[s][1:]) if len(runs[s]) > 1 else None,
            "trainable_share": last["trainable_share"],
            "memory": memory[s],
            "memory_vs_full": memory[s]["peak_mb"] / memory["full"]["peak_mb"],
        }
        entry["tokens_vs_full"] = last["tokens_per_epoch"] / full_runs[-1]["tokens_per_epoch"]
        strategies[s] = entry
    # On the CPU with one thread, CPU time per step is the cost (other processes' load hardly moves it);
    # on a GPU, or with several threads (whose spin-waits count as CPU time), wall time is.
    basis = "cpu" if setup.device == "cpu" and setup.torch.get_num_threads() == 1 else "wall"
    step_key, p2_key = ("step_cpu_vs_full", "phase2_cpu_vs_full") if basis == "cpu" else ("step_vs_full", "phase2_vs_full")
    goals = {
        "basis": basis,
        "freezing_step_at_most_full": {s: verdict(strategies[s][step_key], 1.0) for s in FREEZING if s in strategies},
        "lora_step_under_full": {s: verdict(strategies[s][step_key], 0.9) for s in ("lora", "lora_dropout0") if s in strategies},
        # a replay strategy's Phase 2 should cost what its extra tokens cost (the same time per token as
        # full), within 10%
        "replay_in_proportion": {
            s: {
                "phase2_vs_full": strategies[s][p2_key]["median"],
                "tokens_vs_full": strategies[s]["tokens_vs_full"],
                "examples_vs_full": strategies[s]["examples_vs_full"],
                "in_proportion": abs(strategies[s][p2_key]["median"] / strategies[s]["tokens_vs_full"] - 1) <= 0.1,
            }
            for s in REPLAY
            if s in strategies
        },
    }
    slowest = max(names, key=lambda s: strategies[s][step_key]["median"])
    profile_dir = Path(args.profile_dir) if args.profile_dir else None
    wanted = dict.fromkeys([slowest, *[p for p in args.profile.split(",") if p]])
    profiles = {s: profile_step(setup, s, profile_dir) for s in wanted if s in names}
    gc.unfreeze()  # this shape's Setup may be collected once the next shape's is made
    return {
        "architecture": setup.arch,
        "lf_k": setup.lf_k,
        "batch": setup.batch,
        "rounds": setup.rounds,
        "steps_per_strategy": setup.steps or "one epoch",
        "phase2_examples": len(setup.data2),
        "max_length": setup.max_length,
        "strategies": strategies,
        "goals": goals,
        "slowest": slowest,
        "profiles": profiles,
    }


def main() -> None:
    common.claim_stdout()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="smallest setting: tiny shape, 1 round, a few steps")
    p.add_argument("--shapes", default="demo,100m")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--rounds", type=int, default=5, help="rounds of the demo shape")
    p.add_argument("--batch", type=int, default=16, help="global batch (= micro-batch) of the demo shape (the demo's)")
    p.add_argument("--per-task-language", type=int, default=40, help="demo Phase-2 examples per task and language (the demo's)")
    p.add_argument(
        "--phase1-steps",
        type=int,
        default=171,
        help="Phase-1 steps making the demo-shape Phase-1 checkpoint (the demo's 3 epochs)",
    )
    p.add_argument("--max-length", type=int, default=128, help="the demo's max_length")
    p.add_argument("--large-batch", type=int, default=4)
    p.add_argument(
        "--large-steps", type=int, default=3, help="Phase-2 steps per strategy on the 100m shape (the first is not timed)"
    )
    p.add_argument("--large-rounds", type=int, default=2)
    p.add_argument("--large-per-task-language", type=int, default=10)
    p.add_argument(
        "--profile",
        default="full,lf_h2",
        help="strategies profiled besides the slowest (comma-separated; '' for none; with --smoke: none)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=None, help="keep the checkpoints and cache here (default: a temporary folder)")
    p.add_argument(
        "--profile-dir",
        default=None,
        help="where the profile tables go (default: bench/results; with --smoke: none unless given)",
    )
    common.add_threads_arg(p)
    args = p.parse_args()
    threads = common.apply_threads(args.threads)
    if args.smoke:
        args.shapes, args.rounds, args.per_task_language, args.phase1_steps = "tiny", 1, 4, 3
        args.profile = ""  # one profile (the slowest strategy's) shows the profile works; each costs a whole run
    elif args.profile_dir is None:
        args.profile_dir = str(common.REPO / "bench" / "results")
    args.strategies = [s for s in args.strategies.split(",") if s]
    unknown = set(args.strategies) - set(STRATEGIES)
    if unknown or "full" not in args.strategies:
        raise SystemExit(f"--strategies must include full and name only {', '.join(STRATEGIES)}; got unknown {sorted(unknown)}")

    import transformers

    transformers.logging.set_verbosity_error()
    shapes = {}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cft-strategy-cost-") as tmp:
        workdir = Path(args.workdir or tmp)
        for name in [s for s in args.shapes.split(",") if s]:
            shapes[name] = measure_shape(name, args, workdir)
    figures = {
        "benchmark": "strategy_cost",
        "data": "demo Phase-2 data (conf/phase2_data/demo.yaml), English counterpart for replay",
        "threads": threads,
        "shapes": shapes,
        "environment": common.environment(args.device),
    }
    figures["environment"]["load_avg_1m_start"] = round(load_start, 2)
    figures["environment"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    common.emit(figures)


if __name__ == "__main__":
    main()
