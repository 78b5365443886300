"""`hymba-deploy build`: exported ONNX graphs -> TensorRT / TensorRT-RTX engines with our plugins.

Per graph: read the ONNX, drop the `hymba` function bodies (so the parser uses the plugins), load the
plugin library into the registry, check every `hymba` node has a creator, then Polygraphy's loaders
(`NetworkFromOnnxPath` strongly typed, `CreateConfig`/`CreateConfigRTX` with one optimisation profile,
`EngineBytesFromNetwork`). The engine is written to a temporary file and renamed, then its JSON
sidecar `<graph>.engine.json` (house rule 14).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

from ..errors import HymbaDeployError
from ..contract import GRAPHS, OP_VERSION, graph_file
from ..fileio import atomic_write_bytes, atomic_write_text
from . import onnx_inputs, plugins
from .artifact import ENGINE_SUFFIX, SIDECAR_SUFFIX
from .backends import BACKENDS, resolve_target, select_backend, parse_target

def find_graphs(src, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """An export DIR (the graphs its manifest.json lists, every file verified against it) or one .onnx
    file (verified against the manifest beside it, if there is one) -> {graph name: path}."""
    from ..exporters.manifest import MANIFEST, verify_export

    src = Path(src)
    if src.is_dir():
        if not any((src / graph_file(g)).is_file() for g in GRAPHS):
            raise HymbaDeployError(f"{src}: neither {' nor '.join(map(graph_file, GRAPHS))} found; run `hymba-deploy export` "
                                   f"first")
        return verify_export(src, progress=progress)
    if src.suffix == ".onnx" and src.is_file():
        if (src.parent / MANIFEST).is_file() and src.stem in GRAPHS:
            verify_export(src.parent, [src.stem], progress=progress)
        return {src.stem: src}
    raise HymbaDeployError(f"{src}: expected an export directory or an .onnx file")


@contextlib.contextmanager
def _stripped_copy(path: Path, proto):
    """The graph without `hymba` function bodies, written beside the original (external weights resolve
    relative to it), or in a temporary folder with links to the weight files when that is read-only."""
    import onnx
    onnx_inputs.strip_functions(proto)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".trt.onnx")
        os.close(fd)
        tmpdir = None
    except OSError:
        tmpdir = tempfile.mkdtemp(prefix="hymba-build-")
        for t in proto.graph.initializer:
            for e in t.external_data:
                if e.key == "location" and not (Path(tmpdir) / e.value).exists():
                    os.symlink((path.parent / e.value).resolve(), Path(tmpdir) / e.value)
        tmp = str(Path(tmpdir) / path.name)
    try:
        onnx.save(proto, tmp)
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if tmpdir:
            import shutil
            shutil.rmtree(tmpdir, ignore_errors=True)


def _progress_monitor(trt, say):
    """An IProgressMonitor printing top-level build phases (and their step counts)."""
    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.started = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                say(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True                                    # never cancel

        def phase_finish(self, phase_name):
            self.started.pop(phase_name, None)
    return Monitor()


def _dtype_name(dt) -> str:
    return str(dt).split(".")[-1].lower()


def _network_io(network) -> dict:
    def row(t):
        return {"name": t.name, "dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
    return {"inputs": [row(network.get_input(i)) for i in range(network.num_inputs)],
            "outputs": [row(network.get_output(i)) for i in range(network.num_outputs)]}


def _network_layers(trt, network) -> list[dict]:
    """Layer name and type of the parsed network; plugin layers with their creator's name/version/namespace."""
    rows = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        row = {"name": layer.name, "type": _dtype_name(layer.type)}
        if layer.type == trt.LayerType.PLUGIN_V3:
            layer.__class__ = trt.IPluginV3Layer               # the bindings return the ILayer base
            with contextlib.suppress(Exception):
                core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
                row["plugin"] = {"name": core.plugin_name, "version": core.plugin_version,
                                 "namespace": core.plugin_namespace}
        rows.append(row)
    return rows


