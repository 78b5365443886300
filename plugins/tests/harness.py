"""ctypes front end for libhymba_plugin_harness.so: drives the plugins of libhymba_plugins.so the way
TensorRT does (getCreators → createPlugin → getFieldsToSerialize → createPlugin again → shapes, types,
formats → configurePlugin → onShapeChange → enqueue), with no TensorRT installed. Also wraps the library's
extern "C" kernel shim (`hymba_selective_scan`, `hymba_causal_conv1d`, `hymba_windowed_attention`).

Used by tests/test_plugins_cpu.py (no GPU) and, through plugins/tests/kernels.py (torch tensors), by tests/gpu,
bench/kernels.py and tools/.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from pathlib import Path

PLUGINS_DIR = Path(__file__).resolve().parents[1]
REPO = PLUGINS_DIR.parent
DEFAULT_BUILD = REPO / "build" / "plugins"

# nvinfer1::DataType and TensorFormat values (NvInferRuntimeBase.h / NvInferRuntime.h, TensorRT 11.1).
KFLOAT, KHALF, KINT8, KINT32, KBOOL, KBF16 = 0, 1, 2, 3, 4, 7
KLINEAR, KCHW2 = 0, 1
PHASE_BUILD, PHASE_RUNTIME = 0, 1
# hymba::DType codes of the kernel shim.
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


def build_library(build_dir: Path = DEFAULT_BUILD, archs: str | None = None, werror: bool = False) -> Path:
    """Runs plugins/build.sh; returns the path of libhymba_plugins.so."""
    env = dict(os.environ)
    if archs:
        env["CUDA_ARCHS"] = archs
    env["HYMBA_WERROR"] = "ON" if werror else "OFF"
    out = subprocess.run(["bash", str(PLUGINS_DIR / "build.sh"), str(build_dir)], env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def find_libraries(build_if_missing: bool = True) -> tuple[Path, Path]:
    """(plugin library, harness): $HYMBA_PLUGIN_LIB / $HYMBA_PLUGIN_HARNESS, else build/plugins/, else build."""
    lib = os.environ.get("HYMBA_PLUGIN_LIB")
    lib = Path(lib) if lib else DEFAULT_BUILD / "libhymba_plugins.so"
    harness = os.environ.get("HYMBA_PLUGIN_HARNESS")
    harness = Path(harness) if harness else lib.parent / "libhymba_plugin_harness.so"
    if not (lib.exists() and harness.exists()):
        if not build_if_missing:
            raise FileNotFoundError(f"{lib} or {harness} missing: run plugins/build.sh")
        lib = build_library(lib.parent, archs=os.environ.get("CUDA_ARCHS", "80"))
        harness = lib.parent / "libhymba_plugin_harness.so"
    return lib, harness


def _dims_arrays(shapes):
    n = len(shapes)
    ranks = (ctypes.c_int * n)(*[len(s) for s in shapes])
    flat = []
    for s in shapes:
        flat += list(s) + [0] * (8 - len(s))
    return ranks, (ctypes.c_longlong * (8 * n))(*flat)


def _ints(values):
    return (ctypes.c_int * len(values))(*values)


def parse_fields(text: str) -> dict:
    """'a=i:1:1;b=f:0.5:1' → {'a': ('i', 1, 1), 'b': ('f', 0.5, 1)} (type code, value or None, length)."""
    out = {}
    for item in filter(None, text.split(";")):
        name, rest = item.split("=", 1)
        code, value, length = rest.split(":")
        if value == "":
            v = None
        elif code == "i":
            v = int(value)
        elif code == "f":
            v = float(value)
        else:
            v = value
        out[name] = (code, v, int(length))
    return out


def fields_spec(fields: dict) -> str:
    """{'window': 1024, 'scale': 0.125} or {'x': ('d', 1.0)} → the harness's 'name=t:value' text."""
    parts = []
    for name, v in fields.items():
        if isinstance(v, tuple):
            code, value = v[0], v[1]
        elif isinstance(v, bool) or isinstance(v, int):
            code, value = "i", int(v)
        else:
            code, value = "f", repr(float(v))
        parts.append(f"{name}={code}:{value}")
    return ";".join(parts)


