"""GPU proof for plugins/: build, check every op × dtype × shape against the PyTorch references, time.

On a machine with a CUDA GPU, PyTorch and nvcc (no TensorRT needed):

    python3 plugins/tests/gpu_check.py --archs 90 --json bench/results/plugins_<gpu>.json

1. Builds libhymba_plugins.so and the harness with plugins/build.sh (or uses $HYMBA_PLUGIN_LIB).
2. For each op, dtype (fp32, fp16, bf16) and shape (tiny preset and Hymba-1.5B shapes, prefill and
   decode, odd sizes, one non-contiguous case) draws fresh random inputs and compares, output by output,
   ‖out − ref‖ / ‖ref‖ against `hymba_deploy.ops.<op>_ref`:
     a. the kernel launcher called directly (extern "C" shim, strided tensors);
     b. the plugin object: creator from getCreators → createPlugin(fields) → output types/shapes,
        supportsFormatCombination, configurePlugin → getFieldsToSerialize → createPlugin(kRUNTIME) →
        attachToContext → onShapeChange → enqueue on a real stream with real device buffers.
   Outputs are filled with NaN first, so unwritten elements fail; any NaN fails.
   Tolerances: fp32 1e-5 (scan 1e-4 at T >= 4096), fp16/bf16 1e-2.
3. Times each kernel (CUDA events, warm-up, median of >= 20) against the reference eager and under
   torch.compile, attention also against scaled_dot_product_attention with an explicit boolean mask and,
   for prefill, the anchors a user would pick (SDPA flash, causal; compiled FlexAttention with a block mask
   of the Hymba mask) and the previous CUDA-core kernel (`kernel[flash]`); reports GB/s over the fewest
   bytes and the ratio to the measured device copy bandwidth, attention TFLOP/s against this run's bf16
   matmul rate, and each anchor's time over ours (`kernel_speedup`). `--only` limits checks and timings.
4. Writes everything to JSON; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import harness as H  # noqa: E402


def _load_op_module(name):
    """hymba_deploy/ops/<name>.py by path: the references without importing the whole package."""
    path = REPO / "hymba_deploy" / "ops" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_hymba_ops_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SS = _load_op_module("selective_scan")
CC = _load_op_module("causal_conv1d")
WA = _load_op_module("windowed_attention")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TRT_TYPE = {torch.float32: H.KFLOAT, torch.float16: H.KHALF, torch.bfloat16: H.KBF16}
TOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
DEV = "cuda"


def log(*a):
    print(*a, flush=True)


def rel_err(out, ref):
    o, r = out.double(), ref.double()
    nan = bool(torch.isnan(o).any() or torch.isinf(o).any())
    denom = r.norm().item()
    err = (o - r).norm().item() / (denom if denom > 0 else 1.0)
    return {"rel_err": err if not nan else float("nan"), "max_abs": (o - r).abs().max().item() if o.numel() else 0.0,
            "nan": nan}


def poison(*ts):
    for t in ts:
        t.fill_(float("nan"))


# ----------------------------------------------------------------------------------------------------------
# Input generators (fresh random draws each call; realistic scales)

def scan_inputs(Bt, T, D, N, dtype, state_dtype=torch.float32, gen=None):
    g = dict(device=DEV, generator=gen)
    x = torch.randn(Bt, T, D, **g).to(dtype)
    dt = (torch.randn(Bt, T, D, **g) * 0.5 - 1.0).to(dtype)  # dt_proj output
    A = -torch.exp(torch.rand(D, N, **g) * math.log(N) + 0.0)  # -(1..N)
    Bm = torch.randn(Bt, T, N, **g).to(dtype)
    Cm = torch.randn(Bt, T, N, **g).to(dtype)
    Dv = torch.randn(D, **g)
    z = torch.randn(Bt, T, D, **g).to(dtype)
    dt_bias = torch.log(torch.expm1(torch.rand(D, **g) * 0.099 + 0.001))  # mamba's dt init
    h0 = (torch.randn(Bt, D, N, **g) * 0.5).to(state_dtype)
    return dict(x=x, dt=dt, A=A, B=Bm, C=Cm, D=Dv, z=z, dt_bias=dt_bias, initial_state=h0)


def conv_inputs(Bt, T, D, K, dtype, gen=None):
    g = dict(device=DEV, generator=gen)
    return dict(x=torch.randn(Bt, T, D, **g).to(dtype), weight=(torch.randn(D, K, **g) * 0.5).to(dtype),
                bias=torch.randn(D, **g).to(dtype), conv_state=torch.randn(Bt, D, K, **g).to(dtype))


def attn_inputs(Bt, Tq, Tk, Hq, Hkv, Dqk, Dv, dtype, gen=None):
    g = dict(device=DEV, generator=gen)
    return dict(q=torch.randn(Bt, Tq, Hq, Dqk, **g).to(dtype), k=torch.randn(Bt, Tk, Hkv, Dqk, **g).to(dtype),
                v=torch.randn(Bt, Tk, Hkv, Dv, **g).to(dtype))


# ----------------------------------------------------------------------------------------------------------
# Direct kernel calls through the extern "C" shim (accept strided tensors)

class Kernels:
    def __init__(self, shim: H.KernelShim):
        self.shim = shim
        self.lib = shim.lib

    def _stream(self):
        return torch.cuda.current_stream().cuda_stream

    def _check(self, rc, name):
        if rc != 0:
            raise RuntimeError(f"{name} returned {rc}: {self.shim.error()}")

    def selective_scan(self, x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None, y=None,
                       last_state=None, softplus_threshold=20.0):
        Bt, T, Dd = x.shape
        N = A.shape[1]
        y = torch.empty_like(x) if y is None else y
        last_state = torch.empty(Bt, Dd, N, device=x.device, dtype=torch.float32) if last_state is None else last_state
        s, p = self.shim.strides, (lambda t: t.data_ptr() if t is not None else None)
        code = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
        st_code = code[initial_state.dtype] if initial_state is not None else 0
        rc = self.lib.hymba_selective_scan(
            Bt, T, Dd, N, code[x.dtype], st_code, softplus_threshold,
            p(x), s(x), p(dt), s(dt), p(A), s(A), p(B), s(B), p(C), s(C), p(D), p(z), s(z), p(dt_bias),
            p(initial_state), s(initial_state), p(y), s(y), p(last_state), s(last_state), self._stream())
        self._check(rc, "hymba_selective_scan")
        return y, last_state

    def causal_conv1d(self, x, weight, bias=None, conv_state=None, activation="silu", y=None, new_state=None):
        Bt, T, Dd = x.shape
        K = weight.shape[1]
        y = torch.empty_like(x) if y is None else y
        new_state = torch.empty(Bt, Dd, K, device=x.device, dtype=x.dtype) if new_state is None else new_state
        s, p = self.shim.strides, (lambda t: t.data_ptr() if t is not None else None)
        code = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
        rc = self.lib.hymba_causal_conv1d(
            Bt, T, Dd, K, code[x.dtype], 1 if activation == "silu" else 0, p(x), s(x), p(weight), s(weight),
            p(bias), p(conv_state), s(conv_state), p(y), s(y), p(new_state), s(new_state), self._stream())
        self._check(rc, "hymba_causal_conv1d")
        return y, new_state

    def windowed_attention(self, q, k, v, window, num_meta, scale, out=None):
        Bt, Tq, Hq, Dqk = q.shape
        Tk, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]
        out = torch.empty(Bt, Tq, Hq, Dv, device=q.device, dtype=q.dtype) if out is None else out
        s = lambda t: self.shim.strides(t, (0, 1, 2))  # noqa: E731
        code = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
        rc = self.lib.hymba_windowed_attention(
            Bt, Tq, Tk, Hq, Hkv, Dqk, Dv, code[q.dtype], window, num_meta, scale, q.data_ptr(), s(q),
            k.data_ptr(), s(k), v.data_ptr(), s(v), out.data_ptr(), s(out), self._stream())
        self._check(rc, "hymba_windowed_attention")
        return out


# ----------------------------------------------------------------------------------------------------------
# The plugin path, as TensorRT drives it

def run_plugin(h: H.Harness, name, fields, inputs, out_shapes, out_dtypes):
    """Returns (outputs, notes). Raises AssertionError on any protocol step that fails."""
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
    outs = [torch.empty(s, device=DEV, dtype=d) for s, d in zip(out_shapes, out_dtypes)]
    poison(*outs)
    wsbuf = torch.empty(max(ws, 1), device=DEV, dtype=torch.uint8)
    rc = p2.enqueue(shapes, types, [t.data_ptr() for t in inputs] + [o.data_ptr() for o in outs], nb_in,
                    wsbuf.data_ptr(), torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert rc == 0, f"enqueue returned {rc}: {h.log}"
    return outs, {"workspace": ws}


# ----------------------------------------------------------------------------------------------------------
# Correctness cases

SCAN_CASES = [  # name, B, T, D, N, state dtype is T (else fp32), noncontig, optional-None variant
    ("tiny", 2, 37, 128, 8, False, False, False),
    ("tiny_no_optionals", 2, 37, 128, 8, False, False, True),
    ("odd_noncontig", 3, 129, 200, 16, True, True, False),
    ("decode_b128", 128, 1, 3200, 16, False, False, False),
    ("prefill_chunk_b128", 128, 64, 3200, 16, True, False, False),
    ("hymba_T8320", 1, 8320, 3200, 16, False, False, False),
    # T = 1 takes the decode-step kernel: generic N (two half-rows, the second partly empty), no optionals
    ("decode_N12_noncontig_Tstate", 3, 1, 203, 12, True, True, False),
    ("decode_N8_no_optionals", 4, 1, 200, 8, False, False, True),
    ("decode_N32", 2, 1, 100, 32, False, False, False),
    # Prefill (T > 1) also runs under each prefill kernel (SCAN_PREFILL_PATHS): T = 2, sizes below, at and past
    # 64- and 256-step tiles, d_state 5 / 12 / 24 / 32, batch > 1, dim no multiple of a block's channels;
    # "state": D, z and dt_bias absent but an initial state.
    ("prefill_T2_b3", 3, 2, 203, 16, False, False, False),
    ("prefill_T255_N12_Tstate", 2, 255, 300, 12, True, False, False),
    ("prefill_T256_N32", 2, 256, 96, 32, False, False, False),
    ("prefill_T1000_N24_noncontig_Tstate", 2, 1000, 333, 24, True, True, False),
    ("prefill_T777_N5_no_optionals", 3, 777, 130, 5, False, False, True),
    ("prefill_T300_no_Dzbias_with_state", 2, 300, 64, 16, False, False, "state"),
    ("prefill_T3000_b4_N16", 4, 3000, 3200, 16, False, False, False),
]
# HYMBA_SCAN_PREFILL values, each forced on every T > 1 case besides the launcher's own choice ("auto"): the
# sequential prefill kernel (one thread per channel; also the timing anchor) and the state-parallel one (lanes
# over (channel, state)).
SCAN_PREFILL_PATHS = ("sequential", "state")
CONV_CASES = [  # name, B, T, D, K, activation, noncontig
    ("tiny", 2, 37, 128, 4, "silu", False),
    ("tiny_K2_noact", 2, 5, 64, 2, None, False),
    ("T_lt_K", 2, 2, 64, 4, "silu", False),
    ("odd_noncontig", 3, 129, 203, 4, "silu", True),
    ("decode_b128", 128, 1, 3200, 4, "silu", False),
    ("hymba_T8320_b2", 2, 8320, 3200, 4, "silu", False),
]
ATTN_CASES = [  # name, B, Tq, Tk, Hq, Hkv, Dqk, Dv, window, num_meta, noncontig
    ("tiny_prefill", 2, 37, 37, 4, 2, 16, 32, 8, 4, False),
    ("tiny_decode", 2, 1, 37, 4, 2, 16, 32, 8, 4, False),
    ("d32_d64_global", 2, 70, 70, 4, 4, 32, 64, 0, 0, False),
    ("noncontig_chunked", 2, 50, 300, 6, 2, 64, 64, 100, 16, True),
    ("hymba_prefill_swa_T2200", 1, 2200, 2200, 25, 5, 64, 128, 1024, 128, False),
    ("hymba_prefill_global_T1500", 1, 1500, 1500, 25, 5, 64, 128, 0, 128, False),
    ("hymba_chunked_prefill", 2, 100, 1300, 25, 5, 64, 128, 1024, 128, False),
    ("hymba_decode_swa_b8", 8, 1, 1152, 25, 5, 64, 128, 1024, 128, False),
    ("hymba_decode_global_b4", 4, 1, 4000, 25, 5, 64, 128, 0, 128, False),
    ("noncontig_decode_b3", 3, 1, 3000, 10, 2, 64, 128, 1024, 16, True),
    ("hymba_decode_tq3_b2", 2, 3, 1500, 25, 5, 64, 128, 1024, 128, False),
    ("decode_g8_d128_b2", 2, 1, 2100, 16, 2, 128, 128, 0, 0, False),
    ("hymba_prefill_swa_T8320", 1, 8320, 8320, 25, 5, 64, 128, 1024, 128, False),
    # batch × kv heads >= the SM count (132 on H100/H200): the tensor-core decode kernel under "auto"
    ("mma_decode_swa_b32", 32, 1, 1152, 25, 5, 64, 128, 1024, 128, False),
    ("mma_decode_global_b28", 28, 1, 3001, 25, 5, 64, 128, 0, 128, False),
    ("mma_noncontig_meta20", 70, 1, 700, 10, 2, 64, 128, 300, 20, True),
    ("mma_tq2_g4_d64", 70, 2, 500, 8, 2, 64, 64, 100, 8, False),
    ("mma_d128_g2", 70, 1, 900, 4, 2, 128, 128, 0, 0, False),
    # >= 256 key chunks and >= 2 tiles per SM: 8 warps per block
    ("mma_8warps_global_b54", 54, 1, 4200, 25, 5, 64, 128, 0, 128, False),
    ("mma_8warps_swa_b60_g2", 60, 1, 5000, 10, 5, 64, 128, 1024, 64, False),
    # Tensor-core prefill (fp16/bf16): sizes that are no multiple of a tile (64 keys, 128 rows), T below the
    # window and below num_meta, chunked prefill (Tq < Tk) over window and meta edges, batch > 1, G = 1 and 5,
    # every head-dim instantiation (Dqk 48 runs zero-padded to 64); Dqk 20 (unaligned rows) takes the general kernel.
    ("prefill_T_lt_meta_b2", 2, 77, 77, 25, 5, 64, 128, 1024, 128, False),
    ("prefill_swa_g1_b3", 3, 333, 333, 4, 4, 64, 128, 100, 20, False),
    ("prefill_chunk_g5_b2", 2, 197, 1501, 25, 5, 64, 128, 1024, 128, False),
    ("prefill_chunk_g1_window_edge", 1, 131, 1200, 3, 3, 64, 128, 200, 70, False),
    ("prefill_global_g1_b2", 2, 1111, 1111, 3, 3, 64, 128, 0, 0, False),
    ("prefill_global_g5_chunk", 1, 300, 2049, 10, 2, 64, 128, 0, 128, False),
    ("prefill_d128_swa", 2, 700, 900, 8, 2, 128, 128, 256, 50, False),
    ("prefill_d32_dv64_meta7", 2, 300, 300, 10, 2, 32, 64, 64, 7, False),
    ("prefill_d48_dv32", 1, 150, 150, 4, 2, 48, 32, 40, 3, False),
    ("prefill_d20_general", 2, 45, 45, 4, 2, 20, 32, 8, 4, False),
    ("prefill_swa_T1025_b2", 2, 1025, 1025, 25, 5, 64, 128, 1024, 128, False),
]
# Decode-shaped cases (Tq·G <= 32) also run with each kernel forced through HYMBA_ATTN_DECODE (the launcher
# falls back to the general kernel where the forced one does not apply); prefill-shaped cases also run
# under `flash`, the general CUDA-core kernel (the previous prefill kernel).
ATTN_FORCED_PATHS = ("split", "mma", "prefill", "flash")


def _slice_noncontig(t, dim=-1):
    """The same values inside a wider buffer (strides of a fused projection output)."""
    shape = list(t.shape)
    shape[dim] *= 2
    wide = torch.randn(shape, device=t.device).to(t.dtype)
    view = wide.narrow(dim if dim >= 0 else t.dim() + dim, 0, t.shape[dim])
    view.copy_(t)
    return view


class forced_scan_prefill:
    """Inside the block the library serves prefill scans (T > 1) with one kernel (HYMBA_SCAN_PREFILL =
    sequential | state | auto, read per launch); the previous setting comes back after."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.old = os.environ.get("HYMBA_SCAN_PREFILL")
        os.environ["HYMBA_SCAN_PREFILL"] = self.path

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("HYMBA_SCAN_PREFILL", None)
        else:
            os.environ["HYMBA_SCAN_PREFILL"] = self.old


