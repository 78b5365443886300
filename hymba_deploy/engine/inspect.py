"""`hymba-deploy inspect ENGINE`: an engine's layers (TensorRT's engine inspector), which of them are our
plugins, and its I/O tensors.

The inspector needs a deserialised engine, hence a GPU the engine can run on. Elsewhere (CPU-only
machines, TensorRT-RTX engines on an H100) the layers come from the build-time network recorded in the
JSON sidecar, and the report says why the inspector did not run.

Engines and sidecars may come from elsewhere: both are checked first (`artifact.read_engine`), and the
plugin library the inspector needs is never the one the sidecar names but `artifact.plugin_library`'s
(`--plugins`, or the project's own build, with the sha256 recorded at build time). The report names the
recorded library and whether one was loaded.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from . import artifact
from ..contract import OP_TYPES
from .backends import backend_available, current_compute_capability, select_backend



def _inspector_layers(engine: Path, sidecar: dict, lib: Path | None, lib_reason: str | None
                      ) -> tuple[list[dict] | None, str | None, list[dict] | None]:
    """(layers, reason not run, io) from TensorRT's IEngineInspector, when this machine can run the engine
    and `lib` is the plugin library it may load (`lib_reason`: why none may)."""
    reason = backend_available(sidecar["backend"])
    if reason:
        return None, reason, None
    cc = current_compute_capability()
    if cc is None:
        return None, "no CUDA GPU on this machine (the engine inspector deserialises the engine)", None
    want = sidecar.get("compute_capability")
    if sidecar["backend"] == "tensorrt-rtx" and want and f"{cc[0]}.{cc[1]}" != want:
        return None, f"the engine targets compute capability {want}, this GPU is {cc[0]}.{cc[1]}", None
    if lib_reason:
        return None, lib_reason, None
    from . import plugins
    be = select_backend(sidecar["backend"])
    if lib is not None:
        plugins.load_library(be.trt, lib)
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
    if plugin.get("name") in OP_TYPES:
        return plugin["name"]
    text = json.dumps(layer.get("detail", {})) + layer["name"]
    hit = next((op for op in OP_TYPES if op in text), None)
    if hit or layer["name"] in plugin_names:
        return hit or "plugin"
    return None


def inspect_engine(engine, user_library=None) -> dict:
    """The report of one engine, or {"engines": [...]} of a build folder's; `user_library`: `--plugins`."""
    engine = Path(engine)
    if engine.is_dir():
        return {"engines": [inspect_engine(p, user_library) for p in artifact.engine_files(engine)]}
    sidecar = artifact.read_engine(engine)
    lib, lib_reason = artifact.plugin_library(sidecar, user_library)
    layers, reason, io = _inspector_layers(engine, sidecar, lib, lib_reason)
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
            "target": sidecar["target"], "plugin_library": _library_report(sidecar, lib, lib_reason),
            "layers_source": source, "num_layers": len(layers),
            "layer_types": dict(Counter(layer["type"] for layer in layers).most_common()),
            "plugin_layers": [{"name": layer["name"], "plugin": layer["our_plugin"]} for layer in ours],
            "plugin_counts": dict(Counter(layer["our_plugin"] for layer in ours)),
            "layers": layers, "io": io}


def _library_report(sidecar: dict, lib: Path | None, reason: str | None) -> dict | None:
    """The library recorded at build time (as the sidecar says: not trusted, only reported) and the one that
    may be loaded here, or why none may."""
    recorded = sidecar.get("plugin_library")
    if not recorded:
        return None
    return {"recorded": {k: recorded.get(k) for k in ("path", "sha256", "tensorrt_headers")},
            "verified": str(lib) if lib else None, "not_verified": reason}


def format_inspection(result: dict, all_layers: bool = False) -> str:
    if "engines" in result:
        return "\n\n".join(format_inspection(r, all_layers) for r in result["engines"])
    lines = [f"{result['engine']}: {result['backend']} {result['backend_version']}, target {result['target']}",
             *_format_library(result["plugin_library"]),
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


def _format_library(lib: dict | None) -> list[str]:
    if lib is None:
        return ["plugin library: none (no plugin layers)"]
    rec = lib["recorded"]
    lines = [f"plugin library at build time: {rec['path']} (sha256 {rec['sha256']}, TensorRT headers "
             f"{rec.get('tensorrt_headers') or 'unknown'})"]
    lines.append(f"  verified here: {lib['verified']} (same sha256)" if lib["verified"]
                 else f"  none verified here: {lib['not_verified']}")
    return lines
