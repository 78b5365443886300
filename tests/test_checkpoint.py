"""Checkpoint and config I/O: bit-exact round trips, and a named error for every malformed input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hymba_deploy import HymbaConfig, HymbaDeployError, load_model, preset
from hymba_deploy.checkpoint import load_pretrained, save_pretrained


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_is_bit_exact(tiny, tmp_path, dtype):
    model = tiny.to(dtype)
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.dtype == dtype
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b and a.dtype == b.dtype and torch.equal(a, b), name
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    prompt = torch.randint(0, 257, (1, 20))
    assert torch.equal(model(prompt), loaded(prompt))
    assert not list(tmp_path.glob("*.tmp"))


def test_tied_head_absent_from_file_and_accepted_when_present(tiny, tmp_path):
    save_pretrained(tiny, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors")
    load_pretrained(tmp_path)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(HymbaDeployError, match="lm_head.weight differs"):
        load_pretrained(tmp_path)


def _shard(tiny, tmp_path):
    """Save `tiny` as two shards a.safetensors and b.safetensors (no index written); return (tensors, weight_map)."""
    save_pretrained(tiny, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for fname, keys in {"a.safetensors": names[::2], "b.safetensors": names[1::2]}.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / fname)
        weight_map.update({k: fname for k in keys})
    return tensors, weight_map


def test_sharded_checkpoint_loads(tiny, tmp_path):
    tensors, weight_map = _shard(tiny, tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_pretrained(tmp_path, dtype="float32")
    for name, t in loaded.state_dict().items():
        if name != "lm_head.weight":
            assert torch.equal(t, tensors[name]), name


def test_every_tensor_problem_is_reported_at_once(tiny, tmp_path):
    save_pretrained(tiny, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.3.mamba.D.0"]
    tensors["model.layers.9.mamba.extra"] = torch.zeros(2)
    tensors["model.layers.2.mamba.in_proj.weight"] = torch.zeros(416, 64)   # consumer given a producer shape
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(HymbaDeployError) as info:
        load_pretrained(tmp_path)
    msg = str(info.value)
    assert "missing     model.layers.3.mamba.D.0 [128]" in msg
    assert "unexpected  model.layers.9.mamba.extra [2] in model.safetensors" in msg
    assert "wrong shape model.layers.2.mamba.in_proj.weight: model.safetensors has [416, 64], expected [320, 64]" in msg


def test_missing_or_unsafe_files_are_named(tiny, tmp_path):
    with pytest.raises(HymbaDeployError, match="not a checkpoint directory"):
        load_pretrained(tmp_path / "absent")
    with pytest.raises(HymbaDeployError, match="no config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(preset("tiny").to_json())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(HymbaDeployError, match="safetensors only"):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(HymbaDeployError, match="not a readable safetensors file"):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "shard.safetensors"}}))
    with pytest.raises(HymbaDeployError, match="shards that do not exist: 'shard.safetensors'"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HymbaDeployError, match="not a readable JSON file"):
        load_pretrained(tmp_path)


def test_public_config_json_reads_with_upstream_meanings():
    """The published Hymba-1.5B-Base config.json (hymba-architecture.md §1), including fields we derive."""
    public = preset("hymba-1.5b").to_dict()
    public.update({"auto_map": {"AutoConfig": "configuration_hymba.HymbaConfig"}, "attn_implementation": "flex",
                   "use_cache": False, "calc_logits_for_entire_prompt": False})
    cfg = HymbaConfig.from_dict(json.loads(json.dumps(public)))
    assert cfg.qk_head_dim == 64 and cfg.v_dim == 128 and cfg.d_inner == 3200
    assert [cfg.kv_producer[i] for i in (2, 17, 18, 15)] == [1, 16, 16, 15]
    assert cfg.layer_window(0) == 0 and cfg.layer_window(1) == 1024
    assert cfg.extra["attn_implementation"] == "flex"
    assert HymbaConfig.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize("field,value,message", [
    ("hidden_size", 0, "'hidden_size' = 0: must be a positive integer"),
    ("hidden_size", "1600", "'hidden_size' = '1600': must be a finite number"),
    ("num_key_value_heads", 7, "'num_key_value_heads' = 7: must divide"),
    ("num_attention_heads", 24, "'num_attention_heads' = 24: must divide the attention width"),
    ("global_attn_idx", [0, 40], "'global_attn_idx'"),
    ("kv_reuse_group", [[1, 2], [2, 3]], "layer 2 appears in more than one place"),
    ("kv_reuse_group", [[1]], "must list a producer"),
    ("kv_reuse_group", [[14, 15]], "mixes global and sliding-window layers"),
    ("rope_type", "yarn", "'rope_type' = 'yarn'"),
    ("num_experts", 4, "'num_experts' = 4: unsupported"),
    ("tie_word_embeddings", "yes", "'tie_word_embeddings' = 'yes': must be true or false"),
    ("model_type", "llama", "not a Hymba config"),
    ("sliding_window", -1, "'sliding_window' = -1"),
])
def test_bad_config_field_is_named(field, value, message):
    data = preset("hymba-1.5b").to_dict()
    data[field] = value
    with pytest.raises(HymbaDeployError, match=message.replace("[", r"\[").replace("(", r"\(")):
        HymbaConfig.from_dict(data)


def test_unknown_preset_and_model_spec():
    with pytest.raises(HymbaDeployError, match="unknown preset 'huge'"):
        preset("huge")
    with pytest.raises(HymbaDeployError, match="neither a preset"):
        load_model("no/such/dir")
    with pytest.raises(HymbaDeployError, match="dtype 'float8'"):
        load_model("tiny", dtype="float8")


@pytest.mark.parametrize("field,value,message", [
    ("layer_type", ["h"] * 31, "'layer_type': must be a list of 32 entries, one per layer (num_hidden_layers = 32), "
                               "not a list of 31 entries"),
    ("layer_type", ["h"] * 31 + ["a"], "'layer_type'"),
    ("conv_dim", {str(i): 3200 for i in range(33)}, "'conv_dim': must be an object with one entry per layer"),
    ("conv_dim", [3200] * 32, "'conv_dim': must be an object"),
    ("conv_dim", {**{str(i): 3200 for i in range(32)}, "7": 1600}, "'conv_dim': layers 7 differ from d_inner"),
])
def test_per_layer_config_fields_have_one_entry_per_layer(field, value, message):
    data = preset("hymba-1.5b").to_dict()
    data[field] = value
    with pytest.raises(HymbaDeployError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HymbaConfig.from_dict(data)


def test_integer_tensors_and_non_finite_weights_are_named(tiny, tmp_path):
    save_pretrained(tiny, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    good = dict(tensors)
    tensors["model.layers.0.mamba.D.0"] = tensors["model.layers.0.mamba.D.0"].to(torch.int32)
    tensors["model.final_layernorm.weight"] = tensors["model.final_layernorm.weight"].bool()
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(HymbaDeployError) as info:
        load_pretrained(tmp_path)
    assert "wrong dtype model.final_layernorm.weight: model.safetensors has BOOL" in str(info.value)
    assert "wrong dtype model.layers.0.mamba.D.0: model.safetensors has I32" in str(info.value)
    tensors = dict(good)
    tensors["model.layers.1.mamba.D.0"] = tensors["model.layers.1.mamba.D.0"].clone()
    tensors["model.layers.1.mamba.D.0"][3] = float("nan")
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()
    tensors["model.embed_tokens.weight"][0, 0] = float("-inf")
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(HymbaDeployError, match=r"NaN or Inf in 2 tensor\(s\): model.embed_tokens.weight "
                                               r"\(model.safetensors\), model.layers.1.mamba.D.0 \(model.safetensors\)"):
        load_pretrained(tmp_path)


def test_sharded_index_must_agree_with_its_shards(tiny, tmp_path):
    tensors, weight_map = _shard(tiny, tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    names = sorted(tensors)
    wrong = dict(weight_map)
    wrong[names[0]] = "b.safetensors"                       # in a.safetensors, mapped to b
    del wrong[names[1]]                                     # in b.safetensors, not listed
    index.write_text(json.dumps({"weight_map": wrong}))
    with pytest.raises(HymbaDeployError) as info:
        load_pretrained(tmp_path)
    msg = str(info.value)
    assert f"{index} does not agree with its shards" in msg
    assert f"{names[0]} is in a.safetensors, but the index maps it to b.safetensors" in msg
    assert f"{names[0]} is not in b.safetensors, where the index puts it" in msg
    assert f"{names[1]} is in b.safetensors, but the index does not list it" in msg
    in_b = {k: tensors[k] for k, f in weight_map.items() if f == "b.safetensors"}
    save_file({**in_b, names[0]: tensors[names[0]]}, tmp_path / "b.safetensors")   # in both shards
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(HymbaDeployError, match=f"{names[0]} is in both a.safetensors and b.safetensors"):
        load_pretrained(tmp_path)
    index.write_text(json.dumps({"weight_map": {"a": 3}}))
    with pytest.raises(HymbaDeployError, match="'weight_map' must map tensor names to shard file names"):
        load_pretrained(tmp_path)
