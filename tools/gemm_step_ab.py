"""Choose the Triton decode tilings by the decode step itself, not by the kernels alone.

gemm_bench times each kernel back to back; inside a step the same kernels share the GPU with attention on
the side stream, and the fastest tiling alone can be the slowest there (H200: x_proj split 25 ways won alone
and cost 0.9 ms per step). This runs the cuda runtime's decode measurement (`hymba_deploy.bench.serving.decode`;
hymba-1.5b shape, bf16, 8k context)
with each candidate set of tilings, interleaved over `--rounds`, and writes the fastest at the largest batch.

    PYTHONPATH=. python3 tools/gemm_step_ab.py --candidates best.json --out ab.json --best-out chosen.json

Candidates: cuBLAS, the engine's defaults, defaults with out_proj/down_proj back on cuBLAS, the batch-128
tilings at every batch (`gemv_max_rows` 0: the small-batch kernels before `TRITON_GEMVS`), the decode conv as
its own kernel (`conv_in_gemv` off), each `--candidates`
file (gemm_bench --best-out) and each `--gemv-candidates` file (gemm_bench --gemv --best-out). Each is merged
over the defaults. The winner is the fastest at `--select-batch` (default: the largest batch).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from hymba_deploy.fileio import atomic_write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", nargs="*", default=[], help="tiling files (gemm_bench --best-out)")
    ap.add_argument("--gemv-candidates", nargs="*", default=[], help="small-batch tiling files (gemm_bench --gemv)")
    ap.add_argument("--conv-kernel-too", action="store_true",
                    help="also each --gemv-candidates file with the decode conv as its own kernel (conv_in_gemv off)")
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 8])
    ap.add_argument("--only", nargs="*", default=None, help="run only these candidates (and cublas)")
    ap.add_argument("--select-batch", type=int, default=None, help="choose the winner here (default: the largest)")
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--best-out", default=None, help="write the winner's full tiling set here (JSON)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gemm_step_ab needs a CUDA GPU", file=sys.stderr)
        return 2
    from hymba_deploy.bench.serving import cuda_model, decode, weight_bytes
    from hymba_deploy.bench.timing import copy_bandwidth
    from hymba_deploy.serving import ServingConfig, ServingRuntime
    from hymba_deploy.serving.runtime import TRITON_GEMMS, TRITON_GEMVS
    from hymba_deploy.serving.gemm import load_configs

    model = cuda_model("hymba-1.5b", torch.bfloat16)
    bw, wbytes = copy_bandwidth(), weight_bytes(model)
    candidates = {"cublas": dict(decode_gemms="cublas"), "defaults": {},
                  "defaults_mlp_cublas": dict(gemm_configs={"out_proj": None, "down_proj": None}),
                  "batch128_tilings_everywhere": dict(gemv_max_rows=0), "conv_kernel": dict(conv_in_gemv=False)}
    for path in args.candidates:
        candidates[path.rsplit("/", 1)[-1]] = dict(gemm_configs=load_configs(path))
    for path in args.gemv_candidates:
        candidates["gemv:" + path.rsplit("/", 1)[-1]] = dict(gemv_configs=load_configs(path))
        if args.conv_kernel_too:
            candidates["conv_kernel+gemv:" + path.rsplit("/", 1)[-1]] = dict(gemv_configs=load_configs(path),
                                                                             conv_in_gemv=False)
    if args.only:
        candidates = {n: kw for n, kw in candidates.items() if n in args.only or n == "cublas"}
    ms: dict = {name: {b: [] for b in args.batches} for name in candidates}
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda_version": torch.version.cuda,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": "hymba-1.5b", "dtype": "bfloat16",
           "context_tokens": args.context, "copy_bandwidth_GBps": bw / 1e9, "rounds": args.rounds,
           "candidates": {}, "ms_per_step": ms}
    for r in range(args.rounds):
        for name, kw in candidates.items():
            runtime = ServingRuntime(model, ServingConfig(max_context=args.context + args.steps + 16,
                                                          buckets=args.batches, **kw))
            res["candidates"][name] = {"decode_gemms": runtime.decode_gemms,
                                       "configs": {k: c.as_dict() for k, c in runtime.gemm_configs.items()},
                                       "gemv_max_rows": runtime.config.gemv_max_rows,
                                       "gemv_configs": {k: c.as_dict() for k, c in runtime.gemv_configs.items()}}
            for b in args.batches:
                out = decode(runtime, b, args.context, args.steps, 0, bw, wbytes)
                ms[name][b].append(out["ms_per_step"])
                print(f"round {r} {name:28s} batch {b:4d} {out['ms_per_step']:.3f} ms "
                      f"({100 * out['fraction_of_floor']:.1f}% of floor)", flush=True)
            del runtime
            torch.cuda.empty_cache()
    top = args.select_batch or max(args.batches)
    res["median_ms"] = {name: {b: statistics.median(v) for b, v in per.items()} for name, per in ms.items()}
    triton = [n for n in candidates if n != "cublas"]
    best = min(triton, key=lambda n: res["median_ms"][n][top])
    res["best"] = best
    print(f"best at batch {top}: {best} {res['median_ms'][best][top]:.3f} ms "
          f"(cublas {res['median_ms']['cublas'][top]:.3f} ms)", flush=True)
    tilings = {**(TRITON_GEMVS if top <= ServingConfig(max_context=1).gemv_max_rows else TRITON_GEMMS),
               **candidates[best].get("gemm_configs", {}), **candidates[best].get("gemv_configs", {})}
    for path, data in ((args.out, res), (args.best_out, {k: c and c.as_dict() for k, c in tilings.items()})):
        if path:
            atomic_write_json(path, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
