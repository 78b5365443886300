"""Times variants of the tensor-core WindowedAttention prefill kernel (keys per tile × cp.async stages).

Each variant is tools/attn_prefill_tune.cu (the kernel at Hymba's head dims, bf16) built with
-DHYMBA_WAP_BN / -DHYMBA_WAP_STAGES into its own small library, checked against `windowed_attention_ref` in
float64 (hymba_deploy.parity.tolerances's bound) and timed as a CUDA graph of 20 launches at Hymba prefill shapes.

    python3 tools/attn_prefill_tune.py --variants 64x2,64x3,32x3 --json $OUT/attn_prefill_tune.json
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins" / "tests"))
sys.path.insert(0, str(REPO / "tools"))

import attn_tune as AT  # noqa: E402  (nvcc)
import kernels as KN  # noqa: E402  (graph timing, the matmul rate)

from hymba_deploy.ops import window_mask  # noqa: E402

CASES = [  # name, B, Tq, Tk, window, meta (Hq 25, Hkv 5, Dqk 64, Dv 128: hymba-1.5b)
    ("prefill_swa_T8320", 1, 8320, 8320, 1024, 128),
    ("prefill_global_T8320", 1, 8320, 8320, 0, 128),
]


def build(build_dir: Path, variants, arch: str) -> dict:
    build_dir.mkdir(parents=True, exist_ok=True)
    libs = {}
    with cf.ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as ex:
        jobs = {}
        for bn, st in variants:
            lib = build_dir / f"libwap_bn{bn}s{st}.so"
            jobs[(bn, st)] = ex.submit(AT.nvcc, [f"-arch=sm_{arch}", "-I", str(AT.PLUG), f"-DHYMBA_WAP_BN={bn}",
                                                f"-DHYMBA_WAP_STAGES={st}", "-shared", "-o", str(lib),
                                                str(REPO / "tools" / "attn_prefill_tune.cu")])
            libs[(bn, st)] = lib
        for j in jobs.values():
            j.result()
    return libs


def main(argv=None):
    args, variants = AT.parse_args(argv, __doc__, "64x2,64x3,32x3", "KEYSxSTAGES", "attn-prefill-tune")
    libs = build(Path(args.build_dir), variants, args.arch)
    for spec in args.extra_lib:
        label, path = spec.split("=", 1)
        libs[(label, "-")] = Path(path)
    peak = KN.matmul_tflops()
    print(f"bf16 matmul 8192^3: {peak:.0f} TFLOP/s", flush=True)

    records = []
    gen = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
    Hq, Hkv, Dqk, Dv, scale = 25, 5, 64, 128, 0.125
    for name, B, Tq, Tk, window, meta in CASES:
        q, k, v = KN.attn_inputs(B, Tq, Tk, Hq, Hkv, Dqk, Dv, torch.bfloat16, gen).values()
        flops = 2 * B * Hq * int(window_mask(Tq, Tk, window, meta, "cuda").sum().item()) * (Dqk + Dv)
        for (bn, st), lib in libs.items():
            fn = ctypes.CDLL(str(lib)).wap_tune_launch
            fn.argtypes = [ctypes.c_int] * 7 + [ctypes.c_float] + [ctypes.c_void_p] * 5
            out = torch.full((B, Tq, Hq, Dv), float("nan"), device="cuda", dtype=torch.bfloat16)

            def call():
                rc = fn(B, Tq, Tk, Hq, Hkv, window, meta, scale, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                        out.data_ptr(), torch.cuda.current_stream().cuda_stream)
                if rc != 0:
                    raise RuntimeError(f"wap_tune_launch returned {rc}")
            err, bound, ms = AT.measure(call, out, q, k, v, window, meta, scale)
            tf = flops / (ms * 1e-3) / 1e12
            records.append(dict(case=name, keys_per_tile=bn, stages=st, ms=ms, TFLOPs=tf, ratio_to_mma_peak=tf / peak,
                                rel_err=err, bound=bound, passed=err <= bound))
            print(f"{name:<22} keys {bn!s:>3} stages {st}: {ms * 1e3:8.1f} us  {tf:6.1f} TFLOP/s "
                  f"({tf / peak:.2f} of matmul)  rel err {err:.1e}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    return AT.write_results(args.json, records, matmul_TFLOPs=peak, timing="CUDA graph of 20 launches, median of "
                            "10 replays, per launch; TFLOP/s over unmasked products")


if __name__ == "__main__":
    sys.exit(main())