class Plugin:
    """One IPluginV3 object living in the plugin library."""

    def __init__(self, harness: "Harness", ptr: int):
        self.h, self.ptr = harness, ptr

    def __del__(self):
        if getattr(self, "ptr", None):
            self.h.lib.hh_destroy(ctypes.c_void_p(self.ptr))
            self.ptr = None

    @property
    def info(self) -> dict:
        parts = self.h.lib.hh_plugin_info(ctypes.c_void_p(self.ptr)).decode().split("|")
        return {"name": parts[0], "version": parts[1], "namespace": parts[2], "nb_outputs": int(parts[3]),
                "interfaces": parts[4:]}

    def serialize(self) -> dict:
        return parse_fields(self.h.lib.hh_serialize(ctypes.c_void_p(self.ptr)).decode())

    def serialized_spec(self) -> str:
        return ";".join(f"{k}={c}:{v}" for k, (c, v, _) in self.serialize().items())

    def clone(self) -> "Plugin":
        return self.h._wrap(self.h.lib.hh_clone(ctypes.c_void_p(self.ptr)))

    def attach(self) -> "Plugin":
        return self.h._wrap(self.h.lib.hh_attach(ctypes.c_void_p(self.ptr)))

    def output_types(self, in_types: list[int], nb_out: int) -> tuple[int, list[int]]:
        out = (ctypes.c_int * nb_out)()
        r = self.h.lib.hh_output_types(ctypes.c_void_p(self.ptr), len(in_types), _ints(in_types), nb_out, out)
        return r, list(out)

    def output_shapes(self, in_shapes: list[tuple], nb_out: int) -> tuple[int, list[tuple]]:
        ranks, dims = _dims_arrays(in_shapes)
        out_ranks = (ctypes.c_int * nb_out)()
        out_dims = (ctypes.c_longlong * (8 * nb_out))()
        r = self.h.lib.hh_output_shapes(ctypes.c_void_p(self.ptr), len(in_shapes), ranks, dims, nb_out,
                                        out_ranks, out_dims)
        return r, [tuple(out_dims[8 * i: 8 * i + out_ranks[i]]) for i in range(nb_out)]

    def supports(self, pos: int, shapes, types, formats, nb_in: int) -> bool:
        ranks, dims = _dims_arrays(shapes)
        return bool(self.h.lib.hh_supports(ctypes.c_void_p(self.ptr), pos, nb_in, len(shapes) - nb_in, ranks, dims,
                                           _ints(types), _ints(formats)))

    def _call(self, fn, shapes, types, nb_in):
        ranks, dims = _dims_arrays(shapes)
        return fn(ctypes.c_void_p(self.ptr), nb_in, len(shapes) - nb_in, ranks, dims, _ints(types))

    def configure(self, shapes, types, nb_in: int) -> int:
        return self._call(self.h.lib.hh_configure, shapes, types, nb_in)

    def workspace(self, shapes, types, nb_in: int) -> int:
        return self._call(self.h.lib.hh_workspace, shapes, types, nb_in)

    def on_shape_change(self, shapes, types, nb_in: int) -> int:
        return self._call(self.h.lib.hh_on_shape_change, shapes, types, nb_in)

    def enqueue(self, shapes, types, ptrs, nb_in: int, workspace: int = 0, stream: int = 0) -> int:
        ranks, dims = _dims_arrays(shapes)
        arr = (ctypes.c_void_p * len(ptrs))(*ptrs)
        return self.h.lib.hh_enqueue(ctypes.c_void_p(self.ptr), nb_in, len(shapes) - nb_in, ranks, dims,
                                     _ints(types), arr, ctypes.c_void_p(workspace), ctypes.c_void_p(stream))


