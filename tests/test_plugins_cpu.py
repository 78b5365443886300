"""plugins/ without a GPU: the compiled libhymba_plugins.so driven through plugins/tests/harness.py.

Covers what TensorRT does before any kernel runs: creators from getCreators, field names and types,
createPlugin from fields (defaults, type checks, bad values → a clear logged error and no plugin),
getFieldsToSerialize → createPlugin(kRUNTIME) round trips with the layout_version guard, clone and
attachToContext, output types and shapes (mock IExprBuilder, symbolic dims), supportsFormatCombination,
configurePlugin / onShapeChange shape rules, workspace size, the extern "C" kernel shim's argument
checks, and (when tensorrt_rtx and onnx are installed) a real TensorRT-RTX parse + engine build (SM80, no GPU)
of an ONNX graph holding the three hymba nodes. The library comes from $HYMBA_PLUGIN_LIB, else build/plugins/, else it is built here (nvcc + cmake).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins" / "tests"))
import harness as H  # noqa: E402

F32, F16, BF16, I32, I8 = H.KFLOAT, H.KHALF, H.KBF16, H.KINT32, H.KINT8
OPS = ("SelectiveScan", "CausalConv1d", "WindowedAttention")

# name → (fields, input shapes, input types for T=fp16, expected output shapes, output types)
SCAN_IN = [(2, 7, 64), (2, 7, 64), (64, 16), (2, 7, 16), (2, 7, 16), (64,), (2, 7, 64), (64,), (2, 64, 16)]
SCAN_T = [F16, F16, F32, F16, F16, F32, F16, F32, F32]
CONV_IN = [(3, 5, 32), (32, 4), (32,), (3, 32, 4)]
ATTN_IN = [(2, 3, 25, 64), (2, 9, 5, 64), (2, 9, 5, 128)]
CASES = {
    "SelectiveScan": ({"softplus_threshold": 15.5}, SCAN_IN, SCAN_T, [(2, 7, 64), (2, 64, 16)], [F16, F32]),
    "CausalConv1d": ({"activation": 0}, CONV_IN, [F16] * 4, [(3, 5, 32), (3, 32, 4)], [F16, F16]),
    "WindowedAttention": ({"window": 1024, "num_meta": 128, "scale": 0.125}, ATTN_IN, [F16] * 3,
                          [(2, 3, 25, 128)], [F16]),
}
EXPECTED_FIELDS = {
    "SelectiveScan": {"softplus_threshold": "f", "layout_version": "i"},
    "CausalConv1d": {"activation": "i", "layout_version": "i"},
    "WindowedAttention": {"window": "i", "num_meta": "i", "scale": "f", "layout_version": "i"},
}


@pytest.fixture(scope="module")
def libs():
    try:
        return H.find_libraries(build_if_missing=False)
    except FileNotFoundError:
        if shutil.which("nvcc") is None or shutil.which("cmake") is None:
            pytest.skip("libhymba_plugins.so not built and nvcc/cmake missing: run plugins/build.sh first")
        return H.find_libraries(build_if_missing=True)


@pytest.fixture(scope="module")
def h(libs):
    return H.Harness(*libs)


@pytest.fixture()
def hc(h):
    h.clear_log()
    return h


def _all(name):
    fields, ins, types, outs, otypes = CASES[name]
    return fields, ins, types, outs, otypes


# ---------------------------------------------------------------------------------------------- creators

def test_creators_registered_in_both_namespaces(h):
    got = {(c["name"], c["version"], c["namespace"]) for c in h.creators()}
    want = {(op, "1", ns) for op in OPS for ns in ("hymba", "")}
    assert got == want
    assert all(c["interface"] == "PLUGIN CREATOR_V3ONE 1.0" for c in h.creators())


@pytest.mark.parametrize("name", OPS)
def test_field_names_match_serialized_fields(hc, name):
    creator = next(c for c in hc.creators() if c["name"] == name and c["namespace"] == "hymba")
    names = {k: v[0] for k, v in creator["fields"].items()}
    assert names == EXPECTED_FIELDS[name]
    p = hc.create(name, _all(name)[0])
    assert p is not None, hc.log
    ser = p.serialize()
    assert {k: v[0] for k, v in ser.items()} == names  # same names and types, style rule 4
    assert all(length == 1 for _, _, length in ser.values())


@pytest.mark.parametrize("name", OPS)
def test_exported_nodes_carry_every_declared_field(h, name):
    """The exporter writes each field a creator declares (the parser warns about a missing one, and
    `layout_version` has no default at build time otherwise), with the plugins' layout version."""
    from hymba_deploy.contract import ATTRIBUTES, LAYOUT_VERSION
    creator = next(c for c in h.creators() if c["name"] == name and c["namespace"] == "hymba")
    assert set(ATTRIBUTES[name]) == set(creator["fields"])
    assert ATTRIBUTES[name]["layout_version"] == LAYOUT_VERSION
    ok = h.create(name, {**_all(name)[0], "layout_version": LAYOUT_VERSION})
    assert ok is not None, h.log


