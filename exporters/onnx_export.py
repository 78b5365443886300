"""`hymba-deploy export`: Hymba -> `prefill.onnx` + `decode.onnx` + `manifest.json`.

Pipeline per graph: wrap the model (`graphs.py`), `torch.onnx.export(dynamo=True)` with the
translation table (`translation.py`) so each `torch.ops.hymba.*` call becomes one `hymba` node, then
post-process the ONNX file: strip exporter artefacts from the `hymba` nodes, attach the model-local
function bodies (`onnx_ops.py`), pin the IR version, write metadata, check (full checker + strict
shape inference). All files go to a temporary folder inside DIR and are renamed into place at the
end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from hymba_deploy.cache import EVICTION_RULES, HybridMambaAttentionDynamicCache as Cache
from hymba_deploy.checkpoint import load_model, parse_dtype
from hymba_deploy import contract
from hymba_deploy.contract import GRAPHS, METADATA_PREFIX, graph_file
from hymba_deploy.errors import HymbaDeployError
from hymba_deploy.fileio import sha256_file

from . import onnx_ops
from .manifest import MANIFEST
from .graphs import DecodeGraph, PrefillGraph, position_layer

PREFILL_LOGITS = {"all": 0, "last": 1}     # -> HymbaForCausalLM.forward(logits_to_keep=...)
DEFAULT_OPSET = 18
MAX_IR_VERSION = 13                 # onnxruntime(-gpu) 1.30 reads IR ≤ 13
EXTERNAL_DATA_THRESHOLD = 2 ** 31 - 2 ** 24   # protobuf's 2 GiB limit, with room for the graph

_ONNX_DTYPE_NAMES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 9: "bool"}


# ---- the graphs --------------------------------------------------------------------------------

def _example_inputs(model, graph: str, max_seq_len: int, eviction: str, batch: int = 2):
    """Example inputs whose dynamic sizes are ≥ 2 and, where possible, distinct (no 0/1
    specialisation, no accidental equality between independent axes), within the Dim ranges; ragged
    rows (different lengths / positions), each within what the cache tensors hold."""
    cfg = model.config
    seq = min(5, max_seq_len)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq if graph == "prefill" else 1))
    if graph == "prefill":
        lengths = torch.tensor([max(1, seq - b) for b in range(batch)], dtype=torch.int64)
        return (ids, lengths)
    meta = cfg.num_memory_tokens
    probe = model.new_cache(batch, eviction)
    keep = min((probe.keep(i) for i in range(cfg.num_hidden_layers) if probe.keep(i) is not None), default=3)
    lengths = {"global": meta + min(7, max_seq_len), "window": meta + min(3, keep)}
    # Row b has seen meta + 3 - b tokens (≥ meta + 1): every row's valid entries fit both past lengths.
    positions = torch.tensor([meta + max(1, min(3, keep) - b) for b in range(batch)], dtype=torch.int64)
    past = []
    for _, kind, layer in Cache.state_names(cfg):
        S = lengths["window" if probe.keep(layer) is not None else "global"]
        scale = 0.1 if kind == "ssm_state" else 1.0
        past.append(torch.randn(Cache.state_shape(cfg, kind, batch, S), dtype=model.dtype) * scale)
    return (ids, positions, *past)


def _dynamic_shapes(model, graph: str, max_seq_len: int, eviction: str):
    from torch.export import Dim

    cfg = model.config
    batch = Dim("batch", min=1, max=4096)
    if graph == "prefill":
        return ({0: batch, 1: Dim("seq", min=1, max=max_seq_len)}, {0: batch})    # input_ids, lengths
    meta = cfg.num_memory_tokens
    probe = model.new_cache(1, eviction)
    keeps = {probe.keep(i) for i in range(cfg.num_hidden_layers) if cfg.is_producer(i)} - {None}
    past = Dim("past", min=meta + 1, max=meta + max_seq_len)
    past_window = Dim("past_window", min=meta + 1, max=meta + max(keeps)) if keeps else None
    states = []
    for _, kind, layer in Cache.state_names(cfg):
        if kind in ("key", "value"):
            states.append({0: batch, 1: past_window if probe.keep(layer) is not None else past})
        else:
            states.append({0: batch})
    return ({0: batch}, {0: batch}, tuple(states))      # DecodeGraph.forward(input_ids, positions, *past)


def _io_names(model, graph: str):
    cfg = model.config
    past = [] if graph == "prefill" else [n for n, _, _ in Cache.state_names(cfg)]
    inputs = list(contract.GRAPH_INPUTS[graph]) + past
    outputs = ["logits"] + [n for n, _, _ in Cache.state_names(cfg, present=True)]
    return inputs, outputs


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and warnings on stdout/stderr; keep the CLI's output readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_graph(model, graph: str, path: Path, opset: int = DEFAULT_OPSET, max_seq_len: int | None = None,
                 eviction: str = "upstream", prefill_logits: str = "all") -> None:
    """Export one graph of `model` to `path` (plus `path.name + '.data'` beside it when > 2 GB).

    `prefill_logits`: "all" (logits of every prompt token) or "last" (only the last one, what
    generation needs; avoids a (B, T, vocab) fp32 output)."""
    from .translation import translation_table

    if graph not in GRAPHS:
        raise HymbaDeployError(f"graph {graph!r}: choose from {', '.join(GRAPHS)}")
    cfg = model.config
    max_seq_len = max_seq_len or cfg.seq_length
    if prefill_logits not in PREFILL_LOGITS:
        raise HymbaDeployError(f"prefill logits {prefill_logits!r}: choose one of {', '.join(PREFILL_LOGITS)}")
    if graph == "prefill":
        module = PrefillGraph(model, eviction, logits_to_keep=PREFILL_LOGITS[prefill_logits]).eval()
    else:
        module = DecodeGraph(model, eviction).eval()
    input_names, output_names = _io_names(model, graph)
    onnx_ops.register_schemas()
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(
            module, _example_inputs(model, graph, max_seq_len, eviction), dynamo=True, opset_version=opset,
            input_names=input_names, output_names=output_names,
            dynamic_shapes=_dynamic_shapes(model, graph, max_seq_len, eviction),
            custom_translation_table=translation_table(), optimize=False, verbose=False)
        _optimize(program.model)
        big = sum(int(t.nbytes) for t in model.state_dict().values()) > EXTERNAL_DATA_THRESHOLD
        program.save(str(path), external_data=big)
    del program
    _postprocess(path, model, graph, opset, max_seq_len, eviction, prefill_logits)


def _optimize(model) -> None:
    """The exporter's `optimize=True` minus its pattern rewriter, which costs ~1/3 of the export
    time and finds nothing to fuse here: constant folding, dead-node removal, initializer
    deduplication, common-subexpression elimination."""
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants

    fold_constants(model, onnx_shape_inference=True)
    ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


# ---- post-processing ---------------------------------------------------------------------------

def _versions() -> dict:
    import onnx
    import onnxscript

    import hymba_deploy
    return {"hymba_deploy": hymba_deploy.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__}


def op_versions() -> dict:
    return {op: {"domain": contract.DOMAIN, "opset_version": contract.OP_VERSION,
                 "plugin_version": contract.PLUGIN_VERSION, "plugin_namespace": contract.PLUGIN_NAMESPACE,
                 "attributes": sorted(contract.ATTRIBUTES[op])}
            for op in contract.OP_TYPES}


def _postprocess(path: Path, model, graph: str, opset: int, max_seq_len: int, eviction: str,
                 prefill_logits: str) -> None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)     # weights stay where they are
    # 1. Exporter artefacts: keep only the attributes the plugin interface declares.
    for node in proto.graph.node:
        if node.domain == contract.DOMAIN:
            allowed = set(contract.ATTRIBUTES[node.op_type]) | set(contract.PLUGIN_ATTRIBUTES)
            keep = [a for a in node.attribute if a.name in allowed]
            del node.attribute[:]
            node.attribute.extend(keep)
    # 2. Function bodies for runtimes without the plugins, at the model's default opset.
    default_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    del proto.functions[:]
    proto.functions.extend(onnx_ops.function_protos(default_opset))
    if not any(o.domain == contract.DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(contract.DOMAIN, contract.OP_VERSION))
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    # 3. Metadata.
    cfg = model.config
    meta = {
        "config": cfg.to_json(),
        "graph": graph,
        "dtype": str(model.dtype).replace("torch.", ""),
        "eviction": eviction,
        "max_seq_len": str(max_seq_len),
        "op_versions": json.dumps(op_versions(), sort_keys=True),
        "exporter": json.dumps({**_versions(), "opset": default_opset, "ir_version": proto.ir_version},
                               sort_keys=True),
        # decode feeds output `present.X` back as input `X`:
        "cache_io": json.dumps([list(pair) for pair in Cache.io_pairs(cfg)]),
    }
    if graph == "decode":
        meta["position_input"] = contract.POSITIONS_INPUT
    else:
        meta["lengths_input"] = contract.LENGTHS_INPUT
        meta["prefill_logits"] = prefill_logits
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=METADATA_PREFIX + key, value=value)
    proto.producer_name = "hymba-deploy"
    proto.producer_version = _versions()["hymba_deploy"]
    onnx.save(proto, str(path))
    check_model(path)


def check_model(path: Path) -> None:
    """Full ONNX checker and strict shape inference (which infers every `hymba` output)."""
    import onnx

    onnx_ops.register_schemas()
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise RuntimeError(f"{path.name}: exported model fails the ONNX checker: {e}") from e


def strip_function_bodies(model_proto, op_types=contract.OP_TYPES):
    """Remove the `hymba` model-local function definitions (in place; returns the proto).

    TensorRT(-RTX) parsers expand a local function rather than use the plugin of the same name
    (tensorrt-notes.md), so the engine build removes the bodies and the `hymba` nodes map to the
    plugins `SelectiveScan`, `CausalConv1d`, `WindowedAttention` (version `plugin_version`).
    """
    keep = [f for f in model_proto.functions if not (f.domain == contract.DOMAIN and f.name in op_types)]
    del model_proto.functions[:]
    model_proto.functions.extend(keep)
    return model_proto


# ---- the manifest ------------------------------------------------------------------------------

def _value_info(vi) -> dict:
    t = vi.type.tensor_type
    dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
    return {"name": vi.name, "dtype": _ONNX_DTYPE_NAMES.get(t.elem_type, str(t.elem_type)), "shape": dims}


def describe(path: Path) -> dict:
    """Inputs, outputs, op histogram (top graph), function names, files with sizes and checksums."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    data_files = sorted({e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"})
    files = [path.name] + data_files
    return {
        "inputs": [_value_info(v) for v in proto.graph.input],
        "outputs": [_value_info(v) for v in proto.graph.output],
        "op_histogram": dict(sorted(Counter(
            (f"{n.domain}::" if n.domain else "") + n.op_type for n in proto.graph.node).items())),
        "functions": [f"{f.domain}::{f.name}" for f in proto.functions],
        "opset_import": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "ir_version": proto.ir_version,
        "metadata_keys": [p.key for p in proto.metadata_props],
        "files": {f: {"bytes": (path.parent / f).stat().st_size, "sha256": sha256_file(path.parent / f)} for f in files},
    }


