"""Times variants of the tensor-core WindowedAttention decode kernel (warps per block × pipeline stages).

Each variant is the same source built with -DHYMBA_WAM_WARPS / -DHYMBA_WAM_STAGES into its own small
library (the attention translation units plus the C shim; scan and conv objects are built once and shared),
checked against `windowed_attention_ref` in float64 (hymba_deploy.parity.tolerances's bound) and timed
as a CUDA graph of 20 back-to-back launches (kernel time, no Python launch overhead) at Hymba decode shapes.

    python3 tools/attn_tune.py --variants 4x4,4x3,8x3 --json $OUT/attn_tune.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins" / "tests"))

import harness as H  # noqa: E402
import kernels as KN  # noqa: E402  (copy bandwidth, graph timing)

from hymba_deploy.ops import windowed_attention_ref  # noqa: E402
from hymba_deploy.parity.tolerances import kernel_bound, rel_err  # noqa: E402

PLUG = REPO / "plugins"
SHARED_TUS = ["selective_scan/selective_scan_kernel", "selective_scan/selective_scan_kernel_fp32",
              "selective_scan/selective_scan_kernel_fp16", "selective_scan/selective_scan_kernel_bf16",
              "causal_conv1d/causal_conv1d_kernel", "causal_conv1d/causal_conv1d_kernel_fp32",
              "causal_conv1d/causal_conv1d_kernel_fp16", "causal_conv1d/causal_conv1d_kernel_bf16"]
ATTN_TUS = ["windowed_attention/windowed_attention_kernel", "windowed_attention/windowed_attention_kernel_fp32",
            "windowed_attention/windowed_attention_kernel_fp16", "windowed_attention/windowed_attention_kernel_bf16"]
CASES = [  # name, B, Tk, window, meta (Hq 25, Hkv 5, Dqk 64, Dv 128: hymba-1.5b)
    ("swa_B128_Tk1152", 128, 1152, 1024, 128),
    ("global_B128_Tk8320", 128, 8320, 0, 128),
    ("swa_B32_Tk1152", 32, 1152, 1024, 128),
]


def nvcc(args):
    subprocess.run(["nvcc", "-std=c++17", "-O3", "-Xcompiler", "-fPIC", *args], check=True, cwd=PLUG)


def build(build_dir: Path, variants, arch: str) -> dict:
    build_dir.mkdir(parents=True, exist_ok=True)
    common = [f"-arch=sm_{arch}", "-I", str(PLUG)]
    jobs = {}
    with cf.ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as ex:
        for tu in SHARED_TUS:
            o = build_dir / (tu.replace("/", "_") + ".o")
            jobs[o] = ex.submit(nvcc, [*common, "-c", f"{tu}.cu", "-o", str(o)])
        o = build_dir / "kernels_c_api.o"
        jobs[o] = ex.submit(nvcc, [*common, "-c", "common/kernels_c_api.cpp", "-o", str(o)])
        for w, s in variants:
            for tu in ATTN_TUS:
                o = build_dir / f"w{w}s{s}_{tu.replace('/', '_')}.o"
                jobs[o] = ex.submit(nvcc, [*common, f"-DHYMBA_WAM_WARPS={w}", f"-DHYMBA_WAM_STAGES={s}",
                                           "-c", f"{tu}.cu", "-o", str(o)])
        for j in jobs.values():
            j.result()
    libs = {}
    shared = [str(build_dir / (tu.replace("/", "_") + ".o")) for tu in SHARED_TUS] + [str(build_dir / "kernels_c_api.o")]
    for w, s in variants:
        lib = build_dir / f"libwa_w{w}s{s}.so"
        nvcc([f"-arch=sm_{arch}", "-shared", "-o", str(lib), *shared,
              *[str(build_dir / f"w{w}s{s}_{tu.replace('/', '_')}.o") for tu in ATTN_TUS]])
        libs[(w, s)] = lib
    return libs


def parse_args(argv, doc, variants, variants_help, build_dir):
    """The tuning tools' common options (--variants AxB,..., --arch, --build-dir, --json); returns (args, variants)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=variants, help=f"{variants_help}, comma separated")
    ap.add_argument("--arch", default="90")
    ap.add_argument("--build-dir", default=str(REPO / "build" / build_dir))
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--extra-lib", action="append", default=[], metavar="LABEL=PATH",
                    help="also time a prebuilt variant library (e.g. an earlier kernel version)")
    args = ap.parse_args(argv)
    return args, [tuple(int(x) for x in v.split("x")) for v in args.variants.split(",") if v]


