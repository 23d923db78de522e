"""Mean activations, covariance differences, t-SNE and the cross-lingual view on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cft.analysis.publish import Tracking
from cft.analysis.representations import representations_report
from cft.errors import CftError
from cft.measures.representations import (
    covariance_difference,
    cross_lingual_similarity,
    mean_activations,
    read_parallel,
    read_prompts,
    tsne_points,
)

PROMPTS = [f"Question {i}: what is {i} plus {i * 3}?" for i in range(12)]


def test_mean_activations_respect_padding(tiny_model):
    model, tok = tiny_model
    acts = mean_activations(model, tok, PROMPTS, batch_size=5, show_progress=False)
    assert acts.shape == (model.config.num_hidden_layers + 1, len(PROMPTS), model.config.hidden_size)
    # A prompt's activations do not depend on the batch it is padded in.
    alone = mean_activations(model, tok, [PROMPTS[3]], batch_size=1, show_progress=False)
    assert np.allclose(acts[:, 3], alone[:, 0], atol=1e-4)
    # Hand computation for layer 0 (embeddings): the mean of the prompt's token embeddings.
    ids = tok(PROMPTS[3], return_tensors="pt")["input_ids"][0]
    expected = model.get_input_embeddings().weight[ids].mean(0).detach().numpy()
    assert np.allclose(acts[0, 3], expected, atol=1e-5)


def test_covariance_difference_zero_for_identical_models_and_hand_value():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 10, 4))
    assert np.array_equal(covariance_difference(a, a.copy()), np.zeros(3))
    b = a.copy()
    b[1] *= 2  # cov(2x) = 4 cov(x): ||cov(a) - 4 cov(a)|| = 3 ||cov(a)||
    diff = covariance_difference(a, b)
    assert diff[0] == 0 and diff[2] == 0
    assert diff[1] == pytest.approx(3 * np.linalg.norm(np.cov(a[1], rowvar=False)))
    with pytest.raises(CftError, match="differ in shape"):
        covariance_difference(a, a[:, :5])


def test_tsne_points_cover_every_model():
    rng = np.random.default_rng(0)
    acts = {"phase1": rng.normal(size=(2, 8, 6)), "phase2": rng.normal(loc=3, size=(2, 8, 6))}
    points = tsne_points(acts, layer=-1, seed=0)
    assert list(points.columns) == ["model", "prompt", "x", "y"] and len(points) == 16
    assert points.groupby("model").size().to_dict() == {"phase1": 8, "phase2": 8}


def test_prompt_and_parallel_readers(tmp_path):
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"turns": ["first turn", "second"]}) + "\n" + json.dumps({"prompt": "two"}) + "\n"
    )
    assert read_prompts(tmp_path / "p.jsonl") == ["first turn", "two"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"other": 1}) + "\n")
    with pytest.raises(CftError, match=r"bad.jsonl:1: no prompt found"):
        read_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "eng_Latn.devtest").write_text("a\nb\n")
    (tmp_path / "spa_Latn.devtest").write_text("x\ny\n")
    assert read_parallel(tmp_path, ["eng_Latn", "spa_Latn"]) == {"eng_Latn": ["a", "b"], "spa_Latn": ["x", "y"]}
    with pytest.raises(CftError, match=r"deu_Latn.devtest: not found"):
        read_parallel(tmp_path, ["deu_Latn"])


def test_cross_lingual_similarity_is_one_for_identical_text(tiny_model):
    model, tok = tiny_model
    same = cross_lingual_similarity(model, tok, {"eng_Latn": PROMPTS[:4], "copy": PROMPTS[:4], "other": PROMPTS[4:8]})
    copy = same[same.language == "copy"]
    assert len(copy) == model.config.num_hidden_layers + 1 and np.allclose(copy.similarity, 1.0, atol=1e-5)
    assert (same[same.language == "other"].similarity < 1.0).all()


def test_representations_report_end_to_end(tiny_model_dir, tmp_path):
    from cft.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(3.0)  # changes layer 2's outputs only
    model.save_pretrained(tmp_path / "phase2")
    tok.save_pretrained(tmp_path / "phase2")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    flores = tmp_path / "flores"
    flores.mkdir()
    (flores / "eng_Latn.devtest").write_text("\n".join(PROMPTS[:5]))
    (flores / "spa_Latn.devtest").write_text("\n".join(p.replace("what is", "cuánto es") for p in PROMPTS[:5]))
    result = representations_report(
        {"phase1": str(tiny_model_dir), "phase2": str(tmp_path / "phase2"), "same": str(tiny_model_dir)},
        prompts=str(tmp_path / "prompts.txt"),
        parallel_dir=str(flores),
        parallel_languages=["spa_Latn"],
        out_dir=tmp_path / "out",
        tracking=Tracking(mode="disabled"),
    )
    diffs = json.loads((result.out_dir / "covariance_difference.json").read_text())
    assert diffs["same"] == [0.0, 0.0, 0.0]
    assert diffs["phase2"][0] == 0 and diffs["phase2"][1] == 0 and diffs["phase2"][2] > 0
    for fig in result.figures:
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 5000
    assert {f.stem for f in result.figures} == {"covariance_difference", "tsne", "cross_lingual"}


def test_models_of_a_sweep(tmp_path, tiny_model_dir):
    from cft.analysis.representations import sweep_models

    run = tmp_path / "sw" / "a-b" / "tiny" / "full" / "seed0"
    (run / "checkpoint").mkdir(parents=True)
    choices = {"model": "tiny", "phase1_data": "a", "phase2_data": "b", "strategy": "full"}
    (run / "run_meta.json").write_text(
        json.dumps({"sweep_id": "sw", "seed": 0, "choices": choices, "phase1_ref": str(tiny_model_dir)})
    )
    (run / "DONE").write_text("")
    models, refs = sweep_models(tmp_path, "sw")
    assert models == {"phase1 tiny (a)": str(tiny_model_dir), "tiny/full (a→b)": str(run / "checkpoint")}
    assert refs == {"tiny/full (a→b)": "phase1 tiny (a)"}
    (run / "run_meta.json").write_text(json.dumps({"sweep_id": "sw", "seed": 0, "choices": choices}))
    with pytest.raises(CftError, match="phase1_ref in run_meta.json"):
        sweep_models(tmp_path, "sw")
