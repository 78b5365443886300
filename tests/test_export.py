"""ONNX export (issue #3): graph structure, ONNX Runtime parity with PyTorch, errors.

The module shares one fp32 export (through the CLI) and one fp16 export of `tiny` with sharpened
random weights saved as a checkpoint; each costs ~30-45 s per graph on 2 cores. Parity is judged with
Polygraphy's comparator, output by output, against the PyTorch model's cached generation.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")

from click.testing import CliRunner  # noqa: E402
from polygraphy.backend.onnxrt import OnnxrtRunner  # noqa: E402
from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc  # noqa: E402

from hymba_deploy import cli  # noqa: E402
from hymba_deploy.exporters import onnx_export, strip_function_bodies  # noqa: E402
from hymba_deploy.contract import (ATTRIBUTES, DOMAIN, GRAPH_INPUTS, LAYOUT_VERSION, OP_TYPES, OP_VERSION,  # noqa: E402
                                   PLUGIN_ATTRIBUTES, PLUGIN_VERSION)
from hymba_deploy.exporters.onnx_ops import register_schemas  # noqa: E402
from hymba_deploy import HymbaDeployError, load_model  # noqa: E402
from hymba_deploy.cache import HybridMambaAttentionDynamicCache as Cache  # noqa: E402
from hymba_deploy.checkpoint import save_pretrained  # noqa: E402

# Relative error bound per model dtype, checked elementwise against each tensor's scale:
# |onnx - torch| <= TOL · max|torch| (Polygraphy atol per output; rtol = TOL as well). fp32: the issue's
# 1e-5 (measured ≤ 7e-6 with sharpened weights). fp16: ~2x PyTorch's own fp16-vs-fp32 error on the same
# model (measured 1.6e-2; ONNX Runtime fp16 vs PyTorch fp16 1.7e-2).
TOLERANCES = {"float32": 1e-5, "float16": 3e-2}
DECODE_STEPS = 16
SEED = 0


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny shapes: one thread each for PyTorch and ONNX Runtime is fastest, and on a shared 2-core
    machine two spinning thread pools slow a decode step ~20x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    """`tiny` with sharpened random weights (attention far from uniform, so a wrong mask or eviction
    shows), saved as a checkpoint directory: the exports below also cover the checkpoint path."""
    from conftest import sharpen

    path = tmp_path_factory.mktemp("ckpt") / "tiny-sharp"
    save_pretrained(sharpen(load_model("tiny", seed=SEED), SEED), path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory, tiny_ckpt):
    out = tmp_path_factory.mktemp("onnx") / "tiny-fp32"
    result = CliRunner().invoke(cli.main, ["export", tiny_ckpt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "prefill.onnx" in result.output and "decode.onnx" in result.output
    return out


@pytest.fixture(scope="module")
def tiny_fp16(tmp_path_factory, tiny_ckpt):
    out = tmp_path_factory.mktemp("onnx") / "tiny-fp16"
    onnx_export.export(tiny_ckpt, out, dtype="float16")
    return out


def _torch_outputs(logits, cache) -> dict[str, np.ndarray]:
    out = {"logits": logits}
    out.update(cache.named_states(present=True))
    return {k: np.ascontiguousarray(v.float().numpy()) for k, v in out.items()}


def _compare(expected: dict, got: dict, dtype: str, what: str) -> None:
    """Polygraphy comparison of every output; also checks names and shapes."""
    assert set(got) == set(expected), f"{what}: output names differ"
    got = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in got.items()}
    tol = TOLERANCES[dtype]
    atol = {k: tol * max(float(np.abs(v).max()), 1e-30) for k, v in expected.items()}
    results = RunResults([("torch", [IterationResult(expected, runner_name="torch")]),
                          ("onnxrt", [IterationResult(got, runner_name="onnxrt")])])
    accuracy = Comparator.compare_accuracy(
        results, compare_func=SimpleCompareFunc(rtol=tol, atol=atol, check_shapes=True))
    assert bool(accuracy), f"{what}: ONNX Runtime differs from PyTorch by more than {tol} of an output's scale"


def _session(path: Path):
    """A one-thread CPU session that does not spin (see `_one_thread`)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _parity_run(out_dir: Path, spec: str, dtype: str, batch: int, prompt_len: int, steps: int) -> None:
    """Prefill, then `steps` greedy decode steps through decode.onnx fed its own caches, each step
    against PyTorch's cached generation. The decode steps' outputs are compared in one Polygraphy
    call per output name (every step's values, concatenated): same check, 1/steps the overhead."""
    model = load_model(spec, dtype=dtype)
    meta = {p.key: p.value for p in onnx.load(str(out_dir / "decode.onnx"), load_external_data=False).metadata_props}
    feed_back = dict(json.loads(meta["hymba.cache_io"]))            # present.X -> X
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(batch)
    expected_steps, got_steps = [], []
    with OnnxrtRunner(_session(out_dir / "prefill.onnx"), name="prefill") as prefill, \
            OnnxrtRunner(_session(out_dir / "decode.onnx"), name="decode") as decode:
        with torch.no_grad():
            logits = model(ids, cache)
        got = prefill.infer({"input_ids": ids.numpy(), "lengths": np.full(batch, prompt_len, dtype=np.int64)})
        _compare(_torch_outputs(logits, cache), got, dtype, f"prefill B={batch} T={prompt_len}")
        states = {feed_back[k]: v for k, v in got.items() if k != "logits"}
        token = logits[:, -1].argmax(-1, keepdim=True)                   # (B, 1), PyTorch's choice
        for step in range(steps):
            positions = np.full(batch, model.config.num_memory_tokens + prompt_len + step, dtype=np.int64)
            with torch.no_grad():
                logits = model(token, cache)
            got = decode.infer({"input_ids": token.numpy(), "positions": positions, **states})
            expected = _torch_outputs(logits, cache)
            assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in expected.items()}, step
            expected_steps.append(expected)
            got_steps.append(dict(got))
            states = {feed_back[k]: v for k, v in got.items() if k != "logits"}
            token = logits[:, -1].argmax(-1, keepdim=True)
    if steps:
        def joined(per_step):
            return {k: np.concatenate([s[k].ravel() for s in per_step]) for k in per_step[0]}
        _compare(joined(expected_steps), joined(got_steps), dtype, f"{steps} decode steps B={batch} T={prompt_len}")