class Harness:
    """Loads the harness and, through it, the plugin library (dlopen + setLoggerFinder + getCreators)."""

    def __init__(self, plugin_lib: Path, harness_lib: Path):
        self.plugin_lib_path = Path(plugin_lib)
        self.lib = ctypes.CDLL(str(harness_lib))
        L = self.lib
        vp, ci, cc = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        pi, pll = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_longlong)
        L.hh_load.argtypes, L.hh_load.restype = [cc], ci
        for f in ("hh_error", "hh_log"):
            getattr(L, f).restype = cc
        L.hh_creator_info.argtypes, L.hh_creator_info.restype = [ci], cc
        L.hh_create.argtypes, L.hh_create.restype = [cc, cc, cc, cc, ci], vp
        L.hh_serialize.argtypes, L.hh_serialize.restype = [vp], cc
        L.hh_plugin_info.argtypes, L.hh_plugin_info.restype = [vp], cc
        L.hh_clone.argtypes, L.hh_clone.restype = [vp], vp
        L.hh_attach.argtypes, L.hh_attach.restype = [vp], vp
        L.hh_destroy.argtypes, L.hh_destroy.restype = [vp], None
        L.hh_output_types.argtypes, L.hh_output_types.restype = [vp, ci, pi, ci, pi], ci
        L.hh_output_shapes.argtypes = [vp, ci, pi, pll, ci, pi, pll]
        L.hh_output_shapes.restype = ci
        L.hh_supports.argtypes, L.hh_supports.restype = [vp, ci, ci, ci, pi, pll, pi, pi], ci
        for f in ("hh_configure", "hh_on_shape_change"):
            getattr(L, f).argtypes, getattr(L, f).restype = [vp, ci, ci, pi, pll, pi], ci
        L.hh_workspace.argtypes, L.hh_workspace.restype = [vp, ci, ci, pi, pll, pi], ctypes.c_longlong
        L.hh_enqueue.argtypes = [vp, ci, ci, pi, pll, pi, ctypes.POINTER(vp), vp, vp]
        L.hh_enqueue.restype = ci
        n = L.hh_load(str(self.plugin_lib_path).encode())
        if n < 0:
            raise RuntimeError(f"harness could not load {plugin_lib}: {L.hh_error().decode()}")
        self.nb_creators = n

    @property
    def log(self) -> str:
        return self.lib.hh_log().decode()

    def clear_log(self):
        self.lib.hh_clear_log()

    def creators(self) -> list[dict]:
        out = []
        for i in range(self.nb_creators):
            parts = self.lib.hh_creator_info(i).decode().split("|")
            entry = {"interface": parts[0]}
            if len(parts) == 5:
                entry.update(name=parts[1], version=parts[2], namespace=parts[3], fields=parse_fields(parts[4]))
            out.append(entry)
        return out

    def _wrap(self, ptr):
        return Plugin(self, ptr) if ptr else None

    def plugin_version(self, name: str) -> str:
        """The version of the library's creator of `name` (plugins/common/plugin_common.h kPLUGIN_VERSION)."""
        found = {c["version"] for c in self.creators() if c.get("name") == name}
        if len(found) != 1:
            raise KeyError(f"{self.plugin_lib_path}: creators of {name!r} have versions {sorted(found)}")
        return found.pop()

    def create(self, name: str, fields: dict | str, phase: int = PHASE_BUILD, version: str | None = None,
               namespace: str = "hymba") -> Plugin | None:
        """createPlugin on the creator (name, version, namespace); version None: the library's own."""
        version = self.plugin_version(name) if version is None else version
        spec = fields if isinstance(fields, str) else fields_spec(fields)
        ptr = self.lib.hh_create(name.encode(), version.encode(), namespace.encode(), spec.encode(), phase)
        return self._wrap(ptr)

    def round_trip(self, plugin: Plugin) -> Plugin | None:
        """getFieldsToSerialize → createPlugin(kRUNTIME), as an engine deserialization does."""
        info = plugin.info
        return self.create(info["name"], plugin.serialized_spec(), PHASE_RUNTIME, info["version"], info["namespace"])


class KernelShim:
    """The plugin library's extern "C" launchers (raw device pointers; stream as an int handle)."""

    def __init__(self, plugin_lib: Path):
        self.lib = ctypes.CDLL(str(plugin_lib))
        vp, ci, cf, p64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.POINTER(ctypes.c_int64)
        self.lib.hymba_kernel_error.restype = ctypes.c_char_p
        self.lib.hymba_selective_scan.argtypes = [ci, ci, ci, ci, ci, ci, cf, vp, p64, vp, p64, vp, p64, vp, p64, vp,
                                                  p64, vp, vp, p64, vp, vp, p64, vp, p64, vp, p64, vp]
        self.lib.hymba_causal_conv1d.argtypes = [ci, ci, ci, ci, ci, ci, vp, p64, vp, p64, vp, vp, p64, vp, p64, vp,
                                                 p64, vp]
        self.lib.hymba_windowed_attention.argtypes = [ci, ci, ci, ci, ci, ci, ci, ci, ci, ci, cf, vp, p64, vp, p64,
                                                      vp, p64, vp, p64, vp, vp]
        for f in ("hymba_selective_scan", "hymba_causal_conv1d", "hymba_windowed_attention"):
            getattr(self.lib, f).restype = ci
        self.lib.hymba_set_kernel_choice.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        self.lib.hymba_set_kernel_choice.restype = ci
        self.lib.hymba_kernel_choice.argtypes = [ctypes.c_char_p]
        self.lib.hymba_kernel_choice.restype = ctypes.c_char_p

    def kernel_choice(self, family: str) -> str:
        """The family's current kernel choice in this library (plugins/common/kernel_choice.h)."""
        name = self.lib.hymba_kernel_choice(family.encode())
        if name is None:
            raise ValueError(f"unknown kernel family {family!r}")
        return name.decode()

    def set_kernel_choice(self, family: str, choice: str) -> None:
        if self.lib.hymba_set_kernel_choice(family.encode(), choice.encode()) != 0:
            raise ValueError(self.error())

    @contextlib.contextmanager
    def forced(self, family: str, choice: str):
        """Inside the block this library serves the family's calls with `choice` where it applies (e.g.
        "attention": split | mma | prefill | flash | auto); the previous choice comes back after."""
        old = self.kernel_choice(family)
        self.set_kernel_choice(family, choice)
        try:
            yield
        finally:
            self.set_kernel_choice(family, old)

    @staticmethod
    def strides(t, idx=None):
        """A torch tensor's strides (or a subset of axes) as an int64 array; None → null (contiguous)."""
        if t is None or t.is_contiguous():
            return None  # contiguous: let the shim derive the strides (tests its default path)
        s = t.stride() if idx is None else [t.stride(i) for i in idx]
        return (ctypes.c_int64 * len(s))(*s)

    def error(self) -> str:
        return self.lib.hymba_kernel_error().decode()
