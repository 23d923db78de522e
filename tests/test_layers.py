"""Layer changes between checkpoints: hand-computed relative changes, ranks, top-k, and bad pairs."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file, save_file

from cft.errors import CftError
from cft.measures.layers import checkpoint_index, layer_changes, parse_name, rank_layers, top_k_layers, transition_changes


def _edited(src, dst, edits):
    """Copy the checkpoint folder `src` to `dst`, applying {tensor name: fn(tensor) -> tensor}."""
    dst.mkdir()
    tensors = load_file(str(src / "model.safetensors"))
    for name, fn in edits.items():
        tensors[name] = fn(tensors[name]).contiguous()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return tensors


def test_parse_name():
    assert parse_name("model.layers.3.self_attn.q_proj.weight") == ("q_proj", 3)
    assert parse_name("model.layers.12.mlp.down_proj.weight") == ("down_proj", 12)
    assert parse_name("model.layers.0.input_layernorm.weight") == ("input_layernorm", 0)
    assert parse_name("model.embed_tokens.weight") == ("embed_tokens", None)


def test_relative_changes_ranks_and_top_k(tiny_model_dir, tmp_path):
    q1, v0 = "model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    _edited(tiny_model_dir, tmp_path / "b", {q1: lambda w: w + 0.5, v0: lambda w: w * 3})
    changes = layer_changes(tiny_model_dir, tmp_path / "b")
    by_name = changes.set_index("name")["change"]
    assert by_name[q1] == pytest.approx(0.5 * math.sqrt(base[q1].numel()) / float(base[q1].norm()), rel=1e-5)
    assert by_name[v0] == pytest.approx(2.0, rel=1e-5)  # ||3W - W|| / ||W||
    assert by_name["model.layers.0.self_attn.q_proj.weight"] == 0
    assert "model.layers.0.input_layernorm.weight" not in by_name  # 1-D tensors are left out
    ranked = rank_layers(changes)
    q = ranked[ranked.module == "q_proj"].set_index("layer")["rank"]
    assert q[1] == 1 and q[0] == 2
    assert top_k_layers(changes, "q_proj", 1) == [1]
    assert top_k_layers(changes, "v_proj", 1) == [0]
    assert top_k_layers(changes, "k_proj", 2) == [0, 1]
    with pytest.raises(CftError, match="k=3 layers requested"):
        top_k_layers(changes, "q_proj", 3)
    with pytest.raises(CftError, match="no layer-wise tensors of module 'x_proj'"):
        top_k_layers(changes, "x_proj", 1)


def test_transition_changes_and_sharded_checkpoint(tiny_model_dir, tmp_path):
    q0 = "model.layers.0.self_attn.q_proj.weight"
    tensors = _edited(tiny_model_dir, tmp_path / "p1", {q0: lambda w: w * 2})
    # Phase 2 as a sharded checkpoint: two files and an index, as save_pretrained writes for big models.
    shard = tmp_path / "p2"
    shard.mkdir()
    names = sorted(tensors)
    tensors[q0] = tensors[q0] * 1.5
    halves = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for file, part in halves.items():
        save_file({n: tensors[n].contiguous() for n in part}, str(shard / file))
    (shard / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}})
    )
    assert set(checkpoint_index(shard)) == set(names)
    table = transition_changes(tiny_model_dir, tmp_path / "p1", shard)
    assert set(table.transition) == {"base->phase1", "phase1->phase2"}
    row = table[(table.module == "q_proj") & (table.layer == 0)].set_index("transition")
    assert row.loc["base->phase1", "change"] == pytest.approx(1.0, rel=1e-5)
    assert row.loc["phase1->phase2", "change"] == pytest.approx(0.5, rel=1e-5)
    assert row.loc["base->phase1", "rank"] == 1


def test_mismatched_checkpoints_are_rejected(tiny_model_dir, tiny_arch, tmp_path):
    from cft.models import save_built_model

    other = save_built_model(tmp_path / "wide", {**tiny_arch, "intermediate_size": 48}, seed=0)
    with pytest.raises(CftError, match=r"disagree in 6 tensor shape\(s\)"):
        layer_changes(tiny_model_dir, other)
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    tensors = load_file(str(tiny_model_dir / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(fewer / "model.safetensors"))
    with pytest.raises(CftError, match=r"only in the first: \['model.norm.weight'\]"):
        layer_changes(tiny_model_dir, fewer)
    with pytest.raises(CftError, match="no safetensors weights"):
        layer_changes(tiny_model_dir, tmp_path)