def build(src, out_dir, backend: str = "tensorrt-rtx", target: str = "sm80", plugin_library=None,
          profile: str | None = None, timing_cache=None, workspace_mib: int | None = None,
          graphs=None, progress: Callable[[str], None] | None = None) -> dict:
    """Build an engine per exported graph of `src` into `out_dir`; return {graph: sidecar dict}.
    Steps: check the arguments and graphs (before any slow import) -> select the backend and load the
    plugins -> per graph: parse, build, write the engine and its sidecar."""
    say = progress or (lambda msg: None)
    _check_arguments(backend, target, workspace_mib)
    found, protos, nodes = _read_graphs(src, graphs, profile, say)
    be = select_backend(backend)
    cc = resolve_target(be, target)
    say(f"backend {be.name} {be.version}, target sm{cc[0]}{cc[1]}")
    lib_info = _load_plugins(be, cc, found, nodes, plugin_library, say)

    from polygraphy.logger import G_LOGGER
    G_LOGGER.module_severity = G_LOGGER.WARNING
    out = _output_dir(out_dir)
    cache_path = str(timing_cache) if timing_cache and not be.is_rtx else None
    if timing_cache and be.is_rtx:
        say("--timing-cache ignored: TensorRT-RTX has no timing cache (its cache calls are no-ops since 1.2)")
    results = {}
    for g, path in found.items():
        proto = protos[g]
        meta = onnx_inputs.metadata(proto)
        prof = onnx_inputs.parse_profile(profile, int(meta.get("max_seq_len", 8192)))
        shapes = onnx_inputs.input_shapes(proto, prof)
        onnx_sha = plugins.sha256(path)
        say(f"building {g} engine from {path}")
        t0 = time.perf_counter()
        create_config = _create_config(be, cc, shapes, timing_cache, workspace_mib, say)
        data, io, layers = _build_engine(be, g, path, proto, create_config, cache_path)
        seconds = round(time.perf_counter() - t0, 2)
        engine_path = out / f"{g}{ENGINE_SUFFIX}"
        atomic_write_bytes(engine_path, data)
        sidecar = {
            "graph": g,
            "engine": engine_path.name,
            "engine_bytes": len(data),
            "engine_sha256": hashlib.sha256(data).hexdigest(),
            "backend": be.name,
            "backend_version": be.version,
            "target": target,
            "compute_capability": f"{cc[0]}.{cc[1]}",
            "strongly_typed": True,
            "profiles": [{"axes": {k: list(v) for k, v in prof.items()},
                          "inputs": {n: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
                                     for n, s in shapes.items()}}],
            "io": io,
            "layers": layers,
            "plugin_layers": [layer for layer in layers if "plugin" in layer["type"]],
            "op_version": OP_VERSION,
            "hymba_nodes": {n["op_type"]: sum(1 for m in nodes[g] if m["op_type"] == n["op_type"]) for n in nodes[g]},
            "plugin_library": lib_info or None,
            "source_onnx": {"path": str(path.resolve()), "sha256": onnx_sha, "metadata_keys": sorted(meta)},
            "model_dtype": meta.get("dtype"),
            "eviction": meta.get("eviction"),
            "max_seq_len": int(meta.get("max_seq_len", 0)) or None,
            "timing_cache": cache_path,
            "workspace_mib": workspace_mib,
            "build_seconds": seconds,
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
        }
        atomic_write_text(out / f"{g}{SIDECAR_SUFFIX}", json.dumps(sidecar, indent=2) + "\n")
        say(f"wrote {engine_path} ({len(data) / 2**20:.1f} MiB, {len(sidecar['plugin_layers'])} plugin layers, {seconds:.0f} s)")
        results[g] = sidecar
    return results


def _check_arguments(backend: str, target: str, workspace_mib: int | None) -> None:
    """Bad names and sizes fail before any import."""
    if backend not in BACKENDS:
        raise HymbaDeployError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    parse_target(target)
    if workspace_mib is not None and workspace_mib <= 0:
        raise HymbaDeployError(f"--workspace {workspace_mib}: give a positive number of MiB")