# ---- the WindowedAttention node (op version 2) -------------------------------------------------

def test_windowed_attention_node_sees_each_rows_keys_only():
    """The function body of one `hymba::WindowedAttention` node in ONNX Runtime, rows with different
    kv_lengths (all keys, fewer, exactly Tq): each row equals the reference op on that row's valid keys
    alone (query i at key index kv_lengths[b] - Tq + i), whatever the keys after them hold."""
    from onnx import TensorProto, helper

    from hymba_deploy.contract import OP_VERSION
    from hymba_deploy.exporters.onnx_ops import function_protos
    from hymba_deploy.ops.windowed_attention import windowed_attention_ref
    B, Tq, Tk, Hq, Hkv, D, Dv, window, meta, scale = 3, 4, 11, 4, 2, 8, 6, 3, 2, 0.3
    F = TensorProto.FLOAT
    node = helper.make_node("WindowedAttention", ["q", "k", "v", "kv_lengths"], ["o"], domain=DOMAIN,
                            window=window, num_meta=meta, scale=scale)
    graph = helper.make_graph([node], "wa", [
        helper.make_tensor_value_info("q", F, ["b", "tq", Hq, D]), helper.make_tensor_value_info("k", F, ["b", "tk", Hkv, D]),
        helper.make_tensor_value_info("v", F, ["b", "tk", Hkv, Dv]),
        helper.make_tensor_value_info("kv_lengths", TensorProto.INT32, ["b"])],
        [helper.make_tensor_value_info("o", F, ["b", "tq", Hq, Dv])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, OP_VERSION)],
                              ir_version=10)
    model.functions.extend(function_protos(18))
    register_schemas()
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for shape in ((B, Tq, Hq, D), (B, Tk, Hkv, D), (B, Tk, Hkv, Dv)))
    kv_lengths = np.array([Tk, 7, Tq], dtype=np.int32)
    k[1, 7:] = v[1, 7:] = 1e4                                      # row 1's keys after its 7: never seen
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"q": q, "k": k, "v": v, "kv_lengths": kv_lengths})[0]
    for b, n in enumerate(kv_lengths):
        alone = windowed_attention_ref(*(torch.from_numpy(x[b:b + 1, :m]) for x, m in ((q, Tq), (k, n), (v, n))),
                                       window, meta, scale).numpy()
        assert np.abs(out[b:b + 1] - alone).max() < 1e-5, b


