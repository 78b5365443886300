"""The plugin library `libhymba_plugins.so`: where it is, building it on demand, which TensorRT it was
compiled for, loading it into a TensorRT registry and matching every `hymba` node to a creator.

The library exports `getCreators`/`setLoggerFinder` and registers nothing statically, so it is loaded
with `get_plugin_registry().load_library(path)`; a plain dlopen (Polygraphy's `LoadPlugins`) is not
enough (tensorrt-notes.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from ..errors import HymbaDeployError
from ..fileio import sha256_file as sha256  # noqa: F401  (build.py, tests)

LIBRARY_NAME = "libhymba_plugins.so"
REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SOURCES = REPO_ROOT / "plugins"
DEFAULT_BUILD_DIR = REPO_ROOT / "build" / "plugins"


def default_library() -> Path:
    return DEFAULT_BUILD_DIR / LIBRARY_NAME


def build_library(build_dir: Path = DEFAULT_BUILD_DIR, cuda_archs: str | None = None,
                  progress: Callable[[str], None] | None = None) -> Path:
    """Compile `plugins/` with the plugin owners' script `plugins/build.sh` (CMake; TensorRT headers only,
    no TensorRT library), for `cuda_archs` (e.g. "80"; default: the script's)."""
    say = progress or (lambda msg: None)
    script = PLUGIN_SOURCES / "build.sh"
    if not script.is_file():
        raise HymbaDeployError(f"the plugin sources ({PLUGIN_SOURCES}) are not here (an installed, not "
                               f"editable, package?): build {LIBRARY_NAME} yourself and pass --plugins PATH")
    missing = [tool for tool in ("cmake", "nvcc") if shutil.which(tool) is None]
    if missing:
        raise HymbaDeployError(f"building {LIBRARY_NAME} needs {' and '.join(missing)} on PATH (CUDA toolkit, "
                               f"CMake >= 3.22), or pass --plugins PATH to a library built elsewhere")
    env = dict(os.environ)
    if cuda_archs:
        env["CUDA_ARCHS"] = cuda_archs
    say(f"{LIBRARY_NAME} not found: building it with plugins/build.sh in {build_dir} "
        f"(CUDA archs {env.get('CUDA_ARCHS', 'default')}; a few minutes)")
    proc = subprocess.run(["bash", str(script), str(build_dir)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise HymbaDeployError(f"building {LIBRARY_NAME} failed (plugins/build.sh):\n{tail}")
    lib = build_dir / LIBRARY_NAME
    if not lib.is_file():
        raise HymbaDeployError(f"plugins/build.sh finished without producing {lib}")
    say(f"built {lib}")
    return lib


def ensure_library(path: str | Path | None = None, cuda_archs: str | None = None,
                   progress: Callable[[str], None] | None = None) -> Path:
    """`path` when given (it must exist); else $HYMBA_PLUGIN_LIB; else build/plugins/, built on demand."""
    if path is None and os.environ.get("HYMBA_PLUGIN_LIB"):
        path = os.environ["HYMBA_PLUGIN_LIB"]
    if path is not None:
        lib = Path(path)
        if not lib.is_file():
            raise HymbaDeployError(f"--plugins {lib}: no such file (omit --plugins to build the project's library)")
        return lib.resolve()
    lib = default_library()
    if lib.is_file():
        return lib
    return build_library(progress=progress, cuda_archs=cuda_archs)


# ---- which TensorRT the library was compiled against -------------------------------------------------

def _header_version(include_dir: Path) -> str | None:
    header = include_dir / "NvInferVersion.h"
    if not header.is_file():
        return None
    text = header.read_text(errors="replace")
    parts = []
    for field in ("MAJOR", "MINOR", "PATCH"):
        # TensorRT 11 defines NV_TENSORRT_MAJOR as TRT_MAJOR_ENTERPRISE; older headers give the number.
        m = (re.search(rf"#define\s+TRT_{field}_ENTERPRISE\s+(\d+)", text)
             or re.search(rf"#define\s+NV_TENSORRT_{field}\s+(\d+)", text))
        if not m:
            return None
        parts.append(m.group(1))
    return ".".join(parts)


BUILD_INFO = re.compile(rb"hymba-plugins tensorrt=(\d+)\.(\d+)\.(\d+);")


def library_tensorrt_version(lib: Path) -> tuple[str | None, str]:
    """(version, how it was found) of the TensorRT headers `lib` was compiled against.

    Read from the library's own bytes (the `hymba_plugins_build_info` string of plugins/common/hymba_plugins.cpp),
    else from `<lib>.json` ("tensorrt_version"), else from the CMake cache beside the library (its
    `TensorRT_INCLUDE_DIR`/NvInferVersion.h). (None, reason) when none says.
    """
    m = BUILD_INFO.search(lib.read_bytes())
    if m:
        return ".".join(g.decode() for g in m.groups()), f"{lib} (embedded build info)"
    info = lib.with_name(lib.name + ".json")
    if info.is_file():
        try:
            version = json.loads(info.read_text()).get("tensorrt_version")
            if version:
                return str(version), str(info)
        except ValueError:
            pass
    cache = lib.parent / "CMakeCache.txt"
    if cache.is_file():
        m = re.search(r"^TensorRT_INCLUDE_DIR:PATH=(.*)$", cache.read_text(errors="replace"), re.M)
        if m:
            version = _header_version(Path(m.group(1).strip()))
            if version:
                return version, f"{cache} (TensorRT_INCLUDE_DIR={m.group(1).strip()})"
    return None, f"no embedded build info, no {info.name} and no CMakeCache.txt beside the library"


def check_library_version(lib: Path, backend) -> dict:
    """Refuse a library compiled for another TensorRT major version than `backend` loads."""
    version, source = library_tensorrt_version(lib)
    if version is not None and int(version.split(".")[0]) not in backend.plugin_majors():
        want = " or ".join(str(m) for m in backend.plugin_majors())
        raise HymbaDeployError(
            f"--plugins {lib} was compiled against TensorRT {version} headers (from {source}), but "
            f"{backend.name} {backend.version} loads plugins built for TensorRT {want}.x: rebuild it with "
            f"those headers (cmake -S plugins -B build/plugins -DTensorRT_ROOT=...)")
    return {"tensorrt_headers": version, "version_source": source}


# ---- loading and matching -------------------------------------------------------------------------

def load_library(trt, lib: Path):
    """Load `lib` into TensorRT's plugin registry (idempotent per process)."""
    registry = trt.get_plugin_registry()
    loaded = getattr(load_library, "_done", {})
    key = (trt.__name__, str(lib))
    if key not in loaded:
        handle = registry.load_library(str(lib))
        if handle is None:
            raise HymbaDeployError(f"--plugins {lib}: TensorRT could not load it (not a plugin library "
                                   f"exporting getCreators, or built for another TensorRT)")
        loaded[key] = handle
        load_library._done = loaded
    return registry


def registered_creators(registry) -> list[tuple[str, str, str]]:
    out = []
    for creator in registry.all_creators:
        out.append((creator.name, creator.plugin_version, creator.plugin_namespace))
    return out


def match_nodes(registry, nodes: list[dict], lib: Path) -> list[dict]:
    """Every `hymba` node must find a creator (name = op_type, its plugin_version, its namespace or "",
    which TensorRT-RTX's parser uses). Returns the matched (op_type, version, namespace) rows."""
    creators = set(registered_creators(registry))
    matched, missing = {}, []
    for node in nodes:
        key = (node["op_type"], node["plugin_version"])
        hits = [ns for ns in (node["plugin_namespace"], "") if (*key, ns) in creators]
        if hits:
            matched[key] = {"op_type": key[0], "plugin_version": key[1], "plugin_namespace": hits[0]}
        else:
            missing.append(f"{node['name']} ({node['op_type']} version {node['plugin_version']}, "
                           f"namespace {node['plugin_namespace']!r})")
    if missing:
        ours = sorted({f"{n} v{v} ns={ns!r}" for n, v, ns in creators if n in {x['op_type'] for x in nodes}}
                      ) or ["none of these op types"]
        raise HymbaDeployError(
            f"no plugin in {lib} for {len(missing)} hymba node(s): {'; '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}. The library offers: {', '.join(ours)}. "
            f"Rebuild the library from this checkout or re-export the ONNX with matching plugin versions.")
    return sorted(matched.values(), key=lambda r: r["op_type"])