def measure(call, out, q, k, v, window, meta, scale):
    """One variant on one case: (error against the float64 reference, the kernel tolerance's bound for it,
    ms per launch in a CUDA graph). bf16 inputs; PyTorch's own error: the reference op in bf16."""
    call()
    torch.cuda.synchronize()
    wide = [t.double() for t in (q, k, v)]
    ref64 = windowed_attention_ref(*wide, window=window, num_meta=meta, scale=scale)
    own = rel_err(windowed_attention_ref(q, k, v, window=window, num_meta=meta, scale=scale), ref64)
    return rel_err(out, ref64), kernel_bound(torch.bfloat16, own), KN.graph_ms(call)


def write_results(path, records, **extra) -> int:
    """The run's GPU, versions and date, `extra`, and the records; exit status 1 if any variant erred."""
    doc = dict(KN.run_info(), **extra, results=records)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")
    return 0 if all(r["passed"] for r in records) else 1


def main(argv=None):
    args, variants = parse_args(argv, __doc__, "4x3,8x3,4x4,8x4,4x2", "WARPSxSTAGES", "attn-tune")
    libs = build(Path(args.build_dir), variants, args.arch)
    for spec in args.extra_lib:
        label, path = spec.split("=", 1)
        libs[(label, "-")] = Path(path)

    copy_gbps = KN.copy_bandwidth()
    records = []
    gen = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
    Hq, Hkv, Dqk, Dv = 25, 5, 64, 128
    for name, B, Tk, window, meta in CASES:
        q = torch.randn(B, 1, Hq, Dqk, device="cuda", generator=gen).bfloat16()
        k = torch.randn(B, Hkv, Tk, Dqk, device="cuda", generator=gen).bfloat16().transpose(1, 2)  # head-major
        v = torch.randn(B, Hkv, Tk, Dv, device="cuda", generator=gen).bfloat16().transpose(1, 2)
        nbytes = KN.nbytes(q, k, v) + B * Hq * Dv * 2
        for (w, s), lib in libs.items():
            shim = H.KernelShim(lib)
            out = torch.empty(B, 1, Hq, Dv, device="cuda", dtype=torch.bfloat16)
            st = shim.strides

            def call():
                rc = shim.lib.hymba_windowed_attention(
                    B, 1, Tk, Hq, Hkv, Dqk, Dv, 2, window, meta, 0.125, q.data_ptr(), st(q), k.data_ptr(), st(k),
                    v.data_ptr(), st(v), out.data_ptr(), st(out), None, torch.cuda.current_stream().cuda_stream)
                if rc != 0:
                    raise RuntimeError(shim.error())
            err, bound, ms = measure(call, out, q, k, v, window, meta, 0.125)
            gbps = nbytes / (ms * 1e-3) / 1e9
            rec = dict(case=name, warps=w, stages=s, ms=ms, GBps=gbps, ratio_to_copy_bw=gbps / copy_gbps, rel_err=err,
                       bound=bound, passed=err <= bound)
            records.append(rec)
            print(f"{name:<20} warps {w} stages {s}: {ms * 1e3:8.1f} us  {gbps:7.0f} GB/s "
                  f"({rec['ratio_to_copy_bw']:.2f} of copy)  rel err {err:.1e}", flush=True)
    return write_results(args.json, records, copy_bandwidth_GBps=copy_gbps,
                         timing="CUDA graph of 20 launches, median of 10 replays, per launch")


if __name__ == "__main__":
    sys.exit(main())