# ---- structure ---------------------------------------------------------------------------------

@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_one_hymba_node_per_op_per_layer(tiny_fp32, graph):
    proto = onnx.load(str(tiny_fp32 / f"{graph}.onnx"))
    cfg = load_model("tiny").config
    ops = Counter(n.op_type for n in proto.graph.node if n.domain == DOMAIN)
    assert ops == {op: cfg.num_hidden_layers for op in OP_TYPES}
    top = Counter(n.op_type for n in proto.graph.node)
    assert top["Loop"] == top["Scan"] == top["If"] == 0, "recurrences must live only in function bodies"
    assert sorted(f.name for f in proto.functions if f.domain == DOMAIN) == sorted(OP_TYPES)
    windows = [onnx.helper.get_attribute_value(a) for n in proto.graph.node if n.op_type == "WindowedAttention"
               for a in n.attribute if a.name == "window"]
    assert windows == [cfg.layer_window(i) for i in range(cfg.num_hidden_layers)]
    for node in proto.graph.node:
        if node.domain != DOMAIN:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert set(attrs) == set(ATTRIBUTES[node.op_type]) | set(PLUGIN_ATTRIBUTES), node.name  # no `_outputs`
        assert attrs["plugin_version"] == PLUGIN_VERSION.encode() == b"2" and attrs["plugin_namespace"] == b"hymba"
        assert attrs["layout_version"] == LAYOUT_VERSION            # a field every plugin declares
        assert len(node.input) == {"SelectiveScan": 9, "CausalConv1d": 4, "WindowedAttention": 4}[node.op_type]
        assert all(node.input), f"{node.name}: every plugin input is required"
        if node.op_type == "WindowedAttention":
            assert attrs["num_meta"] == cfg.num_memory_tokens
            assert attrs["scale"] == pytest.approx(cfg.qk_head_dim ** -0.5)
        if node.op_type == "SelectiveScan":
            assert attrs["softplus_threshold"] == 20.0
        if node.op_type == "CausalConv1d":
            assert attrs["activation"] == 1