ONNX_FIELD_TYPES = {1: "f", 2: "i"}       # onnx.AttributeProto FLOAT, INT -> the harness's field type letters


def field_mismatches(nodes, creators) -> list[str]:
    """Where exported `hymba` nodes and plugin creators disagree: for every node, its typed attributes (the
    plugin_version/plugin_namespace strings aside) against its creator's fields, names and types, both ways.
    `nodes`: onnx NodeProtos; `creators`: the harness's creator dicts ({"name", "namespace", "fields": {name:
    (type letter, length)}})."""
    from hymba_deploy.contract import DOMAIN, PLUGIN_ATTRIBUTES
    fields = {c["name"]: {k: v[0] for k, v in c["fields"].items()} for c in creators if c["namespace"] == DOMAIN}
    out = []
    for node in nodes:
        if node.domain != DOMAIN:
            continue
        attrs = {a.name: ONNX_FIELD_TYPES.get(a.type, f"onnx type {a.type}") for a in node.attribute
                 if a.name not in PLUGIN_ATTRIBUTES}
        want = fields.get(node.op_type)
        if want is None:
            out.append(f"{node.name}: no creator for op {node.op_type}")
            continue
        out += [f"{node.name} ({node.op_type}): attribute {k} ({t}) is not a creator field"
                for k, t in sorted(attrs.items()) if want.get(k) != t]
        out += [f"{node.name} ({node.op_type}): creator field {k} ({t}) is not a node attribute"
                for k, t in sorted(want.items()) if attrs.get(k) != t]
    return out


def test_exported_node_attributes_are_exactly_the_creator_fields(h, tmp_path_factory):
    """Every `hymba` node of both exported graphs of `tiny` carries exactly its creator's fields, names and
    types, and every creator field is on every node of its op: the exporter (contract.ATTRIBUTES) and the C++
    creators (each plugin's FieldCodec declarations) cannot drift apart unnoticed.

    How it was checked to fail (2026-12-01): renaming `softplus_threshold` in contract.ATTRIBUTES makes this
    test fail at the export already (the SelectiveScan function body reads the attribute: KeyError); a rename
    that reaches the comparison, on the node side or the creator side, is reported as the test below shows
    (without rebuilding the library)."""
    import onnx

    from deploy_helpers import exported_tiny
    folder = exported_tiny(tmp_path_factory)
    nodes = [n for g in ("prefill", "decode")
             for n in onnx.load(str(folder / f"{g}.onnx"), load_external_data=False).graph.node]
    assert {n.op_type for n in nodes if n.domain == "hymba"} == set(OPS)
    assert field_mismatches(nodes, h.creators()) == []


@pytest.mark.parametrize("side", ["node", "creator"])
def test_field_mismatches_reports_a_renamed_field_on_either_side(h, side):
    """The comparison above on a renamed field: a node attribute or a creator field named `scale_` for `scale`."""
    from onnx import helper

    from hymba_deploy.contract import PLUGIN_VERSION
    node = helper.make_node("WindowedAttention", ["q", "k", "v", "kv_lengths"], ["o"], name="attn", domain="hymba",
                            window=8, num_meta=2, scale=0.5, layout_version=1, plugin_version=PLUGIN_VERSION,
                            plugin_namespace="hymba")
    creators = [dict(c, fields=dict(c["fields"])) for c in h.creators()]
    assert field_mismatches([node], creators) == []
    if side == "node":
        node = helper.make_node("WindowedAttention", ["q", "k", "v", "kv_lengths"], ["o"], name="attn",
                                domain="hymba", window=8, num_meta=2, scale_=0.5, layout_version=1)
    else:
        attn = next(c for c in creators if c["name"] == "WindowedAttention" and c["namespace"] == "hymba")
        attn["fields"]["scale_"] = attn["fields"].pop("scale")
    assert sorted(field_mismatches([node], creators)) == [
        "attn (WindowedAttention): attribute scale_ (f) is not a creator field" if side == "node" else
        "attn (WindowedAttention): attribute scale (f) is not a creator field",
        "attn (WindowedAttention): creator field scale (f) is not a node attribute" if side == "node" else
        "attn (WindowedAttention): creator field scale_ (f) is not a node attribute"]


