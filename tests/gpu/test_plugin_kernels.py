"""The plugin library on a GPU: every op × dtype × shape × kernel × architecture against a float64 ground truth.
WindowedAttention also over ragged batches: per-row key counts (kv_lengths), keys past a row's count NaN.

Each case runs (a) the kernel launcher through the extern "C" shim, on strided tensors where the case says so,
under the launcher's own choice (`kernel`) and under each kernel forced (`kernel[<choice>]`: the attention kernel
choice, the scan's `scan_prefill`), and (b) the plugin object the way TensorRT drives it (`plugin`:
create → serialize → recreate → configure → enqueue). Outputs start as NaN, so an unwritten element fails.
The ragged attention cases also run through the `cuda` kernel backend (hymba_deploy.cuda: the torch extension
compiled from the same kernels, for this GPU's architecture), the model's and the serving runtime's calls.
The bound is hymba_deploy.parity.tolerances's rule; inputs come from a fixed seed per case and dtype.
"""

from __future__ import annotations

import functools
import math
from collections import namedtuple
from typing import NamedTuple

import pytest
import torch

from hymba_deploy.contract import SOFTPLUS_THRESHOLD
from hymba_deploy.ops import causal_conv1d_ref, selective_scan_ref, windowed_attention_ref

from .common import ARCHS, check, generator, ground_truth, seed_of

import kernels as KN  # noqa: E402  (plugins/tests)

pytestmark = pytest.mark.gpu

DTYPES = ("float32", "float16", "bfloat16")


# Scan: state_in_dtype: the initial state in the input dtype (else fp32); noncontig: the kernel reads strided views
# of the same values; optionals "none": D, z, dt_bias and the initial state absent, "state": only the state;
# inplace: y written over x and last_state over an fp32 initial state (a runtime's call).
Scan = namedtuple("Scan", "name B T D N state_in_dtype noncontig optionals inplace", defaults=(False, False, "all", False))
# Conv variant: noncontig (strided x, no state) | inplace (new state over the state) | chanfast (channel-fastest
# state and weight, the serving cache's layout) | serving (the serving prefill: x a column slice of a wider
# buffer, no state, the new state into a channel-fastest buffer).
Conv = namedtuple("Conv", "name B T D K activation variant", defaults=("silu", ""))
# Attn noncontig: q, k, v as views of one fused projection output.
Attn = namedtuple("Attn", "name B Tq Tk Hq Hkv Dqk Dv window meta noncontig", defaults=(False,))


SCAN_CASES = [
    Scan("tiny", 2, 37, 128, 8),
    Scan("tiny_no_optionals", 2, 37, 128, 8, optionals="none"),
    Scan("odd_noncontig", 3, 129, 200, 16, state_in_dtype=True, noncontig=True),
    Scan("decode_b128", 128, 1, 3200, 16),
    Scan("prefill_chunk_b128", 128, 64, 3200, 16, state_in_dtype=True),
    Scan("hymba_T8320", 1, 8320, 3200, 16),
    # T = 1: the decode-step kernel, generic N (two half-rows, the second partly empty)
    Scan("decode_N12_noncontig_Tstate", 3, 1, 203, 12, state_in_dtype=True, noncontig=True),
    Scan("decode_N8_no_optionals", 4, 1, 200, 8, optionals="none"),
    Scan("decode_N32", 2, 1, 100, 32),
    # Prefill: T = 2, sizes below, at and past 64- and 256-step tiles, d_state 5 / 12 / 24 / 32, batch > 1, dim no
    # multiple of a block's channels
    Scan("prefill_T2_b3", 3, 2, 203, 16),
    Scan("prefill_T255_N12_Tstate", 2, 255, 300, 12, state_in_dtype=True),
    Scan("prefill_T256_N32", 2, 256, 96, 32),
    Scan("prefill_T1000_N24_noncontig_Tstate", 2, 1000, 333, 24, state_in_dtype=True, noncontig=True),
    Scan("prefill_T777_N5_no_optionals", 3, 777, 130, 5, optionals="none"),
    Scan("prefill_T300_no_Dzbias_with_state", 2, 300, 64, 16, optionals="state"),
    Scan("prefill_T3000_b4_N16", 4, 3000, 3200, 16),
    *(Scan(f"inplace_state_and_y_T{T}", 2, T, 300, 16, inplace=True) for T in (1, 2, 700)),
]
SCAN_PREFILL_KERNELS = ("sequential", "state", "chunked")   # kernel choice scan_prefill, forced on every T > 1 case

