"""What the GPU tests share: the architectures the plugin library is built for, fixed seeds, and the check of
outputs against a float64 ground truth under hymba_deploy.parity.tolerances's rule."""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

import torch

from hymba_deploy.parity.tolerances import dtype_name, kernel_bound, rel_err

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins" / "tests"))

# CMAKE_CUDA_ARCHITECTURES values, one library each (comma-separated): `90` the sm90 build, `80-virtual` PTX only,
# JIT-compiled by the driver (the A100 code path on a Hopper GPU). $HYMBA_PLUGIN_LIB: one prebuilt library instead.
ARCHS = ["prebuilt"] if os.environ.get("HYMBA_PLUGIN_LIB") else \
    [a for a in os.environ.get("HYMBA_GPU_ARCHS", "90").split(",") if a]


def seed_of(*parts) -> int:
    """A fixed seed per case (crc32 of its name parts): a failure replays with the same inputs."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def generator(*parts) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed_of(*parts))


def ground_truth(fn, inputs: dict, **kw) -> tuple:
    """(float64 outputs, PyTorch's outputs in the inputs' dtypes) of a reference op: `fn` on float64 copies of
    the inputs (the references compute in float64 then), and `fn` on the inputs themselves."""
    wide = {k: (v.double() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    return _tuple(fn(**wide, **kw)), _tuple(fn(**inputs, **kw))


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def check(record, meta: dict, outs: dict, ref64: dict, torch_out: dict) -> None:
    """Each output against its float64 truth: error <= factor x PyTorch's own error + floor, by the output's
    dtype (KERNEL_TOLERANCES). Records every number (NaN or Inf counts as an infinite error), then asserts."""
    rows = {}
    for name, out in outs.items():
        torch_err = rel_err(torch_out[name], ref64[name])
        err = rel_err(out, ref64[name])
        rows[name] = {"rel_err": err, "torch_rel_err": torch_err, "bound": kernel_bound(out.dtype, torch_err),
                      "dtype": dtype_name(out.dtype)}
    passed = all(r["rel_err"] <= r["bound"] for r in rows.values())
    record(dict(meta, outputs=rows, passed=passed))
    assert passed, "; ".join(f"{n}: {r['rel_err']:.3e} > bound {r['bound']:.3e} (PyTorch's own "
                             f"{r['torch_rel_err']:.3e} in {r['dtype']})" for n, r in rows.items()
                             if not r["rel_err"] <= r["bound"]) + f" [seed {meta.get('seed')}]"
