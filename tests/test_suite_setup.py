"""The suite's own shared set-ups (tests/conftest.py): `build_once` builds a folder once per test run,
whichever xdist worker asks first, and a failed build leaves nothing that a later request would reuse; the
modules it hands out first exist."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest


def test_build_once_builds_once_and_hands_out_the_same_folder(build_once):
    name = f"t-{uuid.uuid4().hex}"
    builds = []

    def build(folder):
        builds.append(folder)
        (folder / "x").write_text("1")

    first = build_once(name, build)
    assert build_once(name, build) == first and len(builds) == 1 and (first / "x").read_text() == "1"


def test_a_failed_build_is_tried_again_from_an_empty_folder(build_once):
    name = f"t-{uuid.uuid4().hex}"

    def broken(folder):
        (folder / "half").write_text("")
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        build_once(name, broken)
    folder = build_once(name, lambda folder: (folder / "whole").write_text(""))
    assert sorted(p.name for p in folder.iterdir()) == ["whole"]


def test_the_longest_modules_named_for_the_hand_out_order_exist():
    """conftest.MODULE_SECONDS names test modules by file: a renamed or split module must be named again."""
    from conftest import MODULE_SECONDS

    modules = {p.stem for p in Path(__file__).parent.glob("test_*.py")}
    assert set(MODULE_SECONDS) <= modules, sorted(set(MODULE_SECONDS) - modules)


@pytest.mark.parametrize("xdg", [None, "/x/cache"])
def test_make_and_the_suite_share_one_ops_folder_per_environment(tmp_path, xdg):
    """DeepSpeed's CPU ops are compiled once per Python environment: `make test` builds them into the folder
    that a direct pytest run (tests/conftest.py) loads them from, outside the checkout and named after the
    environment's path, so that two environments never rebuild each other's ops; the stamp that says they
    are built lives in the environment, as a new one (even at the same path) recompiles them."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_EXTENSIONS_DIR", "XDG_CACHE_HOME", "MAKEFLAGS")}
    env["HOME"] = str(tmp_path)
    if xdg:
        env["XDG_CACHE_HOME"] = xdg

    def plan(venv: str) -> str:
        return subprocess.run(
            ["make", "-n", "test", f"VENV={venv}"], cwd=REPO, env=env, capture_output=True, text=True, check=True
        ).stdout

    probe = "import conftest, os; print(os.environ['TORCH_EXTENSIONS_DIR'])"
    suite = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO / "tests", env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    want = f"{xdg or tmp_path / '.cache'}/cft/torch_extensions/{sys.prefix.strip('/').replace('/', '-')}"
    assert suite == want
    assert f"[ ! -e {sys.prefix}/.cft-ops-built ]" in plan(sys.prefix)  # the stamp goes with the environment
    assert f"(log: {want}/build.log)" in plan(sys.prefix)
    other = tmp_path / "other-venv"
    assert f"[ ! -e {other}/.cft-ops-built ]" in plan(str(other)) and f"{want}/" not in plan(str(other))
    assert not suite.startswith(str(REPO))


def test_the_real_data_is_found_in_one_place(tmp_path, monkeypatch):
    """CFT_DATA when set (relative: to the working directory), else the project's data/ when it exists,
    else ../shared/data next to the project (bench/common.py's find_data_dir); tests/conftest.py exports
    the folder found, absolute, as CFT_DATA before any test runs."""
    import os

    from common import DATA_DIR, find_data_dir

    repo, shared = tmp_path / "cft", tmp_path / "shared" / "data"
    repo.mkdir()
    assert find_data_dir({}, repo) == (shared, [repo / "data", shared])  # neither: the fallback, both named
    shared.mkdir(parents=True)
    assert find_data_dir({}, repo)[0] == shared
    (repo / "data").mkdir()
    assert find_data_dir({}, repo)[0] == repo / "data"  # the project's own folder first
    assert find_data_dir({"CFT_DATA": str(tmp_path / "x")}, repo) == (tmp_path / "x", [tmp_path / "x"])
    monkeypatch.chdir(tmp_path)
    assert find_data_dir({"CFT_DATA": "rel"}, repo)[0] == Path.cwd() / "rel"
    assert find_data_dir({"CFT_DATA": ""}, repo)[0] == repo / "data"  # empty: unset
    assert DATA_DIR.is_absolute() and os.environ["CFT_DATA"] == str(DATA_DIR)
