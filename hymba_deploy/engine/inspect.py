"""`hymba-deploy inspect ENGINE`: an engine's layers (TensorRT's engine inspector), which of them are our
plugins, and its I/O tensors.

The inspector needs a deserialised engine, hence a GPU the engine can run on. Elsewhere (CPU-only
machines, TensorRT-RTX engines on an H100) the layers come from the build-time network recorded in the
JSON sidecar, and the report says why the inspector did not run.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..errors import HymbaDeployError
from .backends import backend_available, current_compute_capability, select_backend
from .build import ENGINE_SUFFIX, read_sidecar

OUR_PLUGINS = ("SelectiveScan", "CausalConv1d", "WindowedAttention")


def _sidecar(engine: Path) -> dict:
    return read_sidecar(engine)


def _inspector_layers(engine: Path, sidecar: dict) -> tuple[list[dict] | None, str | None, list[dict] | None]:
    """(layers, reason not run, io) from TensorRT's IEngineInspector, when this machine can run the engine."""
    reason = backend_available(sidecar["backend"])
    if reason:
        return None, reason, None
    cc = current_compute_capability()
    if cc is None:
        return None, "no CUDA GPU on this machine (the engine inspector deserialises the engine)", None
    want = sidecar.get("compute_capability")
    if sidecar["backend"] == "tensorrt-rtx" and want and f"{cc[0]}.{cc[1]}" != want:
        return None, f"the engine targets compute capability {want}, this GPU is {cc[0]}.{cc[1]}", None
    from . import plugins
    be = select_backend(sidecar["backend"])
    lib = (sidecar.get("plugin_library") or {}).get("path")
    if lib:
        if not Path(lib).is_file():
            return None, f"its plugin library {lib} is gone", None
        plugins.load_library(be.trt, Path(lib))
    trt = be.trt
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    eng = runtime.deserialize_cuda_engine(engine.read_bytes())
    if eng is None:
        return None, "TensorRT could not deserialise the engine on this GPU", None
    info = json.loads(eng.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    layers = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):
            layers.append({"name": layer, "type": ""})
        else:
            layers.append({"name": layer.get("Name", ""), "type": str(layer.get("LayerType", "")),
                           "detail": {k: layer[k] for k in ("PluginName", "PluginType", "PluginVersion") if k in layer}})
    io = []
    for i in range(eng.num_io_tensors):
        name = eng.get_tensor_name(i)
        io.append({"name": name, "mode": str(eng.get_tensor_mode(name)).split(".")[-1].lower(),
                   "dtype": str(eng.get_tensor_dtype(name)).split(".")[-1].lower(),
                   "shape": list(eng.get_tensor_shape(name))})
    return layers, None, io


def _our_plugin(layer: dict, plugin_names: set[str]) -> str | None:
    plugin = layer.get("plugin") or {}
    if plugin.get("name") in OUR_PLUGINS:
        return plugin["name"]
    text = json.dumps(layer.get("detail", {})) + layer["name"]
    hit = next((op for op in OUR_PLUGINS if op in text), None)
    if hit or layer["name"] in plugin_names:
        return hit or "plugin"
    return None


def inspect_engine(engine) -> dict:
    engine = Path(engine)
    if engine.is_dir():
        return {"engines": [inspect_engine(p) for p in sorted(engine.glob("*" + ENGINE_SUFFIX))]}
    if not engine.is_file():
        raise HymbaDeployError(f"{engine}: no such engine file")
    sidecar = _sidecar(engine)
    layers, reason, io = _inspector_layers(engine, sidecar)
    source = "engine inspector"
    if layers is None:
        layers, source = sidecar.get("layers", []), f"build-time network (sidecar); engine inspector not run: {reason}"
    plugin_names = {p["name"] for p in sidecar.get("plugin_layers", [])}
    for layer in layers:
        layer["our_plugin"] = _our_plugin(layer, plugin_names)
    ours = [layer for layer in layers if layer["our_plugin"]]
    if io is None:
        io = ([{**t, "mode": "input"} for t in sidecar["io"]["inputs"]]
              + [{**t, "mode": "output"} for t in sidecar["io"]["outputs"]])
    return {"engine": str(engine), "backend": sidecar["backend"], "backend_version": sidecar["backend_version"],
            "target": sidecar["target"], "layers_source": source, "num_layers": len(layers),
            "layer_types": dict(Counter(layer["type"] for layer in layers).most_common()),
            "plugin_layers": [{"name": layer["name"], "plugin": layer["our_plugin"]} for layer in ours],
            "plugin_counts": dict(Counter(layer["our_plugin"] for layer in ours)),
            "layers": layers, "io": io}


def format_inspection(result: dict, all_layers: bool = False) -> str:
    if "engines" in result:
        return "\n\n".join(format_inspection(r, all_layers) for r in result["engines"])
    lines = [f"{result['engine']}: {result['backend']} {result['backend_version']}, target {result['target']}",
             f"layers ({result['num_layers']}, from the {result['layers_source']}):",
             "  " + ", ".join(f"{t} x{n}" for t, n in result["layer_types"].items())]
    lines.append(f"our plugin layers ({len(result['plugin_layers'])}): "
                 + ", ".join(f"{k} x{v}" for k, v in result["plugin_counts"].items()))
    for layer in (result["layers"] if all_layers else []):
        mark = f"  [{layer['our_plugin']}]" if layer["our_plugin"] else ""
        lines.append(f"  {layer['type']:<14} {layer['name']}{mark}")
    if not all_layers:
        lines += [f"  {p['plugin']:<18} {p['name']}" for p in result["plugin_layers"]]
    lines.append("I/O:")
    for t in result["io"]:
        lines.append(f"  {t['mode']:<6} {t['name']:<28} {t['dtype']:<8} {t['shape']}")
    return "\n".join(lines)
