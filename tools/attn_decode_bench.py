"""Times WindowedAttention decode (Hymba-1.5B shapes: Hq 25, Hkv 5, Dqk 64, Dv 128, bf16) at batch 1..128 for
the SWA layers (Tk 1152: window 1024 + 128 meta, every key visible) and the global layers (Tk 8320), in one or
more builds of the plugin library, under chosen `attention` kernel choices, against the byte floor at the copy
bandwidth measured in the same run.

Each (library, choice, batch, Tk) is one CUDA graph of back-to-back launches that cycles over enough distinct
q/k/v/out sets to exceed the L2 several times (each layer of a decode step reads its own cache), with per-row
key counts passed as the serving runtime passes them (kv_lengths (B,) int32). Before timing, the output of each
configuration at batch <= 8 is checked against `windowed_attention_ref` in float64 (the GPU tests' bound).

    python3 tools/attn_decode_bench.py --lib new90=build/plugins-gpu-90/libhymba_plugins.so:auto,split \\
        --lib old90=build/old90/libhymba_plugins.so:auto --repeat 2 --json $OUT/attn_decode.json

(build/old90: `CUDA_ARCHS=90 bash <copy of an earlier plugins/>/build.sh build/old90`, the sources to compare
against; `split` is the forced CUDA-core split-KV kernel.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugins" / "tests"))

import harness as H  # noqa: E402
import kernels as KN  # noqa: E402  (inputs, copy bandwidth, graph timing, run info)

from hymba_deploy.ops import windowed_attention_ref  # noqa: E402
from hymba_deploy.parity.tolerances import kernel_bound, rel_err  # noqa: E402

HQ, HKV, DQK, DV, SCALE, META = 25, 5, 64, 128, 0.125, 128
LAYERS = {1152: 1024, 8320: 0}  # Tk -> window (0: global)
L2_BYTES = 50 * 2**20


def parse_lib(spec: str):
    """'label=path:choice,choice' -> (label, path, [choices])."""
    label, rest = spec.split("=", 1)
    path, _, choices = rest.rpartition(":")
    return label, Path(path), choices.split(",")


def input_sets(batch, tk, n_sets, dtype=torch.bfloat16):
    sets = []
    for _ in range(n_sets):
        inp = KN.attn_inputs(batch, 1, tk, HQ, HKV, DQK, DV, dtype)
        inp["out"] = torch.empty(batch, 1, HQ, DV, device="cuda", dtype=dtype)
        sets.append(inp)
    return sets


def check(K, inp, window, lens):
    """Norm-relative error of one call against float64, and its bound (PyTorch's own bf16 error x rule)."""
    poisoned = torch.full_like(inp["out"], float("nan"))
    out = K.windowed_attention(inp["q"], inp["k"], inp["v"], window, META, SCALE, out=poisoned, kv_lengths=lens)
    torch.cuda.synchronize()
    args = dict(window=window, num_meta=META, scale=SCALE)
    ref64 = windowed_attention_ref(inp["q"].double(), inp["k"].double(), inp["v"].double(), **args)
    ref_bf16 = windowed_attention_ref(inp["q"], inp["k"], inp["v"], **args)
    err = rel_err(out, ref64)
    return err, kernel_bound(out.dtype, rel_err(ref_bf16, ref64))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", action="append", required=True, help="label=path/libhymba_plugins.so:choice,choice")
    ap.add_argument("--batches", default="1,2,8,32,128")
    ap.add_argument("--tks", default="1152,8320")
    ap.add_argument("--split-max-batch", type=int, default=8, help="time the forced `split` choice up to this batch")
    ap.add_argument("--repeat", type=int, default=1, help="time every configuration this many times, libraries "
                    "alternating (the spread between repeats is the noise)")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("attn_decode_bench: no CUDA GPU, nothing timed")
        return 2
    libs = [parse_lib(s) for s in args.lib]
    info = KN.run_info(libs[0][1])
    copy = KN.copy_bandwidth()
    tiny = torch.zeros(1, device="cuda")
    empty_us = KN.graph_ms(lambda: tiny.add_(1.0), launches=100) * 1e3
    print(json.dumps(info), f"\ncopy bandwidth (read+write) {copy:.0f} GB/s; one tiny kernel in a graph "
          f"{empty_us:.2f} us", flush=True)
    shims = {label: KN.Kernels(H.KernelShim(path)) for label, path, _ in libs}
    rows, failed = [], []
    for tk, batch in itertools.product(map(int, args.tks.split(",")), map(int, args.batches.split(","))):
        window = LAYERS[tk]
        one = 2 * batch * (HQ * DQK + tk * HKV * (DQK + DV) + HQ * DV)  # q, k, v read once, out written (bf16)
        n_sets = max(2, math.ceil(4 * L2_BYTES / one))
        sets = input_sets(batch, tk, n_sets)
        lens = torch.full((batch,), tk, dtype=torch.int32, device="cuda")
        floor_us = one / (copy * 1e9) * 1e6
        for rep, (label, _, choices) in itertools.product(range(args.repeat), libs):
            K = shims[label]
            for choice in choices:
                if choice == "split" and batch > args.split_max_batch:
                    continue
                with K.shim.forced("attention", choice):
                    row = dict(lib=label, choice=choice, repeat=rep, batch=batch, Tk=tk, window=window, bytes=one,
                               floor_us=floor_us, input_sets=n_sets)
                    if batch <= 8 and rep == 0:
                        row["rel_err"], row["bound"] = check(K, sets[0], window, lens)
                        if not row["rel_err"] <= row["bound"]:
                            failed.append(row)
                    cyc = itertools.cycle(sets)

                    def call():
                        s = next(cyc)
                        K.windowed_attention(s["q"], s["k"], s["v"], window, META, SCALE, out=s["out"], kv_lengths=lens)
                    us = KN.graph_ms(call, launches=max(20, n_sets), reps=10) * 1e3
                row.update(us=us, GBps=one / (us * 1e-6) / 1e9, of_copy=floor_us / us)
                rows.append(row)
                print(f"Tk {tk:5d} B {batch:4d} {label:>7s}[{choice:5s}] {us:9.2f} us  floor {floor_us:7.2f} us "
                      f"({row['of_copy']:.2f} of copy)" + (f"  err {row['rel_err']:.2e} <= {row['bound']:.2e}"
                                                         if "rel_err" in row else ""), flush=True)
        del sets
        torch.cuda.empty_cache()
    out = dict(info, copy_bandwidth_GBps=copy, tiny_kernel_graph_us=empty_us,
               libraries={label: str(path) for label, path, _ in libs},
               shapes=dict(Hq=HQ, Hkv=HKV, Dqk=DQK, Dv=DV, num_meta=META, dtype="bfloat16"), timing=rows,
               checks_failed=len(failed))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}; checks failed: {len(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
