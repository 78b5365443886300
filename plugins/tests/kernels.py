"""The torch side of the plugin harness: the library's kernels called on torch tensors, the plugin objects
driven the way TensorRT drives them, random inputs at realistic scales, forced kernel choices, CUDA-event and
CUDA-graph timing, and the facts a result file records about its run.

Used by tests/gpu (correctness), bench/kernels.py (timings) and tools/ (tuning). Loads no part of hymba_deploy.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import platform
import re
import subprocess
from pathlib import Path

import torch

from hymba_deploy.contract import SOFTPLUS_THRESHOLD

import harness as H

REPO = Path(__file__).resolve().parents[2]
DEV = "cuda"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TRT_TYPE = {torch.float32: H.KFLOAT, torch.float16: H.KHALF, torch.bfloat16: H.KBF16, torch.int32: H.KINT32}
CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # hymba::DType


# ---------------------------------------------------------------------------------------------------------------
# Inputs (realistic scales; `gen` a CUDA generator, or None for the global one)

def scan_inputs(Bt, T, D, N, dtype, state_dtype=torch.float32, gen=None):
    g = dict(device=DEV, generator=gen)
    return dict(
        x=torch.randn(Bt, T, D, **g).to(dtype),
        dt=(torch.randn(Bt, T, D, **g) * 0.5 - 1.0).to(dtype),                       # dt_proj output
        A=-torch.exp(torch.rand(D, N, **g) * math.log(N)),                            # -(1..N)
        B=torch.randn(Bt, T, N, **g).to(dtype), C=torch.randn(Bt, T, N, **g).to(dtype),
        D=torch.randn(D, **g), z=torch.randn(Bt, T, D, **g).to(dtype),
        dt_bias=torch.log(torch.expm1(torch.rand(D, **g) * 0.099 + 0.001)),          # mamba's dt init
        initial_state=(torch.randn(Bt, D, N, **g) * 0.5).to(state_dtype))


def conv_inputs(Bt, T, D, K, dtype, gen=None):
    g = dict(device=DEV, generator=gen)
    return dict(x=torch.randn(Bt, T, D, **g).to(dtype), weight=(torch.randn(D, K, **g) * 0.5).to(dtype),
                bias=torch.randn(D, **g).to(dtype), conv_state=torch.randn(Bt, D, K, **g).to(dtype))


def attn_inputs(Bt, Tq, Tk, Hq, Hkv, Dqk, Dv, dtype, gen=None):
    g = dict(device=DEV, generator=gen)
    return dict(q=torch.randn(Bt, Tq, Hq, Dqk, **g).to(dtype), k=torch.randn(Bt, Tk, Hkv, Dqk, **g).to(dtype),
                v=torch.randn(Bt, Tk, Hkv, Dv, **g).to(dtype))


def slice_noncontig(t, dim=-1):
    """The same values inside a buffer twice as wide along `dim` (the strides of a fused projection output)."""
    shape = list(t.shape)
    shape[dim] *= 2
    view = torch.randn(shape, device=t.device).to(t.dtype).narrow(dim % t.dim(), 0, t.shape[dim])
    view.copy_(t)
    return view


def channel_fastest(t):
    """(batch, dim, K) values with dim the fastest axis (the serving cache's state layout)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def nan_like(t):
    return torch.full_like(t, float("nan"))


# ---------------------------------------------------------------------------------------------------------------
# The kernels through the extern "C" shim (strided tensors; None = absent)

class Kernels:
    def __init__(self, shim: H.KernelShim):
        self.shim = shim
        self.lib = shim.lib

    @staticmethod
    def _ptr(t):
        return t.data_ptr() if t is not None else None

    def _check(self, rc, name):
        if rc != 0:
            raise RuntimeError(f"{name} returned {rc}: {self.shim.error()}")

    def selective_scan(self, x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None, y=None,
                       last_state=None, softplus_threshold=SOFTPLUS_THRESHOLD):
        Bt, T, Dd = x.shape
        N = A.shape[1]
        y = torch.empty_like(x) if y is None else y
        if last_state is None:
            last_state = torch.empty(Bt, Dd, N, device=x.device, dtype=torch.float32)
        s, p = self.shim.strides, self._ptr
        st_code = CODE[initial_state.dtype] if initial_state is not None else 0
        rc = self.lib.hymba_selective_scan(
            Bt, T, Dd, N, CODE[x.dtype], st_code, softplus_threshold,
            p(x), s(x), p(dt), s(dt), p(A), s(A), p(B), s(B), p(C), s(C), p(D), p(z), s(z), p(dt_bias),
            p(initial_state), s(initial_state), p(y), s(y), p(last_state), s(last_state), _stream())
        self._check(rc, "hymba_selective_scan")
        return y, last_state

    def causal_conv1d(self, x, weight, bias=None, conv_state=None, activation="silu", y=None, new_state=None):
        Bt, T, Dd = x.shape
        K = weight.shape[1]
        y = torch.empty_like(x) if y is None else y
        new_state = torch.empty(Bt, Dd, K, device=x.device, dtype=x.dtype) if new_state is None else new_state
        s, p = self.shim.strides, self._ptr
        rc = self.lib.hymba_causal_conv1d(
            Bt, T, Dd, K, CODE[x.dtype], 1 if activation == "silu" else 0, p(x), s(x), p(weight), s(weight),
            p(bias), p(conv_state), s(conv_state), p(y), s(y), p(new_state), s(new_state), _stream())
        self._check(rc, "hymba_causal_conv1d")
        return y, new_state

    def windowed_attention(self, q, k, v, window, num_meta, scale, out=None, kv_lengths=None):
        """kv_lengths: None (every row sees all Tk keys) or a contiguous int32 (B,) CUDA tensor of per-row key
        counts."""
        Bt, Tq, Hq, _ = q.shape
        out = torch.empty(Bt, Tq, Hq, v.shape[3], device=q.device, dtype=q.dtype) if out is None else out
        s = lambda t: self.shim.strides(t, (0, 1, 2))  # noqa: E731
        if kv_lengths is not None:
            assert kv_lengths.dtype == torch.int32 and kv_lengths.is_cuda and kv_lengths.shape == (Bt,) \
                and kv_lengths.is_contiguous(), "kv_lengths: a contiguous int32 (B,) CUDA tensor"
        rc = self.lib.hymba_windowed_attention(
            Bt, Tq, k.shape[1], Hq, k.shape[2], q.shape[3], v.shape[3], CODE[q.dtype], window, num_meta, scale,
            q.data_ptr(), s(q), k.data_ptr(), s(k), v.data_ptr(), s(v), out.data_ptr(), s(out),
            self._ptr(kv_lengths), _stream())
        self._check(rc, "hymba_windowed_attention")
        return out


def _stream():
    return torch.cuda.current_stream().cuda_stream


# ---------------------------------------------------------------------------------------------------------------
# The plugin objects, as TensorRT drives them

def run_plugin(h: H.Harness, name, fields, inputs, out_shapes, out_dtypes):
    """createPlugin(kBUILD) → output types / shapes → supportsFormatCombination → configurePlugin →
    getFieldsToSerialize → createPlugin(kRUNTIME) → attachToContext → onShapeChange → enqueue on the current
    stream into NaN-filled outputs. Returns the outputs; an AssertionError names the protocol step that failed."""
    nb_in, nb_out = len(inputs), len(out_shapes)
    shapes = [tuple(t.shape) for t in inputs] + [tuple(s) for s in out_shapes]
    types = [TRT_TYPE[t.dtype] for t in inputs] + [TRT_TYPE[d] for d in out_dtypes]
    h.clear_log()
    p0 = h.create(name, fields, H.PHASE_BUILD)
    assert p0 is not None, f"createPlugin(kBUILD) failed: {h.log}"
    r, otypes = p0.output_types(types[:nb_in], nb_out)
    assert r == 0 and otypes == types[nb_in:], f"getOutputDataTypes {r} {otypes} != {types[nb_in:]}: {h.log}"
    r, oshapes = p0.output_shapes([tuple(t.shape) for t in inputs], nb_out)
    assert r == 0 and oshapes == [tuple(s) for s in out_shapes], f"getOutputShapes {oshapes}: {h.log}"
    for pos in range(nb_in + nb_out):
        assert p0.supports(pos, shapes, types, [H.KLINEAR] * (nb_in + nb_out), nb_in), f"format pos {pos} rejected"
    assert p0.configure(shapes, types, nb_in) == 0, f"configurePlugin failed: {h.log}"
    ws = p0.workspace(shapes, types, nb_in)
    p1 = h.round_trip(p0)
    assert p1 is not None, f"createPlugin(kRUNTIME) from serialized fields failed: {h.log}"
    assert p1.serialize() == p0.serialize(), "serialize -> recreate changed the fields"
    p2 = p1.attach()
    assert p2 is not None, "attachToContext returned null"
    assert p2.on_shape_change(shapes, types, nb_in) == 0, f"onShapeChange failed: {h.log}"
    outs = [torch.full(s, float("nan"), device=DEV, dtype=d) for s, d in zip(out_shapes, out_dtypes)]
    wsbuf = torch.empty(max(ws, 1), device=DEV, dtype=torch.uint8)
    rc = p2.enqueue(shapes, types, [t.data_ptr() for t in inputs] + [o.data_ptr() for o in outs], nb_in,
                    wsbuf.data_ptr(), _stream())
    torch.cuda.synchronize()
    assert rc == 0, f"enqueue returned {rc}: {h.log}"
    return outs


# ---------------------------------------------------------------------------------------------------------------
# Timing

def bench(fn, reps=20, warmup=3):
    """Median / min milliseconds over `reps` CUDA-event-timed calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "reps": reps}


def graph_ms(fn, launches=20, reps=10):
    """Median ms per launch of `fn` over `reps` replays of a CUDA graph of `launches` calls (kernel time, no
    Python launch overhead)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            for _ in range(launches):
                fn()
    torch.cuda.current_stream().wait_stream(s)
    g.replay()
    torch.cuda.synchronize()
    return bench(g.replay, reps=reps, warmup=0)["median_ms"] / launches


def copy_bandwidth():
    """Device copy bandwidth in GB/s, counting read + write, over 1 GiB."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=DEV).random_(0, 255)
    b = torch.empty_like(a)
    return 2 * n / (bench(lambda: b.copy_(a))["median_ms"] * 1e-3) / 1e9


def matmul_tflops(n=8192):
    """bf16 n×n×n matmul rate (TFLOP/s) on random data: the tensor-core peak of this run."""
    a = torch.randn(n, n, device=DEV).bfloat16()
    b = torch.randn(n, n, device=DEV).bfloat16()
    return 2 * n ** 3 / (bench(lambda: a @ b)["median_ms"] * 1e-3) / 1e12


def exp2_limit():
    """MUFU.EX2 throughput: 16 per clock per SM (sm_80 / sm_90) at the maximum SM clock nvidia-smi reports."""
    try:
        mhz = float(subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits",
                                    "-i", str(torch.cuda.current_device())], stdout=subprocess.PIPE,
                                   text=True, check=True).stdout.split()[0])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return {"exps_per_s": 16 * sms * mhz * 1e6, "note": f"16/clk/SM x {sms} SMs x {mhz:.0f} MHz (max SM clock)"}


def nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


# ---------------------------------------------------------------------------------------------------------------
# What a result file records about its run

def run_info(lib: Path | None = None, archs: str | None = None) -> dict:
    """GPU, versions, date (UTC), and, given the plugin library, its build archs, embedded TensorRT headers
    version and the sha256 of the plugin sources it was built from."""
    prop = torch.cuda.get_device_properties(0)
    info = {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{prop.major}.{prop.minor}",
            "sm_count": prop.multi_processor_count, "memory_GiB": round(prop.total_memory / 2**30, 1),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "nvcc": _nvcc_version(),
            "python": platform.python_version(),
            "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if archs:
        info["build_archs"] = archs
    if lib is not None:
        m = re.search(rb"hymba-plugins tensorrt=(\d+\.\d+\.\d+);", Path(lib).read_bytes())
        info["tensorrt_headers"] = m.group(1).decode() if m else "not embedded"
        info["sources_sha256"] = _sources_digest()
    return info


def _sources_digest():
    h = hashlib.sha256()
    for f in sorted(REPO.joinpath("plugins").rglob("*")):
        if f.suffix in (".h", ".cuh", ".cu", ".cpp", ".txt") and f.is_file():
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _nvcc_version():
    try:
        return subprocess.run(["nvcc", "--version"], stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    except (OSError, IndexError):
        return "unknown"
