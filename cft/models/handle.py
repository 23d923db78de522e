"""A handle on a checkpoint the recipe reads (the base model, the Phase-1 model): where it is, what
determines it (its cache key), and its weights, loaded lazily and at most once.

A checkpoint is a hub id or a local folder, optionally with a GGUF file in it. What reads weights
tensor by tensor (layer-change ranks, MPD, LF_H2's selection) needs a local safetensors folder:
`folder()` gives the folder itself, the hub's cached copy, or, for a GGUF file, a plain copy made once
in the artifact cache (dequantized; it scores within 3e-5 log-likelihood of the GGUF itself), which
every later load then uses (seconds instead of a dequantization).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cft.errors import CftError
from cft.models.checkpoints import load_model, read_config

log = logging.getLogger(__name__)


class Checkpoint:
    """One model the recipe reads. `load()` gives its (model, tokenizer), loaded on first use only."""

    def __init__(self, ref: str, *, key: str, what: str, gguf_file: str | None = None, cache=None, setting: str = "model.base"):
        self.ref = str(ref)
        self.key = key  # what determines these weights (for the keys of artifacts derived from them)
        self.what = what
        self.setting = setting  # the config key that points at it: what an error tells the user to set
        self.gguf_file = gguf_file
        self.cache = cache  # cft.run.artifacts.Cache: where a GGUF file's plain copy goes
        self._loaded: tuple[Any, Any] | None = None
        self._dtype: str | None = None  # the dtype the shared copy was loaded in

    def __repr__(self) -> str:
        return f"Checkpoint({self.what}: {self.ref}{f' [{self.gguf_file}]' if self.gguf_file else ''})"

    def config(self):
        """The model config alone (no weights); CftError naming the checkpoint when it cannot be read."""
        return read_config(self.ref, gguf_file=self.gguf_file, what=self.what, setting=self.setting)

    def folder(self) -> Path:
        """A local folder with safetensors weights (CftError when there is none: e.g. a hub id offline)."""
        if self.gguf_file:
            return self._plain_copy()
        local = Path(self.ref).expanduser()
        if local.is_dir():
            return local
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(self.ref, local_files_only=True, allow_patterns=["*.safetensors", "*.json"]))
        except Exception as exc:  # the hub client raises many types; all mean "not on disk"
            raise CftError(
                f"the {self.what} '{self.ref}' is not on disk ({type(exc).__name__}). "
                f"Download it once and pass its local folder ({self.setting}=/path/to/{Path(self.ref).name})."
            ) from None

    def _plain_copy(self) -> Path:
        if self.cache is None:
            raise CftError(f"the {self.what} is a GGUF file ({self.gguf_file}); a plain copy needs the artifact cache")

        def build(tmp: Path) -> None:
            log.info("Making a plain safetensors copy of %s (GGUF, dequantized) for reuse", self)
            model, tokenizer = load_model(self.ref, gguf_file=self.gguf_file, dtype="fp32", what=self.what, setting=self.setting)
            model.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")

        spec = {"ref": self.ref, "gguf_file": self.gguf_file, "dtype": "fp32"}
        return self.cache.artifact("checkpoint", spec, build) / "model"

    def load(self, *, fresh: bool = False, dtype: str = "fp32"):
        """(model, tokenizer); loaded once and then shared, unless `fresh` (a separate copy). Asked for another
        dtype than the shared copy's (bf16 evaluation, fp32 training), the shared copy is released first."""
        if self._loaded is not None and not fresh:
            if self._dtype == dtype:
                return self._loaded
            self.release()
        ref, gguf = (str(self._plain_copy()), None) if self.gguf_file and self.cache is not None else (self.ref, self.gguf_file)
        loaded = load_model(ref, gguf_file=gguf, dtype=dtype, what=self.what, setting=self.setting)
        if not fresh:
            self._loaded, self._dtype = loaded, dtype
        return loaded

    def release(self) -> None:
        """Forget the shared copy (the model object lives on only where it is still used), and give its
        accelerator memory back: an evaluation copy must not sit on GPU 0 while training runs."""
        if self._loaded is None:
            return
        self._loaded, self._dtype = None, None
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
