"""Download once every checkpoint a sweep needs, before the jobs start (`python train.py -m ... download=true`).

On a cluster the compute nodes often have no network, and jobs that download at start compete for the
same files. `download=true` composes every cell of the command, collects the checkpoints they read (the
Instruct or base model each trains from, the base that lf_h2, MPD and layer changes read, the DES
embedder), fetches each hub id once into the Hugging Face cache (HF_HOME) with `snapshot_download`, and
exits. Local folders are only listed. A gated model (Llama 3) needs its licence accepted on the hub and
`HF_TOKEN` (or `huggingface-cli login`) where this runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# What a checkpoint folder needs for training, evaluation and tensor-by-tensor reading.
PATTERNS = ["*.safetensors", "*.json", "*.model", "*.txt", "*.tiktoken", "*.py"]


def _needs(strategy: dict[str, Any]) -> frozenset[str]:
    from hydra.utils import instantiate

    try:
        return frozenset(instantiate(strategy).needs())
    except Exception:  # a strategy that cannot be built here: the checks name it
        return frozenset()


def needed(cells: Iterable[dict[str, Any]]) -> dict[str, str]:
    """hub id or folder -> what reads it, over the resolved configs of a sweep's cells (each once)."""
    out: dict[str, str] = {}
    for values in cells:
        model = values.get("model") or {}
        instruct = bool((values.get("phase1_data") or {}).get("use_instruct_checkpoint"))
        similarity = values.get("similarity") or {}
        wants_base = (
            not instruct
            or "base" in _needs(values.get("strategy") or {})
            or similarity.get("mpd")
            or similarity.get("layer_changes")
        )
        if instruct and model.get("instruct"):
            out.setdefault(str(model["instruct"]), f"model.instruct ({model.get('name')})")
        if wants_base and model.get("base"):
            out.setdefault(str(model["base"]), f"model.base ({model.get('name')})")
        embedder = values.get("embedder") or {}
        if similarity.get("des") and isinstance(embedder.get("model"), str):
            out.setdefault(str(embedder["model"]), "embedder.model (DES)")
    return out


def fetch(refs: dict[str, str]) -> dict[str, str]:
    """Each hub id into the Hugging Face cache (its snapshot folder); local folders as they are."""
    from huggingface_hub import snapshot_download

    from cft.errors import CftError

    where = {}
    for ref, what in refs.items():
        if Path(ref).expanduser().is_dir():
            where[ref] = str(Path(ref).expanduser())
            continue
        try:
            where[ref] = snapshot_download(ref, allow_patterns=PATTERNS)
        except Exception as exc:  # the hub client raises many types: gated, not found, offline
            gated = "gated" in str(exc).lower() or "401" in str(exc) or "403" in str(exc)
            hint = (
                "it is gated: accept its licence on huggingface.co and set HF_TOKEN (or run huggingface-cli login)"
                if gated
                else "check the id and the network (HF_HUB_OFFLINE must not be set)"
            )
            raise CftError(f"could not download {what} '{ref}' ({type(exc).__name__}): {hint}") from None
        log.info("%s: %s", ref, where[ref])
    return where
