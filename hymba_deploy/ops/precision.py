"""The arithmetic dtype of the operators' PyTorch implementations."""

from __future__ import annotations

import torch


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for float32/float16/bfloat16 inputs (the contract the kernels match); float64 for float64
    inputs, so `<op>_ref` on float64 copies of the inputs is the high-precision ground truth of the GPU tests."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