# ---------------------------------------------------------------------------------------------- fields

@pytest.mark.parametrize("name", OPS)
def test_serialize_round_trip_clone_attach(hc, name):
    fields = _all(name)[0]
    p = hc.create(name, fields)
    ser = p.serialize()
    for k, v in fields.items():
        assert ser[k][1] == pytest.approx(v, rel=0, abs=0)
    assert ser["layout_version"][1] == 1
    q = hc.round_trip(p)
    assert q is not None, hc.log
    assert q.serialize() == ser
    for other in (p.clone(), q.attach()):
        assert other is not None and other.serialize() == ser
    info = q.info
    assert (info["name"], info["version"], info["namespace"]) == (name, "1", "hymba")
    assert info["interfaces"] == ["PLUGIN 1.0", "PLUGIN_V3ONE_CORE 1.0", "PLUGIN_V3ONE_BUILD 1.0",
                                  "PLUGIN_V3ONE_RUNTIME 1.0"]


def test_round_trip_keeps_float_bits(hc):
    scale = 1.0 / 32 ** 0.5  # not exactly representable: the text round trip must keep the float32 bits
    p = hc.create("WindowedAttention", {"window": 0, "num_meta": 0, "scale": scale})
    q = hc.round_trip(p)
    assert q.serialize()["scale"] == p.serialize()["scale"]
    assert ctypes.c_float(p.serialize()["scale"][1]).value == ctypes.c_float(scale).value


def test_defaults(hc):
    assert hc.create("CausalConv1d", {}).serialize()["activation"][1] == 1
    assert hc.create("SelectiveScan", {}).serialize()["softplus_threshold"][1] == 20.0
    w = hc.create("WindowedAttention", {"scale": 0.125}).serialize()
    assert (w["window"][1], w["num_meta"][1]) == (0, 0)


@pytest.mark.parametrize("name,fields,needle", [
    ("CausalConv1d", {"activation": 2}, "'activation' must be 1 (SiLU) or 0"),
    ("CausalConv1d", {"activation": -1}, "'activation' must be 1 (SiLU) or 0"),
    ("CausalConv1d", {"activation": ("f", 1.0)}, "'activation' must be kINT32"),
    ("CausalConv1d", {"activation": ("I", 1)}, "'activation' must be kINT32"),
    ("CausalConv1d", {"activation": ("n", "")}, "must hold exactly one value"),
    ("WindowedAttention", {"window": 8}, "'scale' is required"),
    ("WindowedAttention", {"scale": 0.0}, "'scale' is required, a finite float > 0"),
    ("WindowedAttention", {"scale": -0.5}, "'scale' is required, a finite float > 0"),
    ("WindowedAttention", {"scale": ("d", 0.125)}, "'scale' must be kFLOAT32"),
    ("WindowedAttention", {"scale": 0.125, "window": ("f", 8.0)}, "'window' must be kINT32"),
    ("WindowedAttention", {"scale": 0.125, "num_meta": -1}, "'num_meta' must be >= 0"),
    ("SelectiveScan", {"softplus_threshold": float("inf")}, "'softplus_threshold' must be a finite float"),
    ("SelectiveScan", {"softplus_threshold": 20}, "'softplus_threshold' must be kFLOAT32"),
])
def test_bad_field_is_a_clear_error(hc, name, fields, needle):
    assert hc.create(name, fields) is None
    assert needle in hc.log, hc.log
    assert f"{name}:" in hc.log  # the message names the plugin


def test_unknown_field_is_ignored_with_warning(hc):
    p = hc.create("CausalConv1d", {"activation": 0, "plugin_version": 1})
    assert p is not None and p.serialize()["activation"][1] == 0
    assert "WARNING" in hc.log and "unknown field 'plugin_version'" in hc.log


