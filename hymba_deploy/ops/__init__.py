"""The three Hymba operators, each as `<op>` (what the model runs) beside `<op>_ref` (the ground truth).

Signatures and tensor layouts are shared with the ONNX nodes (domain `hymba`) and the CUDA kernels in
`plugins/`; each module's docstring is the contract.
"""

from .causal_conv1d import causal_conv1d, causal_conv1d_ref
from .selective_scan import SOFTPLUS_THRESHOLD, selective_scan, selective_scan_ref
from .windowed_attention import masked_attention, window_mask, windowed_attention, windowed_attention_ref

__all__ = [
    "SOFTPLUS_THRESHOLD",
    "causal_conv1d",
    "causal_conv1d_ref",
    "selective_scan",
    "masked_attention",
    "selective_scan_ref",
    "window_mask",
    "windowed_attention",
    "windowed_attention_ref",
]
