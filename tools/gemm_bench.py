"""Decode GEMMs of one model shape on the GPU: cuBLAS against the Triton kernels of `gemm.py` (split-K for
x_proj, out_proj, down_proj over a sweep of tilings; the SSM branch's x_proj -> norms -> dt_proj chain
against split-K x_proj + `ssm_inputs`), each timed as it runs in a decode step: one call per layer over that
layer's own weights (rotating through more bytes than L2 holds), captured in a CUDA graph. Prints a table and
writes JSON with each variant's µs per call, effective weight GB/s and relative error against float64. The
split-K rows time the kernel writing its fp32 partials (the engine adds them up inside the consumer's
kernel); `--with-reduce` adds a separate sum.

    PYTHONPATH=. python3 tools/gemm_bench.py --rows 128 --out bench/results/gemm_decode_<gpu>.json

`--gemv` (small batches, e.g. `--rows 1 8`): every decode GEMM but lm_head (in_proj, x_proj, out_proj, gate_up
with silu · up, down_proj; the SSM chain x_proj -> ssm_inputs) as cuBLAS, as the runtime's batch-128 tilings
(`TRITON_GEMMS`, the previous small-batch kernels) and over a sweep of `gemv` tilings; the best tiling per GEMM
is the one with the least summed µs over all --rows (one tiling serves every small bucket).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from hymba_deploy.bench.timing import copy_bandwidth, events_ms
from hymba_deploy.config import PRESETS
from hymba_deploy.fileio import atomic_write_json
from hymba_deploy.parity.compare import metrics
from hymba_deploy.serving.gemm import (GemmConfig, SsmInputsConfig, glu_reference, linear_glu, linear_reference,
                                       linear_splitk, rows_block, ssm_inputs, ssm_inputs_reference)


def decode_shapes(cfg) -> dict[str, tuple[int, int]]:
    """(N, K) of the decode GEMMs as the engine runs them (x_proj and dt_proj padded, gate/up packed)."""
    I, H = cfg.d_inner, cfg.hidden_size
    in_rows = cfg.num_attention_heads * cfg.qk_head_dim + cfg.num_key_value_heads * (cfg.qk_head_dim + cfg.v_dim) + 2 * I
    return {"in_proj": (in_rows, H), "x_proj": (-(-(cfg.mamba_dt_rank + 2 * cfg.mamba_d_state) // 8) * 8, I),
            "out_proj": (H, I), "gate_up": (2 * cfg.intermediate_size, H),
            "down_proj": (H, cfg.intermediate_size), "lm_head": (-(-cfg.vocab_size // 8) * 8, H)}


def time_graph(fn, reps: int = 20) -> float:
    """ms per replay of a CUDA graph of `fn()`."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()                                                                # warm-up (lazy inits)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    return events_ms(graph.replay, reps)


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64 (`parity.compare.metrics`; NaN or Inf: inf)."""
    return metrics(out.double().cpu().numpy(), ref.double().cpu().numpy())["rel_l2"]


def padded(w: torch.Tensor, rows: int = 1, cols: int = 1) -> torch.Tensor:
    """w (n, k) in a zero buffer of n and k rounded up to multiples of `rows` and `cols`: the serving
    runtime's packed x_proj (rows) and dt_proj (columns) layouts."""
    n, k = w.shape
    return F.pad(w, (0, -k % cols, 0, -n % rows))