@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_checker_and_shape_inference(tiny_fp32, graph):
    register_schemas()
    path = str(tiny_fp32 / f"{graph}.onnx")
    onnx.checker.check_model(path, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(onnx.load(path), strict_mode=True)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for node in inferred.graph.node:
        if node.op_type == "WindowedAttention":                       # op version 2: per-row key counts
            assert known[node.input[3]].type.tensor_type.elem_type == onnx.TensorProto.INT32, node.name
        if node.domain == DOMAIN:
            for name in node.output:
                t = known[name].type.tensor_type
                assert t.elem_type and len(t.shape.dim) in (3, 4), f"{node.op_type} output {name} not inferred"


def test_io_names_metadata_and_manifest(tiny_fp32):
    cfg = load_model("tiny").config
    manifest = json.loads((tiny_fp32 / "manifest.json").read_text())
    assert manifest["op_versions"]["WindowedAttention"]["opset_version"] == OP_VERSION
    for graph in ("prefill", "decode"):
        proto = onnx.load(str(tiny_fp32 / f"{graph}.onnx"), load_external_data=False)
        assert proto.ir_version <= 13
        inputs = [i.name for i in proto.graph.input]
        outputs = [o.name for o in proto.graph.output]
        past = [n for n, _, _ in Cache.state_names(cfg)]
        assert inputs == list(GRAPH_INPUTS[graph]) + (past if graph == "decode" else [])
        assert inputs[:2] == ["input_ids", "lengths" if graph == "prefill" else "positions"]
        assert outputs == ["logits"] + [n for n, _, _ in Cache.state_names(cfg, present=True)]
        consumers = [i for i in range(cfg.num_hidden_layers) if not cfg.is_producer(i)]
        assert consumers and not any(n.startswith(f"present.{i}.") for i in consumers for n in outputs)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(meta["hymba.config"])["num_hidden_layers"] == cfg.num_hidden_layers
        assert meta["hymba.graph"] == graph and meta["hymba.eviction"] == "upstream"
        versions = json.loads(meta["hymba.op_versions"])
        assert set(versions) == set(OP_TYPES)
        assert {(v["opset_version"], v["plugin_version"]) for v in versions.values()} == {(OP_VERSION, PLUGIN_VERSION)} \
            == {(2, "2")}
        assert {o.domain: o.version for o in proto.opset_import}[DOMAIN] == OP_VERSION
        if graph == "decode":
            assert meta["hymba.position_input"] == "positions"
        else:
            assert meta["hymba.lengths_input"] == "lengths"
        assert {"torch", "onnx", "onnxscript", "opset"} <= set(json.loads(meta["hymba.exporter"]))
        entry = manifest["graphs"][graph]
        assert [i["name"] for i in entry["inputs"]] == inputs
        assert entry["op_histogram"]["hymba::SelectiveScan"] == cfg.num_hidden_layers
        assert entry["files"][f"{graph}.onnx"]["bytes"] == (tiny_fp32 / f"{graph}.onnx").stat().st_size
        assert len(entry["files"][f"{graph}.onnx"]["sha256"]) == 64
        dims = {i["name"]: i["shape"] for i in entry["inputs"] + entry["outputs"]}
        assert dims["input_ids"][0] == "batch" and dims["logits"][0] == "batch"
        per_row = entry["inputs"][1]
        assert (per_row["dtype"], per_row["shape"]) == ("int64", ["batch"]), per_row
        if graph == "prefill":
            assert isinstance(dims["logits"][1], str)                      # dynamic sequence
        else:
            assert dims["logits"][1] == 1 and all(isinstance(dims[n][1], str) for n in past if ".key" in n)
    assert sorted(p.name for p in tiny_fp32.iterdir()) == ["decode.onnx", "manifest.json", "prefill.onnx"]


def test_strip_function_bodies(tiny_fp32):
    proto = strip_function_bodies(onnx.load(str(tiny_fp32 / "decode.onnx")))
    assert not [f for f in proto.functions if f.domain == DOMAIN]
    assert Counter(n.op_type for n in proto.graph.node if n.domain == DOMAIN)["SelectiveScan"] > 0


# ---- parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,prompt_len", [(1, 5), (3, 5), (1, 40), (3, 40)])
def test_fp32_prefill_and_decode_match_pytorch(tiny_fp32, tiny_ckpt, batch, prompt_len):
    # tiny: window 16 + 8 meta tokens, so 40 makes the window and the decode-time eviction bind.
    _parity_run(tiny_fp32, tiny_ckpt, "float32", batch, prompt_len, steps=DECODE_STEPS if batch == 3 else 4)


# tiny: window 16, 8 meta tokens: rows at window + meta, one token, above, below.
RAGGED_ROWS = [24, 1, 40, 12]
RAGGED_STEPS = 60                   # every row decodes ≥ 40 steps past window + meta


def _alone(model, ids: torch.Tensor, steps: int):
    """One prompt (1, n) alone through the reference: prefill, then `steps` greedy steps. Returns the
    prefill logits (n, V), the cache tensors after the prefill and after the last step ({name: (1, ...)}),
    the decode logits (steps, V) and the greedy tokens (steps + 1,)."""
    cache = model.new_cache(1)
    with torch.no_grad():
        logits = model(ids, cache)
        after_prefill = {k: v.clone() for k, v in cache.named_states(present=True).items()}
        tokens, decode_logits = [logits[0, -1].argmax()], []
        for _ in range(steps):
            step = model(tokens[-1].view(1, 1), cache)
            decode_logits.append(step[0, -1])
            tokens.append(step[0, -1].argmax())
    return logits[0], after_prefill, cache.named_states(present=True), torch.stack(decode_logits), torch.stack(tokens)


def _row_close(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    want = want.float().numpy()
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))
    assert err <= TOLERANCES["float32"], f"{what}: ONNX Runtime differs from the prompt alone by {err:.2e} of its scale"


