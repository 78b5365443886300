"""Times the plugin kernels against their limits and against the anchors, all in one run on one GPU.

    python3 bench/kernels.py --archs 90 --json bench/results/kernels_<gpu>_<date>.json [--only scan,conv,attn]

Builds the plugin library for --archs into build/plugins-gpu-<arch> (incremental; $HYMBA_PLUGIN_LIB: a prebuilt
one), then times with CUDA events (warm-up, median of >= 10):
- SelectiveScan: each prefill kernel (kernel choice `scan_prefill`) against the sequential one and the MUFU.EX2 limit of
  the B·T·D·N state exps; decode; the PyTorch references eager and under torch.compile (bf16).
- CausalConv1d: prefill and decode in the plugin's layout and in the serving runtime's calls (CUDA graphs over
  rotating input sets), against the references, F.conv1d and (--conv-anchor-lib) an earlier library's kernel.
- WindowedAttention: the launcher's choice, each forced kernel (decode) or the previous general kernel
  (`kernel[flash]`, prefill), the reference, SDPA with the explicit mask, and for prefill the anchors a user
  would pick (SDPA flash, causal; compiled FlexAttention with a block mask of the Hymba mask); TFLOP/s over the
  unmasked products against this run's bf16 matmul rate.
Every row: op, case, dtype, impl, median/min ms, GB/s over the fewest bytes and the ratio to this run's copy
bandwidth, and for anchors `kernel_speedup` = anchor ms / our ms. Correctness is tests/gpu's job, not this one's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins" / "tests"))
import harness as H  # noqa: E402
import kernels as KN  # noqa: E402

from hymba_deploy.ops import (causal_conv1d, causal_conv1d_ref, selective_scan, selective_scan_ref,  # noqa: E402
                              window_mask, windowed_attention_ref)

ATTN_DECODE_KERNELS = ("split", "mma", "prefill", "flash")


class Recorder:
    """Rows of one run, with the limits they are set against; failures are rows too, never fatal."""

    def __init__(self, copy_gbps: float, compile_refs: bool):
        self.rows, self.copy_gbps, self.compile_refs, self._compiled = [], copy_gbps, compile_refs, {}
        self.mma_peak = self.exp_limit = None

    def add(self, op, case, dtype, impl, r, nbytes=None, flops=None, **extra):
        row = dict(op=op, case=case, dtype=dtype, impl=impl, **r, **extra)
        if nbytes:
            row.update(bytes=nbytes, GBps=nbytes / (r["median_ms"] * 1e-3) / 1e9)
            row["ratio_to_copy_bw"] = row["GBps"] / self.copy_gbps
        if flops:
            row.update(flops=flops, TFLOPs=flops / (r["median_ms"] * 1e-3) / 1e12)
            if self.mma_peak:
                row["ratio_to_mma_peak"] = row["TFLOPs"] / self.mma_peak
        self.rows.append(row)
        print(f"  {op:<17} {case:<36} {dtype:<8} {impl:<16} {r['median_ms']:10.4f} ms"
              + (f"  {row['GBps']:8.1f} GB/s ({row['ratio_to_copy_bw']:.2f} of copy)" if nbytes else "")
              + (f"  {row['TFLOPs']:.1f} TFLOP/s" if flops else ""), flush=True)
        return row

    def attempt(self, label, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (one failed measurement is a row, the run goes on)
            self.rows.append(dict(op=label, impl="error", error=str(e)[-2000:]))
            print(f"  {label} failed: {str(e)[-500:]}", flush=True)
        torch.cuda.empty_cache()

    def compiled(self, name, fn):
        if name not in self._compiled:
            self._compiled[name] = torch.compile(fn, dynamic=False)
        return self._compiled[name]


# ---------------------------------------------------------------------------------------------- SelectiveScan

def scan_prefill(rec: Recorder, K, dn, Bt, T, reps):
    """Each prefill kernel on the same inputs; `sequential` first, the later ones record their speedup over it."""
    D, N, dt = 3200, 16, KN.DTYPES[dn]
    inp = KN.scan_inputs(Bt, T, D, N, dt)
    y, ls = torch.empty_like(inp["x"]), torch.empty(Bt, D, N, device="cuda")
    b = KN.nbytes(*inp.values(), y, ls)
    exps, case, times = Bt * T * D * N, f"prefill_B{Bt}_T{T}", {}
    for path in ("sequential", "auto", "state", "chunked"):
        with K.shim.forced("scan_prefill", path):
            r = KN.bench(lambda: K.selective_scan(**inp, y=y, last_state=ls), reps=reps, warmup=2)
        times[path] = r["median_ms"]
        extra = {"exps": exps, "exps_per_s": exps / (r["median_ms"] * 1e-3)}
        if rec.exp_limit:
            extra.update(ratio_to_exp_limit=extra["exps_per_s"] / rec.exp_limit["exps_per_s"],
                         exp_floor_ms=exps / rec.exp_limit["exps_per_s"] * 1e3)
        if path != "sequential":
            extra["speedup_vs_sequential"] = times["sequential"] / r["median_ms"]
        rec.add("SelectiveScan", case, dn, "kernel" if path == "auto" else f"kernel[{path}]", r, b, **extra)
    if dn == "bfloat16" and Bt == 1:
        rec.add("SelectiveScan", case, dn, "chunked_eager", KN.bench(lambda: selective_scan(**inp), warmup=1), b)
        rec.add("SelectiveScan", case, dn, "ref_eager", KN.bench(lambda: selective_scan_ref(**inp), reps=3,
                                                                  warmup=1), b,
                note="3 reps: the time-step loop takes seconds")


def scan_batch128(rec: Recorder, K, dn, T):
    """Batch 128, T = 1 (decode) or a few steps, against the references; for decode also the serving cache's
    layout (fp32 state channel-fastest, in place; A row-major or channel-fastest)."""
    Bt, D, N = 128, 3200, 16
    inp = KN.scan_inputs(Bt, T, D, N, KN.DTYPES[dn])
    y, ls = torch.empty_like(inp["x"]), torch.empty(Bt, D, N, device="cuda")
    case = "decode_B128" if T == 1 else f"prefill_B128_T{T}"
    b = KN.nbytes(*[inp[k] for k in ("x", "dt", "B", "C", "z", "initial_state")], y, ls)
    rec.add("SelectiveScan", case, dn, "kernel", KN.bench(lambda: K.selective_scan(**inp, y=y, last_state=ls)), b)
    rec.add("SelectiveScan", case, dn, "ref_eager", KN.bench(lambda: selective_scan_ref(**inp)), b)
    if rec.compile_refs and dn == "bfloat16":
        f = rec.compiled(f"scan{T}{dn}", selective_scan_ref)
        rec.add("SelectiveScan", case, dn, "ref_compile", KN.bench(lambda: f(**inp)), b)
    if T > 1:
        return
    st = KN.channel_fastest(inp["initial_state"])
    b = KN.nbytes(*[inp[k] for k in ("x", "dt", "B", "C", "z")], y) + 2 * KN.nbytes(st)
    for label, A in (("A_rows", inp["A"]), ("A_chanfast", inp["A"].t().contiguous().t())):
        kin = dict(inp, A=A, initial_state=st)
        rec.add("SelectiveScan", "decode_B128_serving_layout", dn, f"kernel[{label}]",
                KN.bench(lambda: K.selective_scan(**kin, y=y, last_state=st)), b)


def time_scan(rec: Recorder, K, dtypes):
    rec.exp_limit = KN.exp2_limit()
    if rec.exp_limit:
        rec.rows.append(dict(op="SelectiveScan", impl="exp2_limit", **rec.exp_limit))
    for dn in dtypes:
        rec.attempt("SelectiveScan B128", lambda: scan_prefill(rec, K, dn, 128, 8320, 10))
        rec.attempt("SelectiveScan B1", lambda: scan_prefill(rec, K, dn, 1, 8320, 20))
        for Bt in ((4, 16, 64) if dn == "bfloat16" else ()):   # where the launcher switches kernels
            rec.attempt(f"SelectiveScan B{Bt}", lambda: scan_prefill(rec, K, dn, Bt, 2048, 10))
        rec.attempt("SelectiveScan decode", lambda: scan_batch128(rec, K, dn, 1))
        if dn == "bfloat16":
            rec.attempt("SelectiveScan T32", lambda: scan_batch128(rec, K, dn, 32))


# ---------------------------------------------------------------------------------------------- CausalConv1d

CONV_D, CONV_K = 3200, 4                 # hymba-1.5b: d_inner, conv width
IN_PROJ_W, IN_PROJ_X = 8960, 2560        # its in_proj output row (q 1600 | k 320 | v 640 | x 3200 | z 3200), x's column


def conv_anchor(path: str, ours: H.KernelShim) -> KN.Kernels:
    """The `hymba_causal_conv1d` of another library (an earlier commit's plugin library, or its conv sources alone
    built with that entry point) behind the same Python call as ours: the kernel ours replaces, timed in this run."""
    import ctypes
    lib = ctypes.CDLL(path)
    lib.hymba_causal_conv1d.argtypes = ours.lib.hymba_causal_conv1d.argtypes
    lib.hymba_causal_conv1d.restype = ctypes.c_int
    lib.hymba_kernel_error.restype = ctypes.c_char_p
    return KN.Kernels(SimpleNamespace(lib=lib, strides=H.KernelShim.strides,
                                      error=lambda: lib.hymba_kernel_error().decode()))


def conv_graph_ms(K, sets, call):
    """Median ms per call of a CUDA graph that calls `call(K, inputs)` once per input set in turn (enough sets
    that they do not stay in L2), >= 20 calls per graph: kernel time without the host's per-call work."""
    it, n = iter(sets * 64), len(sets) * max(1, -(-20 // len(sets)))
    return KN.graph_ms(lambda: call(K, next(it)), launches=n)


def conv_rows(rec: Recorder, K, A, case, dn, make, call, nbytes, note):
    """Our kernel and the anchor's (A, if given) on the same input sets; `make()` builds one set."""
    first = make()
    sets = [first] + [make() for _ in range(min(63, int(256e6 // nbytes)))]
    ours = None
    for impl, kern in (("kernel", K), ("kernel[anchor]", A)):
        if kern is None:
            continue
        ms = conv_graph_ms(kern, sets, call)
        extra = dict(input_sets=len(sets), timing="CUDA graph, median per call", note=note,
                     floor_us=nbytes / (rec.copy_gbps * 1e9) * 1e6)
        if ours is not None:
            extra["anchor_over_kernel"] = ms / ours
        row = rec.add("CausalConv1d", case, dn, impl, dict(median_ms=ms), nbytes, **extra)
        ours = row["median_ms"] if ours is None else ours
    del sets
    torch.cuda.empty_cache()


def conv_serving(rec: Recorder, K, A, dn, Bt, T):
    """The serving runtime's calls (hymba_deploy/serving/runtime.py): prefill (T > 1) reads x as a column slice of
    the in_proj output, starts from zeros and writes the new state into the cache's channel-fastest buffer; decode
    (T = 1) updates that buffer in place. Floor bytes: x, weight, bias read, y written; the state's K-1 taps read
    (decode) and its K taps written."""
    dt, D, Kw = KN.DTYPES[dn], CONV_D, CONV_K
    es = torch.finfo(dt).bits // 8

    def make():
        g = dict(device="cuda")
        x = (torch.randn(Bt, T, IN_PROJ_W, **g).to(dt)[:, :, IN_PROJ_X:IN_PROJ_X + D] if T > 1
             else torch.randn(Bt, T, D, **g).to(dt))
        return dict(x=x, weight=(torch.randn(D, Kw, **g) * 0.5).to(dt), bias=torch.randn(D, **g).to(dt),
                    state=torch.randn(Bt, Kw, D, **g).to(dt).transpose(1, 2), y=torch.empty(Bt, T, D, dtype=dt, **g))

    def call(kern, s):
        kern.causal_conv1d(s["x"], s["weight"], s["bias"], None if T > 1 else s["state"], y=s["y"],
                           new_state=s["state"])

    nbytes = es * (2 * Bt * T * D + D * Kw + D + Bt * D * Kw + (Bt * D * (Kw - 1) if T == 1 else 0))
    case = f"serving_{'decode' if T == 1 else 'prefill'}_B{Bt}" + ("" if T == 1 else f"_T{T}")
    conv_rows(rec, K, A, case, dn, make, call, nbytes,
              "x a column slice of in_proj's output, no state, new state channel-fastest" if T > 1
              else "channel-fastest state updated in place")


def conv(rec: Recorder, K, A, dn, Bt, T):
    """The plugin's layout ((batch, dim, K) states, contiguous x): ours and the anchor as graphs, then the
    references a user could pick instead, each call timed with events."""
    D, Kw, dt = CONV_D, CONV_K, KN.DTYPES[dn]
    inp = KN.conv_inputs(Bt, T, D, Kw, dt)
    y, ns = torch.empty_like(inp["x"]), torch.empty(Bt, D, Kw, device="cuda", dtype=dt)
    case, b = ("decode_B128" if T == 1 else f"prefill_B{Bt}_T{T}"), KN.nbytes(*inp.values(), y, ns)

    def make():
        s = KN.conv_inputs(Bt, T, D, Kw, dt)
        return dict(s, y=torch.empty_like(s["x"]), new_state=torch.empty(Bt, D, Kw, device="cuda", dtype=dt))
    conv_rows(rec, K, A, case, dn, make, lambda kern, s: kern.causal_conv1d(**s), b,
              "contiguous x, (batch, dim, K) states")
    rec.add("CausalConv1d", case, dn, "ref_eager", KN.bench(lambda: causal_conv1d_ref(**inp)), b)
    rec.add("CausalConv1d", case, dn, "conv1d_eager", KN.bench(lambda: causal_conv1d(**inp)), b)
    if rec.compile_refs and dn == "bfloat16":
        f = rec.compiled(f"conv{T}{dn}", causal_conv1d_ref)
        rec.add("CausalConv1d", case, dn, "ref_compile", KN.bench(lambda: f(**inp)), b)


def time_conv(rec: Recorder, K, dtypes, anchor=None):
    for dn in dtypes:
        for Bt, T in ((1, 8320), (1, 1), (128, 1)):
            rec.attempt(f"CausalConv1d serving B{Bt} T{T}", lambda: conv_serving(rec, K, anchor, dn, Bt, T))
        rec.attempt("CausalConv1d prefill", lambda: conv(rec, K, anchor, dn, 16, 8320))
        rec.attempt("CausalConv1d decode", lambda: conv(rec, K, anchor, dn, 128, 1))


# ---------------------------------------------------------------------------------------------- WindowedAttention

def attention(rec: Recorder, P, dn, Bt, Tq, Tk, window, meta, case, anchors=False):
    Hq, Hkv, Dqk, Dv, scale = 25, 5, 64, 128, 0.125
    inp = KN.attn_inputs(Bt, Tq, Tk, Hq, Hkv, Dqk, Dv, KN.DTYPES[dn])
    out = torch.empty(Bt, Tq, Hq, Dv, device="cuda", dtype=KN.DTYPES[dn])
    mask = window_mask(Tq, Tk, window, meta, "cuda")
    b, flops = KN.nbytes(*inp.values(), out), 2 * Bt * Hq * int(mask.sum().item()) * (Dqk + Dv)
    # Prefill: 10 back-to-back calls per event pair, so the host's per-call work overlaps the GPU's.
    calls, ours = (10 if Tq > 1 else 1), []

    def timed(impl, fn, n=None, **extra):
        n = calls if n is None else n
        r = KN.bench(fn if n == 1 else (lambda: [fn() for _ in range(n)]))
        r = dict(r, median_ms=r["median_ms"] / n, min_ms=r["min_ms"] / n, calls_per_timing=n)
        if ours:
            extra["kernel_speedup"] = r["median_ms"] / ours[0]
        row = rec.add("WindowedAttention", case, dn, impl, r, b, flops, **extra)
        if impl == "kernel":
            ours.append(row["median_ms"])

    call = lambda: P.K.windowed_attention(**inp, window=window, num_meta=meta, scale=scale, out=out)  # noqa: E731
    timed("kernel", call)
    for path in ATTN_DECODE_KERNELS if Tq == 1 else ("flash",):
        with P.shim.forced("attention", path):
            timed(f"kernel[{path}]", call)
    timed("ref_eager", lambda: windowed_attention_ref(**inp, window=window, num_meta=meta, scale=scale), n=1)
    qh, kh, vh = (inp[n].transpose(1, 2).repeat_interleave(Hq // inp[n].shape[2], dim=1) for n in ("q", "k", "v"))
    timed("sdpa_mask", lambda: F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale),
          note="SDPA in the input dtype with an explicit boolean mask; K/V pre-expanded to Hq heads")
    del qh, kh, vh
    if rec.compile_refs and dn == "bfloat16":
        f = rec.compiled(f"attn{case}{dn}", windowed_attention_ref)
        timed("ref_compile", lambda: f(**inp, window=window, num_meta=meta, scale=scale))
    if anchors and dn == "bfloat16":
        qc, kc, vc = (inp[n].transpose(1, 2).contiguous() for n in ("q", "k", "v"))     # (B, H, T, D)
        def flash():
            fn, note = sdpa_flash_anchor(qc, kc, vc, scale)
            timed("sdpa_flash", fn, note=note)
        rec.attempt(f"attn {case} sdpa_flash", flash)
        rec.attempt(f"attn {case} flex", lambda: timed(
            "flex_compiled", flex_anchor(rec, qc, kc, vc, window, meta, scale),
            note="torch.compile(flex_attention) with a block mask of the same Hymba mask, enable_gqa"))


def sdpa_flash_anchor(q, k, v, scale):
    """SDPA's flash backend, plain causal (the global layers' mask, a superset of the SWA work), GQA through
    enable_gqa. Returns (fn, note). Flash needs one head dim for q, k and v: when the backend refuses
    Dqk != Dv, q and k are zero-padded to Dv (same scores, the anchor's own extra work)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(qq, kk):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qq, kk, v, is_causal=True, scale=scale, enable_gqa=True)
    note = "SDPA flash backend, is_causal=True, enable_gqa"
    try:
        run(q, k)
    except RuntimeError:
        pad = v.shape[-1] - q.shape[-1]
        q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
        note += f"; q/k zero-padded to head dim {v.shape[-1]} (flash needs Dqk = Dv)"
        run(q, k)
    torch.cuda.synchronize()
    return (lambda: run(q, k)), note


def flex_anchor(rec: Recorder, q, k, v, window, meta, scale):
    """torch.compile'd FlexAttention with a block mask of the Hymba mask (causal, window, meta sinks)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    Tq, Tk = q.shape[2], k.shape[2]

    def mask_mod(b, h, q_idx, kv_idx):
        qq = q_idx + (Tk - Tq)
        vis = kv_idx <= qq
        if window > 0:
            vis = vis & ((qq - kv_idx <= window) | (kv_idx < meta))
        return vis
    block_mask = create_block_mask(mask_mod, None, None, Tq, Tk, device="cuda")
    f = rec.compiled("flex_attention", flex_attention)
    return lambda: f(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)


def time_attention(rec: Recorder, P, dtypes):
    rec.mma_peak = KN.matmul_tflops()
    rec.rows.append(dict(op="matmul", case="bf16_8192^3", dtype="bfloat16", impl="torch.matmul", TFLOPs=rec.mma_peak))
    for dn in dtypes:
        rec.attempt("attn prefill", lambda: attention(rec, P, dn, 1, 8320, 8320, 1024, 128, "prefill_swa_T8320", True))
        rec.attempt("attn decode", lambda: attention(rec, P, dn, 128, 1, 1152, 1024, 128, "decode_swa_B128_Tk1152"))
        if dn != "bfloat16":
            continue
        for args in ((1, 1, 1152, 1024, 128, "decode_swa_B1_Tk1152"), (128, 1, 8320, 0, 128, "decode_global_B128_Tk8320"),
                     (1, 8320, 8320, 0, 128, "prefill_global_T8320", True), (4, 2100, 2100, 1024, 128, "prefill_swa_B4_T2100"),
                     (2, 512, 4608, 1024, 128, "chunked_prefill_swa_B2_Tq512_Tk4608")):
            rec.attempt(f"attn {args[5]}", lambda: attention(rec, P, dn, *args))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="90", help="CMAKE_CUDA_ARCHITECTURES of the library timed")
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--dtypes", default="bfloat16,float16,float32")
    ap.add_argument("--only", default="scan,conv,attn")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile timings")
    ap.add_argument("--conv-anchor-lib", help="a library with the hymba_causal_conv1d entry point (e.g. an earlier "
                    "commit's plugin library): its conv kernel is timed beside ours")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA GPU, nothing timed")
        return 2
    if os.environ.get("HYMBA_PLUGIN_LIB"):
        lib, _ = H.find_libraries(build_if_missing=False)
    else:
        lib = H.build_library(REPO / "build" / f"plugins-gpu-{args.archs.replace('-', '_')}", archs=args.archs)
    shim = H.KernelShim(lib)
    P = SimpleNamespace(K=KN.Kernels(shim), shim=shim)
    info = KN.run_info(lib, args.archs)
    print(json.dumps(info, indent=1), flush=True)
    rec = Recorder(KN.copy_bandwidth(), not args.no_compile)
    print(f"device copy bandwidth (read+write): {rec.copy_gbps:.1f} GB/s", flush=True)
    dtypes, only = args.dtypes.split(","), set(args.only.split(","))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    anchor = conv_anchor(args.conv_anchor_lib, shim) if args.conv_anchor_lib else None
    if anchor is not None:
        info["conv_anchor_lib"] = args.conv_anchor_lib
    conv_fn = lambda rec, K, dtypes: time_conv(rec, K, dtypes, anchor)  # noqa: E731
    for name, fn, kernels in (("attn", time_attention, P), ("scan", time_scan, P.K), ("conv", conv_fn, P.K)):
        if name in only:
            fn(rec, kernels, dtypes)
            out.write_text(json.dumps(dict(info, copy_bandwidth_GBps=rec.copy_gbps, timing=rec.rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
