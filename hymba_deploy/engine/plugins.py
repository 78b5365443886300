"""The plugin library `libhymba_plugins.so`: where its sources are, building it on first use into the per-user
cache (one build per sources, TensorRT headers version and CUDA archs), which TensorRT it was compiled for,
loading it into a TensorRT registry and matching every `hymba` node to a creator.

The library exports `getCreators`/`setLoggerFinder` and registers nothing statically, so it is loaded
with `get_plugin_registry().load_library(path)`; a plain dlopen (Polygraphy's `LoadPlugins`) is not
enough (tensorrt-notes.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from ..contract import plugin_sources
from ..errors import HymbaDeployError
from ..fileio import atomic_write_json, user_cache_dir
from ..fileio import sha256_file as sha256  # noqa: F401  (build.py, tests)
from .tensorrt_headers import TensorRTHeaders, find_headers, header_version

LIBRARY_NAME = "libhymba_plugins.so"
# The plugin sources ship inside the package (`hymba_deploy/_plugins`, a link to the repository's plugins/ that a
# wheel stores as a folder), so a checkout, an editable and a wheel install all find them here.
PLUGIN_SOURCES = plugin_sources()
SOURCE_SUFFIXES = (".cu", ".cuh", ".h", ".cpp")
# Ninja's "[3/17] Building CUDA object ..." and Make's "[ 17%] Building CUDA object ...".
COMPILER_STEP = re.compile(r"^\[\s*(\d+/\d+|\d+%)\]\s+(.*)$")


def plugin_source_files(sources: Path | None = None) -> list[Path]:
    """Every file the library's build reads, sorted: CMakeLists.txt, build.sh and the C++/CUDA files of
    `common/` and each plugin folder (the test harness in `tests/` is not part of the library)."""
    sources = Path(sources or PLUGIN_SOURCES)
    files = [sources / "CMakeLists.txt", sources / "build.sh"]
    files += [f for f in sources.glob("*/*") if f.suffix in SOURCE_SUFFIXES and f.parent.name != "tests"]
    missing = [f.name for f in files[:2] if not f.is_file()] + ([] if files[2:] else ["the C++/CUDA files"])
    if missing:
        raise HymbaDeployError(f"the plugin sources are not in {sources} ({', '.join(missing)} missing): reinstall "
                               f"hymba-deploy, or pass --plugins PATH to a {LIBRARY_NAME} built elsewhere")
    return sorted(files)


def library_key(tensorrt_version: str, cuda_archs: str | None, sources: Path | None = None) -> str:
    """What a built library depends on, as a cache key: the sha256 of the plugin sources (relative names and
    bytes), the TensorRT headers' version and the CUDA architectures."""
    sources = Path(sources or PLUGIN_SOURCES)
    h = hashlib.sha256()
    for f in plugin_source_files(sources):
        h.update(f.relative_to(sources).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(f"tensorrt={tensorrt_version};archs={cuda_archs or 'default'}".encode())
    return h.hexdigest()[:20]


def library_cache() -> Path:
    """The per-user folder of built libraries, one sub-folder per `library_key`."""
    return user_cache_dir() / "plugins"


def cached_libraries() -> list[Path]:
    """The libraries `ensure_library` built into the per-user cache (one per sources/headers/archs key)."""
    root = library_cache()
    return sorted(root.glob(f"*/{LIBRARY_NAME}")) if root.is_dir() else []


def build_library(build_dir: Path, headers: TensorRTHeaders, cuda_archs: str | None = None,
                  sources: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Compile `sources` (default: the shipped plugin sources) into `build_dir` with their own `build.sh`
    (CMake; TensorRT headers only, no TensorRT library; no test harness), for `cuda_archs` (e.g. "80";
    default: CMake's list). Each compiler step is reported through `progress`."""
    say = progress or (lambda msg: None)
    sources = Path(sources or PLUGIN_SOURCES)
    plugin_source_files(sources)
    missing = [tool for tool in ("cmake", "nvcc") if shutil.which(tool) is None]
    if missing:
        raise HymbaDeployError(f"building {LIBRARY_NAME} needs {' and '.join(missing)} on PATH (CUDA toolkit, "
                               f"CMake >= 3.22), or pass --plugins PATH to a library built elsewhere")
    env = dict(os.environ)
    if cuda_archs:
        env["CUDA_ARCHS"] = cuda_archs
    cmd = ["bash", str(sources / "build.sh"), str(build_dir), f"-DTensorRT_INCLUDE_DIR={headers.include_dir}",
           "-DHYMBA_BUILD_HARNESS=OFF"]
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stderr:
            line = line.rstrip()
            tail = (tail + [line])[-15:]
            step = COMPILER_STEP.match(line)
            if step:
                say(f"  [{step.group(1)}] {step.group(2)}")
    if proc.returncode != 0:
        raise HymbaDeployError(f"building {LIBRARY_NAME} failed ({sources / 'build.sh'}):\n" + "\n".join(tail))
    lib = Path(build_dir) / LIBRARY_NAME
    if not lib.is_file():
        raise HymbaDeployError(f"{sources / 'build.sh'} finished without producing {lib}")
    return lib


def ensure_library(path: str | Path | None = None, cuda_archs: str | None = None,
                   progress: Callable[[str], None] | None = None) -> Path:
    """`path` when given (it must exist); else $HYMBA_PLUGIN_LIB; else the per-user cache's library for the
    shipped sources, the TensorRT headers `find_headers` gives and `cuda_archs`, built there on first use.

    The build runs in a temporary folder inside `library_cache()` and its result is renamed into place whole
    (the library and `<library>.json`: TensorRT version, headers, archs), so concurrent first uses each
    build and the first rename wins.
    """
    if path is None and os.environ.get("HYMBA_PLUGIN_LIB"):
        path = os.environ["HYMBA_PLUGIN_LIB"]
    if path is not None:
        lib = Path(path)
        if not lib.is_file():
            raise HymbaDeployError(f"--plugins {lib}: no such file (omit --plugins to build the project's library)")
        return lib.resolve()
    say = progress or (lambda msg: None)
    plugin_source_files()                                   # absent sources: that error before any search
    headers = find_headers(say)
    entry = library_cache() / library_key(headers.version, cuda_archs)
    lib = entry / LIBRARY_NAME
    if lib.is_file():
        say(f"plugin library {lib} (built before for these sources, headers and archs)")
        return lib
    say(f"building {LIBRARY_NAME} for CUDA archs {cuda_archs or 'default'} against the TensorRT "
        f"{headers.version} headers ({headers.source}) into {entry}: a few minutes, once")
    library_cache().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=library_cache(), prefix=f".build-{entry.name}-"))
    try:
        built = build_library(work / "build", headers, cuda_archs, progress=say)
        ready = work / "entry"
        ready.mkdir()
        shutil.copy2(built, ready / LIBRARY_NAME)
        atomic_write_json(ready / f"{LIBRARY_NAME}.json", {
            "tensorrt_version": headers.version, "tensorrt_headers": str(headers.include_dir),
            "headers_source": headers.source, "cuda_archs": cuda_archs or "default",
            "sources": str(PLUGIN_SOURCES)})
        try:
            os.rename(ready, entry)
        except OSError:
            if not lib.is_file():                           # not another process's finished build
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"built {lib}")
    return lib


# ---- which TensorRT the library was compiled against -------------------------------------------------

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
            version = header_version(Path(m.group(1).strip()))
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
            f"those headers (TensorRT_ROOT=<TensorRT folder>; omit --plugins to build it)")
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