# ---- the command -------------------------------------------------------------------------------

def parse_graphs(graphs) -> list[str]:
    items = [g.strip() for g in (graphs.split(",") if isinstance(graphs, str) else graphs) if g.strip()]
    bad = [g for g in items if g not in GRAPHS]
    if bad or not items:
        raise HymbaDeployError(f"--graphs {graphs!r}: give a comma-separated subset of {','.join(GRAPHS)}")
    return list(dict.fromkeys(items))


def _prepare_out_dir(out: Path) -> tuple[Path, list[Path]]:
    """Create DIR if needed and a private temporary folder in it; return it and the folders we created."""
    created = []
    for parent in reversed([out, *out.parents]):
        if not parent.exists():
            created.append(parent)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not out.is_dir():
            raise NotADirectoryError(str(out))
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".export-"))
    except OSError as e:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise HymbaDeployError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable directory") from None
    return tmp, created


def _remove_earlier_export(out: Path, keep: list[str], say) -> None:
    """Remove what an earlier export left in `out` that this one does not replace, manifest first: at no
    moment does a manifest sit beside graph files it does not describe (a crash leaves no manifest,
    which `build` and `check` refuse)."""
    (out / MANIFEST).unlink(missing_ok=True)
    for graph in GRAPHS:
        for name in (graph_file(graph), graph_file(graph) + ".data"):
            if name not in keep and (out / name).exists():
                (out / name).unlink()
                say(f"removed {out / name} of an earlier export (not part of this one)")