def test_stale_engine_fails_loudly(hc):
    # A rebuild (kRUNTIME) needs the current layout_version; the ONNX parser's build phase does not.
    assert hc.create("CausalConv1d", "activation=i:1", H.PHASE_RUNTIME) is None
    assert "lack layout_version" in hc.log
    hc.clear_log()
    assert hc.create("CausalConv1d", "activation=i:1;layout_version=i:2", H.PHASE_RUNTIME) is None
    assert "layout_version 2 is not the 1" in hc.log
    assert hc.create("CausalConv1d", "activation=i:1;layout_version=i:1", H.PHASE_RUNTIME) is not None
    assert hc.create("CausalConv1d", "activation=i:1", H.PHASE_BUILD) is not None


def test_unknown_creator_version(hc):
    assert hc.create("CausalConv1d", {}, version="2") is None
    assert hc.create("CausalConv1d", {}, namespace="") is not None  # the TensorRT-RTX alias


# ---------------------------------------------------------------------------------------------- shapes, types

@pytest.mark.parametrize("name", OPS)
def test_output_shapes_and_types(hc, name):
    fields, ins, types, outs, otypes = _all(name)
    p = hc.create(name, fields)
    r, shapes = p.output_shapes(ins, len(outs))
    assert r == 0 and shapes == outs
    for t in (F32, F16, BF16):
        tt = [t if x != F32 else F32 for x in types] if name == "SelectiveScan" else [t] * len(types)
        r, ot = p.output_types(tt, len(outs))
        want = [t if x != F32 else F32 for x in otypes] if name == "SelectiveScan" else [t] * len(outs)
        assert r == 0 and ot == want
    assert p.workspace(ins + outs, types + otypes, len(ins)) == 0


def test_output_shapes_are_symbolic_copies(hc):
    # Negative extents are symbols: outputs must reuse the input expressions, not constants.
    p = hc.create("SelectiveScan", {})
    ins = [(-1, -2, 64), (-1, -2, 64), (64, 16), (-1, -2, 16), (-1, -2, 16), (64,), (-1, -2, 64), (64,),
           (-1, 64, 16)]
    r, shapes = p.output_shapes(ins, 2)
    assert r == 0 and shapes == [(-1, -2, 64), (-1, 64, 16)]
    p = hc.create("WindowedAttention", {"scale": 0.125})
    r, shapes = p.output_shapes([(-1, -3, 25, 64), (-1, -4, 5, 64), (-1, -4, 5, 128)], 1)
    assert r == 0 and shapes == [(-1, -3, 25, 128)]
    p = hc.create("CausalConv1d", {})
    r, shapes = p.output_shapes([(-1, -2, 3200), (3200, 4), (3200,), (-1, 3200, 4)], 2)
    assert r == 0 and shapes == [(-1, -2, 3200), (-1, 3200, 4)]


@pytest.mark.parametrize("name", OPS)
def test_output_types_reject_integers_and_mixes(hc, name):
    fields, ins, types, outs, _ = _all(name)
    p = hc.create(name, fields)
    r, _ = p.output_types([I32] * len(types), len(outs))
    assert r != 0 and "input 0 has type kINT32" in hc.log
    mixed = list(types)
    mixed[1] = BF16  # input 1 is T: must equal input 0's fp16
    r, _ = p.output_types(mixed, len(outs))
    assert r != 0


@pytest.mark.parametrize("name", OPS)
def test_supports_format_combination(hc, name):
    fields, ins, types, outs, otypes = _all(name)
    p = hc.create(name, fields)
    shapes, all_types = ins + outs, types + otypes
    n = len(shapes)
    linear = [H.KLINEAR] * n
    for pos in range(n):
        assert p.supports(pos, shapes, all_types, linear, len(ins)), pos
        other = list(linear)
        other[pos] = H.KCHW2
        assert not p.supports(pos, shapes, all_types, other, len(ins)), f"non-linear format accepted at {pos}"
        bad = list(all_types)
        bad[pos] = I8
        assert not p.supports(pos, shapes, bad, linear, len(ins)), f"int8 accepted at {pos}"
    assert not p.supports(n, shapes, all_types, linear, len(ins))  # out of range
    if name == "SelectiveScan":
        t = list(all_types)
        t[2] = F16  # A must be fp32
        assert not p.supports(2, shapes, t, linear, len(ins))
        t = list(all_types)
        t[8] = F16  # initial_state: fp32 or T
        assert p.supports(8, shapes, t, linear, len(ins))
        t[8] = BF16
        assert not p.supports(8, shapes, t, linear, len(ins))
        t = list(all_types)
        t[10] = F16  # last_state is fp32
        assert not p.supports(10, shapes, t, linear, len(ins))


