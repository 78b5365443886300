"""What the engine build reads from an exported graph: its `hymba` nodes, metadata, inputs, and the
optimisation-profile shapes of each input derived from `--profile batch=MIN:OPT:MAX,seq=MIN:OPT:MAX`.

Dynamic axes of the exported graphs (exporters/onnx_export.py) and how the profile sets them:

    batch        batch
    seq          prompt tokens (prefill)
    past         meta + seq                            (decode: global layers' past K/V length)
    past_window  meta + min(seq, keep), keep = the SWA layers' stored tokens (decode: window layers)

The per-row inputs `lengths` (prefill) and `positions` (decode), int64 (batch,), follow the batch axis.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..config import HymbaConfig
from ..contract import (DOMAIN, GRAPHS, METADATA_PREFIX as META, OP_VERSION, PLUGIN_VERSION, REQUIRED_METADATA,
                        graph_file)
from ..errors import HymbaDeployError
from ..fileio import resolve_inside

DEFAULT_PROFILE = "batch=1:1:16,seq=1:128:MAX"


def load_graph(path: Path):
    """The graph without its external weights, whose files must lie in the graph's folder (`resolve_inside`)."""
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:                                   # protobuf raises a bare DecodeError
        raise HymbaDeployError(f"{path}: not a readable ONNX model ({e})") from None
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                resolve_inside(Path(path).parent, e.value, f"{path} (external weights of {t.name})")
    return proto


