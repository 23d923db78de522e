"""Hidden representations of Phase-1 and Phase-2 models (the paper's section 3.4).

- `mean_activations`: for every prompt, the mean over its tokens (attention mask respected) of
  the hidden states of every layer -> an array (layers + 1, prompts, hidden); index 0 is the
  embedding output, index i the output of decoder layer i.
- `covariance_difference`: per layer, the Frobenius (L2) norm of the difference between the two
  models' covariance matrices of those per-prompt activations; 0 for identical models.
- `tsne_points`: a 2-D t-SNE of the per-prompt activations of two or more models at one layer.
- `cross_lingual_similarity`: on a sentence-parallel set (FLORES-200), the per-layer mean cosine
  between each sentence's activation in English and in another language (a base model's
  cross-linguality view).

Prompts come from MT-Bench on the hub (`mt_bench_prompts`) or a local file (`read_prompts`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cft.errors import CftError

log = logging.getLogger(__name__)

PROMPT_KEYS = ("prompt", "text", "instruction", "question", "turns")
MT_BENCH_HUB_ID = "HuggingFaceH4/mt_bench_prompts"


def _prompt_of(raw, where: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, dict):
        for key in PROMPT_KEYS:
            value = raw.get(key)
            if isinstance(value, list) and value and isinstance(value[0], str):
                return value[0]  # MT-Bench: the first turn
            if isinstance(value, str) and value.strip():
                return value
    raise CftError(f"{where}: no prompt found (expected a string or one of the keys {list(PROMPT_KEYS)})")


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompts from a local file: .jsonl/.json records (keys prompt, text, instruction, question or
    MT-Bench `turns`) or a text file with one prompt per line."""
    from cft.data.records import iter_raw_records

    path = Path(path).expanduser()
    if not path.exists():
        raise CftError(f"{path}: prompt file not found")
    if path.suffix in (".json", ".jsonl"):
        prompts = [_prompt_of(raw, f"{path}:{line}") for line, raw in iter_raw_records(path)]
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise CftError(f"{path}: no prompts in the file")
    return prompts[:limit] if limit else prompts


def mt_bench_prompts(hub_id: str = MT_BENCH_HUB_ID, limit: int | None = None) -> list[str]:
    """The first turn of each MT-Bench prompt, from the hub (use `read_prompts` on a local copy offline)."""
    try:
        from datasets import load_dataset

        data = load_dataset(hub_id, split="train")
    except Exception as exc:
        raise CftError(
            f"Could not load the MT-Bench prompts '{hub_id}' from the hub: download them once and pass a "
            f"local file (representations.prompts=/path/to/prompts.jsonl).\nCause: {str(exc).splitlines()[0]}"
        ) from exc
    prompts = [_prompt_of(dict(row), f"{hub_id}[{i}]") for i, row in enumerate(data)]
    return prompts[:limit] if limit else prompts


def read_parallel(
    folder: str | Path, languages: Sequence[str], *, split: str = "devtest", limit: int | None = None
) -> dict[str, list[str]]:
    """Sentence-parallel files in the FLORES-200 layout (`<folder>/<lang>.<split>`, one sentence per line)."""
    folder = Path(folder).expanduser()
    out: dict[str, list[str]] = {}
    for lang in languages:
        file = folder / f"{lang}.{split}"
        if not file.exists():
            have = sorted(p.name for p in folder.glob(f"*.{split}")) if folder.is_dir() else []
            raise CftError(f"{file}: not found (files there: {have})")
        out[lang] = file.read_text(encoding="utf-8").splitlines()[:limit]
    sizes = {lang: len(lines) for lang, lines in out.items()}
    if len(set(sizes.values())) > 1:
        raise CftError(f"parallel files in {folder} differ in length: {sizes}")
    return out


