"""One SelectiveScan prefill launch per `scan_prefill` kernel choice, for a profiler (Nsight Compute) to look at.

    ncu --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python3 tools/scan_profile.py --batch 1 --seqlen 8320 --paths state

Loads the plugin library from $HYMBA_PLUGIN_LIB (see harness.find_libraries); bf16 inputs, fp32 state.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "tests"))
import harness as H  # noqa: E402
import kernels as KN  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seqlen", type=int, default=8320)
    ap.add_argument("--dim", type=int, default=3200)
    ap.add_argument("--paths", default="sequential,state")
    args = ap.parse_args(argv)
    lib, _ = H.find_libraries(build_if_missing=False)
    K = KN.Kernels(H.KernelShim(lib))
    inp = KN.scan_inputs(args.batch, args.seqlen, args.dim, 16, torch.bfloat16)
    for path in args.paths.split(","):
        with K.shim.forced("scan_prefill", path):
            K.selective_scan(**inp)
        torch.cuda.synchronize()
        print(f"ran {path}", flush=True)


if __name__ == "__main__":
    main()
