"""The `cuda` kernel backend: the plugin kernels behind `torch.ops.hymba.*` (one implementation, two doors).

The CUDA kernels live in `plugins/<op>/<op>_kernel.{h,cu}` (plain launchers: params struct + stream ->
cudaError_t; installed as `hymba_deploy/_plugins`), shared with the TensorRT plugins. `load_extension()` JIT-compiles those very sources plus
the small binding `csrc/hymba_torch.cpp` with `torch.utils.cpp_extension.load`; `set_backend("cuda")`
registers CUDA kernels for `hymba::selective_scan`, `hymba::causal_conv1d` and
`hymba::windowed_attention` that call it on the current stream.

Backends (chosen once per process, at model load time; nothing in the model changes):
    reference  the ops' PyTorch implementations (`hymba_deploy.ops`), on CPU or CUDA tensors
    cuda       the plugin kernels for CUDA tensors (CPU tensors still take the PyTorch implementations)

A missing GPU or compiler is a `HymbaDeployError` naming the fix; nothing falls back silently.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from ..contract import plugin_sources
from ..errors import HymbaDeployError

BACKENDS = ("reference", "cuda")
OPS = ("selective_scan", "causal_conv1d", "windowed_attention")
DECODE_ENV = "HYMBA_ATTN_DECODE"   # windowedAttentionLaunchT's kernel override (plugins/windowed_attention)
CSRC = Path(__file__).resolve().parent / "csrc" / "hymba_torch.cpp"
PLUGINS_DIR = plugin_sources()

_ext = None
_backend = "reference"
_registered = False


@contextlib.contextmanager
def forced_decode_attention(path: str):
    """Inside the block, the plugin launcher serves decode attention with one kernel where it applies
    (`HYMBA_ATTN_DECODE` = split | mma | prefill | flash | auto, read per launch; `flash`: the general CUDA-core
    kernel for every call); the previous setting comes back after."""
    old = os.environ.get(DECODE_ENV)
    os.environ[DECODE_ENV] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(DECODE_ENV, None)
        else:
            os.environ[DECODE_ENV] = old


def kernel_sources(plugins_dir: Path = PLUGINS_DIR) -> list[Path]:
    """The plugin kernel translation units: launcher + one instantiation file per dtype, for each op."""
    files = []
    for op in OPS:
        for suffix in ("", "_fp32", "_fp16", "_bf16"):
            files.append(plugins_dir / op / f"{op}_kernel{suffix}.cu")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise HymbaDeployError(f"plugin kernel sources missing: {', '.join(missing)} (reinstall hymba-deploy)")
    return files


def load_extension(verbose: bool = False):
    """Build (first call; cached by torch under TORCH_EXTENSIONS_DIR) and import the kernel extension."""
    global _ext
    if _ext is not None:
        return _ext
    if not torch.cuda.is_available():
        raise HymbaDeployError("the 'cuda' backend needs a CUDA GPU; use --backend reference on this machine")
    from torch.utils.cpp_extension import load

    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")   # this GPU only: a short build
    os.environ.setdefault("MAX_JOBS", str(max(1, min(16, os.cpu_count() or 1))))
    try:
        _ext = load(
            name="hymba_torch_ext",
            sources=[str(CSRC)] + [str(f) for f in kernel_sources()],
            extra_include_paths=[str(PLUGINS_DIR)],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr"],
            verbose=verbose,
        )
    except (RuntimeError, OSError) as e:
        raise HymbaDeployError(f"building the hymba CUDA extension failed (nvcc and ninja are needed): {e}") from e
    return _ext


def get_backend() -> str:
    return _backend


def set_backend(name: str) -> None:
    """Select the kernels `torch.ops.hymba.*` run on CUDA tensors for this process."""
    global _backend
    if name not in BACKENDS:
        raise HymbaDeployError(f"backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "cuda":
        load_extension()
        _register()
    _backend = name


def _register() -> None:
    """CUDA kernels for the three custom ops; each routes by the selected backend (so 'reference' can
    be selected again later without unregistering)."""
    global _registered
    if _registered:
        return
    import importlib

    # The submodules themselves: `hymba_deploy.ops` re-exports functions of the same names.
    conv_mod = importlib.import_module("hymba_deploy.ops.causal_conv1d")
    scan_mod = importlib.import_module("hymba_deploy.ops.selective_scan")
    attn_mod = importlib.import_module("hymba_deploy.ops.windowed_attention")

    def scan_cuda(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None,
                  softplus_threshold=scan_mod.SOFTPLUS_THRESHOLD):
        if _backend != "cuda":
            y, s = scan_mod.selective_scan(x, dt, A, B, C, D, z, dt_bias, initial_state, softplus_threshold)
            return y, s.clone() if s is initial_state else s
        return tuple(_ext.selective_scan(
            x, dt.to(x.dtype), A.float(), B.to(x.dtype), C.to(x.dtype),
            None if D is None else D.float(), None if z is None else z.to(x.dtype),
            None if dt_bias is None else dt_bias.float(), initial_state, softplus_threshold, None, None))

    def conv_cuda(x, weight, bias=None, conv_state=None, activation="silu"):
        if _backend != "cuda":
            return conv_mod.causal_conv1d(x, weight, bias, conv_state, activation)
        if activation not in conv_mod.ACTIVATIONS:
            raise ValueError(f"causal_conv1d: activation must be 'silu' or None, got {activation!r}")
        state = None if conv_state is None else conv_state.to(x.dtype)
        y, new_state = _ext.causal_conv1d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                                          state, activation == "silu", None, None)
        if conv_state is not None and conv_state.dtype != x.dtype:
            new_state = new_state.to(conv_state.dtype)
        return y, new_state

    def attn_cuda(q, k, v, window, num_meta, scale):
        if _backend != "cuda":
            return attn_mod.windowed_attention(q, k, v, window, num_meta, scale)
        return _ext.windowed_attention(q, k, v, window, num_meta, scale, None)

    torch.library.register_kernel("hymba::selective_scan", "cuda", scan_cuda)
    torch.library.register_kernel("hymba::causal_conv1d", "cuda", conv_cuda)
    torch.library.register_kernel("hymba::windowed_attention", "cuda", attn_cuda)
    _registered = True


def extension():
    """The loaded extension module (for in-place calls by the serving runtime); None before loading."""
    return _ext


def load_model(spec: str, dtype=None, seed: int = 0, device="cuda", backend: str = "cuda"):
    """`checkpoint.load_model` plus the backend choice: the model is unchanged, the ops' kernels are selected."""
    from ..checkpoint import load_model as _load

    set_backend(backend)
    model = _load(spec, dtype=dtype, seed=seed, device=device)
    model.backend = backend
    return model
