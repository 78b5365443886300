"""onnxscript translations of the `torch.ops.hymba.*` custom ops: one `hymba` node each.

Every node carries the agreed TensorRT plugin interface: all inputs present (zeros where the model
has no state yet), typed attributes (the plugin's fields, `layout_version` included), and
`plugin_version` / `plugin_namespace`. Node I/O order and attributes are the contract in
`exporters/README.md`; `onnx_ops.py` declares the same to ONNX.
"""

from __future__ import annotations

import torch
from onnx import TensorProto
from onnxscript import FLOAT
from onnxscript import opset18 as op
from onnxscript.values import Opset

from hymba_deploy.contract import (DOMAIN, LAYOUT_VERSION, OP_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION,
                                   SOFTPLUS_THRESHOLD)

from .onnx_ops import register_schemas

register_schemas()                  # onnxscript resolves `hymba.<Op>` through the registered schema
hymba = Opset(DOMAIN, OP_VERSION)
ACTIVATION_CODES = {None: 0, "silu": 1}   # CausalConv1d `activation` field


def _zeros_like_shape(*dims):
    """fp32 zeros of the shape concat(dims), each a 1-D int64 shape piece."""
    return op.ConstantOfShape(op.Concat(*dims, axis=0))


def selective_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None,
                   softplus_threshold: float = SOFTPLUS_THRESHOLD) -> tuple[FLOAT, FLOAT]:
    batch = op.Shape(x, start=0, end=1)
    d_inner = op.Shape(A, start=0, end=1)
    if D is None:                                   # no skip: D = 0
        D = _zeros_like_shape(d_inner)
    if z is None:
        raise NotImplementedError("hymba::SelectiveScan needs the gate z (the plugin requires it)")
    if dt_bias is None:
        dt_bias = _zeros_like_shape(d_inner)
    if initial_state is None:                       # prefill: h_{-1} = 0, fp32 (B, D, N)
        initial_state = _zeros_like_shape(batch, op.Shape(A))
    y, last_state = hymba.SelectiveScan(
        x, dt, A, B, C, D, z, dt_bias, initial_state,
        softplus_threshold=float(softplus_threshold),
        layout_version=LAYOUT_VERSION, plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE, _outputs=2)
    return y, last_state


def causal_conv1d(x, weight, bias=None, conv_state=None, activation: str | None = "silu") -> tuple[FLOAT, FLOAT]:
    dim = op.Shape(weight, start=0, end=1)
    if bias is None:
        bias = op.CastLike(_zeros_like_shape(dim), x)
    if conv_state is None:                          # prefill: zero history (B, D, K) in x's type
        conv_state = op.CastLike(_zeros_like_shape(op.Shape(x, start=0, end=1), op.Shape(weight)), x)
    y, new_state = hymba.CausalConv1d(
        x, weight, bias, conv_state, activation=ACTIVATION_CODES[activation],
        layout_version=LAYOUT_VERSION, plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE, _outputs=2)
    return y, new_state


def windowed_attention(q, k, v, window: int, num_meta: int, scale: float, kv_lengths=None):
    """`kv_lengths` (B,): the valid keys per row; None (the model's uniform calls) = Tk for every row."""
    if kv_lengths is None:
        kv_lengths = op.Expand(op.Cast(op.Shape(k, start=1, end=2), to=TensorProto.INT32), op.Shape(q, start=0, end=1))
    else:
        kv_lengths = op.Cast(kv_lengths, to=TensorProto.INT32)
    return hymba.WindowedAttention(
        q, k, v, kv_lengths, window=int(window), num_meta=int(num_meta), scale=float(scale),
        layout_version=LAYOUT_VERSION, plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)


def translation_table() -> dict:
    import hymba_deploy.ops  # noqa: F401  (registers torch.ops.hymba.*)
    return {
        torch.ops.hymba.selective_scan.default: selective_scan,
        torch.ops.hymba.causal_conv1d.default: causal_conv1d,
        torch.ops.hymba.windowed_attention.default: windowed_attention,
    }
