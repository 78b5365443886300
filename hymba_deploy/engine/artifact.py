"""A built engine and its JSON sidecar as they arrive from elsewhere (shared, downloaded): checked before
anything reads them, and never a source of code to run.

* `engine_files(folder)`: the engines of a build folder; a missing folder or one without engines is an error.
* `read_engine(path)`: the sidecar of an engine, after checking the engine is one `hymba-deploy build`
  wrote, of this package's op version (`contract.OP_VERSION`, recorded as `op_version`), and whole (its
  size and sha256 against the sidecar's record). Every problem is a
  `HymbaDeployError` naming the file and what is wrong.
* `plugin_library(sidecar, user_library)`: the plugin library an engine may load. Never the path its
  sidecar names: only the library the user names (`--plugins`) or the project's own build
  (a library `plugins.ensure_library` built into the per-user cache, `plugins.cached_libraries()`), and only
  when its sha256 equals the one recorded at build time.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..contract import OP_VERSION
from ..errors import HymbaDeployError
from ..fileio import sha256_file
from . import plugins
from .backends import BACKENDS

ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".engine.json"

# What readers of a sidecar rely on: key -> type.
_REQUIRED = {"backend": str, "backend_version": str, "target": str, "engine_bytes": int, "io": dict,
             "profiles": list, "layers": list, "plugin_layers": list}


def sidecar_path(engine) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name.removesuffix(ENGINE_SUFFIX) + SIDECAR_SUFFIX)


def engine_files(folder) -> list[Path]:
    """The `*.engine` files of a build folder, sorted; an error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HymbaDeployError(f"{folder}: no such build folder (build engines with `hymba-deploy build`)")
    found = sorted(p for p in folder.glob("*" + ENGINE_SUFFIX) if p.is_file())
    if not found:
        raise HymbaDeployError(f"{folder}: no {ENGINE_SUFFIX} files in it (build them with `hymba-deploy build`)")
    return found


def read_sidecar(engine) -> dict:
    """The sidecar of `engine` as a dict with the keys readers rely on; no check of the engine itself."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise HymbaDeployError(f"{engine}: its sidecar {path.name} is missing; rebuild with `hymba-deploy build`")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise HymbaDeployError(f"{path}: not a readable engine sidecar ({e})") from None
    if not isinstance(data, dict):
        raise HymbaDeployError(f"{path}: not an engine sidecar (a JSON object expected, got {type(data).__name__})")
    wrong = [f"{k} ({t.__name__} expected)" for k, t in _REQUIRED.items() if not isinstance(data.get(k), t)]
    io = data.get("io")
    if isinstance(io, dict) and not all(isinstance(io.get(k), list) and all(_is_tensor(t) for t in io[k])
                                        for k in ("inputs", "outputs")):
        wrong.append("io (inputs and outputs: lists of tensors with a name, dtype and shape)")
    for key in ("layers", "plugin_layers"):
        if isinstance(data.get(key), list) and not all(isinstance(x, dict) and isinstance(x.get("name"), str)
                                                       and isinstance(x.get("type"), str) for x in data[key]):
            wrong.append(f"{key} (a list of layers with a name and a type)")
    if isinstance(data.get("backend"), str) and data["backend"] not in BACKENDS:
        wrong.append(f"backend (one of {', '.join(BACKENDS)})")
    profiles = data.get("profiles")
    if isinstance(profiles, list) and not (profiles and all(
            isinstance(pr, dict) and isinstance(pr.get("axes"), dict) and all(
                isinstance(v, list) and len(v) == 3 and all(type(n) is int for n in v) for v in pr["axes"].values())
            for pr in profiles)):
        wrong.append("profiles (a non-empty list of {axes: {name: [min, opt, max]}})")
    lib = data.get("plugin_library")
    if lib is not None and not (isinstance(lib, dict) and isinstance(lib.get("sha256"), str)):
        wrong.append("plugin_library (null, or an object with the library's sha256)")
    if wrong:
        raise HymbaDeployError(f"{path}: not an engine sidecar of `hymba-deploy build`: missing or wrong "
                               f"{', '.join(wrong)}")
    version = data.get("op_version", 1)                      # sidecars before op version 2 do not record it
    if version != OP_VERSION:
        raise HymbaDeployError(f"{engine}: built from graphs of hymba op version {version} ({path.name}); this "
                               f"hymba-deploy runs op version {OP_VERSION} (per-row lengths/positions): re-export "
                               f"the model with `hymba-deploy export` and rebuild the engine with `hymba-deploy build`")
    return data


def _is_tensor(t) -> bool:
    return (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
            and isinstance(t.get("shape"), list))


_SHA_CACHE: dict[tuple, str] = {}


def _engine_sha256(engine: Path) -> str:
    st = engine.stat()
    key = (str(engine.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(engine)
    return _SHA_CACHE[key]


def read_engine(engine) -> dict:
    """The sidecar of `engine` after checking the engine file: a `.engine` file with a valid sidecar,
    of the recorded size, and of the recorded sha256 (sidecars written before it was recorded: size only)."""
    engine = Path(engine)
    if engine.is_dir():
        raise HymbaDeployError(f"{engine}: a folder, not an engine file")
    if not engine.is_file():
        raise HymbaDeployError(f"{engine}: no such engine file")
    if not engine.name.endswith(ENGINE_SUFFIX):
        raise HymbaDeployError(f"{engine}: not an engine (a {ENGINE_SUFFIX} file written by `hymba-deploy build` "
                               f"expected)")
    sidecar = read_sidecar(engine)
    size = engine.stat().st_size
    if size != sidecar["engine_bytes"]:
        raise HymbaDeployError(f"{engine}: {size} bytes, but its sidecar records {sidecar['engine_bytes']}: "
                               f"truncated or replaced; rebuild it with `hymba-deploy build`")
    want = sidecar.get("engine_sha256")
    if want is not None and _engine_sha256(engine) != want:
        raise HymbaDeployError(f"{engine}: corrupt (its sha256 differs from the one recorded at build time); "
                               f"rebuild it with `hymba-deploy build`")
    return sidecar


def plugin_library(sidecar: dict, user_library=None) -> tuple[Path | None, str | None]:
    """(library to load, None), (None, None) when the engine has no plugin layers, or (None, why no
    library may be loaded). `user_library` (`--plugins`) must exist and match, else HymbaDeployError."""
    recorded = sidecar.get("plugin_library")
    if not recorded:
        return None, None
    want = recorded["sha256"]
    built_with = f"{Path(str(recorded.get('path', plugins.LIBRARY_NAME))).name} sha256 {want[:12]}"
    if user_library is not None:
        lib = plugins.ensure_library(user_library)
        got = plugins.sha256(lib)
        if got != want:
            raise HymbaDeployError(f"--plugins {lib}: sha256 {got[:12]} is not the plugin library the engine was "
                                   f"built with ({built_with}); pass that library")
        return lib, None
    for lib in plugins.cached_libraries():
        if plugins.sha256(lib) == want:
            return lib, None
    return None, (f"the engine needs its plugin library ({built_with}), and the project's library cache "
                  f"({plugins.library_cache()}) holds no library with that sha256: pass --plugins PATH")
