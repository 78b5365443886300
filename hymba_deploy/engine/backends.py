"""TensorRT backends: which module, which GPU targets, and the process set-up each needs.

Two backends share one code path (Polygraphy's loaders), chosen per process:

    tensorrt      full TensorRT 10/11 (`import tensorrt`), data-centre GPUs; builds for the GPU it runs on
    tensorrt-rtx  TensorRT-RTX (`import tensorrt_rtx`, `pip install tensorrt-rtx-cu13`); builds ahead of time
                  on any machine, GPU or not, for compute capabilities 8.0, 8.6, 8.9, 12.0, 12.1 (not 9.0)

Polygraphy picks its TensorRT module from `POLYGRAPHY_USE_TENSORRT_RTX` when `polygraphy.backend.trt` is
first imported, so `select_backend` must run before that, and a process serves one backend.

TensorRT-RTX's ONNX parser dlopen()s the unversioned `libtensorrt_rtx.so`, which the wheel does not ship
(only `libtensorrt_rtx.so.1`); the process then dies with "terminate called without an active exception".
`fix_rtx_library` makes the name resolvable: a symlink next to the `.so.1` (found through the parser's
RPATH `$ORIGIN`) when that folder is writable; otherwise a symlink in a private folder, which must be on
`LD_LIBRARY_PATH` when the process starts: `LibraryPathNeeded` names it and the CLI re-executes itself
with it (library users set it themselves).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import HymbaDeployError
from ..fileio import user_cache_dir

BACKENDS = ("tensorrt", "tensorrt-rtx")
TARGETS = ("sm80", "sm86", "sm89", "sm90", "sm120", "current")
RTX_LIBRARY = "libtensorrt_rtx.so"

# TensorRT major versions whose plugin ABI each backend loads (TensorRT-RTX 1.7 loads libraries compiled
# against the TensorRT 11.1 headers, tensorrt-notes.md).
RTX_PLUGIN_MAJORS = (11,)

_INSTALL = {
    "tensorrt": "pip install tensorrt-cu13 (from NVIDIA's package index) or use an NGC TensorRT container",
    "tensorrt-rtx": "pip install tensorrt-rtx-cu13==1.7.1.116",
}
_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


class LibraryPathNeeded(HymbaDeployError):
    """TensorRT-RTX needs `directory` on LD_LIBRARY_PATH at process start (see the module docstring)."""

    def __init__(self, directory: Path):
        self.directory = directory
        super().__init__(
            f"TensorRT-RTX's ONNX parser loads {RTX_LIBRARY}, which its wheel does not ship, and the wheel's "
            f"folder is read-only; a symlink was made in {directory}: start the process with "
            f"LD_LIBRARY_PATH={directory}:$LD_LIBRARY_PATH")


@dataclass
class Backend:
    name: str                   # "tensorrt" | "tensorrt-rtx"
    trt: object                 # the imported module
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt-rtx"

    def plugin_majors(self) -> tuple[int, ...]:
        return RTX_PLUGIN_MAJORS if self.is_rtx else (self.major,)


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise HymbaDeployError(f"--backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def backend_available(name: str) -> str | None:
    """None when `name` can be imported here, else the reason (for "not run: <reason>" and test skips)."""
    module = _MODULES[check_backend_name(name)]
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed ({_INSTALL[name]})"
    return None


def fix_rtx_library() -> Path | None:
    """Make `libtensorrt_rtx.so` resolvable for TensorRT-RTX's parser; call before it is imported.

    Returns None when the library resolves through the wheel's own folder (already there, or symlinked
    now); raises `LibraryPathNeeded` when it only resolves through a private folder not yet on the
    LD_LIBRARY_PATH this process started with.
    """
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        return None                                   # an install without the split libs wheel
    libs = Path(list(spec.submodule_search_locations)[0])
    versioned = sorted(libs.glob(RTX_LIBRARY + ".*"))
    link = libs / RTX_LIBRARY
    if link.exists() or not versioned:
        return None
    try:
        os.symlink(versioned[0].name, link)           # relative: survives moving the venv
        return None
    except FileExistsError:
        return None
    except OSError:
        pass
    private = user_cache_dir() / "tensorrt_rtx_libs"
    private.mkdir(parents=True, exist_ok=True)
    plink = private / RTX_LIBRARY
    if not plink.exists():
        tmp = private / f".{RTX_LIBRARY}.{os.getpid()}"
        os.symlink(versioned[0].resolve(), tmp)
        os.replace(tmp, plink)
    on_path = [Path(p).resolve() for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if private.resolve() not in on_path:
        raise LibraryPathNeeded(private)
    return private


def select_backend(name: str) -> Backend:
    """Import the backend's module and point Polygraphy at it. One backend per process."""
    check_backend_name(name)
    reason = backend_available(name)
    if reason:
        raise HymbaDeployError(f"--backend {name}: {reason}")
    want_rtx = name == "tensorrt-rtx"
    if want_rtx:
        fix_rtx_library()
    os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1" if want_rtx else "0"
    if "polygraphy.config" in sys.modules:
        import polygraphy.config as pconfig
        if "polygraphy.backend.trt" in sys.modules and pconfig.USE_TENSORRT_RTX != want_rtx:
            other = "tensorrt-rtx" if pconfig.USE_TENSORRT_RTX else "tensorrt"
            raise HymbaDeployError(f"this process already uses the {other} backend through Polygraphy; "
                                   f"run --backend {name} in a separate process")
        pconfig.USE_TENSORRT_RTX = want_rtx
    trt = importlib.import_module(_MODULES[name])
    return Backend(name, trt, trt.__version__)