def export(spec: str, out_dir, graphs="prefill,decode", dtype=None, opset: int = DEFAULT_OPSET,
           max_seq_len: int | None = None, eviction: str = "upstream", seed: int = 0,
           prefill_logits: str = "all", progress: Callable[[str], None] | None = None) -> dict:
    """Export MODEL's graphs to DIR; return the manifest (also written as DIR/manifest.json)."""
    say = progress or (lambda msg: None)
    graphs = parse_graphs(graphs)
    if eviction not in EVICTION_RULES:
        raise HymbaDeployError(f"eviction rule {eviction!r}: choose one of {', '.join(EVICTION_RULES)}")
    if prefill_logits not in PREFILL_LOGITS:
        raise HymbaDeployError(f"prefill logits {prefill_logits!r}: choose one of {', '.join(PREFILL_LOGITS)}")
    if not isinstance(opset, int) or not 18 <= opset <= 23:
        raise HymbaDeployError(f"--opset {opset}: choose an ONNX opset between 18 and 23")
    if max_seq_len is not None and max_seq_len < 2:
        raise HymbaDeployError(f"--max-seq-len {max_seq_len}: must be at least 2")
    if dtype is not None:
        parse_dtype(dtype)                                  # reject a bad dtype before any work
    out = Path(out_dir)
    tmp, created = _prepare_out_dir(out)
    try:
        t0 = time.perf_counter()
        say(f"loading {spec}")
        model = load_model(spec, dtype=dtype, seed=seed)
        if "decode" in graphs:
            position_layer(model.config)
        manifest = {"model": spec, "seed": seed, "dtype": str(model.dtype).replace("torch.", ""), "eviction": eviction,
                    "prefill_logits": prefill_logits,
                    "opset": opset, "max_seq_len": max_seq_len or model.config.seq_length,
                    "parameters": model.num_parameters(), "op_versions": op_versions(),
                    "versions": _versions(), "graphs": {}}
        for graph in graphs:
            t = time.perf_counter()
            say(f"exporting {graph} graph")
            export_graph(model, graph, tmp / graph_file(graph), opset, max_seq_len, eviction, prefill_logits)
            manifest["graphs"][graph] = describe(tmp / graph_file(graph))
            manifest["graphs"][graph]["export_seconds"] = round(time.perf_counter() - t, 2)
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        # Everything written and checked: rename into place, weights first, manifest last.
        names = [f for g in manifest["graphs"].values() for f in g["files"] if not f.endswith(".onnx")]
        names += [graph_file(g) for g in graphs] + [MANIFEST]
        _remove_earlier_export(out, keep=names, say=say)
        for name in names:
            os.replace(tmp / name, out / name)
        say(f"wrote {', '.join(names)} to {out}")
        return manifest
    except BaseException:
        if created:
            shutil.rmtree(created[0], ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def format_summary(manifest: dict, out_dir) -> str:
    lines = [f"{manifest['model']} ({manifest['parameters']:,} parameters, {manifest['dtype']}, "
             f"opset {manifest['opset']}) -> {out_dir}"]
    for graph, info in manifest["graphs"].items():
        size = sum(f["bytes"] for f in info["files"].values())
        hymba = {k: v for k, v in info["op_histogram"].items() if k.startswith("hymba::")}
        lines.append(f"  {graph}.onnx: {len(info['inputs'])} inputs, {len(info['outputs'])} outputs, "
                     f"{sum(info['op_histogram'].values())} nodes ({', '.join(f'{k} x{v}' for k, v in hymba.items())}), "
                     f"{size / 2**20:.1f} MiB, {info['export_seconds']:.0f} s")
    return "\n".join(lines)