def load_ours(path: Path):
    """`load_graph`, refusing an ONNX that `hymba-deploy export` did not write (the message names the
    file and the metadata it lacks) or one of another `hymba` op version (`check_op_version`)."""
    proto = load_graph(path)
    check_op_version(path, proto)
    meta = metadata(proto)
    missing = [META + k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise HymbaDeployError(f"{path}: not an ONNX exported by hymba-deploy (metadata {', '.join(missing)} "
                               f"missing); export the model with `hymba-deploy export`")
    by_file = next((g for g in GRAPHS if Path(path).name == graph_file(g)), None)
    if meta["graph"] not in GRAPHS or (by_file is not None and by_file != meta["graph"]):
        raise HymbaDeployError(f"{path}: metadata {META}graph = {meta['graph']!r} does not match the file "
                               f"(expected {by_file or ' or '.join(GRAPHS)})")
    if not re.fullmatch(r"[0-9]{1,9}", meta["max_seq_len"]) or int(meta["max_seq_len"]) < 1:
        raise HymbaDeployError(f"{path}: metadata {META}max_seq_len = {meta['max_seq_len']!r} is not a positive "
                               f"integer")
    try:
        HymbaConfig.from_dict(json.loads(meta["config"]))
    except ValueError as e:
        raise HymbaDeployError(f"{path}: metadata {META}config is not JSON ({e})") from None
    except HymbaDeployError as e:
        raise HymbaDeployError(f"{path}: metadata {META}config: {e}") from None
    return proto


def op_version(proto) -> tuple[int | None, set[str]]:
    """(the graph's `hymba` opset version, the plugin versions on its `hymba` nodes); (None, set()) without them."""
    version = next((o.version for o in proto.opset_import if o.domain == DOMAIN), None)
    return version, {n["plugin_version"] for n in hymba_nodes(proto)}


def check_op_version(path: Path, proto) -> None:
    """Refuse a graph whose `hymba` opset is not this package's op version (`contract.OP_VERSION`): a
    version-1 export has no per-row inputs (WindowedAttention's kv_lengths, the graphs' lengths/positions).
    (A single node with an unknown plugin_version is left to the plugin matching, which names the node.)"""
    version, plugin_versions = op_version(proto)
    if version is None and not plugin_versions:
        return                                               # no hymba nodes: nothing versioned
    if version != OP_VERSION:
        found = f"op version {version}" + (f", plugin_version {', '.join(sorted(plugin_versions))}"
                                          if plugin_versions else "")
        raise HymbaDeployError(f"{path}: exported with hymba {found}; this hymba-deploy reads op version "
                               f"{OP_VERSION} (plugin_version {PLUGIN_VERSION!r}: per-row lengths/positions, "
                               f"WindowedAttention kv_lengths): re-export the model with `hymba-deploy export`")


def metadata(proto) -> dict:
    return {p.key.removeprefix(META): p.value for p in proto.metadata_props if p.key.startswith(META)}


def hymba_nodes(proto) -> list[dict]:
    out = []
    for node in proto.graph.node:
        if node.domain != DOMAIN:
            continue
        attrs = {a.name: a for a in node.attribute}
        def s(name, default):
            return attrs[name].s.decode() if name in attrs else default
        out.append({"name": node.name, "op_type": node.op_type,
                    "plugin_version": s("plugin_version", "1"), "plugin_namespace": s("plugin_namespace", "")})
    return out


def strip_functions(proto):
    """Drop the `hymba` model-local functions so TensorRT(-RTX) maps the nodes to plugins."""
    from hymba_deploy.exporters.onnx_export import strip_function_bodies
    return strip_function_bodies(proto)


def graph_inputs(proto) -> list[dict]:
    from onnx import helper
    out = []
    init = {t.name for t in proto.graph.initializer}
    for vi in proto.graph.input:
        if vi.name in init:
            continue
        t = vi.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        out.append({"name": vi.name, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
    return out


def parse_profile(text: str | None, max_seq_len: int) -> dict[str, tuple[int, int, int]]:
    """'batch=1:8:32,seq=1:512:8192' -> {'batch': (1, 8, 32), 'seq': (1, 512, 8192)}; a single number
    fixes the axis; MAX means the graph's export-time maximum sequence length."""
    result = {"batch": (1, 1, 16), "seq": (1, min(128, max_seq_len), max_seq_len)}
    for item in filter(None, (text or "").replace(" ", "").split(",")):
        key, _, value = item.partition("=")
        if key not in result or not value:
            raise HymbaDeployError(f"--profile {text!r}: expected batch=MIN:OPT:MAX,seq=MIN:OPT:MAX")
        try:
            nums = [max_seq_len if v.upper() == "MAX" else int(v) for v in value.split(":")]
        except ValueError:
            raise HymbaDeployError(f"--profile {text!r}: {key} needs integers MIN:OPT:MAX") from None
        if len(nums) == 1:
            nums *= 3
        if len(nums) != 3 or not 1 <= nums[0] <= nums[1] <= nums[2]:
            raise HymbaDeployError(f"--profile {text!r}: {key} needs 1 <= MIN <= OPT <= MAX")
        result[key] = tuple(nums)
    if result["seq"][2] > max_seq_len:
        raise HymbaDeployError(f"--profile seq max {result['seq'][2]} exceeds the {max_seq_len} tokens the ONNX "
                               f"was exported for; re-export with --max-seq-len {result['seq'][2]}")
    return result


def _config_and_keep(meta: dict):
    """(num_memory_tokens, max SWA keep or None) from the graph's embedded config."""
    import torch

    from ..cache import HybridMambaAttentionDynamicCache
    if "config" not in meta:
        raise HymbaDeployError("the ONNX has no hymba.config metadata: export it with `hymba-deploy export`")
    cfg = HymbaConfig.from_dict(json.loads(meta["config"]))
    cache = HybridMambaAttentionDynamicCache(cfg, 1, torch.float32, eviction=meta.get("eviction", "upstream"))
    keeps = [cache.keep(i) for i in range(cfg.num_hidden_layers) if cfg.is_producer(i)]
    keeps = [k for k in keeps if k is not None]
    return cfg.num_memory_tokens, (max(keeps) if keeps else None)


def input_shapes(proto, profile: dict[str, tuple[int, int, int]]) -> dict[str, list[tuple[int, ...]]]:
    """name -> [min, opt, max] shapes of every graph input under `profile`."""
    meta_tokens, keep = _config_and_keep(metadata(proto))
    b, s = profile["batch"], profile["seq"]
    axes = {"batch": b, "seq": s, "past": tuple(meta_tokens + v for v in s)}
    if keep is not None:
        axes["past_window"] = tuple(meta_tokens + max(1, min(v, keep)) for v in s)
    shapes = {}
    for inp in graph_inputs(proto):
        per = [[], [], []]
        for d in inp["shape"]:
            if isinstance(d, str):
                if d not in axes:
                    raise HymbaDeployError(f"input {inp['name']} has dynamic axis {d!r}, which --profile cannot "
                                           f"set (known: {', '.join(axes)})")
                vals = axes[d]
            else:
                vals = (d, d, d)
            for k in range(3):
                per[k].append(int(vals[k]))
        shapes[inp["name"]] = [tuple(p) for p in per]
    return shapes