def test_ragged_batch_each_row_as_its_prompt_alone(tiny_fp32, tiny_ckpt):
    """A right-padded batch of prompts of 24, 1, 40 and 12 tokens through prefill.onnx (`lengths`) and
    60 greedy steps of decode.onnx (`positions`, each row its own token), ONNX Runtime choosing its own
    tokens: every row generates exactly the tokens its prompt generates alone in PyTorch, its logits (valid
    positions, every step) and its cache tensors (valid entries, after the prefill and the last step)
    match the prompt alone within the fp32 bound."""
    model = load_model(tiny_ckpt)
    cfg, meta = model.config, model.config.num_memory_tokens
    feed_back = dict(Cache.io_pairs(cfg))
    B, T = len(RAGGED_ROWS), max(RAGGED_ROWS)
    ids = torch.zeros(B, T, dtype=torch.int64)
    for b, n in enumerate(RAGGED_ROWS):
        ids[b, :n] = torch.randint(1, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(10 + b))
    alone = [_alone(model, ids[b:b + 1, :n], RAGGED_STEPS) for b, n in enumerate(RAGGED_ROWS)]
    lengths = np.array(RAGGED_ROWS, dtype=np.int64)
    with OnnxrtRunner(_session(tiny_fp32 / "prefill.onnx")) as prefill, \
            OnnxrtRunner(_session(tiny_fp32 / "decode.onnx")) as decode:
        out = prefill.infer({"input_ids": ids.numpy(), "lengths": lengths})
        for b, (n, (logits, states, *_)) in enumerate(zip(RAGGED_ROWS, alone)):
            _row_close(out["logits"][b, :n], logits, f"row {b} prefill logits")
            for name, want in states.items():
                _row_close(out[name][b, :want.shape[1]], want[0], f"row {b} prefill {name}")
        tokens, logits = [out["logits"][np.arange(B), lengths - 1].argmax(-1)], []
        positions = meta + lengths
        for _ in range(RAGGED_STEPS):
            past = {feed_back[k]: v for k, v in out.items() if k != "logits"}
            out = decode.infer({"input_ids": tokens[-1][:, None].astype(np.int64), "positions": positions, **past})
            logits.append(out["logits"][:, 0])
            tokens.append(out["logits"][:, 0].argmax(-1))
            positions = positions + 1
    for b, (_, _, final, decode_logits, want_tokens) in enumerate(alone):
        assert [int(t[b]) for t in tokens] == want_tokens.tolist(), f"row {b}: greedy tokens differ"
        _row_close(np.stack([step[b] for step in logits]), decode_logits, f"row {b} decode logits")
        for name, want in final.items():
            _row_close(out[name][b, :want.shape[1]], want[0], f"row {b} after {RAGGED_STEPS} steps: {name}")