def check_scan(K: Kernels, h, results, dtypes, gen):
    for name, Bt, T, D, N, state_T, noncontig, no_opt in SCAN_CASES:
        for dn in dtypes:
            dt_ = DTYPES[dn]
            tol = 1e-4 if (dn == "float32" and T >= 4096) else TOL[dn]
            rec = dict(op="SelectiveScan", case=name, dtype=dn, shape=dict(B=Bt, T=T, D=D, N=N), tol=tol)
            try:
                inp = scan_inputs(Bt, T, D, N, dt_, dt_ if state_T else torch.float32, gen)
                if no_opt:
                    for k in ("D", "z", "dt_bias") + (() if no_opt == "state" else ("initial_state",)):
                        inp[k] = None
                y_ref, s_ref = SS.selective_scan_ref(**inp)
                # a. kernel, under the launcher's choice and (prefill) each forced prefill kernel
                kin = dict(inp)
                if noncontig:
                    kin["x"], kin["z"], kin["dt"] = (_slice_noncontig(inp["x"]), _slice_noncontig(inp["z"]),
                                                     _slice_noncontig(inp["dt"], 1))
                    kin["B"], kin["C"] = _slice_noncontig(inp["B"]), _slice_noncontig(inp["C"], 1)
                for path in ("auto",) + (SCAN_PREFILL_PATHS if T > 1 else ()):
                    y = torch.empty_like(inp["x"])
                    ls = torch.empty(Bt, D, N, device=DEV)
                    poison(y, ls)
                    with forced_scan_prefill(path):
                        K.selective_scan(**kin, y=y, last_state=ls)
                    torch.cuda.synchronize()
                    outs = {"y": rel_err(y, y_ref), "last_state": rel_err(ls, s_ref)}
                    results.append(_outcome(rec, "kernel" if path == "auto" else f"kernel[{path}]", outs, tol,
                                            noncontig=noncontig))
                    _print_last(results)
                # b. plugin (all inputs required)
                if not no_opt:
                    ins = [inp[k].contiguous() for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")]
                    (y2, s2), notes = run_plugin(h, "SelectiveScan", {"softplus_threshold": 20.0}, ins,
                                                 [(Bt, T, D), (Bt, D, N)], [dt_, torch.float32])
                    outs = {"y": rel_err(y2, y_ref), "last_state": rel_err(s2, s_ref)}
                    results.append(_outcome(rec, "plugin", outs, tol, notes=notes))
                    _print_last(results)
            except Exception as e:  # a failed case is recorded, the run goes on
                results.append(_failure(rec, e))
                _print_last(results)
            torch.cuda.empty_cache()
    # In place, as a runtime calls it: last_state aliasing an fp32 initial_state and y aliasing x (same strides).
    for T in (1, 2, 700):
        for dn in dtypes:
            dt_ = DTYPES[dn]
            Bt, D, N = 2, 300, 16
            rec = dict(op="SelectiveScan", case=f"inplace_state_and_y_T{T}", dtype=dn, shape=dict(B=Bt, T=T, D=D, N=N),
                       tol=TOL[dn])
            try:
                inp = scan_inputs(Bt, T, D, N, dt_, torch.float32, gen)
                y_ref, s_ref = SS.selective_scan_ref(**inp)
                for path in ("auto",) + (SCAN_PREFILL_PATHS if T > 1 else ()):
                    kin = dict(inp, x=inp["x"].clone(), initial_state=inp["initial_state"].clone())
                    with forced_scan_prefill(path):
                        K.selective_scan(**kin, y=kin["x"], last_state=kin["initial_state"])
                    torch.cuda.synchronize()
                    outs = {"y": rel_err(kin["x"], y_ref), "last_state": rel_err(kin["initial_state"], s_ref)}
                    results.append(_outcome(rec, "kernel" if path == "auto" else f"kernel[{path}]", outs, TOL[dn]))
                    _print_last(results)
            except Exception as e:
                results.append(_failure(rec, e))
                _print_last(results)


def check_conv(K: Kernels, h, results, dtypes, gen):
    for name, Bt, T, D, Kw, act, noncontig in CONV_CASES:
        for dn in dtypes:
            dt_ = DTYPES[dn]
            tol = TOL[dn]
            rec = dict(op="CausalConv1d", case=name, dtype=dn, shape=dict(B=Bt, T=T, D=D, K=Kw), tol=tol,
                       activation=act)
            try:
                inp = conv_inputs(Bt, T, D, Kw, dt_, gen)
                y_ref, s_ref = CC.causal_conv1d_ref(**inp, activation=act)
                kin = dict(inp)
                if noncontig:
                    kin["x"] = _slice_noncontig(inp["x"])
                    kin["conv_state"] = None  # zeros path
                    y_ref, s_ref = CC.causal_conv1d_ref(inp["x"], inp["weight"], inp["bias"], None, act)
                y = torch.empty_like(inp["x"])
                ns = torch.empty(Bt, D, Kw, device=DEV, dtype=dt_)
                poison(y, ns)
                K.causal_conv1d(**kin, activation=act, y=y, new_state=ns)
                torch.cuda.synchronize()
                outs = {"y": rel_err(y, y_ref), "new_conv_state": rel_err(ns, s_ref)}
                results.append(_outcome(rec, "kernel", outs, tol, noncontig=noncontig))
                if not noncontig:
                    ins = [inp[k] for k in ("x", "weight", "bias", "conv_state")]
                    (y2, s2), notes = run_plugin(h, "CausalConv1d", {"activation": 1 if act == "silu" else 0}, ins,
                                                 [(Bt, T, D), (Bt, D, Kw)], [dt_, dt_])
                    outs = {"y": rel_err(y2, y_ref), "new_conv_state": rel_err(s2, s_ref)}
                    results.append(_outcome(rec, "plugin", outs, tol, notes=notes))
            except Exception as e:
                results.append(_failure(rec, e))
            _print_last(results)
    # In-place decode (new_conv_state aliasing conv_state), the way a runtime updates its cache.
    for dn in dtypes:
        dt_ = DTYPES[dn]
        rec = dict(op="CausalConv1d", case="decode_inplace_state", dtype=dn, shape=dict(B=4, T=1, D=3200, K=4),
                   tol=TOL[dn])
        try:
            inp = conv_inputs(4, 1, 3200, 4, dt_, gen)
            y_ref, s_ref = CC.causal_conv1d_ref(**inp)
            st = inp["conv_state"].clone()
            y = torch.full_like(inp["x"], float("nan"))
            K.causal_conv1d(inp["x"], inp["weight"], inp["bias"], st, "silu", y=y, new_state=st)
            torch.cuda.synchronize()
            outs = {"y": rel_err(y, y_ref), "new_conv_state": rel_err(st, s_ref)}
            results.append(_outcome(rec, "kernel", outs, TOL[dn]))
        except Exception as e:
            results.append(_failure(rec, e))
        _print_last(results)
    # Channel-fastest states (the serving cache's layout: 16-byte state loads and stores) and weights,
    # in place at T = 1 and into a separate new state at T = 3 < K (the kept-state path).
    for T in (1, 3):
        for dn in dtypes:
            dt_ = DTYPES[dn]
            rec = dict(op="CausalConv1d", case=f"chanfast_state_weight_T{T}", dtype=dn,
                       shape=dict(B=8, T=T, D=3200, K=4), tol=TOL[dn])
            try:
                inp = conv_inputs(8, T, 3200, 4, dt_, gen)
                y_ref, s_ref = CC.causal_conv1d_ref(**inp)
                chanfast = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
                st = chanfast(inp["conv_state"])
                w = inp["weight"].t().contiguous().t()
                ns = st if T == 1 else chanfast(torch.full_like(inp["conv_state"], float("nan")))
                y = torch.full_like(inp["x"], float("nan"))
                K.causal_conv1d(inp["x"], w, inp["bias"], st, "silu", y=y, new_state=ns)
                torch.cuda.synchronize()
                outs = {"y": rel_err(y, y_ref), "new_conv_state": rel_err(ns, s_ref)}
                results.append(_outcome(rec, "kernel", outs, TOL[dn]))
            except Exception as e:
                results.append(_failure(rec, e))
            _print_last(results)


def check_attn(K: Kernels, h, results, dtypes, gen):
    for name, Bt, Tq, Tk, Hq, Hkv, Dqk, Dv, window, meta, noncontig in ATTN_CASES:
        for dn in dtypes:
            dt_ = DTYPES[dn]
            tol = TOL[dn]
            scale = 1.0 / math.sqrt(Dqk)
            rec = dict(op="WindowedAttention", case=name, dtype=dn, tol=tol,
                       shape=dict(B=Bt, Tq=Tq, Tk=Tk, Hq=Hq, Hkv=Hkv, Dqk=Dqk, Dv=Dv, window=window, num_meta=meta))
            try:
                inp = attn_inputs(Bt, Tq, Tk, Hq, Hkv, Dqk, Dv, dt_, gen)
                o_ref = WA.windowed_attention_ref(**inp, window=window, num_meta=meta, scale=scale)
                kin = dict(inp)
                if noncontig:  # q, k, v as views of one fused projection output
                    W = Hq * Dqk + Hkv * Dqk + Hkv * Dv
                    qkv = torch.empty(Bt, max(Tq, Tk), W, device=DEV, dtype=dt_)
                    qv = qkv[:, :Tq, :Hq * Dqk].unflatten(-1, (Hq, Dqk))
                    kv_ = qkv[:, :Tk, Hq * Dqk:(Hq + Hkv) * Dqk].unflatten(-1, (Hkv, Dqk))
                    vv = qkv[:, :Tk, (Hq + Hkv) * Dqk:].unflatten(-1, (Hkv, Dv))
                    qv.copy_(inp["q"]), kv_.copy_(inp["k"]), vv.copy_(inp["v"])
                    kin = dict(q=qv, k=kv_, v=vv)
                forced = ATTN_FORCED_PATHS if Tq * (Hq // Hkv) <= 32 else ("flash",)
                for path in ("auto",) + forced:
                    with H.forced_decode_attention(path):
                        out = torch.empty(Bt, Tq, Hq, Dv, device=DEV, dtype=dt_)
                        poison(out)
                        K.windowed_attention(**kin, window=window, num_meta=meta, scale=scale, out=out)
                        torch.cuda.synchronize()
                    outs = {"out": rel_err(out, o_ref)}
                    results.append(_outcome(rec, "kernel" if path == "auto" else f"kernel[{path}]", outs, tol,
                                             noncontig=noncontig))
                if not noncontig:
                    ins = [inp["q"], inp["k"], inp["v"]]
                    (o2,), notes = run_plugin(h, "WindowedAttention",
                                              {"window": window, "num_meta": meta, "scale": scale}, ins,
                                              [(Bt, Tq, Hq, Dv)], [dt_])
                    outs = {"out": rel_err(o2, o_ref)}
                    results.append(_outcome(rec, "plugin", outs, tol, notes=notes))
            except Exception as e:
                results.append(_failure(rec, e))
            _print_last(results)
            torch.cuda.empty_cache()


def _outcome(rec: dict, path: str, outs: dict, tol: float, **extra) -> dict:
    """A case's record: per-output errors (`rel_err` dicts) and whether every one is finite and within tol."""
    return dict(rec, path=path, **extra, outputs=outs,
                passed=all(o["rel_err"] <= tol and not o["nan"] for o in outs.values()))


def _failure(rec: dict, e: Exception) -> dict:
    """A case that raised: recorded as failed with its traceback; the run goes on."""
    return dict(rec, path="error", passed=False, error=f"{e}\n{traceback.format_exc()}")


def _print_last(results):
    r = results[-1]
    errs = " ".join(f"{k}={v['rel_err']:.2e}" for k, v in r.get("outputs", {}).items())
    log(f"  {'PASS' if r['passed'] else 'FAIL'} {r['op']:<17} {r['case']:<28} {r['dtype']:<8} {r['path']:<6} {errs}"
        + ("" if r["passed"] or "error" not in r else "\n" + r["error"][-1500:]))


# ----------------------------------------------------------------------------------------------------------
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


def copy_bandwidth():
    n = 1 << 30  # 1 GiB
    a = torch.empty(n, dtype=torch.uint8, device=DEV)
    a.random_(0, 255)
    b = torch.empty_like(a)
    r = bench(lambda: b.copy_(a), reps=20)
    return 2 * n / (r["median_ms"] * 1e-3) / 1e9


def exp2_limit():
    """MUFU.EX2 throughput: 16 per clock per SM (sm_80 / sm_90) at the maximum SM clock nvidia-smi reports."""
    try:
        mhz = float(subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits",
                                    "-i", str(torch.cuda.current_device())], stdout=subprocess.PIPE,
                                   text=True, check=True).stdout.split()[0])
    except Exception:
        return None
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return {"exps_per_s": 16 * sms * mhz * 1e6, "note": f"16/clk/SM x {sms} SMs x {mhz:.0f} MHz (max SM clock)"}


def nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def timing(K: Kernels, copy_gbps, dtypes_time, do_compile, records, only=("scan", "conv", "attn")):
    def add(op, case, dn, impl, r, bytes_=None, flops=None, extra=None):
        rec = dict(op=op, case=case, dtype=dn, impl=impl, **r)
        if bytes_:
            rec["bytes"] = bytes_
            rec["GBps"] = bytes_ / (r["median_ms"] * 1e-3) / 1e9
            rec["ratio_to_copy_bw"] = rec["GBps"] / copy_gbps
        if flops:
            rec["flops"] = flops
            rec["TFLOPs"] = flops / (r["median_ms"] * 1e-3) / 1e12
        if extra:
            rec.update(extra)
        records.append(rec)
        log(f"  {op:<17} {case:<24} {dn:<8} {impl:<14} {r['median_ms']:10.4f} ms"
            + (f"  {rec['GBps']:8.1f} GB/s ({rec['ratio_to_copy_bw']:.2f} of copy)" if bytes_ else "")
            + (f"  {rec['TFLOPs']:.1f} TFLOP/s" if flops else ""))

    def try_(label, f):
        try:
            f()
        except Exception as e:  # timing failures are recorded, not fatal
            records.append(dict(op=label, impl="error", error=str(e)[-2000:]))
            log(f"  timing {label} failed: {str(e)[-500:]}")

    compiled = {}

    def comp(name, fn):
        if name not in compiled:
            compiled[name] = torch.compile(fn, dynamic=False)
        return compiled[name]

    # --- SelectiveScan ---------------------------------------------------------------------------------
    exp_limit = exp2_limit() if "scan" in only else None
    if exp_limit:
        records.append(dict(op="SelectiveScan", impl="exp2_limit", **exp_limit))
        log(f"  exp2 limit: {exp_limit['exps_per_s']:.3e}/s ({exp_limit['note']})")
    for dn in (dtypes_time if "scan" in only else ()):
        dt_ = DTYPES[dn]

        def scan_prefill(Bt, T, case, paths, reps):
            # Each prefill kernel on the same inputs (HYMBA_SCAN_PREFILL): "kernel" is the launcher's choice,
            # kernel[sequential] one thread per channel (the first kernel), kernel[state] the state-parallel one.
            # Rates: bytes over this run's copy bandwidth, the B·T·D·N state exps over the MUFU.EX2 limit.
            D, N = 3200, 16
            inp = scan_inputs(Bt, T, D, N, dt_)
            y = torch.empty_like(inp["x"])
            ls = torch.empty(Bt, D, N, device=DEV)
            b = nbytes(*[inp[k] for k in ("x", "dt", "B", "C", "z", "initial_state", "A", "D", "dt_bias")], y, ls)
            exps = Bt * T * D * N
            times = {}
            for path in paths:  # "sequential" first: each later one records its speedup over it
                with forced_scan_prefill(path):
                    r = bench(lambda: K.selective_scan(**inp, y=y, last_state=ls), reps=reps, warmup=2)
                times[path] = r["median_ms"]
                rate = exps / (r["median_ms"] * 1e-3)
                extra = {"exps": exps, "exps_per_s": rate}
                if exp_limit:
                    extra.update(ratio_to_exp_limit=rate / exp_limit["exps_per_s"],
                                 exp_floor_ms=exps / exp_limit["exps_per_s"] * 1e3)
                if path != "sequential" and "sequential" in times:
                    extra["speedup_vs_sequential"] = times["sequential"] / r["median_ms"]
                add("SelectiveScan", case, dn, "kernel" if path == "auto" else f"kernel[{path}]", r, b, extra=extra)
            if "sequential" in times:
                log(f"  SelectiveScan {case} {dn}: sequential / auto = {times['sequential'] / times['auto']:.1f}x")
            del inp, y, ls
            torch.cuda.empty_cache()
            return b

        all_paths = ("sequential", "auto", "state")
        try_("SelectiveScan big", lambda: scan_prefill(128, 8320, "hymba_B128_T8320", all_paths, 10))

        def scan_b1():
            Bt, T = 1, 8320
            b = scan_prefill(Bt, T, "hymba_B1_T8320", all_paths, 20)
            if dn == "bfloat16":
                inp = scan_inputs(Bt, T, 3200, 16, dt_)
                add("SelectiveScan", "hymba_B1_T8320", dn, "chunked_eager",
                    bench(lambda: SS.selective_scan(**inp), reps=20, warmup=1), b)
                add("SelectiveScan", "hymba_B1_T8320", dn, "ref_eager",
                    bench(lambda: SS.selective_scan_ref(**inp), reps=3, warmup=1), b,
                    extra={"note": "3 reps: the time-step loop takes seconds"})
        try_("SelectiveScan B1", scan_b1)
        if dn == "bfloat16":  # where the launcher switches from the state-parallel to the sequential kernel
            for Bt in (4, 16, 64):
                try_(f"SelectiveScan B{Bt}", lambda: scan_prefill(Bt, 2048, f"prefill_B{Bt}_T2048", all_paths, 10))

        def scan_small(T):
            Bt, D, N = (128, 3200, 16)
            inp = scan_inputs(Bt, T, D, N, dt_)
            y = torch.empty_like(inp["x"])
            ls = torch.empty(Bt, D, N, device=DEV)
            case = "decode_B128" if T == 1 else f"prefill_B128_T{T}"
            b = nbytes(*[inp[k] for k in ("x", "dt", "B", "C", "z", "initial_state")], y, ls)
            add("SelectiveScan", case, dn, "kernel", bench(lambda: K.selective_scan(**inp, y=y, last_state=ls)), b)
            add("SelectiveScan", case, dn, "ref_eager", bench(lambda: SS.selective_scan_ref(**inp)), b)
            if do_compile and dn == "bfloat16":
                f = comp(f"scan{T}{dn}", SS.selective_scan_ref)
                add("SelectiveScan", case, dn, "ref_compile", bench(lambda: f(**inp)), b)
        try_("SelectiveScan decode", lambda: scan_small(1))

        def scan_decode_serving():
            # The serving engine's layout: fp32 state (B, D, N) channel-fastest, updated in place; A (D, N)
            # row-major (the checkpoint's) or channel-fastest.
            Bt, D, N = 128, 3200, 16
            inp = scan_inputs(Bt, 1, D, N, dt_)
            st = inp["initial_state"].transpose(1, 2).contiguous().transpose(1, 2)
            y = torch.empty_like(inp["x"])
            b = nbytes(*[inp[k] for k in ("x", "dt", "B", "C", "z")], y) + 2 * nbytes(st)
            for label, A in (("A_rows", inp["A"]), ("A_chanfast", inp["A"].t().contiguous().t())):
                kin = dict(inp, A=A, initial_state=st)
                add("SelectiveScan", "decode_B128_serving_layout", dn, f"kernel[{label}]",
                    bench(lambda: K.selective_scan(**kin, y=y, last_state=st)), b)
        try_("SelectiveScan decode serving layout", scan_decode_serving)
        if dn == "bfloat16":
            try_("SelectiveScan T32", lambda: scan_small(32))

    # --- CausalConv1d ----------------------------------------------------------------------------------
    for dn in (dtypes_time if "conv" in only else ()):
        dt_ = DTYPES[dn]

        def conv(Bt, T):
            D, Kw = 3200, 4
            inp = conv_inputs(Bt, T, D, Kw, dt_)
            y = torch.empty_like(inp["x"])
            ns = torch.empty(Bt, D, Kw, device=DEV, dtype=dt_)
            case = "decode_B128" if T == 1 else f"prefill_B{Bt}_T{T}"
            b = nbytes(inp["x"], inp["weight"], inp["bias"], inp["conv_state"], y, ns)
            add("CausalConv1d", case, dn, "kernel", bench(lambda: K.causal_conv1d(**inp, y=y, new_state=ns)), b)
            add("CausalConv1d", case, dn, "ref_eager", bench(lambda: CC.causal_conv1d_ref(**inp)), b)
            add("CausalConv1d", case, dn, "conv1d_eager", bench(lambda: CC.causal_conv1d(**inp)), b)
            if do_compile and dn == "bfloat16":
                f = comp(f"conv{T}{dn}", CC.causal_conv1d_ref)
                add("CausalConv1d", case, dn, "ref_compile", bench(lambda: f(**inp)), b)
            del inp, y, ns
            torch.cuda.empty_cache()
        try_("CausalConv1d prefill", lambda: conv(16, 8320))
        try_("CausalConv1d decode", lambda: conv(128, 1))

        def conv_decode_serving():
            # The serving engine's layout: state (B, D, K) channel-fastest, updated in place.
            inp = conv_inputs(128, 1, 3200, 4, dt_)
            st = inp["conv_state"].transpose(1, 2).contiguous().transpose(1, 2)
            y = torch.empty_like(inp["x"])
            b = nbytes(inp["x"], inp["weight"], inp["bias"], y) + 2 * nbytes(st)
            add("CausalConv1d", "decode_B128_serving_layout", dn, "kernel",
                bench(lambda: K.causal_conv1d(inp["x"], inp["weight"], inp["bias"], st, "silu", y=y, new_state=st)), b)
        try_("CausalConv1d decode serving layout", conv_decode_serving)

    # --- WindowedAttention -----------------------------------------------------------------------------
    # TFLOP/s count the unmasked products only (the useful work, whatever an implementation computes) and
    # are set against this run's bf16 matmul rate; anchors carry kernel_speedup = anchor ms / kernel ms.
    mma_peak = None
    if "attn" in only:
        def peak():
            nonlocal mma_peak
            mma_peak = matmul_tflops()
            records.append(dict(op="matmul", case="bf16_8192^3", dtype="bfloat16", impl="torch.matmul",
                                TFLOPs=mma_peak))
            log(f"  bf16 matmul 8192^3: {mma_peak:.0f} TFLOP/s (tensor-core peak of this run)")
        try_("matmul peak", peak)
    for dn in (dtypes_time if "attn" in only else ()):
        dt_ = DTYPES[dn]

        def attn(Bt, Tq, Tk, window, meta, case, anchors=False):
            Hq, Hkv, Dqk, Dv = 25, 5, 64, 128
            scale = 0.125
            inp = attn_inputs(Bt, Tq, Tk, Hq, Hkv, Dqk, Dv, dt_)
            out = torch.empty(Bt, Tq, Hq, Dv, device=DEV, dtype=dt_)
            b = nbytes(inp["q"], inp["k"], inp["v"], out)
            mask = WA.window_mask(Tq, Tk, window, meta, DEV)
            visible = int(mask.sum().item())
            flops = 2 * Bt * Hq * visible * (Dqk + Dv)  # only the unmasked products
            kernel_ms = []
            # Prefill: 10 back-to-back calls per event pair, so the host's per-call work (Python, ctypes,
            # torch dispatch) overlaps the GPU's instead of adding to it; decode keeps one call per pair.
            calls = 10 if Tq > 1 else 1

            def timed(impl, fn, reps=20, warmup=3, note=None, n=None):
                n = calls if n is None else n
                r = bench(fn if n == 1 else (lambda: [fn() for _ in range(n)]), reps=reps, warmup=warmup)
                r = dict(r, median_ms=r["median_ms"] / n, min_ms=r["min_ms"] / n, calls_per_timing=n)
                extra = {"note": note} if note else {}
                if mma_peak:
                    extra["ratio_to_mma_peak"] = flops / (r["median_ms"] * 1e-3) / 1e12 / mma_peak
                if impl == "kernel":
                    kernel_ms.append(r["median_ms"])
                elif kernel_ms:
                    extra["kernel_speedup"] = r["median_ms"] / kernel_ms[0]
                add("WindowedAttention", case, dn, impl, r, b, flops, extra=extra)

            call = lambda: K.windowed_attention(**inp, window=window, num_meta=meta, scale=scale, out=out)  # noqa: E731
            timed("kernel", call)
            # Same-GPU A/B: each decode kernel forced for decode; `flash`, the previous (CUDA-core) prefill kernel.
            for path in ATTN_FORCED_PATHS if Tq == 1 else ("flash",):
                with H.forced_decode_attention(path):
                    timed(f"kernel[{path}]", call)
            timed("ref_eager", lambda: WA.windowed_attention_ref(**inp, window=window, num_meta=meta, scale=scale), n=1)
            qh = inp["q"].transpose(1, 2)
            kh = inp["k"].transpose(1, 2).repeat_interleave(Hq // Hkv, dim=1)
            vh = inp["v"].transpose(1, 2).repeat_interleave(Hq // Hkv, dim=1)
            timed("sdpa_mask", lambda: F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale),
                  note="SDPA in the input dtype with an explicit boolean mask; K/V pre-expanded to Hq heads")
            del kh, vh
            if do_compile and dn == "bfloat16":
                f = comp(f"attn{case}{dn}", WA.windowed_attention_ref)
                timed("ref_compile", lambda: f(**inp, window=window, num_meta=meta, scale=scale))
            if anchors and dn == "bfloat16":  # the prefill anchors a user would pick instead
                qc, kc, vc = (inp[n].transpose(1, 2).contiguous() for n in ("q", "k", "v"))  # (B, H, T, D)
                def flash_anchor():
                    fn, note = sdpa_flash_anchor(qc, kc, vc, scale)
                    timed("sdpa_flash", fn, note=note)
                try_(f"attn {case} sdpa_flash", flash_anchor)
                try_(f"attn {case} flex", lambda: timed(
                    "flex_compiled", flex_anchor(comp, qc, kc, vc, window, meta, scale),
                    note="torch.compile(flex_attention) with a block mask of the same Hymba mask, enable_gqa"))
                del qc, kc, vc
            del inp, out, qh, mask
            torch.cuda.empty_cache()
        try_("attn prefill", lambda: attn(1, 8320, 8320, 1024, 128, "prefill_swa_T8320", anchors=True))
        try_("attn decode", lambda: attn(128, 1, 1152, 1024, 128, "decode_swa_B128_Tk1152"))
        if dn == "bfloat16":
            try_("attn decode B1", lambda: attn(1, 1, 1152, 1024, 128, "decode_swa_B1_Tk1152"))
            try_("attn decode global", lambda: attn(128, 1, 8320, 0, 128, "decode_global_B128_Tk8320"))
            try_("attn prefill global", lambda: attn(1, 8320, 8320, 0, 128, "prefill_global_T8320", anchors=True))
            try_("attn prefill swa B4", lambda: attn(4, 2100, 2100, 1024, 128, "prefill_swa_B4_T2100"))
            try_("attn chunked prefill", lambda: attn(2, 512, 4608, 1024, 128, "chunked_prefill_swa_B2_Tq512_Tk4608"))


def matmul_tflops(n=8192):
    """bf16 n×n×n matmul rate (TFLOP/s) on random data: the tensor-core peak the attention kernels are set against."""
    a = torch.randn(n, n, device=DEV).bfloat16()
    b = torch.randn(n, n, device=DEV).bfloat16()
    r = bench(lambda: a @ b, reps=20, warmup=3)
    return 2 * n ** 3 / (r["median_ms"] * 1e-3) / 1e12


def sdpa_flash_anchor(q, k, v, scale):
    """SDPA's flash backend, plain causal (is_causal=True: the global layers' mask, a superset of the SWA
    work), GQA through enable_gqa. Returns (fn, note). Flash needs one head dim for q, k and v: when the
    backend refuses Dqk != Dv, q and k are zero-padded to Dv (same scores, the anchor's own extra work)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(qq, kk):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qq, kk, v, is_causal=True, scale=scale, enable_gqa=True)
    note = "SDPA flash backend, is_causal=True, enable_gqa"
    try:
        run(q, k)
        torch.cuda.synchronize()
        return (lambda: run(q, k)), note
    except RuntimeError:
        pad = v.shape[-1] - q.shape[-1]
        qp, kp = F.pad(q, (0, pad)), F.pad(k, (0, pad))
        run(qp, kp)
        torch.cuda.synchronize()
        return (lambda: run(qp, kp)), note + f"; q/k zero-padded to head dim {v.shape[-1]} (flash needs Dqk = Dv)"


def flex_anchor(comp, q, k, v, window, meta, scale):
    """torch.compile'd FlexAttention with a block mask of the Hymba mask (causal, window, meta sinks)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    Tq, Tk = q.shape[2], k.shape[2]
    off = Tk - Tq

    def mask_mod(b, h, q_idx, kv_idx):
        qq = q_idx + off
        vis = kv_idx <= qq
        if window > 0:
            vis = vis & ((qq - kv_idx <= window) | (kv_idx < meta))
        return vis
    block_mask = create_block_mask(mask_mod, None, None, Tq, Tk, device=DEV)
    f = comp("flex_attention", flex_attention)
    return lambda: f(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)


# ----------------------------------------------------------------------------------------------------------

def _sources_digest():
    """sha256 over plugins/**/*.{h,cuh,cu,cpp,txt}: which code these numbers belong to."""
    import hashlib
    h = hashlib.sha256()
    for f in sorted(REPO.joinpath("plugins").rglob("*")):
        if f.suffix in (".h", ".cuh", ".cu", ".cpp", ".txt") and f.is_file():
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _headers_version(lib: Path) -> str:
    """The TensorRT headers version the library embeds (plugins/common/hymba_plugins.cpp's build info)."""
    m = re.search(rb"hymba-plugins tensorrt=(\d+\.\d+\.\d+);", lib.read_bytes())
    return m.group(1).decode() if m else "not embedded"


def _nvcc_version():
    try:
        out = subprocess.run(["nvcc", "--version"], stdout=subprocess.PIPE, text=True).stdout
        return out.strip().splitlines()[-1]
    except Exception:
        return "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=str(REPO / "build" / "plugins-gpu"))
    ap.add_argument("--archs", default="90", help="CMAKE_CUDA_ARCHITECTURES for the build (H100/H200: 90)")
    ap.add_argument("--json", default=None, help="where to write the results (default: $OUT or bench/results)")
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--time-dtypes", default="bfloat16,float16,float32")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile timings (bf16 only otherwise)")
    ap.add_argument("--only", default="scan,conv,attn")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        log("no CUDA GPU: nothing to check")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    t0 = time.time()
    if os.environ.get("HYMBA_PLUGIN_LIB"):
        lib, harness_lib = H.find_libraries(build_if_missing=False)
    else:
        lib = H.build_library(Path(args.build_dir), archs=args.archs)
        harness_lib = lib.parent / "libhymba_plugin_harness.so"
    build_s = time.time() - t0
    log(f"built {lib} in {build_s:.1f} s")

    h = H.Harness(lib, harness_lib)
    K = Kernels(H.KernelShim(lib))
    gen = torch.Generator(device=DEV)
    gen.manual_seed(int.from_bytes(os.urandom(4), "little"))  # fresh inputs every run

    prop = torch.cuda.get_device_properties(0)
    info = {
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{prop.major}.{prop.minor}",
        "sm_count": prop.multi_processor_count,
        "memory_GiB": round(prop.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "nvcc": _nvcc_version(),
        "python": platform.python_version(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_archs": args.archs,
        "build_seconds": round(build_s, 1),
        "tensorrt_headers": _headers_version(lib),
        "sources_sha256": _sources_digest(),
        "creators": [f"{c.get('namespace')}::{c.get('name')} v{c.get('version')}" for c in h.creators()],
    }
    log(json.dumps(info, indent=1))

    dtypes = args.dtypes.split(",")
    only = set(args.only.split(","))
    results = []
    log("correctness (rel err = |out-ref|/|ref|):")
    if "conv" in only:
        check_conv(K, h, results, dtypes, gen)
    if "attn" in only:
        check_attn(K, h, results, dtypes, gen)
    if "scan" in only:
        check_scan(K, h, results, dtypes, gen)
    n_pass = sum(r["passed"] for r in results)
    log(f"correctness: {n_pass}/{len(results)} passed")

    out = args.json or os.path.join(os.environ.get("OUT", str(REPO / "bench" / "results")), "plugins_gpu_check.json")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(dict(info, partial=True, correctness=results), indent=1))  # survives a timeout

    timings = []
    copy_gbps = None
    if not args.no_timing:
        copy_gbps = copy_bandwidth()
        log(f"device copy bandwidth (read+write): {copy_gbps:.1f} GB/s")
        timing(K, copy_gbps, args.time_dtypes.split(","), not args.no_compile, timings, only)

    doc = dict(info, copy_bandwidth_GBps=copy_gbps, all_passed=n_pass == len(results), n_checks=len(results),
               n_passed=n_pass, tolerances={"float32": 1e-5, "float32_scan_T>=4096": 1e-4, "float16": 1e-2,
                                            "bfloat16": 1e-2, "metric": "norm-relative |out-ref|/|ref|"},
               correctness=results, timing=timings)
    Path(out).write_text(json.dumps(doc, indent=1))
    log(f"wrote {out}")
    failed = [r for r in results if not r["passed"]]
    for r in failed:
        log(f"FAILED: {r['op']} {r['case']} {r['dtype']} {r['path']}")
    log(f"{'ALL PASSED' if not failed else f'{len(failed)} FAILED'}: {n_pass}/{len(results)} checks")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