CONV_CASES = [
    Conv("tiny", 2, 37, 128, 4),
    Conv("tiny_K2_noact", 2, 5, 64, 2, None),
    Conv("T_lt_K", 2, 2, 64, 4),
    Conv("odd_noncontig", 3, 129, 203, 4, variant="noncontig"),
    Conv("decode_b128", 128, 1, 3200, 4),
    Conv("hymba_T8320_b2", 2, 8320, 3200, 4),
    Conv("decode_inplace_state", 4, 1, 3200, 4, variant="inplace"),
    # the serving cache's layout: channel-fastest state and weight, in place at T = 1, a new state at T = 3 < K
    *(Conv(f"chanfast_state_weight_T{T}", 8, T, 3200, 4, variant="chanfast") for T in (1, 3)),
    # time spans of 8 steps per thread: T one past a span, in place over several spans (one thread per row),
    # in place at the longest T allowed, the serving prefill
    Conv("span_edge_T9", 2, 9, 64, 4),
    Conv("inplace_T37_D200", 3, 37, 200, 4, variant="inplace"),
    Conv("inplace_T64_K3", 2, 64, 128, 3, variant="inplace"),
    Conv("serving_prefill_T1000", 2, 1000, 3200, 4, variant="serving"),
]

ATTN_CASES = [
    Attn("tiny_prefill", 2, 37, 37, 4, 2, 16, 32, 8, 4),
    Attn("tiny_decode", 2, 1, 37, 4, 2, 16, 32, 8, 4),
    Attn("d32_d64_global", 2, 70, 70, 4, 4, 32, 64, 0, 0),
    Attn("noncontig_chunked", 2, 50, 300, 6, 2, 64, 64, 100, 16, True),
    Attn("hymba_prefill_swa_T2200", 1, 2200, 2200, 25, 5, 64, 128, 1024, 128),
    Attn("hymba_prefill_global_T1500", 1, 1500, 1500, 25, 5, 64, 128, 0, 128),
    Attn("hymba_chunked_prefill", 2, 100, 1300, 25, 5, 64, 128, 1024, 128),
    Attn("hymba_decode_swa_b8", 8, 1, 1152, 25, 5, 64, 128, 1024, 128),
    Attn("hymba_decode_global_b4", 4, 1, 4000, 25, 5, 64, 128, 0, 128),
    Attn("noncontig_decode_b3", 3, 1, 3000, 10, 2, 64, 128, 1024, 16, True),
    Attn("hymba_decode_tq3_b2", 2, 3, 1500, 25, 5, 64, 128, 1024, 128),
    Attn("decode_g8_d128_b2", 2, 1, 2100, 16, 2, 128, 128, 0, 0),
    # below one (batch, kv head) per SM the tensor-core decode kernel splits the keys across a cluster (sm_90):
    # 16 splits at batch 1 (window + meta, global 8320 keys), 2 with Dv 64 over 14 visible chunks
    Attn("hymba_decode_swa_b1", 1, 1, 1152, 25, 5, 64, 128, 1024, 128),
    Attn("hymba_decode_global_b1", 1, 1, 8320, 25, 5, 64, 128, 0, 128),
    Attn("decode_split_dv64_b2", 2, 1, 1000, 10, 2, 64, 64, 200, 16),
    Attn("hymba_prefill_swa_T8320", 1, 8320, 8320, 25, 5, 64, 128, 1024, 128),
    # batch × kv heads >= the SM count (132 on H100/H200): the tensor-core decode kernel without splits
    Attn("mma_decode_swa_b32", 32, 1, 1152, 25, 5, 64, 128, 1024, 128),
    Attn("mma_decode_global_b28", 28, 1, 3001, 25, 5, 64, 128, 0, 128),
    Attn("mma_noncontig_meta20", 70, 1, 700, 10, 2, 64, 128, 300, 20, True),
    Attn("mma_tq2_g4_d64", 70, 2, 500, 8, 2, 64, 64, 100, 8),
    Attn("mma_d128_g2", 70, 1, 900, 4, 2, 128, 128, 0, 0),
    # >= 256 key chunks and >= 2 tiles per SM: 8 warps per block
    Attn("mma_8warps_global_b54", 54, 1, 4200, 25, 5, 64, 128, 0, 128),
    Attn("mma_8warps_swa_b60_g2", 60, 1, 5000, 10, 5, 64, 128, 1024, 64),
    # Tensor-core prefill (fp16/bf16): sizes no multiple of a tile (64 keys, 128 rows), T below the window and
    # below num_meta, chunked prefill (Tq < Tk) over window and meta edges, batch > 1, GQA ratios 1 and 5, every
    # head-dim instantiation (Dqk 48 zero-padded to 64); Dqk 20 (unaligned rows) takes the general kernel.
    Attn("prefill_T_lt_meta_b2", 2, 77, 77, 25, 5, 64, 128, 1024, 128),
    Attn("prefill_swa_g1_b3", 3, 333, 333, 4, 4, 64, 128, 100, 20),
    Attn("prefill_chunk_g5_b2", 2, 197, 1501, 25, 5, 64, 128, 1024, 128),
    Attn("prefill_chunk_g1_window_edge", 1, 131, 1200, 3, 3, 64, 128, 200, 70),
    Attn("prefill_global_g1_b2", 2, 1111, 1111, 3, 3, 64, 128, 0, 0),
    Attn("prefill_global_g5_chunk", 1, 300, 2049, 10, 2, 64, 128, 0, 128),
    Attn("prefill_d128_swa", 2, 700, 900, 8, 2, 128, 128, 256, 50),
    Attn("prefill_d32_dv64_meta7", 2, 300, 300, 10, 2, 32, 64, 64, 7),
    Attn("prefill_d48_dv32", 1, 150, 150, 4, 2, 48, 32, 40, 3),
    Attn("prefill_d20_general", 2, 45, 45, 4, 2, 20, 32, 8, 4),
    Attn("prefill_swa_T1025_b2", 2, 1025, 1025, 25, 5, 64, 128, 1024, 128),
]
# Ragged batches: row b's valid keys are k/v[b, :lens[b]] (the plugin's kv_lengths input, the shim's kv_lengths),
# its queries the last Tq of them; keys past lens[b] hold NaN (never read, else the output is NaN). Rows with
# counts equal to Tq and to Tk, below num_meta, inside and past window + meta; decode (Tq = 1: under auto the
# tensor-core decode kernel, its keys split while batch × kv heads < the SM count; fp32 the CUDA-core split-KV
# kernel there) and prefill shapes (chunked, Tq > 1), GQA ratios 1 and 5, window and global.
RaggedAttn = namedtuple("RaggedAttn", "name B Tq Tk Hq Hkv Dqk Dv window meta lens noncontig", defaults=(False,))
RAGGED_CASES = [
    RaggedAttn("ragged_decode_swa_g5", 4, 1, 1300, 25, 5, 64, 128, 1024, 128, (1, 129, 1300, 777)),
    RaggedAttn("ragged_decode_global_g1", 3, 1, 2049, 4, 4, 64, 64, 0, 0, (2049, 1, 1000)),
    RaggedAttn("ragged_decode_tq3_g5", 3, 3, 1500, 25, 5, 64, 128, 1024, 128, (3, 1500, 1153)),
    # 16 splits per (row, kv head): row 0's one chunk leaves 15 splits without keys
    RaggedAttn("ragged_decode_split16_b2", 2, 1, 3000, 25, 5, 64, 128, 1024, 128, (2, 3000)),
    # 40 × 5 kv heads >= 132 SMs: the tensor-core decode kernel under auto (fp16 / bf16)
    RaggedAttn("ragged_decode_mma_b40", 40, 1, 1500, 25, 5, 64, 128, 1024, 128,
               (1, 1500, 2, 128, 129, 1153, 1152) + tuple(1 + (37 * i) % 1500 for i in range(33))),
    RaggedAttn("ragged_prefill_swa_g5", 3, 37, 300, 25, 5, 64, 128, 64, 8, (37, 300, 151)),
    RaggedAttn("ragged_prefill_swa_g1", 3, 130, 1200, 3, 3, 64, 128, 200, 70, (1200, 130, 777)),
    RaggedAttn("ragged_prefill_global_g5", 2, 200, 2049, 10, 2, 64, 128, 0, 128, (200, 2049)),
]