def _reshape(ins, idx, shape):
    out = list(ins)
    out[idx] = shape
    return out


@pytest.mark.parametrize("name,ins,needle", [
    ("SelectiveScan", _reshape(SCAN_IN, 1, (2, 7, 63)), "dt and x dims disagree"),
    ("SelectiveScan", _reshape(SCAN_IN, 3, (2, 7, 8)), "B and A d_state disagree"),
    ("SelectiveScan", _reshape(SCAN_IN, 8, (2, 64)), "'initial_state' must have rank 3"),
    ("SelectiveScan", _reshape(_reshape(_reshape(_reshape(SCAN_IN, 2, (64, 33)), 3, (2, 7, 33)), 4, (2, 7, 33)),
                               8, (2, 64, 33)), "d_state (A's last dim) must be in 1..32"),
    ("CausalConv1d", _reshape(_reshape(CONV_IN, 1, (32, 5)), 3, (3, 32, 5)), "kernel width K"),
    ("CausalConv1d", _reshape(CONV_IN, 2, (31,)), "bias and x dim disagree"),
    ("CausalConv1d", _reshape(CONV_IN, 3, (3, 32, 3)), "conv_state and weight width disagree"),
    ("WindowedAttention", [(2, 10, 25, 64), (2, 9, 5, 64), (2, 9, 5, 128)], "10 queries over only 9 keys"),
    ("WindowedAttention", [(2, 3, 24, 64), (2, 9, 5, 64), (2, 9, 5, 128)], "not a multiple of 5 kv heads"),
    ("WindowedAttention", [(2, 3, 25, 64), (2, 9, 5, 64), (2, 9, 5, 96)], "v head dim 96 unsupported"),
    ("WindowedAttention", [(2, 3, 25, 66), (2, 9, 5, 66), (2, 9, 5, 128)], "q/k head dim 66 unsupported"),
    ("WindowedAttention", [(2, 3, 25, 64), (2, 9, 5, 32), (2, 9, 5, 128)], "q and k head dim disagree"),
])
def test_shape_rules(hc, name, ins, needle):
    fields, _, types, outs, otypes = _all(name)
    p = hc.create(name, fields)
    assert p.configure(ins + outs, types + otypes, len(ins)) != 0
    assert needle in hc.log, hc.log
    hc.clear_log()
    assert p.on_shape_change(ins + outs, types + otypes, len(ins)) != 0
    assert needle in hc.log, hc.log


@pytest.mark.parametrize("name", OPS)
def test_configure_accepts_good_and_dynamic_shapes(hc, name):
    fields, ins, types, outs, otypes = _all(name)
    p = hc.create(name, fields)
    assert p.configure(ins + outs, types + otypes, len(ins)) == 0, hc.log
    assert p.on_shape_change(ins + outs, types + otypes, len(ins)) == 0, hc.log
    dyn = [tuple(-1 if (i == 0 or (i == 1 and len(s) > 2)) else d for i, d in enumerate(s)) for s in ins]
    assert p.configure(dyn + outs, types + otypes, len(ins)) == 0, hc.log  # -1: decided at run time
    assert p.on_shape_change(dyn + outs, types + otypes, len(ins)) != 0  # but not at enqueue time


# ---------------------------------------------------------------------------------------------- kernel shim

def test_kernel_shim_rejects_bad_arguments_without_touching_the_gpu(libs):
    shim = H.KernelShim(libs[0])
    lib = shim.lib
    fake = 16  # never dereferenced: the checks run before any CUDA call
    rc = lib.hymba_causal_conv1d(1, 4, 8, 5, 0, 1, fake, None, fake, None, None, None, None, fake, None, None, None,
                                 None)
    assert rc != 0 and "width K must be in 1..4" in shim.error()
    rc = lib.hymba_causal_conv1d(1, 4, 8, 4, 7, 1, fake, None, fake, None, None, None, None, fake, None, None, None,
                                 None)
    assert rc != 0 and "dtype codes" in shim.error()
    rc = lib.hymba_windowed_attention(1, 2, 4, 4, 2, 64, 96, 0, 0, 0, 0.125, fake, None, fake, None, fake, None,
                                      fake, None, None)
    assert rc != 0 and "v head dim must be 32, 64 or 128" in shim.error()
    rc = lib.hymba_windowed_attention(1, 5, 4, 4, 2, 64, 64, 0, 0, 0, 0.125, fake, None, fake, None, fake, None,
                                      fake, None, None)
    assert rc != 0 and "Tq > Tk" in shim.error()
    rc = lib.hymba_selective_scan(1, 4, 8, 40, 0, 0, 20.0, fake, None, fake, None, fake, None, fake, None, fake,
                                  None, None, None, None, None, None, None, fake, None, None, None, None)
    assert rc != 0 and "d_state must be in 1..32" in shim.error()


