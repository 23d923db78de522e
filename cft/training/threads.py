"""How many CPU threads torch uses for one run: a count that does not collapse on a busy machine.

torch's default is one intra-op thread per physical core. On a shared machine that is a trap:
OpenMP threads spin-wait for each other at the end of every operator, so when another process
holds one of the cores, every operator waits for the slowest thread. On the 2-core development
machine (`bench/threads.py`, the demo model), 2 threads took 0.66x the time of 1 for a training step
when little else ran, but several times to tens of times the time of 1 while other processes held a
core, for decoding steps (evaluation, generative replay) most of all; 1 thread slowed far less. The
measured figures are in bench/results/threads*.json and the README's "Threads on a busy machine".
OMP_WAIT_POLICY=passive removes the collapse but also the gain, so it is not used.

The cost is lopsided (a third of the time lost by one thread too few, several times the time lost by
one too many), so the default is one thread per idle core: the CPUs this process may run on minus
the 1-minute load average, rounded, at least 1 and at most torch's own default. A quiet machine
keeps torch's default; a busy one gets fewer threads, and a fully loaded one gets 1.

Precedence: the config key `threads` (an explicit number) > the environment's OMP_NUM_THREADS >
the measured default above.
"""

from __future__ import annotations

import logging
import math
import os

from cft.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "OMP_NUM_THREADS"
_TORCH_DEFAULT: list[int] = []  # torch's own thread count, read before cft first changes it


def _positive_int(value, what: str) -> int:
    """`value` (an int, or digits in a string such as an environment variable) as a thread count >= 1;
    anything else raises ConfigError naming `what`."""
    n = int(value.strip()) if isinstance(value, str) and value.strip().isdigit() else value
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"{what}={value!r} must be a positive integer (torch threads), or null to let cft choose")
    return n


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (0 where the OS has none: then the machine counts as quiet)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def torch_default() -> int:
    """torch's default thread count (one per physical core, or OMP_NUM_THREADS at import), as it was
    before this module first set it: a sweep of several cells in one process keeps the same ceiling."""
    import torch

    if not _TORCH_DEFAULT:
        _TORCH_DEFAULT.append(torch.get_num_threads())
    return _TORCH_DEFAULT[0]


def default_threads(cpus: int | None = None, load: float | None = None, ceiling: int | None = None) -> int:
    """One thread per idle core: cpus - 1-minute load average, rounded (half up), at least 1 and at
    most `ceiling` (torch's default, one per physical core)."""
    cpus = available_cpus() if cpus is None else cpus
    load = load_average() if load is None else load
    ceiling = torch_default() if ceiling is None else ceiling
    return max(1, min(ceiling, math.floor(cpus - load + 0.5)))


def choose(requested: int | None, environ: dict | None = None) -> tuple[int, str]:
    """(threads, why): the config value when given, else OMP_NUM_THREADS when set, else the default."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        return _positive_int(requested, "threads"), "threads= in the config"
    env = environ.get(ENV, "").strip()
    if env:
        return _positive_int(env, ENV), f"{ENV} in the environment"
    load, cpus = load_average(), available_cpus()
    n = default_threads(cpus, load)
    return n, f"one per idle core: {cpus} CPUs, load average {load:.2f}; set threads=N or {ENV} to override"


def configure(requested: int | None) -> int:
    """Set torch's intra-op thread count for this process and say in the log what was chosen and why.

    `requested` is the config key `threads` (None: OMP_NUM_THREADS when set, else one thread per idle
    core). A value that is not a positive integer raises ConfigError naming it."""
    import torch

    torch_default()  # read before the first change
    n, why = choose(requested)
    torch.set_num_threads(n)
    log.info("torch threads: %d (%s)", n, why)
    return n
