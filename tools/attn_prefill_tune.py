"""Times variants of the tensor-core WindowedAttention prefill kernel (keys per tile × cp.async stages).

Each variant is plugins/tests/attn_prefill_tune.cu (the kernel at Hymba's head dims, bf16) built with
-DHYMBA_WAP_BN / -DHYMBA_WAP_STAGES into its own small library, checked against `windowed_attention_ref`
(norm-relative error <= 1e-2) and timed as a CUDA graph of 20 launches at Hymba prefill shapes.

    python3 plugins/tests/attn_prefill_tune.py --variants 64x2,64x3,32x3 --json $OUT/attn_prefill_tune.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import datetime as _dt
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import attn_tune as AT  # noqa: E402  (nvcc, graph timing)
import gpu_check as GC  # noqa: E402  (the reference op, the matmul rate)

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
                                                str(REPO / "plugins" / "tests" / "attn_prefill_tune.cu")])
            libs[(bn, st)] = lib
        for j in jobs.values():
            j.result()
    return libs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="64x2,64x3,32x3", help="KEYSxSTAGES, comma separated")
    ap.add_argument("--arch", default="90")
    ap.add_argument("--build-dir", default=str(REPO / "build" / "attn-prefill-tune"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--extra-lib", action="append", default=[], metavar="LABEL=PATH",
                    help="also time a prebuilt library exporting wap_tune_launch (e.g. an earlier kernel version)")
    args = ap.parse_args(argv)
    variants = [tuple(int(x) for x in v.split("x")) for v in args.variants.split(",")] if args.variants else []
    libs = build(Path(args.build_dir), variants, args.arch)
    for spec in args.extra_lib:
        label, path = spec.split("=", 1)
        libs[(label, "-")] = Path(path)
    peak = GC.matmul_tflops()
    print(f"bf16 matmul 8192^3: {peak:.0f} TFLOP/s", flush=True)

    records = []
    gen = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
    Hq, Hkv, Dqk, Dv, scale = 25, 5, 64, 128, 0.125
    for name, B, Tq, Tk, window, meta in CASES:
        q = torch.randn(B, Tq, Hq, Dqk, device="cuda", generator=gen).bfloat16()
        k = torch.randn(B, Tk, Hkv, Dqk, device="cuda", generator=gen).bfloat16()
        v = torch.randn(B, Tk, Hkv, Dv, device="cuda", generator=gen).bfloat16()
        ref = GC.WA.windowed_attention_ref(q, k, v, window=window, num_meta=meta, scale=scale)
        visible = int(GC.WA.window_mask(Tq, Tk, window, meta, "cuda").sum().item())
        flops = 2 * B * Hq * visible * (Dqk + Dv)
        for (bn, st), lib in libs.items():
            fn = ctypes.CDLL(str(lib)).wap_tune_launch
            fn.argtypes = [ctypes.c_int] * 7 + [ctypes.c_float] + [ctypes.c_void_p] * 5
            out = torch.full((B, Tq, Hq, Dv), float("nan"), device="cuda", dtype=torch.bfloat16)

            def call():
                rc = fn(B, Tq, Tk, Hq, Hkv, window, meta, scale, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                        out.data_ptr(), torch.cuda.current_stream().cuda_stream)
                if rc != 0:
                    raise RuntimeError(f"wap_tune_launch returned {rc}")
            call()
            torch.cuda.synchronize()
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            ms = AT.graph_ms(call)
            tf = flops / (ms * 1e-3) / 1e12
            rec = dict(case=name, keys_per_tile=bn, stages=st, ms=ms, TFLOPs=tf, ratio_to_mma_peak=tf / peak,
                       rel_err=err, passed=err <= 1e-2)
            records.append(rec)
            print(f"{name:<22} keys {bn!s:>3} stages {st}: {ms * 1e3:8.1f} us  {tf:6.1f} TFLOP/s "
                  f"({tf / peak:.2f} of matmul)  rel err {err:.1e}", flush=True)
        del q, k, v, ref
        torch.cuda.empty_cache()
    doc = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, cuda=torch.version.cuda,
               date_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), matmul_TFLOPs=peak,
               timing="CUDA graph of 20 launches, median of 10 replays, per launch; TFLOP/s over unmasked products",
               results=records)
    out = args.json or os.path.join(os.environ.get("OUT", str(REPO / "bench" / "results")), "attn_prefill_tune.json")
    Path(out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    return 0 if all(r["passed"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