def test_library_exports_only_the_entry_points(libs):
    lib = ctypes.CDLL(str(libs[0]))
    for sym in ("getCreators", "setLoggerFinder", "hymba_selective_scan", "hymba_causal_conv1d",
                "hymba_windowed_attention", "hymba_kernel_error"):
        assert hasattr(lib, sym), sym
    assert not hasattr(lib, "_ZN5hymba19selectiveScanLaunchERKNS_19SelectiveScanParamsEP11CUstream_st")


# ---------------------------------------------------------------------------------------------- TensorRT-RTX

RTX_SCRIPT = r"""
import sys
import onnx
from onnx import helper, TensorProto as TP
import tensorrt_rtx as trt

lib, dt = sys.argv[1], {"bf16": TP.BFLOAT16, "fp16": TP.FLOAT16, "fp32": TP.FLOAT}[sys.argv[2]]
version, op_version = sys.argv[3], int(sys.argv[4])             # contract.PLUGIN_VERSION, contract.OP_VERSION
B, T, D, N, K, Hq, Hkv, Dqk, Dv = "batch", "seq", 64, 8, 4, 4, 2, 16, 32
vi = helper.make_tensor_value_info
inputs = [vi("x", dt, [B, T, D]), vi("w", dt, [D, K]), vi("cb", dt, [D]), vi("cs", dt, [B, D, K]),
          vi("dt", dt, [B, T, D]), vi("A", TP.FLOAT, [D, N]), vi("Bm", dt, [B, T, N]), vi("Cm", dt, [B, T, N]),
          vi("Dv", TP.FLOAT, [D]), vi("z", dt, [B, T, D]), vi("dtb", TP.FLOAT, [D]), vi("h0", TP.FLOAT, [B, D, N]),
          vi("q", dt, [B, T, Hq, Dqk]), vi("k", dt, [B, "kv", Hkv, Dqk]), vi("v", dt, [B, "kv", Hkv, Dv]),
          vi("kv_lengths", TP.INT32, [B])]
nodes = [helper.make_node("CausalConv1d", ["x", "w", "cb", "cs"], ["xc", "cs_out"], domain="hymba", activation=1,
                          plugin_version=version),
         helper.make_node("SelectiveScan", ["xc", "dt", "A", "Bm", "Cm", "Dv", "z", "dtb", "h0"], ["y", "h_out"],
                          domain="hymba", softplus_threshold=20.0, plugin_version=version),
         helper.make_node("WindowedAttention", ["q", "k", "v", "kv_lengths"], ["o"], domain="hymba", window=8,
                          num_meta=4, scale=0.25, plugin_version=version)]
outputs = [vi("y", dt, [B, T, D]), vi("h_out", TP.FLOAT, [B, D, N]), vi("cs_out", dt, [B, D, K]),
           vi("o", dt, [B, T, Hq, Dv])]
model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), ir_version=10,
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("hymba", op_version)])
logger = trt.Logger(trt.Logger.ERROR)
assert trt.get_plugin_registry().load_library(lib) is not None, "load_library failed"
builder = trt.Builder(logger)
net = builder.create_network(0)
parser = trt.OnnxParser(net, logger)
assert parser.parse(model.SerializeToString()), [parser.get_error(i) for i in range(parser.num_errors)]
print("layers", [str(net.get_layer(i).type) for i in range(net.num_layers)])
cfg = builder.create_builder_config()
cfg.num_compute_capabilities = 1
cfg.set_compute_capability(trt.ComputeCapability.SM80, 0)
prof = builder.create_optimization_profile()
for i in range(net.num_inputs):
    t = net.get_input(i)
    dims = [list(t.shape) for _ in range(3)]
    for j, s in enumerate(t.shape):
        if s == -1:
            dims[0][j], dims[1][j], dims[2][j] = 1, (2 if j == 0 else 16), (4 if j == 0 else 64)
    prof.set_shape(t.name, *dims)
cfg.add_optimization_profile(prof)
eng = builder.build_serialized_network(net, cfg)
assert eng is not None, "engine build failed"
print("engine_bytes", len(bytes(eng)))
"""


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_tensorrt_rtx_builds_an_engine_with_the_plugins(libs, tmp_path, dtype):
    """The real parser and builder (TensorRT-RTX 1.7, CPU-only, SM80): hymba nodes of this op version
    (WindowedAttention with its kv_lengths input) → PLUGIN_V3 layers → engine."""
    import importlib.util
    for mod in ("tensorrt_rtx", "onnx"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed (pip install -e .[tensorrt-rtx,onnx])")
    from hymba_deploy.engine.backends import LibraryPathNeeded, fix_rtx_library

    env = dict(os.environ)
    try:   # the parser dlopen()s the unversioned libtensorrt_rtx.so (docs/tensorrt-notes.md)
        fix_rtx_library()
    except LibraryPathNeeded as e:
        env["LD_LIBRARY_PATH"] = f"{e.directory}:{env.get('LD_LIBRARY_PATH', '')}"
    script = tmp_path / "rtx_build.py"
    script.write_text(RTX_SCRIPT)
    from hymba_deploy.contract import OP_VERSION, PLUGIN_VERSION
    proc = subprocess.run([sys.executable, str(script), str(libs[0]), dtype, PLUGIN_VERSION, str(OP_VERSION)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "layers ['LayerType.PLUGIN_V3', 'LayerType.PLUGIN_V3', 'LayerType.PLUGIN_V3']" in proc.stdout
    assert "engine_bytes" in proc.stdout


# ---------------------------------------------------------------------------------------------- kernel choice

def test_kernel_choice_is_set_by_name_and_its_environment_variable_read_once(libs):
    """hymba_set_kernel_choice / hymba_kernel_choice (plugins/common/kernel_choice.h): a forced choice holds until
    restored, unknown names are refused without changing it, and HYMBA_ATTN_DECODE is the initial value of a
    fresh process (an unknown value leaves "auto"). The GPU tests check that the launcher follows it."""
    shim = H.KernelShim(libs[0])
    before = shim.kernel_choice("attention")
    with shim.forced("attention", "flash"):
        assert shim.kernel_choice("attention") == "flash"
        with pytest.raises(ValueError, match="unknown family or choice"):
            shim.set_kernel_choice("attention", "fastest")
        assert shim.kernel_choice("attention") == "flash"
    assert shim.kernel_choice("attention") == before
    with pytest.raises(ValueError, match="unknown kernel family"):
        shim.kernel_choice("scan")
    probe = ("import sys; sys.path.insert(0, sys.argv[2]); import harness as H; "
             "print(H.KernelShim(sys.argv[1]).kernel_choice('attention'))")
    for env, want in (("mma", "mma"), ("fastest", "auto")):
        proc = subprocess.run([sys.executable, "-c", probe, str(libs[0]), str(REPO / "plugins" / "tests")],
                              capture_output=True, text=True, env=dict(os.environ, HYMBA_ATTN_DECODE=env), timeout=60)
        assert proc.stdout.strip() == want, proc.stderr


@pytest.mark.parametrize("case", __import__("scan_state_emulate").CASES, ids=lambda c: c[0])
def test_state_parallel_scan_algorithm_matches_the_reference(case):
    """plugins/tests/scan_state_emulate.py runs the state-parallel scan kernel's program (its offsets, tiles,
    butterfly reduce-scatter and masked lanes) in numpy against selective_scan_ref: a wrong shuffle partner or
    a skipped zero-fill fails here without a GPU. The kernel itself is checked on the GPU by tests/gpu."""
    import scan_state_emulate
    assert scan_state_emulate._case(*case)


@pytest.mark.parametrize("case", __import__("scan_chunked_emulate").CASES, ids=lambda c: c[0])
def test_chunked_scan_algorithm_matches_the_reference(case):
    """plugins/tests/scan_chunked_emulate.py runs the chunked scan kernel's program (its plan, offsets, tiles,
    zero-state pass, carry walk in shared memory and rescan) in numpy against selective_scan_ref: a wrong chunk
    offset or a carry read before it is written fails here without a GPU. The kernel itself is checked on the
    GPU by plugins/tests/scan_chunked_bench.py and tests/gpu (the launcher's choice)."""
    import scan_chunked_emulate
    assert scan_chunked_emulate.check(case)
