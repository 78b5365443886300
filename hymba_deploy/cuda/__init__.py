"""The `cuda` kernel backend: the plugin kernels as a `KernelBackend` object (`CudaKernels`).

The CUDA kernels live in `plugins/<op>/<op>_kernel.{h,cu}` (plain launchers: params struct + stream ->
cudaError_t; installed as `hymba_deploy/_plugins`), shared with the TensorRT plugins. `load_extension()`
JIT-compiles those very sources (`extension_sources()`) plus the small binding `csrc/hymba_torch.cpp` with
`torch.utils.cpp_extension.load`. `CudaKernels` calls that extension for CUDA tensors and the
`torch.ops.hymba.*` ops (`hymba_deploy.kernels.ReferenceKernels`) for CPU tensors.

Which kernels a model runs is chosen where it is built (`kernel_backend("cuda")`, `load_model(..., kernels=...)`,
`HymbaForCausalLM(config, kernels=...)`); nothing here is a process-wide switch. A missing GPU or
compiler is a `HymbaDeployError` naming the fix; nothing falls back silently.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch

from ..contract import plugin_sources
from ..errors import HymbaDeployError
from ..kernels import REFERENCE, ReferenceKernels
from ..ops import SOFTPLUS_THRESHOLD

BACKENDS = ("reference", "cuda")
OPS = ("selective_scan", "causal_conv1d", "windowed_attention")
CSRC = Path(__file__).resolve().parent / "csrc" / "hymba_torch.cpp"
PLUGINS_DIR = plugin_sources()

_ext = None                        # the loaded extension module (a build is per process, cached by torch)


@contextlib.contextmanager
def forced_decode_attention(path: str):
    """Inside the block, the extension's attention launcher serves every call with one kernel where it applies
    (the `attention` kernel choice of plugins/common/kernel_choice.h: split | mma | prefill | flash | auto;
    `flash`: the general CUDA-core kernel for every call); the previous choice comes back after. Loads the
    extension (a CUDA GPU is needed)."""
    ext = load_extension()
    old = ext.kernel_choice("attention")
    ext.set_kernel_choice("attention", path)
    try:
        yield
    finally:
        ext.set_kernel_choice("attention", old)


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


def extension_sources() -> list[Path]:
    """What `load_extension` compiles: the binding, then the plugin kernel sources."""
    return [CSRC, *kernel_sources()]


def binding_functions(binding: Path = CSRC) -> list[str]:
    """The Python functions the binding defines (`m.def("name", ...)`)."""
    return re.findall(r'm\.def\("(\w+)"', binding.read_text())


def load_extension(verbose: bool = False):
    """Build (first call; cached by torch under TORCH_EXTENSIONS_DIR) and import the kernel extension."""
    global _ext
    if _ext is not None:
        return _ext
    if not torch.cuda.is_available():
        raise HymbaDeployError("the 'cuda' kernels need a CUDA GPU; on this machine use the reference kernels "
                               "(kernel_backend('reference'), every model's default)")
    from torch.utils.cpp_extension import load

    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")   # this GPU only: a short build
    os.environ.setdefault("MAX_JOBS", str(max(1, min(16, os.cpu_count() or 1))))
    try:
        _ext = load(
            name="hymba_torch_ext",
            sources=[str(f) for f in extension_sources()],
            extra_include_paths=[str(PLUGINS_DIR)],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr"],
            verbose=verbose,
        )
    except (RuntimeError, OSError) as e:
        raise HymbaDeployError(f"building the hymba CUDA extension failed (nvcc and ninja are needed): {e}") from e
    return _ext


class CudaKernels(ReferenceKernels):
    """The plugin kernels (through `ext`, the loaded extension) for CUDA tensors; the reference ops for CPU
    tensors. The routing is by the first tensor argument's device, per call."""

    name = "cuda"
    writes_state_in_place = True

    def __init__(self, ext):
        self.ext = ext

    # ---- the model's calls --------------------------------------------------------------------------
    def selective_scan(self, x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None):
        if not x.is_cuda:
            return super().selective_scan(x, dt, A, B, C, D, z, dt_bias, initial_state)
        return tuple(self.ext.selective_scan(
            x, dt.to(x.dtype), A.float(), B.to(x.dtype), C.to(x.dtype),
            None if D is None else D.float(), None if z is None else z.to(x.dtype),
            None if dt_bias is None else dt_bias.float(), initial_state, SOFTPLUS_THRESHOLD, None, None))

    def causal_conv1d(self, x, weight, bias=None, conv_state=None, activation="silu"):
        if not x.is_cuda:
            return super().causal_conv1d(x, weight, bias, conv_state, activation)
        from ..ops.causal_conv1d import ACTIVATIONS
        if activation not in ACTIVATIONS:
            raise HymbaDeployError(f"causal_conv1d: activation must be 'silu' or None, got {activation!r}")
        state = None if conv_state is None else conv_state.to(x.dtype)
        y, new_state = self.ext.causal_conv1d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                                              state, activation == "silu", None, None)
        if conv_state is not None and conv_state.dtype != x.dtype:
            new_state = new_state.to(conv_state.dtype)
        return y, new_state

    def windowed_attention(self, q, k, v, window: int, num_meta: int, scale: float, kv_lengths=None):
        """kv_lengths: None (every row sees all Tk keys) or (B,) integer counts, row b's valid keys
        k/v[b, :kv_lengths[b]] (the op's contract, hymba_deploy/ops/windowed_attention.py)."""
        if not q.is_cuda:
            return super().windowed_attention(q, k, v, window, num_meta, scale, kv_lengths)
        if kv_lengths is not None:
            kv_lengths = kv_lengths.to(device=q.device, dtype=torch.int32).contiguous()
        return self.ext.windowed_attention(q, k, v, window, num_meta, scale, None, kv_lengths)

    # ---- the serving runtime's in-place calls: the kernels write the state buffer themselves ---------
    def conv_(self, x, weight, bias, state, fresh: bool = False):
        if not x.is_cuda:
            return super().conv_(x, weight, bias, state, fresh)
        return self.ext.causal_conv1d(x, weight, bias, None if fresh else state, True, None, state)[0]

    def scan_(self, x, dt, A, B, C, D, z, dt_bias, state, fresh: bool = False):
        """fp32 state: written by the kernel itself; other dtypes: the kernel's fp32 state copied in."""
        if not x.is_cuda:
            return super().scan_(x, dt, A, B, C, D, z, dt_bias, state, fresh)
        init = None if fresh else state
        if state.dtype == torch.float32:
            return self.ext.selective_scan(x, dt, A, B, C, D, z, dt_bias, init, SOFTPLUS_THRESHOLD, None, state)[0]
        y, new_state = self.ext.selective_scan(x, dt, A, B, C, D, z, dt_bias, init, SOFTPLUS_THRESHOLD, None, None)
        state.copy_(new_state)
        return y

    def device_kv_len(self, device) -> bool:
        return torch.device(device).type == "cuda"

    def attn(self, q, k, v, window, num_meta, scale, out=None, kv_len=None):
        """kv_len: None, or an int32 device tensor of shape (1,) (one key count for every row) or (B,) (one per
        row), read when the kernel runs: a captured graph replays over caches whose rows grow."""
        if not q.is_cuda:
            return super().attn(q, k, v, window, num_meta, scale, out, kv_len)
        return self.ext.windowed_attention(q, k, v, window, num_meta, scale, out, kv_len)


def kernel_backend(name: str, verbose: bool = False) -> ReferenceKernels:
    """The kernel backend called `name` ('reference' or 'cuda'; 'cuda' builds or loads the extension)."""
    if name not in BACKENDS:
        raise HymbaDeployError(f"kernel backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return REFERENCE if name == "reference" else CudaKernels(load_extension(verbose))


def load_model(spec: str, dtype=None, seed: int = 0, device="cuda", kernels: str | ReferenceKernels = "cuda"):
    """`checkpoint.load_model` on `device`, running `kernels` (a backend object or its name)."""
    from ..checkpoint import load_model as _load

    chosen = kernel_backend(kernels) if isinstance(kernels, str) else kernels
    return _load(spec, dtype=dtype, seed=seed, device=device).use_kernels(chosen)
