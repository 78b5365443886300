"""`python -m hymba_deploy.bench`: the bench without click (for machines where only torch is installed)."""

from __future__ import annotations

import argparse
import sys

from ..errors import HymbaDeployError
from .bench import DEFAULT_OUT, bench


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hymba_deploy.bench", description=__doc__)
    p.add_argument("--models", default="tiny")
    p.add_argument("--backends", default="torch,onnxruntime")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--onnx-dtype", default="float32")
    p.add_argument("--prefill-lengths", default="128,512,2048")
    p.add_argument("--decode-batches", default="1,8,32")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--paper", action="store_true")
    p.add_argument("--onnx", default=None, help="MODEL=DIR,... exported graphs (default: export on the fly)")
    p.add_argument("--engine", default=None, help="MODEL=DIR,... built engines")
    p.add_argument("--time-budget", type=float, default=600.0)
    p.add_argument("--ort-threads", type=int, default=None)
    p.add_argument("--ort-prefill-lengths", default=None, help="ONNX Runtime's prompt lengths (default: --prefill-lengths)")
    p.add_argument("--ort-decode-batches", default=None, help="ONNX Runtime's batches (default: --decode-batches)")
    p.add_argument("--ort-iters", type=int, default=None, help="ONNX Runtime's timed iterations and decode steps")
    p.add_argument("--plugins", default=None, help="plugin library for the engines (default: the project's)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        bench(models=a.models, backends=a.backends, out_dir=a.out, device=a.device, dtype=a.dtype,
              prefill_lengths=a.prefill_lengths, decode_batches=a.decode_batches, context=a.context,
              warmup=a.warmup, iters=a.iters, decode_steps=a.decode_steps, paper=a.paper,
              onnx_dirs=a.onnx, engine_dirs=a.engine, onnx_dtype=a.onnx_dtype,
              time_budget_s=a.time_budget, seed=a.seed, ort_threads=a.ort_threads,
              ort_prefill_lengths=a.ort_prefill_lengths, ort_decode_batches=a.ort_decode_batches, ort_iters=a.ort_iters,
              plugin_library=a.plugins,
              progress=lambda m: print(m, file=sys.stderr, flush=True))
    except HymbaDeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
