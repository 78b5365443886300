"""Every tolerance of the project, with the one norm-relative error they bound (`rel_err`, ||out - ref|| / ||ref||).

    MODEL_TOLERANCES    whole-model parity of `check` (rel_l2 and cosine per dtype; parity/compare.py applies them)
    OP_BOUNDS           the house bound of one op or model against its reference on the CPU (tests/)
    KERNEL_TOLERANCES   the GPU tests' rule for a kernel against a float64 ground truth (tests/gpu), below

The kernel rule (flash-attention's test rule, with norm-relative errors): against a float64 ground truth (the `<op>_ref`
on float64 copies of the inputs, hymba_deploy/ops), a kernel's error may be at most `factor` times PyTorch's own
error in the same dtype (the same `<op>_ref` on the dtype's inputs, or the dtype's rounding of the ground truth)
plus an absolute `floor`:

    rel_err(kernel, ref64) <= factor * rel_err(torch_in_dtype, ref64) + floor

so a bf16 kernel is held to bf16's own rounding, not to a fixed 1e-2, and a long fp32 scan, whose PyTorch
reference itself drifts from float64, gets the room PyTorch needs. The fp32 floor keeps the house bound 1e-5;
the half-precision floors sit near each dtype's unit roundoff (fp16 4.9e-4, bf16 3.9e-3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


# Whole-model bounds after prefill and after each decode step. fp32 is the house bound (1e-5; ONNX
# Runtime measures ~5e-7 on tiny and ~4e-6 on hymba-1.5b); fp16/bf16 follow the rounding of one cast
# per layer, as OP_BOUNDS' 1e-2 (house rule 8) does per op.
MODEL_TOLERANCES = {
    "float32": {"rel_l2": 1e-5, "cosine": 0.99999},
    "float16": {"rel_l2": 2e-2, "cosine": 0.999},
    "bfloat16": {"rel_l2": 5e-2, "cosine": 0.998},
}

# One op (or the model) against its reference in the same dtype, CPU tests (house rule 8).
OP_BOUNDS = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}


@dataclass(frozen=True)
class KernelTolerance:
    factor: float   # times PyTorch's own error in the dtype
    floor: float    # absolute slack, norm-relative

    def bound(self, torch_err: float) -> float:
        return self.factor * torch_err + self.floor


KERNEL_TOLERANCES = {
    "float32": KernelTolerance(factor=2.0, floor=1e-5),
    "float16": KernelTolerance(factor=2.0, floor=5e-4),
    "bfloat16": KernelTolerance(factor=2.0, floor=2e-3),
}


def dtype_name(dtype) -> str:
    """torch.bfloat16 or "bfloat16" -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN or Inf anywhere gives inf, so it never passes."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all() or not torch.isfinite(ref).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def kernel_bound(dtype, torch_err: float) -> float:
    """The largest error the rule allows a kernel in `dtype` whose PyTorch counterpart errs by torch_err."""
    return KERNEL_TOLERANCES[dtype_name(dtype)].bound(torch_err)
