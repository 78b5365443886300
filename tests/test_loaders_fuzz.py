"""Property-based tests of every loader of user files (#12 point 7): config.json, safetensors headers,
sharded indexes, export manifests, ONNX files, engine sidecars, engine files and token id lists.

Whatever the input (random bytes, random JSON, a valid file with one field replaced by random JSON),
a loader either accepts it or raises `HymbaDeployError` with a message: never another exception (a
traceback for the user), and it writes nothing (the folder it reads is unchanged afterwards).
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hymba_deploy import HymbaConfig, preset
from hymba_deploy.checkpoint import load_pretrained
from hymba_deploy.errors import HymbaDeployError

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)


def _snapshot(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def loads_cleanly(folder: Path, load) -> None:
    """`load()` returns or raises HymbaDeployError with a message, and leaves `folder` as it found it."""
    before = _snapshot(folder)
    try:
        load()
    except HymbaDeployError as e:
        assert str(e).strip()
    assert _snapshot(folder) == before


def _mutated(base: dict, data) -> dict:
    """`base` with one top-level field replaced by random JSON, or removed."""
    out = json.loads(json.dumps(base))
    key = data.draw(st.sampled_from(sorted(out)))
    if data.draw(st.booleans()):
        out[key] = data.draw(json_values)
    else:
        del out[key]
    return out


# ---- config.json ----------------------------------------------------------------------------------

TINY = preset("tiny").to_dict()


@FUZZ
@given(raw=st.binary(max_size=300))
def test_config_json_any_bytes(raw):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_bytes(raw)
        loads_cleanly(Path(d), lambda: HymbaConfig.from_json_file(Path(d) / "config.json"))


@FUZZ
@given(data=st.data())
def test_config_json_one_field_replaced(data):
    config = _mutated(TINY, data)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(json.dumps(config))
        loads_cleanly(Path(d), lambda: HymbaConfig.from_json_file(Path(d) / "config.json"))


@FUZZ
@given(value=json_values)
def test_config_json_any_json(value):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(json.dumps(value))
        loads_cleanly(Path(d), lambda: HymbaConfig.from_json_file(Path(d) / "config.json"))


# ---- safetensors headers (through load_pretrained and info) ---------------------------------------

def _safetensors(header, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F8_E4M3", "XYZ"]) | json_values,
    "shape": st.lists(st.integers(-2, 70), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(-1, 300), min_size=0, max_size=3) | json_values,
})
headers = st.dictionaries(st.sampled_from(["model.embed_tokens.weight", "model.final_layernorm.weight",
                                           "__metadata__", "x"]) | st.text(max_size=6),
                          entries | json_values, max_size=4)


def _checkpoint(d: Path, weights: bytes) -> None:
    (d / "config.json").write_text(json.dumps(TINY))
    (d / "model.safetensors").write_bytes(weights)


def _load_checkpoint(d: Path):
    from hymba_deploy.info import model_info
    loads_cleanly(d, lambda: model_info(str(d)))
    loads_cleanly(d, lambda: load_pretrained(d))


@FUZZ
@given(header=headers, data=st.binary(max_size=300))
def test_safetensors_header_any_structure(header, data):
    with tempfile.TemporaryDirectory() as d:
        _checkpoint(Path(d), _safetensors(header, data))
        _load_checkpoint(Path(d))


@FUZZ
@given(raw=st.binary(max_size=300), length=st.none() | st.integers(0, 2**64 - 1))
def test_safetensors_any_bytes(raw, length):
    with tempfile.TemporaryDirectory() as d:
        _checkpoint(Path(d), (struct.pack("<Q", length) if length is not None else b"") + raw)
        _load_checkpoint(Path(d))


# ---- sharded indexes ------------------------------------------------------------------------------

@FUZZ
@given(index=json_values | st.fixed_dictionaries({"weight_map": st.dictionaries(
    st.sampled_from(["model.embed_tokens.weight", "a", "b"]) | st.text(max_size=5),
    st.sampled_from(["a.safetensors", "b.safetensors", "../a.safetensors", "", "a\0b", "."]) | json_values,
    max_size=4)}))
def test_sharded_index_any_content(index):
    import torch
    from safetensors.torch import save_file
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "config.json").write_text(json.dumps(TINY))
        save_file({"a": torch.zeros(2), "b": torch.ones(3)}, d / "a.safetensors")
        save_file({"model.embed_tokens.weight": torch.zeros(257, 64)}, d / "b.safetensors")
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
        _load_checkpoint(d)


# ---- export manifests -----------------------------------------------------------------------------

MANIFEST = {"model": "tiny", "seed": 0, "eviction": "upstream",
            "graphs": {"prefill": {"files": {"prefill.onnx": {"bytes": 3, "sha256": "0" * 64}}}}}


@FUZZ
@given(data=st.data(), graph=st.binary(max_size=8))
def test_manifest_any_content(data, graph):
    from hymba_deploy.exporters.manifest import verify_export
    choice = data.draw(st.sampled_from(["mutated", "graph entry", "json", "bytes"]))
    if choice == "mutated":
        text = json.dumps(_mutated(MANIFEST, data))
    elif choice == "graph entry":
        manifest = json.loads(json.dumps(MANIFEST))
        manifest["graphs"][data.draw(st.sampled_from(["prefill", "decode", "x"]))] = data.draw(
            json_values | st.fixed_dictionaries({"files": st.dictionaries(
                st.sampled_from(["prefill.onnx", "decode.onnx", "../prefill.onnx", "/etc/passwd", "a\0b", ""]),
                json_values | st.fixed_dictionaries({"bytes": st.integers(-1, 10), "sha256": st.text(max_size=4)}),
                max_size=3)}))
        text = json.dumps(manifest)
    elif choice == "json":
        text = json.dumps(data.draw(json_values))
    else:
        text = data.draw(st.binary(max_size=200))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        (d / "prefill.onnx").write_bytes(graph)
        loads_cleanly(d, lambda: verify_export(d))


# ---- ONNX files -----------------------------------------------------------------------------------

def _onnx_model(metadata: dict) -> bytes:
    from onnx import TensorProto, helper
    vi = helper.make_tensor_value_info
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input_ids"], ["logits"])], "g",
                                                [vi("input_ids", TensorProto.FLOAT, ["batch", "seq"])],
                                                [vi("logits", TensorProto.FLOAT, ["batch", "seq"])]))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


OUR_METADATA = {"hymba.config": json.dumps(TINY), "hymba.graph": "prefill", "hymba.dtype": "float32",
                "hymba.eviction": "upstream", "hymba.max_seq_len": "128"}


def _load_onnx(path: Path) -> None:
    from hymba_deploy.engine import onnx_inputs
    proto = onnx_inputs.load_ours(path)
    meta = onnx_inputs.metadata(proto)
    onnx_inputs.input_shapes(proto, onnx_inputs.parse_profile(None, int(meta["max_seq_len"])))


@FUZZ
@given(raw=st.binary(max_size=300))
def test_onnx_any_bytes(raw):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "prefill.onnx").write_bytes(raw)
        loads_cleanly(Path(d), lambda: _load_onnx(Path(d) / "prefill.onnx"))


@FUZZ
@given(data=st.data())
def test_onnx_metadata_one_field_replaced(data):
    meta = dict(OUR_METADATA)
    key = data.draw(st.sampled_from(sorted(meta)))
    if data.draw(st.booleans()):
        meta[key] = data.draw(st.text(max_size=20) | json_values.map(json.dumps))
    else:
        del meta[key]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "prefill.onnx").write_bytes(_onnx_model(meta))
        loads_cleanly(Path(d), lambda: _load_onnx(Path(d) / "prefill.onnx"))


def test_onnx_fuzz_base_case_loads():
    """The unmutated model above is accepted: the fuzz tests start from a file the loader takes."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "prefill.onnx").write_bytes(_onnx_model(OUR_METADATA))
        _load_onnx(Path(d) / "prefill.onnx")