# ---- GPU targets -----------------------------------------------------------------------------------

def current_compute_capability() -> tuple[int, int] | None:
    """(major, minor) of CUDA device 0, or None without a usable GPU."""
    try:
        import torch
        if torch.cuda.is_available():
            return tuple(torch.cuda.get_device_capability(0))
    except Exception:                                  # a broken driver reads as "no GPU"
        return None
    return None


def parse_target(target: str) -> tuple[int, int] | None:
    """'sm86' -> (8, 6); 'current' -> None."""
    if target not in TARGETS:
        raise HymbaDeployError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")
    if target == "current":
        return None
    digits = target[2:]
    return int(digits[:-1]), int(digits[-1])


def resolve_target(backend: Backend, target: str) -> tuple[int, int] | None:
    """Validate `target` for `backend`; return the compute capability to build for (None: the current GPU).

    TensorRT-RTX cross-builds for the capabilities in its `ComputeCapability` enum. Full TensorRT builds
    for the GPU it runs on, so an explicit target must be that GPU's.
    """
    cc = parse_target(target)
    here = current_compute_capability()
    if backend.is_rtx:
        if cc is None:
            if here is None:
                raise HymbaDeployError("--target current needs a CUDA GPU on this machine; name one instead "
                                       "(--target sm80, sm86, sm89 or sm120)")
            cc = here
        supported = sorted(m for m in dir(backend.trt.ComputeCapability) if m.startswith("SM"))
        if not hasattr(backend.trt.ComputeCapability, f"SM{cc[0]}{cc[1]}"):
            gpus = " (H100/H200)" if cc == (9, 0) else ""
            raise HymbaDeployError(
                f"TensorRT-RTX {backend.version} cannot build or run engines for compute capability "
                f"{cc[0]}.{cc[1]}{gpus}; it supports {', '.join(s.lower() for s in supported)}. "
                f"Use --backend tensorrt for this GPU.")
        return cc
    if here is None:
        raise HymbaDeployError(f"--backend tensorrt builds for the GPU it runs on and this machine has none; "
                               f"build on a {target} machine, or use --backend tensorrt-rtx to build ahead of time")
    if cc is not None and cc != here:
        raise HymbaDeployError(f"--target {target}: full TensorRT builds for the GPU it runs on, and this one is "
                               f"sm{here[0]}{here[1]}; build on a {target} machine or pass --target current")
    return here