def mean_activations(
    model, tokenizer, prompts: Sequence[str], *, batch_size: int = 8, max_length: int = 512, show_progress: bool = True
) -> np.ndarray:
    """Per-prompt, per-layer mean hidden state: an array of shape (num_layers + 1, len(prompts), hidden)."""
    import torch
    from tqdm.auto import tqdm

    if not prompts:
        raise CftError("no prompts to compute activations on")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_batch = []
    batches = range(0, len(prompts), batch_size)
    with torch.no_grad():
        for start in tqdm(batches, desc="activations", disable=not show_progress or len(batches) < 2):
            enc = tokenizer(
                list(prompts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            ).to(device)
            out = model(**enc, output_hidden_states=True)
            mask = enc["attention_mask"].unsqueeze(-1).float()  # (batch, tokens, 1)
            means = [(h.float() * mask).sum(1) / mask.sum(1).clamp(min=1) for h in out.hidden_states]
            per_batch.append(torch.stack(means).cpu().numpy())  # (layers + 1, batch, hidden)
    model.train(was_training)
    return np.concatenate(per_batch, axis=1)


def covariances(activations: np.ndarray) -> np.ndarray:
    """Per-layer covariance matrix of the per-prompt activations: (layers, hidden, hidden)."""
    if activations.shape[1] < 2:
        raise CftError("covariance of activations needs at least 2 prompts")
    return np.stack([np.cov(layer, rowvar=False) for layer in activations.astype(np.float64)])


def covariance_difference(acts_a: np.ndarray, acts_b: np.ndarray) -> np.ndarray:
    """Per-layer Frobenius norm of cov(A) - cov(B), for activations of the same prompts in two models."""
    if acts_a.shape != acts_b.shape:
        raise CftError(
            f"activations of the two models differ in shape: {acts_a.shape} vs {acts_b.shape} "
            "(compare models of one architecture on the same prompts)"
        )
    return np.array(
        [
            np.linalg.norm(np.cov(a, rowvar=False) - np.cov(b, rowvar=False))
            for a, b in zip(acts_a.astype(np.float64), acts_b.astype(np.float64))
        ]
    )


def tsne_points(activations: Mapping[str, np.ndarray], *, layer: int = -1, seed: int = 0, perplexity: float = 30.0):
    """2-D t-SNE of the per-prompt activations at `layer` of several models, fitted jointly.

    Returns a DataFrame with columns model, prompt, x, y. Perplexity is capped below the number of points.
    """
    import pandas as pd
    from sklearn.manifold import TSNE

    names = list(activations)
    stacked = np.concatenate([activations[n][layer] for n in names])
    if len(stacked) < 3:
        raise CftError("t-SNE needs at least 3 points (prompts x models)")
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(stacked) - 1) / 3), random_state=seed, init="pca")
    xy = tsne.fit_transform(stacked)
    rows, offset = [], 0
    for name in names:
        count = activations[name].shape[1]
        rows += [{"model": name, "prompt": i, "x": float(xy[offset + i, 0]), "y": float(xy[offset + i, 1])} for i in range(count)]
        offset += count
    return pd.DataFrame(rows)


def cross_lingual_similarity(
    model,
    tokenizer,
    parallel: Mapping[str, Sequence[str]],
    *,
    pivot: str = "eng_Latn",
    batch_size: int = 8,
    max_length: int = 256,
):
    """Per layer and language, the mean cosine similarity between each sentence's mean activation in
    `pivot` and in that language. Returns a DataFrame with columns language, layer, similarity."""
    import pandas as pd

    if pivot not in parallel:
        raise CftError(f"the pivot language {pivot} is not among the parallel files {sorted(parallel)}")
    acts = {
        lang: mean_activations(model, tokenizer, list(s), batch_size=batch_size, max_length=max_length)
        for lang, s in parallel.items()
    }

    def unit(x):
        return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)

    rows = []
    ref = unit(acts[pivot])
    for lang, a in acts.items():
        if lang == pivot:
            continue
        sims = (ref * unit(a)).sum(-1).mean(-1)  # (layers + 1,)
        rows += [{"language": lang, "layer": i, "similarity": float(s)} for i, s in enumerate(sims)]
    return pd.DataFrame(rows)


def save_activations(path: str | Path, activations: np.ndarray, prompts: Sequence[str]) -> None:
    """Save activations (npy) with their prompts beside them (json), to reuse them across analyses."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".npy"), activations)
    path.with_suffix(".prompts.json").write_text(json.dumps(list(prompts), ensure_ascii=False))
