"""SelectiveScan prefill: each kernel (kernel choice `scan_prefill` = sequential | state | chunked | auto) checked against a
float64 reference and timed on the same inputs, in one run on one GPU.

    python3 plugins/tests/scan_chunked_bench.py --lib build/plugins-gpu-90/libhymba_plugins.so \
        --json bench/results/plugins_scan_chunked_<gpu>_<date>.json [--label 90] [--check-only | --time-only]
        [--timed B:T:reps,...]

1. Correctness: awkward shapes (T = 2, T not a multiple of any tile, T below one chunk, d_state 5 / 8 / 12 /
   24 / 32, dim no multiple of a block's channels, batch > 1, strided inputs, B and C rows not 16-byte
   aligned, a T-typed initial state, no optionals, y over x and last_state over an fp32 initial state) x fp32 /
   fp16 / bf16 x each kernel, outputs NaN-filled first, ||out - ref|| / ||ref|| against selective_scan_ref on
   float64 copies of the inputs; bounds fp32 1e-5 (1e-4 at T >= 4096), fp16 / bf16 1e-2. The timed shapes up
   to batch 16 are checked too.
2. Timing (bf16, D 3200, N 16): by default B1 T8320, B4 T2048, B16 T2048, B128 T8320; CUDA events, median
   after warm-up, each kernel on the same inputs; the B·T·D·N state exps over the MUFU.EX2 limit.
Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import harness as H  # noqa: E402
import kernels as KN  # noqa: E402

from hymba_deploy.ops.selective_scan import selective_scan_ref  # noqa: E402
from hymba_deploy.parity.tolerances import OP_BOUNDS  # noqa: E402

PATHS = ("sequential", "state", "chunked", "auto")
# name, B, T, D, N, variant: "" | "noncontig" (strided x, dt, z, B, C) | "Tstate" (initial state in the I/O dtype)
# | "none" (no D, z, dt_bias, initial state) | "inplace" (y over x, last_state over the fp32 initial state)
# | "offset" (B and C rows start one element into a wider buffer: not 16-byte aligned, staged by elements)
CHECKS = [
    ("T2_b3", 3, 2, 203, 16, ""),
    ("T37_one_chunk", 2, 37, 130, 16, ""),
    ("T129_b2_N8", 2, 129, 77, 8, "noncontig"),
    ("T255_N12_Tstate", 2, 255, 300, 12, "Tstate"),
    ("T256_N32", 2, 256, 96, 32, ""),
    ("T777_N5_none", 3, 777, 130, 5, "none"),
    ("T1000_N24_noncontig", 2, 1000, 333, 24, "noncontig"),
    ("T700_inplace", 2, 700, 300, 16, "inplace"),
    ("T3001_b1_D40", 1, 3001, 40, 16, ""),
    ("T3000_b4", 4, 3000, 3200, 16, ""),
    ("T300_N16_offset", 2, 300, 64, 16, "offset"),
    ("T515_N8_offset", 3, 515, 100, 8, "offset"),
]
TIMED = [(1, 8320, 20), (4, 2048, 20), (16, 2048, 10), (128, 8320, 3)]  # B, T, reps


def rel_err(out, ref):
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all():
        return float("nan")
    den = r.norm().item()
    return (o - r).norm().item() / (den if den > 0 else 1.0)


def make_inputs(B, T, D, N, dn, variant, gen):
    dt_ = KN.DTYPES[dn]
    inp = KN.scan_inputs(B, T, D, N, dt_, dt_ if variant == "Tstate" else torch.float32, gen)
    if variant == "none":
        for k in ("D", "z", "dt_bias", "initial_state"):
            inp[k] = None
    return inp


def reference(inp):
    wide = {k: (v.double() if torch.is_tensor(v) else v) for k, v in inp.items()}
    return selective_scan_ref(**wide)


def run_kernel(K, inp, variant, path):
    """(y, last_state) of one launch under `path`, outputs NaN-filled first."""
    kin = dict(inp)
    if variant == "noncontig":
        for k in ("x", "dt", "z"):
            kin[k] = KN.slice_noncontig(inp[k])
        kin["B"], kin["C"] = KN.slice_noncontig(inp["B"]), KN.slice_noncontig(inp["C"], 1)
    if variant == "offset":
        for k in ("B", "C"):
            wide = torch.empty(*inp[k].shape[:-1], inp[k].shape[-1] + 1, device="cuda", dtype=inp[k].dtype)
            kin[k] = wide[..., 1:]
            kin[k].copy_(inp[k])
    if variant == "inplace":
        kin["x"], kin["initial_state"] = inp["x"].clone(), inp["initial_state"].clone()
        y, ls = kin["x"], kin["initial_state"]
    else:
        y = torch.full_like(inp["x"], float("nan"))
        ls = torch.full((inp["x"].shape[0], inp["x"].shape[2], inp["A"].shape[1]), float("nan"), device="cuda")
    with K.shim.forced("scan_prefill", path):
        K.selective_scan(**kin, y=y, last_state=ls)
    torch.cuda.synchronize()
    return y, ls


def check_case(K, rows, name, B, T, D, N, variant, dtypes, gen, label):
    ok = True
    for dn in dtypes:
        inp = make_inputs(B, T, D, N, dn, variant, gen)
        y_ref, s_ref = reference(inp)
        tol = 1e-4 if (dn == "float32" and T >= 4096) else OP_BOUNDS[dn]
        for path in PATHS:
            y, ls = run_kernel(K, inp, variant, path)
            ey, es = rel_err(y, y_ref), rel_err(ls, s_ref)
            passed = math.isfinite(ey) and math.isfinite(es) and ey <= tol and es <= tol
            ok &= passed
            rows.append(dict(kind="check", lib=label, case=name, B=B, T=T, D=D, N=N, variant=variant, dtype=dn,
                             path=path, y_rel_err=ey, last_state_rel_err=es, tol=tol, passed=passed))
            print(f"  {'PASS' if passed else 'FAIL'} [{label}] {name:<20} {dn:<8} {path:<10} y {ey:.2e} "
                  f"last_state {es:.2e}", flush=True)
        del inp, y_ref, s_ref
        torch.cuda.empty_cache()
    return ok


def time_case(K, rows, B, T, reps, exp_limit, gen):
    D, N = 3200, 16
    inp = make_inputs(B, T, D, N, "bfloat16", "", gen)
    y = torch.empty_like(inp["x"])
    ls = torch.empty(B, D, N, device="cuda")
    exps = B * T * D * N
    times = {}
    for path in PATHS:
        with K.shim.forced("scan_prefill", path):
            r = KN.bench(lambda: K.selective_scan(**inp, y=y, last_state=ls), reps=reps, warmup=2)
        times[path] = r["median_ms"]
        row = dict(kind="time", case=f"B{B}_T{T}", B=B, T=T, D=D, N=N, dtype="bfloat16", path=path, **r,
                   exps=exps, exps_per_s=exps / (r["median_ms"] * 1e-3))
        if exp_limit:
            row.update(exp_floor_ms=exps / exp_limit["exps_per_s"] * 1e3,
                       ratio_to_exp_limit=row["exps_per_s"] / exp_limit["exps_per_s"])
        rows.append(row)
        print(f"  time B{B} T{T} {path:<10} {r['median_ms']:9.4f} ms (min {r['min_ms']:.4f})", flush=True)
    for row in rows:
        if row.get("kind") == "time" and row["case"] == f"B{B}_T{T}":
            row["speedup_vs_state"] = times["state"] / row["median_ms"]
            row["speedup_vs_sequential"] = times["sequential"] / row["median_ms"]
    del inp, y, ls
    torch.cuda.empty_cache()
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", type=Path, required=True, help="libhymba_plugins.so to test")
    ap.add_argument("--label", default="", help="name of the build in the rows (e.g. 90, 80-virtual)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--check-only", action="store_true", help="correctness only, no timing")
    ap.add_argument("--time-only", action="store_true", help="timing only, no correctness checks")
    ap.add_argument("--timed", default=None,
                    help="timed shapes B:T:reps,... (default " + ",".join(f"{b}:{t}:{r}" for b, t, r in TIMED) + ")")
    args = ap.parse_args(argv)
    timed = [tuple(int(v) for v in item.split(":")) for item in args.timed.split(",")] if args.timed else TIMED
    K = KN.Kernels(H.KernelShim(args.lib))
    gen = torch.Generator(device="cuda").manual_seed(1234)
    rows, ok = [], True
    if not args.time_only:
        print("== correctness", flush=True)
        for name, B, T, D, N, variant in CHECKS:
            dtypes = ("float32", "float16", "bfloat16") if D * B <= 1000 or T <= 1000 else ("float32", "bfloat16")
            ok &= check_case(K, rows, name, B, T, D, N, variant, dtypes, gen, args.label)
        for B, T, _ in timed:  # the timed shapes up to batch 16 (larger float64 references are left to tests/gpu)
            if B <= 16:
                ok &= check_case(K, rows, f"timed_B{B}_T{T}", B, T, 3200, 16, "", ("bfloat16",), gen, args.label)
    summary = {}
    if not args.check_only:
        exp_limit = KN.exp2_limit()
        print("== timing (bf16, D 3200, N 16)", flush=True)
        for B, T, reps in timed:
            summary[f"B{B}_T{T}"] = time_case(K, rows, B, T, reps, exp_limit, gen)
    else:
        exp_limit = None
    result = dict(run=KN.run_info(args.lib, args.label or None), exp2_limit=exp_limit,
                  n_checks=sum(r["kind"] == "check" for r in rows),
                  n_passed=sum(r["kind"] == "check" and r["passed"] for r in rows), rows=rows, times_ms=summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"== {result['n_passed']}/{result['n_checks']} checks passed [{args.label}]", flush=True)
    if summary:
        print(f"{'case':<12}" + "".join(f"{p:>12}" for p in PATHS))
        for case, t in summary.items():
            print(f"{case:<12}" + "".join(f"{t[p]:12.4f}" for p in PATHS))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
