"""What travels to the GPU machine (issue 22): the distributions its image lacks, pinned, and the size check.

The GPU image's packages are in bench/gpu_image_packages.txt (the device tool's KINDS.md list). The
bundle's pins are in bench/gpu_requirements.txt: every distribution that cft's dependencies (and
DeepSpeed, pydantic, Liger) need and the image lacks, at this venv's version, so the GPU runs what
the tests here ran. The image's own packages are not followed further: their needs are the image's.

    python bench/gpu_bundle.py requirements   # rewrite bench/gpu_requirements.txt from this venv
    python bench/gpu_bundle.py check          # the pins cover the closure (what the test checks)
    python bench/gpu_bundle.py size           # project + bench/gpu_wheels + bench/gpu_data <= 64 MiB, else exit 1
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "bench" / "gpu_image_packages.txt"
REQUIREMENTS = REPO / "bench" / "gpu_requirements.txt"
WHEELS = REPO / "bench" / "gpu_wheels"
DATA = REPO / "bench" / "gpu_data"
LIMIT_MIB = 64  # what one device call carries: the working tree and the carried paths together
# Beyond cft's own dependencies: what the GPU run imports from the extras (train=deepspeed_*, the bench's Liger).
EXTRA_ROOTS = ("deepspeed", "pydantic", "liger-kernel==0.8.5")
# cft dependencies the GPU pipeline never imports, so they do not travel (the test checks the imports too).
NOT_CARRIED = {
    "wandb-workspaces": "analyze.py mode=dashboard only",
    "gguf": "model.gguf_file only",
}


def _names(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def image_packages() -> set[str]:
    return {canonicalize_name(n) for n in _names(IMAGE)}


def pinned() -> dict[str, str]:
    """{name: version} of bench/gpu_requirements.txt."""
    out = {}
    for line in _names(REQUIREMENTS):
        name, _, version = line.partition("==")
        out[canonicalize_name(name)] = version
    return out


def roots() -> list[str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in [*deps, *EXTRA_ROOTS] if canonicalize_name(Requirement(d).name) not in NOT_CARRIED]


def closure(requirements: list[str], image: set[str]) -> dict[str, str | None]:
    """{name: installed version (None if not installed here)} of every distribution the requirements need,
    following each one's own requirements (with the extras asked for), except into the image's packages."""
    seen: dict[tuple[str, tuple[str, ...]], str | None] = {}
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            seen[key] = None
            continue
        seen[key] = dist.version
        if name in image:
            continue
        for text in dist.requires or []:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in (sorted(req.extras) or [""])):
                stack.append(dep)
    return {name: version for (name, _), version in seen.items()}


def needed() -> dict[str, str | None]:
    """What the bundle must carry: the closure minus the image."""
    image = image_packages()
    return {n: v for n, v in sorted(closure(roots(), image).items()) if n not in image}


def write_requirements() -> None:
    pins = {"liger-kernel": "0.8.5"}  # not installed here (Triton, GPU only): the version measured on the H200
    lines = [
        "# What bench/gpu_prepare.sh carries to the GPU machine as wheels: every distribution cft's dependencies",
        "# (and DeepSpeed, pydantic, Liger) need that the GPU image lacks (bench/gpu_image_packages.txt), at this",
        "# venv's version. Written by `python bench/gpu_bundle.py requirements`; tests/test_gpu_kit.py checks it.",
        *(f"# not carried: {name} ({why})" for name, why in NOT_CARRIED.items()),
    ]
    for name, version in needed().items():
        lines.append(f"{name}=={version or pins[name]}")
    REQUIREMENTS.write_text("\n".join(lines) + "\n")


def tracked_bytes() -> int:
    """The project as the device call sends it: tracked files and untracked ones git does not ignore."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["requirements", "check", "size"])
    args = p.parse_args()
    if args.what == "requirements":
        write_requirements()
        print(REQUIREMENTS.read_text())
    elif args.what == "check":
        missing = sorted(set(needed()) - set(pinned()))
        if missing:
            raise SystemExit(f"bench/gpu_requirements.txt lacks {missing}: run `python bench/gpu_bundle.py requirements`")
        print("bundle pins cover the closure")
    else:
        parts = {"project": tracked_bytes(), "wheels": folder_bytes(WHEELS), "data": folder_bytes(DATA)}
        total = sum(parts.values())
        print(
            " + ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in parts.items()) + f" = {total / 2**20:.1f} MiB (limit {LIMIT_MIB})"
        )
        if total > LIMIT_MIB * 2**20:
            sys.exit(1)


if __name__ == "__main__":
    main()