# ---- engine sidecars and engine files --------------------------------------------------------------

SIDECAR = {
    "graph": "decode", "engine": "decode.engine", "engine_bytes": 4, "backend": "tensorrt-rtx",
    "backend_version": "1.7.1.116", "target": "sm80", "compute_capability": "8.0", "op_version": 2,
    "profiles": [{"axes": {"batch": [1, 1, 4], "seq": [1, 8, 64]}, "inputs": {}}],
    "io": {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": [-1, 1]}],
           "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 1, 257]}]},
    "layers": [{"name": "scan_0", "type": "plugin_v3", "plugin": {"name": "SelectiveScan", "version": "1",
                                                                  "namespace": "hymba"}}],
    "plugin_layers": [{"name": "scan_0", "type": "plugin_v3"}],
    "plugin_library": {"path": "/nonexistent/libhymba_plugins.so", "sha256": "0" * 64},
}


def _load_engine(engine: Path) -> None:
    from hymba_deploy.engine.inspect import format_inspection, inspect_engine
    from hymba_deploy.runtime.tensorrt_runner import engine_unavailable
    loads_cleanly(engine.parent, lambda: format_inspection(inspect_engine(engine), all_layers=True))
    loads_cleanly(engine.parent, lambda: format_inspection(inspect_engine(engine.parent)))
    loads_cleanly(engine.parent, lambda: engine_unavailable(engine))


@FUZZ
@given(data=st.data())
def test_sidecar_any_content(data):
    choice = data.draw(st.sampled_from(["mutated", "json", "bytes"]))
    text = (json.dumps(_mutated(SIDECAR, data)).encode() if choice == "mutated" else
            json.dumps(data.draw(json_values)).encode() if choice == "json" else data.draw(st.binary(max_size=200)))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "decode.engine").write_bytes(b"\0" * 4)
        (Path(d) / "decode.engine.json").write_bytes(text)
        _load_engine(Path(d) / "decode.engine")


@FUZZ
@given(raw=st.binary(max_size=300))
def test_engine_file_any_bytes(raw):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "decode.engine").write_bytes(raw)
        (Path(d) / "decode.engine.json").write_text(json.dumps(SIDECAR))
        _load_engine(Path(d) / "decode.engine")


# ---- token id lists -------------------------------------------------------------------------------

@FUZZ
@given(text=st.text(max_size=40) | st.lists(st.integers(-10**30, 10**30), max_size=6).map(
    lambda ids: ",".join(map(str, ids))), max_new_tokens=st.integers(-10**6, 10**6))
def test_token_ids_any_text(text, max_new_tokens):
    from hymba_deploy.generation import check_request, parse_ids
    config = preset("tiny")
    with tempfile.TemporaryDirectory() as d:
        loads_cleanly(Path(d), lambda: check_request(config, parse_ids(text), max_new_tokens))


@pytest.mark.parametrize("text", ["1,2,3", " 4 , 5 ", "256"])
def test_token_ids_base_cases_parse(text):
    from hymba_deploy.generation import check_request, parse_ids
    check_request(preset("tiny"), parse_ids(text), 8)
