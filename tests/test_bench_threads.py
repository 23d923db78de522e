"""cft.training.threads: the thread count of a run (config key `threads` > OMP_NUM_THREADS > one per idle core)."""

from __future__ import annotations

import logging

import pytest
import torch

from cft.errors import ConfigError
from cft.training import threads


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_explicit_value_wins_over_the_environment(monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with caplog.at_level(logging.INFO, logger="cft.training.threads"):
        assert threads.configure(1) == 1
    assert torch.get_num_threads() == 1
    assert "torch threads: 1 (threads= in the config)" in caplog.text


def test_omp_num_threads_is_honoured_when_the_config_leaves_it_null(monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", " 2 ")
    with caplog.at_level(logging.INFO, logger="cft.training.threads"):
        assert threads.configure(None) == 2
    assert torch.get_num_threads() == 2
    assert "torch threads: 2 (OMP_NUM_THREADS in the environment)" in caplog.text


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_invalid_config_value_is_a_config_error(bad):
    with pytest.raises(ConfigError) as err:
        threads.configure(bad)
    assert str(err.value) == (f"threads={bad!r} must be a positive integer (torch threads), or null to let cft choose")


@pytest.mark.parametrize("bad", ["0", "two", "1.5", "-2"])
def test_invalid_environment_value_is_a_config_error_naming_the_variable(monkeypatch, bad):
    monkeypatch.setenv("OMP_NUM_THREADS", bad)
    with pytest.raises(ConfigError, match=rf"^OMP_NUM_THREADS='{bad}' must be a positive integer"):
        threads.configure(None)


def test_default_is_one_thread_per_idle_core():
    # cpus - load, rounded; never below 1, never above torch's default
    assert threads.default_threads(cpus=2, load=0.0, ceiling=2) == 2
    assert threads.default_threads(cpus=2, load=0.4, ceiling=2) == 2
    assert threads.default_threads(cpus=2, load=0.6, ceiling=2) == 1
    assert threads.default_threads(cpus=2, load=3.0, ceiling=2) == 1
    assert threads.default_threads(cpus=16, load=3.2, ceiling=8) == 8
    assert threads.default_threads(cpus=16, load=10.6, ceiling=16) == 5


def test_default_reads_the_load_when_nothing_is_set(monkeypatch, caplog):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "load_average", lambda: 5.0)
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    with caplog.at_level(logging.INFO, logger="cft.training.threads"):
        assert threads.configure(None) == 1
    assert "torch threads: 1 (one per idle core: 2 CPUs, load average 5.00;" in caplog.text