def _read_graphs(src, graphs, profile: str | None, say):
    """The graphs to build ({graph: path}), their protos and `hymba` nodes; every profile validated before
    the slow parts."""
    found = find_graphs(src, progress=say)
    if graphs:
        found = {g: p for g, p in found.items() if g in graphs}
    protos = {g: onnx_inputs.load_ours(p) for g, p in found.items()}
    nodes = {g: onnx_inputs.hymba_nodes(p) for g, p in protos.items()}
    for g, proto in protos.items():
        meta = onnx_inputs.metadata(proto)
        onnx_inputs.input_shapes(proto, onnx_inputs.parse_profile(profile, int(meta.get("max_seq_len", 8192))))
    return found, protos, nodes


def _load_plugins(be, cc, found: dict, nodes: dict, plugin_library, say) -> dict:
    """When any graph has `hymba` nodes: the plugin library (built for `cc` if needed) loaded into the
    registry, every node matched to a creator; returns what the sidecars record of it ({} without nodes)."""
    if not any(nodes.values()):
        return {}
    lib = plugins.ensure_library(plugin_library, cuda_archs=f"{cc[0]}{cc[1]}", progress=say)
    lib_info = plugins.check_library_version(lib, be)
    registry = plugins.load_library(be.trt, lib)
    for g in found:
        plugins.match_nodes(registry, nodes[g], lib)
    lib_info.update({"path": str(lib), "sha256": plugins.sha256(lib)})
    return lib_info


def _output_dir(out_dir) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HymbaDeployError(f"--out {out}: cannot create it ({e.strerror or e})") from None
    return out


def _create_config(be, cc, shapes: dict, timing_cache, workspace_mib: int | None, say):
    """Polygraphy's CreateConfig (CreateConfigRTX for TensorRT-RTX): one optimisation profile of `shapes`,
    detailed profiling verbosity (for the engine inspector), progress, timing cache and workspace."""
    from polygraphy.backend.trt import Profile
    trt = be.trt
    p = Profile()
    for name, (lo, opt, hi) in shapes.items():
        p.add(name, min=lo, opt=opt, max=hi)
    config_kwargs = {"profiles": [p], "progress_monitor": _progress_monitor(trt, say),
                     "profiling_verbosity": trt.ProfilingVerbosity.DETAILED}
    if timing_cache and not be.is_rtx:
        config_kwargs["load_timing_cache"] = str(timing_cache)
    if workspace_mib:
        config_kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(workspace_mib) << 20}
    if be.is_rtx:
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX
        return CreateConfigRTX(compute_capabilities=[cc], **config_kwargs)
    from polygraphy.backend.trt import CreateConfig
    return CreateConfig(**config_kwargs)


def _build_engine(be, g: str, path: Path, proto, create_config, cache_path) -> tuple[bytes, dict, list[dict]]:
    """Parse the stripped graph (strongly typed) and build it: (engine bytes, network I/O, network layers)."""
    from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath
    with _stripped_copy(path, proto) as stripped:
        network_loader = NetworkFromOnnxPath(str(stripped), strongly_typed=True)
        try:
            builder, network, parser = network_loader()
        except Exception as e:
            raise HymbaDeployError(f"{path}: the {be.name} ONNX parser rejected it: {e}") from None
        io = _network_io(network)
        layers = _network_layers(be.trt, network)
        try:
            with warnings.catch_warnings():          # Polygraphy's timing-cache calls: no-ops under RTX
                warnings.simplefilter("ignore", DeprecationWarning)
                serialized = EngineBytesFromNetwork((builder, network, parser), config=create_config,
                                                    save_timing_cache=cache_path)()
        except Exception as e:
            raise HymbaDeployError(f"building the {g} engine failed: {e}") from None
    data = memoryview(serialized).tobytes() if not isinstance(serialized, bytes) else serialized
    return data, io, layers


def format_summary(results: dict) -> str:
    lines = []
    for g, s in results.items():
        lines.append(f"{g}: {s['engine']} ({s['engine_bytes'] / 2**20:.1f} MiB) {s['backend']} {s['backend_version']} "
                     f"sm{s['compute_capability'].replace('.', '')}, {len(s['plugin_layers'])} plugin layers, "
                     f"{s['build_seconds']:.0f} s")
    return "\n".join(lines)