def test_fp16_export_runs_in_onnxruntime(tiny_fp16, tiny_ckpt):
    _parity_run(tiny_fp16, tiny_ckpt, "float16", batch=2, prompt_len=30, steps=DECODE_STEPS)


def test_bf16_export_is_typed_bf16(tmp_path):
    """bf16 graphs are for TensorRT (ONNX Runtime CPU lacks bf16 kernels, e.g. Expand): check types.
    Also exercises the non-default options (exact eviction, last-token logits)."""
    manifest = onnx_export.export("tiny", tmp_path, dtype="bfloat16", graphs="prefill", eviction="exact",
                                  prefill_logits="last")
    logits = next(o for o in manifest["graphs"]["prefill"]["outputs"] if o["name"] == "logits")
    assert logits["shape"][1] == 1 and logits["dtype"] == "float32"
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "prefill.onnx"), load_external_data=False).metadata_props}
    assert (meta["hymba.eviction"], meta["hymba.prefill_logits"], meta["hymba.dtype"]) == ("exact", "last", "bfloat16")
    register_schemas()
    onnx.checker.check_model(str(tmp_path / "prefill.onnx"), full_check=True)
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "prefill.onnx")), strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.value_info) + list(proto.graph.output)}
    BF16, F32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    for node in proto.graph.node:
        if node.domain == DOMAIN:
            assert types[node.output[0]] == BF16, node.name
            if node.op_type == "SelectiveScan":
                assert types[node.output[1]] == F32               # last_state is fp32 by contract
    assert types["logits"] == F32 and types["present.0.key"] == BF16 and types["present.ssm_state.0"] == BF16


# ---- errors: named, nothing left behind --------------------------------------------------------

def test_bad_requests_fail_cleanly(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(HymbaDeployError, match="neither a preset"):
        onnx_export.export("no-such-preset", out)
    with pytest.raises(HymbaDeployError, match="dtype"):
        onnx_export.export("tiny", out, dtype="float64")
    with pytest.raises(HymbaDeployError, match="--graphs"):
        onnx_export.export("tiny", out, graphs="prefill,train")
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(HymbaDeployError, match="config.json"):
        onnx_export.export(str(broken), out)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(HymbaDeployError, match="--out"):
        onnx_export.export("tiny", blocker / "sub")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "ckpt"]


def test_failure_mid_export_leaves_no_file(tmp_path, monkeypatch):
    out = tmp_path / "existing"
    out.mkdir()

    def half_written(model, graph, path, *args, **kwargs):
        path.write_bytes(b"partial")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(onnx_export, "export_graph", half_written)
    with pytest.raises(RuntimeError, match="crashed"):
        onnx_export.export("tiny", out)
    assert list(out.iterdir()) == []


def test_cli_reports_user_errors(tmp_path):
    result = CliRunner().invoke(cli.main, ["export", "tiny", "--out", str(tmp_path / "o"), "--dtype", "int8"])
    assert result.exit_code == 1 and "error:" in result.output and "dtype" in result.output
    assert not (tmp_path / "o").exists()


# ---- hymba-1.5b ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_hymba_1_5b_exports(tmp_path):
    """Random weights, fp16 (3 GB: weights go to external data). About 5 minutes and 6.4 GB of RAM on 2 cores (bench/results/export_hymba-1.5b_cpu_2026-11-27.json)."""
    manifest = onnx_export.export("hymba-1.5b", tmp_path, dtype="float16")
    for graph in ("prefill", "decode"):
        entry = manifest["graphs"][graph]
        assert entry["op_histogram"]["hymba::WindowedAttention"] == 32
        assert f"{graph}.onnx.data" in entry["files"]
        register_schemas()
        onnx.checker.check_model(str(tmp_path / f"{graph}.onnx"), full_check=True)