# Decode-shaped cases (Tq · G <= 32) run under every attention kernel forced (the launcher falls back to the
# general kernel where the forced one does not apply); prefill-shaped ones also under `flash`, the general kernel.
ATTN_KERNELS = ("split", "mma", "prefill", "flash")


def scan_paths(c: Scan):
    forced = SCAN_PREFILL_KERNELS if c.T > 1 else ()
    plugin = ("plugin",) if c.optionals == "all" and not c.inplace else ()
    return ("kernel", *(f"kernel[{k}]" for k in forced), *plugin)


def conv_paths(c: Conv):
    return ("kernel", "plugin") if c.variant == "" else ("kernel",)


def attn_paths(c: Attn):
    forced = ATTN_KERNELS if c.Tq * (c.Hq // c.Hkv) <= 32 else ("flash",)
    return ("kernel", *(f"kernel[{k}]" for k in forced), *(() if c.noncontig else ("plugin",)))


def params(cases, paths):
    """(case, dtype, path, arch), the architecture innermost: one case's inputs and references serve them all."""
    return [pytest.param(c, dt, p, a, id=f"{c.name}-{dt}-{p}-{a}")
            for c in cases for dt in DTYPES for p in paths(c) for a in ARCHS]


def forced_choice(path: str) -> str:
    """'kernel[mma]' -> 'mma'; 'kernel' -> 'auto'."""
    return path[len("kernel["):-1] if path.startswith("kernel[") else "auto"


def meta(op, c, dtype, path, arch):
    return dict(op=op, case=c.name, dtype=dtype, path=path, arch=arch, shape=c._asdict(), seed=seed_of(c.name, dtype))


class Prepared(NamedTuple):
    inputs: dict       # what the reference and the plugin see (contiguous)
    kernel_in: dict    # what the kernel sees (strided views where the case says so)
    ref64: dict        # output name -> float64 ground truth
    torch_out: dict    # output name -> PyTorch's reference in the inputs' dtypes


def _named(names, outs):
    return dict(zip(names, outs))


# ---------------------------------------------------------------------------------------------- SelectiveScan

@functools.lru_cache(maxsize=1)
def scan_case(c: Scan, dtype: str) -> Prepared:
    dt = KN.DTYPES[dtype]
    inp = KN.scan_inputs(c.B, c.T, c.D, c.N, dt, dt if c.state_in_dtype else torch.float32, generator(c.name, dtype))
    for k in {"none": ("D", "z", "dt_bias", "initial_state"), "state": ("D", "z", "dt_bias")}.get(c.optionals, ()):
        inp[k] = None
    kin = dict(inp)
    if c.noncontig:
        kin.update(x=KN.slice_noncontig(inp["x"]), z=KN.slice_noncontig(inp["z"]), dt=KN.slice_noncontig(inp["dt"], 1),
                   B=KN.slice_noncontig(inp["B"]), C=KN.slice_noncontig(inp["C"], 1))
    ref64, torch_out = ground_truth(selective_scan_ref, inp)
    names = ("y", "last_state")
    return Prepared(inp, kin, _named(names, ref64), _named(names, torch_out))


@pytest.mark.parametrize("case,dtype,path,arch", params(SCAN_CASES, scan_paths))
def test_selective_scan(case, dtype, path, arch, plugins, record):
    P, prep = plugins(arch), scan_case(case, dtype)
    inp = prep.inputs
    if path == "plugin":
        ins = [inp[k].contiguous() for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")]
        y, ls = KN.run_plugin(P.h, "SelectiveScan", {"softplus_threshold": SOFTPLUS_THRESHOLD}, ins,
                              [(case.B, case.T, case.D), (case.B, case.D, case.N)], [KN.DTYPES[dtype], torch.float32])
    else:
        kin = dict(prep.kernel_in)
        if case.inplace:
            kin.update(x=kin["x"].clone(), initial_state=kin["initial_state"].clone())
            y, ls = kin["x"], kin["initial_state"]
        else:
            y = KN.nan_like(inp["x"])
            ls = torch.full((case.B, case.D, case.N), float("nan"), device="cuda")
        with P.shim.forced("scan_prefill", forced_choice(path)):
            P.K.selective_scan(**kin, y=y, last_state=ls)
        torch.cuda.synchronize()
    check(record, meta("SelectiveScan", case, dtype, path, arch), {"y": y, "last_state": ls}, prep.ref64,
          prep.torch_out)


# ---------------------------------------------------------------------------------------------- CausalConv1d

@functools.lru_cache(maxsize=1)
def conv_case(c: Conv, dtype: str) -> Prepared:
    inp = KN.conv_inputs(c.B, c.T, c.D, c.K, KN.DTYPES[dtype], generator(c.name, dtype))
    kin = dict(inp)
    if c.variant in ("noncontig", "serving"):
        inp["conv_state"] = kin["conv_state"] = None        # the zero-history path
        kin["x"] = KN.slice_noncontig(inp["x"])
    elif c.variant == "chanfast":
        kin.update(conv_state=KN.channel_fastest(inp["conv_state"]), weight=inp["weight"].t().contiguous().t())
    ref64, torch_out = ground_truth(causal_conv1d_ref, inp, activation=c.activation)
    names = ("y", "new_conv_state")
    return Prepared(inp, kin, _named(names, ref64), _named(names, torch_out))


@pytest.mark.parametrize("case,dtype,path,arch", params(CONV_CASES, conv_paths))
def test_causal_conv1d(case, dtype, path, arch, plugins, record):
    P, prep = plugins(arch), conv_case(case, dtype)
    inp, dt = prep.inputs, KN.DTYPES[dtype]
    if path == "plugin":
        ins = [inp[k] for k in ("x", "weight", "bias", "conv_state")]
        y, ns = KN.run_plugin(P.h, "CausalConv1d", {"activation": int(case.activation == "silu")}, ins,
                              [(case.B, case.T, case.D), (case.B, case.D, case.K)], [dt, dt])
    else:
        kin = dict(prep.kernel_in)
        if kin["conv_state"] is not None:
            kin["conv_state"] = kin["conv_state"].clone()
        if case.variant == "inplace" or (case.variant == "chanfast" and case.T == 1):
            ns = kin["conv_state"]                          # in place, as a runtime updates its cache
        elif case.variant in ("chanfast", "serving"):
            ns = KN.channel_fastest(torch.full((case.B, case.D, case.K), float("nan"), device="cuda", dtype=dt))
        else:
            ns = torch.full((case.B, case.D, case.K), float("nan"), device="cuda", dtype=dt)
        y = KN.nan_like(inp["x"])
        P.K.causal_conv1d(**kin, activation=case.activation, y=y, new_state=ns)
        torch.cuda.synchronize()
    check(record, meta("CausalConv1d", case, dtype, path, arch), {"y": y, "new_conv_state": ns}, prep.ref64,
          prep.torch_out)


# ---------------------------------------------------------------------------------------------- WindowedAttention

def _scale(c: Attn) -> float:
    return 1.0 / math.sqrt(c.Dqk)


@functools.lru_cache(maxsize=1)
def attn_case(c: Attn, dtype: str) -> Prepared:
    dt = KN.DTYPES[dtype]
    inp = KN.attn_inputs(c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.Dqk, c.Dv, dt, generator(c.name, dtype))
    kin = dict(inp)
    if c.noncontig:
        W = (c.Hq + c.Hkv) * c.Dqk + c.Hkv * c.Dv
        qkv = torch.empty(c.B, max(c.Tq, c.Tk), W, device=KN.DEV, dtype=dt)
        kin = dict(q=qkv[:, :c.Tq, :c.Hq * c.Dqk].unflatten(-1, (c.Hq, c.Dqk)),
                   k=qkv[:, :c.Tk, c.Hq * c.Dqk:(c.Hq + c.Hkv) * c.Dqk].unflatten(-1, (c.Hkv, c.Dqk)),
                   v=qkv[:, :c.Tk, (c.Hq + c.Hkv) * c.Dqk:].unflatten(-1, (c.Hkv, c.Dv)))
        for k in kin:
            kin[k].copy_(inp[k])
    ref64, torch_out = ground_truth(windowed_attention_ref, inp, window=c.window, num_meta=c.meta, scale=_scale(c))
    return Prepared(inp, kin, {"out": ref64[0]}, {"out": torch_out[0]})


def run_attention(P, c: Attn, kin: dict, path: str):
    out = torch.full((c.B, c.Tq, c.Hq, c.Dv), float("nan"), device="cuda", dtype=kin["q"].dtype)
    with P.shim.forced("attention", forced_choice(path)):
        P.K.windowed_attention(**kin, window=c.window, num_meta=c.meta, scale=_scale(c), out=out)
    torch.cuda.synchronize()
    return out


def run_attention_plugin(P, c, inp: dict, kv_lengths):
    """The plugin (create → serialize → recreate → attach → enqueue) on q, k, v and int32 (B,) kv_lengths."""
    (out,) = KN.run_plugin(P.h, "WindowedAttention", {"window": c.window, "num_meta": c.meta, "scale": _scale(c)},
                           [inp["q"], inp["k"], inp["v"], kv_lengths], [(c.B, c.Tq, c.Hq, c.Dv)], [inp["q"].dtype])
    return out


@pytest.mark.parametrize("case,dtype,path,arch", params(ATTN_CASES, attn_paths))
def test_windowed_attention(case, dtype, path, arch, plugins, record):
    """Uniform batches: the plugin's kv_lengths say Tk for every row (as the prefill graphs do)."""
    P, prep = plugins(arch), attn_case(case, dtype)
    if path == "plugin":
        full = torch.full((case.B,), case.Tk, dtype=torch.int32, device="cuda")
        out = run_attention_plugin(P, case, prep.inputs, full)
    else:
        out = run_attention(P, case, prep.kernel_in, path)
    check(record, meta("WindowedAttention", case, dtype, path, arch), {"out": out}, prep.ref64, prep.torch_out)


def ragged_attention_ref(q, k, v, window, num_meta, scale, lens):
    """windowed_attention_ref row by row over each row's own keys k/v[b, :lens[b]] (the ragged contract: row b's
    query i sits at key lens[b] - Tq + i)."""
    return torch.cat([windowed_attention_ref(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], window, num_meta, scale)
                      for b, n in enumerate(lens)])


@functools.lru_cache(maxsize=1)
def ragged_case(c: RaggedAttn, dtype: str) -> Prepared:
    assert len(c.lens) == c.B and all(c.Tq <= n <= c.Tk for n in c.lens), c
    inp = KN.attn_inputs(c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.Dqk, c.Dv, KN.DTYPES[dtype], generator(c.name, dtype))
    for b, n in enumerate(c.lens):
        inp["k"][b, n:] = float("nan")
        inp["v"][b, n:] = float("nan")
    ref64, torch_out = ground_truth(ragged_attention_ref, inp, window=c.window, num_meta=c.meta, scale=_scale(c),
                                    lens=c.lens)
    inp["kv_lengths"] = torch.tensor(c.lens, dtype=torch.int32, device="cuda")
    return Prepared(inp, inp, {"out": ref64[0]}, {"out": torch_out[0]})


@pytest.mark.parametrize("case,dtype,path,arch", params(RAGGED_CASES, attn_paths))
def test_windowed_attention_ragged(case, dtype, path, arch, plugins, record):
    P, prep = plugins(arch), ragged_case(case, dtype)
    inp = prep.inputs
    if path == "plugin":
        out = run_attention_plugin(P, case, inp, inp["kv_lengths"])
    else:
        out = run_attention(P, case, inp, path)
    check(record, meta("WindowedAttention", case, dtype, path, arch), {"out": out}, prep.ref64, prep.torch_out)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype,forced,other", [("bfloat16", "mma", "flash"), ("float32", "split", "flash")])
def test_forced_attention_kernels_are_different_kernels(dtype, forced, other, arch, plugins):
    """The kernel choice routes: on a decode case two forced kernels give results that differ in their last
    bits (tensor-core P rounding vs fp32 P; split-KV merging vs one pass), so a setting the launcher ignored
    would fail here, and both stay correct (test_windowed_attention)."""
    P, c = plugins(arch), next(c for c in ATTN_CASES if c.name == "hymba_decode_swa_b8")   # keys split under auto
    kin = attn_case(c, dtype).kernel_in
    a, b = run_attention(P, c, kin, f"kernel[{forced}]"), run_attention(P, c, kin, f"kernel[{other}]")
    assert not torch.equal(a, b), f"kernel[{forced}] and kernel[{other}] gave bit-identical outputs"
    assert torch.equal(run_attention(P, c, kin, f"kernel[{forced}]"), a), "a forced kernel is not deterministic"


# ---------------------------------------------------------------------------------------------- the cuda backend

def backend_params():
    """(case, dtype, call, choice): `windowed_attention` (the model's call: kv_lengths int64 on the CPU, converted
    by the backend) and `attn` (the serving runtime's: an int32 (B,) device tensor, out preallocated), each under
    the launcher's choice and each attention kernel forced where the case is decode-shaped."""
    out = []
    for c in RAGGED_CASES:
        choices = ("auto", *ATTN_KERNELS) if c.Tq * (c.Hq // c.Hkv) <= 32 else ("auto", "flash")
        out += [pytest.param(c, dt, call, ch, id=f"{c.name}-{dt}-{call}[{ch}]")
                for dt in DTYPES for call in ("windowed_attention", "attn") for ch in choices]
    return out


@pytest.fixture(scope="module")
def cuda_kernels(cuda):
    from hymba_deploy import cuda as backend
    return backend.CudaKernels(backend.load_extension())


@pytest.mark.parametrize("case,dtype,call,choice", backend_params())
def test_cuda_backend_windowed_attention_ragged(case, dtype, call, choice, cuda_kernels, record):
    from hymba_deploy import cuda as backend
    prep = ragged_case(case, dtype)
    inp = prep.inputs
    args = (inp["q"], inp["k"], inp["v"], case.window, case.meta, _scale(case))
    with backend.forced_decode_attention(choice):
        if call == "windowed_attention":
            out = cuda_kernels.windowed_attention(*args, kv_lengths=torch.tensor(case.lens))
        else:
            out = torch.full((case.B, case.Tq, case.Hq, case.Dv), float("nan"), device="cuda", dtype=inp["q"].dtype)
            assert cuda_kernels.attn(*args, out=out, kv_len=inp["kv_lengths"]).data_ptr() == out.data_ptr()
    torch.cuda.synchronize()
    check(record, meta("WindowedAttention", case, dtype, f"cuda_backend.{call}[{choice}]", "extension"), {"out": out},
          prep.ref64, prep.torch_out)