def sweep(M: int, N: int, K: int, sms: int):
    """Split-K tilings to try. Wide GEMMs (out_proj, down_proj): 64/128-wide tiles, 4-5 stages, enough
    programs for every SM. x_proj (N = 136, a 0.9 MB weight): narrow tiles and many splits."""
    bm = rows_block(M)
    wide = N >= 1024
    space = (((64, 128), (64, 128), (4, 8), (4, 5)) if wide else ((32, 64), (64, 128), (4,), (3,)))
    for bn, bk, warps, stages in itertools.product(*space):
        if (bm * bk + bn * bk) * 2 * stages > 220 * 1024:
            continue                                                        # shared memory over the limit
        tiles = -(-N // bn) * -(-M // bm)
        for splits in ((2, 3, 4, 6, 8, 12) if wide else (4, 5, 8, 10, 16, 25)):
            if K // splits < bk or tiles * splits > 6 * sms or (wide and tiles * splits < sms // 2):
                continue
            yield GemmConfig(bn, bk, splits, warps, stages)


class _Timer:
    """Records variants of one measurement: error against a reference, µs per call in a graph of `copies`
    calls (one per layer's weights)."""

    def __init__(self, args, copies: int, bytes_w: int, log):
        self.args, self.copies, self.bytes_w, self.log, self.rows = args, copies, bytes_w, log, []

    def record(self, variant, run_all, result, ref, extra=None):
        try:
            err = max(rel_err(a, b) for a, b in zip(result(), ref)) if isinstance(ref, tuple) else rel_err(result(), ref)
            ms = time_graph(run_all, self.args.reps)
        except Exception as exc:                                            # noqa: BLE001 - a sweep point that
            self.log(f"  {variant:<44} failed: {type(exc).__name__}: {str(exc)[:120]}")   # cannot run is kept
            self.rows.append({"variant": variant, "error": f"{type(exc).__name__}: {str(exc)[:300]}", **(extra or {})})
            return
        us = ms * 1e3 / self.copies
        row = {"variant": variant, "us": us, "GBps": self.bytes_w / us / 1e3, "rel_err": err, **(extra or {})}
        self.rows.append(row)
        self.log(f"  {variant:<44} {us:8.1f} us  {row['GBps']:7.0f} GB/s  err {err:.1e}")

    def summary(self, **info):
        best = min((r for r in self.rows if "us" in r and "config" in r), key=lambda r: r["us"], default=None)
        base = next((r["us"] for r in self.rows if r["variant"] == "cublas" and "us" in r), None)
        return {**info, "copies": self.copies, "rows": self.rows, "best_triton": best, "cublas_us": base}


def bench_shape(name, N, K, M, args, sms, dtype, log):
    """One decode GEMM (`name` from decode_shapes) at M rows: cuBLAS against the split-K sweep (its fp32
    partials written; the engine sums them in the consumer's kernel, `--with-reduce` adds a separate sum)."""
    bytes_w = N * K * torch.finfo(dtype).bits // 8
    copies = max(2, math.ceil(args.rotate_mib * 2**20 / bytes_w))
    ws = [torch.randn(N, K, device="cuda", dtype=dtype) / math.sqrt(K) for _ in range(copies)]
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    ref = linear_reference(x, ws[0])
    t = _Timer(args, copies, bytes_w, log)
    t.record("cublas", lambda: [F.linear(x, w) for w in ws], lambda: F.linear(x, ws[0]), ref)
    reduce = torch.compile(lambda p: p.sum(0).to(dtype), dynamic=False)
    for c in sweep(M, N, K, sms):
        out = torch.empty(c.splits, M, N, device="cuda", dtype=torch.float32)
        tag = f"splitk n{c.block_n} k{c.block_k} s{c.splits} w{c.num_warps} st{c.num_stages}"
        t.record(tag, lambda c=c, out=out: [linear_splitk(x, w, c, out) for w in ws],
                 lambda c=c: linear_splitk(x, ws[0], c).sum(0), ref, {"config": c.as_dict()})
        if args.with_reduce:
            t.record(tag + " +sum", lambda c=c, out=out: [reduce(linear_splitk(x, w, c, out)) for w in ws],
                     lambda c=c: reduce(linear_splitk(x, ws[0], c)), ref, {"config": c.as_dict()})
    return t.summary(N=N, K=K, M=M, weight_bytes=bytes_w)


def ssm_layers(cfg, dtype, copies: int):
    """`copies` random SSM-branch weight sets ((x_proj padded to 8 rows, dt_proj padded to 8 columns, the dt/B/C
    norm weights), rotated through so that the weights come from DRAM) and one set's weight bytes."""
    I, R, N = cfg.d_inner, cfg.mamba_dt_rank, cfg.mamba_d_state
    layers = []
    for _ in range(copies):
        xw = torch.randn(R + 2 * N, I, device="cuda", dtype=dtype) / math.sqrt(I)
        dw = torch.randn(I, R, device="cuda", dtype=dtype) / math.sqrt(R)
        norms = [torch.rand(n, device="cuda", dtype=dtype) + 0.5 for n in (R, N, N)]
        layers.append((padded(xw, rows=8), padded(dw, cols=8), norms))
    return layers, sum(t.numel() * t.element_size() for t in layers[0][:2])


def bench_ssm_chain(cfg, M, args, dtype, log):
    """The SSM branch from the conv output to the scan's inputs, per layer: x_proj, the dt/B/C norms and
    dt_proj as the engine runs them on cuBLAS + inductor, against split-K x_proj + `ssm_inputs` over a sweep
    of both launches' tilings."""
    from hymba_deploy.serving.runtime import dbc_norms

    I, R, N, eps = cfg.d_inner, cfg.mamba_dt_rank, cfg.mamba_d_state, cfg.rms_norm_eps
    copies = 32
    layers, bytes_w = ssm_layers(cfg, dtype, copies)
    x = torch.randn(M, I, device="cuda", dtype=dtype)
    dbc = torch.compile(dbc_norms, fullgraph=True)

    def cublas(layer):
        xw, dw, (wd, wb, wc) = layer
        dt, Bm, Cm = dbc(F.linear(x, xw), wd, wb, wc, R, N, eps, dw.shape[1])
        return F.linear(dt, dw), Bm, Cm

    def triton_chain(layer, xc, sc):
        xw, dw, (wd, wb, wc) = layer
        return ssm_inputs(linear_splitk(x, xw, xc), wd, wb, wc, dw, eps, sc)

    xw, dw, (wd, wb, wc) = layers[0]
    ref = ssm_inputs_reference(F.linear(x, xw), wd, wb, wc, dw, eps)     # from the same bf16 x_proj output
    t = _Timer(args, copies, bytes_w, log)
    t.record("cublas", lambda: [cublas(l) for l in layers], lambda: cublas(layers[0]), ref)
    for splits, bm, pi, bi in itertools.product((5, 8, 10, 16, 25), (16, 32), (2, 4, 8, 13), (64, 128)):
        xc, sc = GemmConfig(32, 64, splits, 4, 3), SsmInputsConfig(bm, bi, pi)
        t.record(f"x_proj s{splits} + ssm_inputs m{bm} p{pi} i{bi}",
                 lambda xc=xc, sc=sc: [triton_chain(l, xc, sc) for l in layers],
                 lambda xc=xc, sc=sc: triton_chain(layers[0], xc, sc), ref,
                 {"config": {"x_proj": xc.as_dict(), "ssm_inputs": sc.as_dict()}})
    return t.summary(M=M, weight_bytes=bytes_w)


def gemv_sweep(name: str, N: int, K: int, sms: int):
    """`gemv` tilings to try: 16-64 weight rows × 128/256 of K (3-4 stages); one K range for in_proj and gate_up
    (their products feed the glue), else splits for about 1, 2 and 4 programs per SM; x_proj (N = 136) narrow
    tiles with many splits."""
    if name == "x_proj":
        for bk, splits in itertools.product((128, 256), (4, 8, 16, 25)):
            if K // splits >= bk:
                yield GemmConfig(16, bk, splits, 4, 3, "gemv")
        return
    for bn, (bk, stages) in itertools.product((16, 32, 64), ((128, 4), (256, 3))):
        if name in ("in_proj", "gate_up"):
            yield GemmConfig(bn, bk, 1, 4, stages, "gemv")
            continue
        tiles = -(-N // bn)
        for per_sm in (1, 2, 4):
            splits = -(-per_sm * sms // tiles)
            if K // splits >= bk:
                yield GemmConfig(bn, bk, splits, 4, stages, "gemv")


def bench_gemv_shape(name, N, K, M, args, sms, dtype, log):
    """One decode GEMM at M ≤ 16 rows: cuBLAS, the batch-128 tiling (`TRITON_GEMMS`) and the gemv sweep. gate_up
    (N = 2F packed rows): cuBLAS + the compiled silu_mul against `linear_glu`."""
    from hymba_deploy.serving.runtime import TRITON_GEMMS, silu_mul

    bytes_w = N * K * torch.finfo(dtype).bits // 8
    copies = max(2, math.ceil(args.rotate_mib * 2**20 / bytes_w))
    ws = [torch.randn(N, K, device="cuda", dtype=dtype) / math.sqrt(K) for _ in range(copies)]
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    t = _Timer(args, copies, bytes_w, log)
    if name == "gate_up":
        act = torch.compile(silu_mul, fullgraph=True)
        cublas = lambda w: act(*F.linear(x, w).chunk(2, dim=-1))                # noqa: E731
        ref = glu_reference(x, ws[0])
        t.record("cublas + silu_mul", lambda: [cublas(w) for w in ws], lambda: cublas(ws[0]), ref)
        for c in gemv_sweep(name, N, K, sms):
            out = torch.empty(M, N // 2, device="cuda", dtype=dtype)
            t.record(f"glu n{c.block_n} k{c.block_k} st{c.num_stages}",
                     lambda c=c, out=out: [linear_glu(x, w, c, out) for w in ws], lambda c=c: linear_glu(x, ws[0], c),
                     ref, {"config": c.as_dict()})
        return t.summary(N=N, K=K, M=M, weight_bytes=bytes_w)
    ref = linear_reference(x, ws[0])
    t.record("cublas", lambda: [F.linear(x, w) for w in ws], lambda: F.linear(x, ws[0]), ref)
    prev = TRITON_GEMMS.get(name)
    if prev is not None:
        out = torch.empty(prev.splits, M, N, device="cuda", dtype=torch.float32)
        t.record(f"previous splitk s{prev.splits}", lambda: [linear_splitk(x, w, prev, out) for w in ws],
                 lambda: linear_splitk(x, ws[0], prev).float().sum(0), ref)
    for c in gemv_sweep(name, N, K, sms):
        out = torch.empty(c.splits, M, N, device="cuda", dtype=torch.float32 if c.splits > 1 else dtype)
        t.record(f"gemv n{c.block_n} k{c.block_k} s{c.splits} st{c.num_stages}",
                 lambda c=c, out=out: [linear_splitk(x, w, c, out) for w in ws],
                 lambda c=c: linear_splitk(x, ws[0], c).float().sum(0), ref, {"config": c.as_dict()})
    return t.summary(N=N, K=K, M=M, weight_bytes=bytes_w)


def bench_ssm_chain_gemv(cfg, M, args, dtype, log):
    """The SSM branch (x_proj -> ssm_inputs) at M ≤ 16 rows: the batch-128 tilings against gemv x_proj + ssm_inputs
    with more channel ranges (one program per 32-64 channels)."""
    from hymba_deploy.serving.runtime import TRITON_GEMMS

    I, R, N, eps = cfg.d_inner, cfg.mamba_dt_rank, cfg.mamba_d_state, cfg.rms_norm_eps
    copies = 32
    layers, bytes_w = ssm_layers(cfg, dtype, copies)
    x = torch.randn(M, I, device="cuda", dtype=dtype)

    def chain(layer, xc, sc):
        xw, dw, (wd, wb, wc) = layer
        return ssm_inputs(linear_splitk(x, xw, xc), wd, wb, wc, dw, eps, sc)

    xw, dw, (wd, wb, wc) = layers[0]
    ref = ssm_inputs_reference(F.linear(x, xw), wd, wb, wc, dw, eps)
    t = _Timer(args, copies, bytes_w, log)
    xc, sc = TRITON_GEMMS["x_proj"], TRITON_GEMMS["ssm_inputs"]
    t.record("previous", lambda: [chain(l, xc, sc) for l in layers], lambda: chain(layers[0], xc, sc), ref)
    for splits, pi, bi in itertools.product((8, 16), (25, 50, 100), (32, 64)):
        xc, sc = GemmConfig(16, 128, splits, 4, 3, "gemv"), SsmInputsConfig(16, bi, pi)
        t.record(f"gemv x_proj s{splits} + ssm_inputs p{pi} i{bi}",
                 lambda xc=xc, sc=sc: [chain(l, xc, sc) for l in layers], lambda xc=xc, sc=sc: chain(layers[0], xc, sc),
                 ref, {"config": {"x_proj": xc.as_dict(), "ssm_inputs": sc.as_dict()}})
    return t.summary(M=M, weight_bytes=bytes_w)


def best_over_rows(results: dict, rows) -> dict:
    """Per GEMM name: the tiling with the least µs summed over `rows` (results[f"{name}_M{m}"] rows alike)."""
    best = {}
    for name in {k.rsplit("_M", 1)[0] for k in results}:
        per = [results.get(f"{name}_M{m}") for m in rows]
        if any(p is None for p in per):
            continue
        total: dict = {}
        for p in per:
            for r in p["rows"]:
                if "us" in r and "config" in r:
                    key = json.dumps(r["config"], sort_keys=True)
                    total[key] = total.get(key, 0.0) + r["us"]
        if total:
            best[name] = json.loads(min(total, key=total.get))
    return best


def main_gemv(args, cfg, sms, dtype, res, log) -> dict:
    """--gemv: the small-batch sweep of every decode GEMM but lm_head -> res["shapes"], res["best"]."""
    for name, (N, K) in decode_shapes(cfg).items():
        if name == "lm_head" or (args.shapes and name not in args.shapes):
            continue
        for M in args.rows:
            log(f"{name} M={M} N={N} K={K}")
            res["shapes"][f"{name}_M{M}"] = bench_gemv_shape(name, N, K, M, args, sms, dtype, log)
            torch.cuda.empty_cache()
    for M in args.rows:
        log(f"SSM branch x_proj -> scan inputs, M={M}")
        res["shapes"][f"ssm_chain_M{M}"] = bench_ssm_chain_gemv(cfg, M, args, dtype, log)
    best = best_over_rows(res["shapes"], args.rows)
    chain = best.pop("ssm_chain", None)
    if chain:
        best.update(chain)                                  # x_proj and ssm_inputs, as the chain ran them
    res["best"] = best
    log("\nsummary (µs per call; GB/s of weights)")
    nan = {"us": float("nan"), "GBps": float("nan"), "variant": "-"}
    for key, r in res["shapes"].items():
        b = r["best_triton"] or nan
        base, prev = (next((x for x in r["rows"] if x["variant"].startswith(p) and "us" in x), nan)
                      for p in ("cublas", "previous"))
        log(f"  {key:<16} cublas {base['us']:6.1f}  previous {prev['us']:6.1f}  best {b['us']:6.1f} "
            f"({b['GBps']:5.0f} GB/s) {b['variant']}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="hymba-1.5b")
    ap.add_argument("--rows", type=int, nargs="+", default=[128], help="M: decode batch sizes")
    ap.add_argument("--shapes", nargs="*", default=None,
                    help="decode GEMM names (in_proj, x_proj, out_proj, gate_up, down_proj, lm_head; default: "
                         "x_proj, out_proj, down_proj; with --gemv all but lm_head)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rotate-mib", type=int, default=512, help="weight bytes each timing rotates through")
    ap.add_argument("--with-reduce", action="store_true", help="also time split-K with a separate sum kernel")
    ap.add_argument("--out", default=None)
    ap.add_argument("--best-out", default=None,
                    help="write the fastest Triton tiling per GEMM at the largest --rows (for bench --gemm-configs)")
    ap.add_argument("--gemv", action="store_true",
                    help="small batches: the gemv kernel on every decode GEMM but lm_head (--shapes: all by default)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gemm_bench needs a CUDA GPU", file=sys.stderr)
        return 2
    cfg = PRESETS[args.preset]()
    dtype = torch.bfloat16
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def log(msg):
        print(msg, flush=True)

    bw = copy_bandwidth()
    res = {"gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
           "torch": torch.__version__, "cuda_version": torch.version.cuda,
           "triton": __import__("triton").__version__,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "preset": args.preset, "dtype": "bfloat16",
           "copy_bandwidth_GBps": bw / 1e9, "shapes": {}}
    log(f"copy bandwidth {bw / 1e9:.0f} GB/s, {sms} SMs")
    if args.gemv:
        res = main_gemv(args, cfg, sms, dtype, res, log)
        for path, data in ((args.out, res), (args.best_out, res["best"])):
            if path:
                atomic_write_json(path, data)
        return 0
    args.shapes = args.shapes or ["x_proj", "out_proj", "down_proj"]
    for name, (N, K) in decode_shapes(cfg).items():
        if name not in args.shapes:
            continue
        for M in args.rows:
            log(f"{name} M={M} N={N} K={K}")
            res["shapes"][f"{name}_M{M}"] = bench_shape(name, N, K, M, args, sms, dtype, log)
            torch.cuda.empty_cache()
    M = max(args.rows)
    res["best_at_rows"] = M
    res["best"] = {name: r["best_triton"]["config"] for name in args.shapes
                   if (r := res["shapes"].get(f"{name}_M{M}")) and r["best_triton"]}
    if "x_proj" in args.shapes:     # the SSM branch as the engine runs it: its best pair of tilings wins
        res["ssm_chain"] = {}
        for rows in args.rows:
            log(f"SSM branch x_proj -> scan inputs, M={rows}")
            res["ssm_chain"][f"M{rows}"] = bench_ssm_chain(cfg, rows, args, dtype, log)
        best = res["ssm_chain"][f"M{M}"]["best_triton"]
        if best:
            res["best"].update(best["config"])
    log("best: " + json.dumps(res["best"]))
    for path, data in ((args.out, res), (args.best_out, res["best"])):
        if path:
            atomic_write_json(path, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
