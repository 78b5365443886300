"""CausalConv1d: Hymba's depthwise causal convolution with a carried state (hymba-architecture.md §3.2).

    y_t[d] = act( bias[d] + Σ_{k=0..K-1} weight[d,k] · x_{t-K+1+k}[d] ),   act = SiLU or identity

where x_{<0} comes from `conv_state` (zeros when absent). `weight[d, K-1]` multiplies the current token.

The state follows the upstream cache (`HybridMambaAttentionDynamicCache.conv_states`): the last K
**pre-conv** inputs, oldest first, zero-padded on the left. Only its last K-1 entries feed the next
step; entry 0 is kept for layout compatibility with the public cache (K = 4 entries, not 3).

Layouts (channel-last, like the other Hymba ops):
    x          (batch, T, dim)  model dtype
    weight     (dim, K)         the checkpoint's conv1d.weight [dim, 1, K] viewed as (dim, K)
    bias       (dim,) or None
    conv_state (batch, dim, K) or None (zeros)
Returns:
    y              (batch, T, dim) x.dtype, after the activation
    new_conv_state (batch, dim, K) in conv_state's dtype (x.dtype when absent): the last K inputs of
                   concat(conv_state, x) along time
Math is fp32. Prefill (conv_state None, any T) and decode (T = 1) are the same op.

The model calls the PyTorch custom op `torch.ops.hymba.causal_conv1d` (CPU kernel: `causal_conv1d`;
a fake kernel gives shapes to the exporter), exported as the ONNX node `hymba::CausalConv1d`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .precision import compute_dtype

ACTIVATIONS = ("silu", None)


def _check(x, weight, bias, conv_state, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be 'silu' or None, got {activation!r}")
    batch, _, dim = x.shape
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"causal_conv1d: weight must be (dim={dim}, K), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (dim,):
        raise ValueError(f"causal_conv1d: bias must be ({dim},), got {tuple(bias.shape)}")
    K = weight.shape[1]
    if conv_state is not None and conv_state.shape != (batch, dim, K):
        raise ValueError(
            f"causal_conv1d: conv_state must be {(batch, dim, K)}, got {tuple(conv_state.shape)}"
        )
    return K


def _history(x, conv_state, K):
    """concat(state, x) along time, in compute_dtype(x), channel-first: (batch, dim, K + T)."""
    xt = x.to(compute_dtype(x)).transpose(1, 2)                      # (batch, dim, T)
    if conv_state is None:
        return F.pad(xt, (K, 0))
    return torch.cat([conv_state.to(xt.dtype), xt], dim=2)


def causal_conv1d_ref(x, weight, bias=None, conv_state=None, activation="silu"):
    """The ground truth: an explicit sum over the K taps for every output step."""
    K = _check(x, weight, bias, conv_state, activation)
    hist = _history(x, conv_state, K)                                # (batch, dim, K + T)
    T = x.shape[1]
    w = weight.to(hist.dtype)
    y = torch.zeros(x.shape[0], x.shape[2], T, dtype=hist.dtype, device=x.device)
    for k in range(K):  # tap k reads input t-K+1+k, i.e. hist index t+1+k
        y += w[:, k, None] * hist[:, :, 1 + k: 1 + k + T]
    if bias is not None:
        y += bias.to(hist.dtype)[:, None]
    if activation == "silu":
        y = F.silu(y)
    new_state = hist[:, :, -K:].to(conv_state.dtype if conv_state is not None else x.dtype)
    return y.transpose(1, 2).to(x.dtype), new_state


def causal_conv1d(x, weight, bias=None, conv_state=None, activation="silu"):
    """Same result as `causal_conv1d_ref`, through one grouped `F.conv1d`."""
    K = _check(x, weight, bias, conv_state, activation)
    hist = _history(x, conv_state, K)                                # (batch, dim, K + T)
    dim = x.shape[2]
    y = F.conv1d(hist[:, :, 1:], weight.float()[:, None, :],
                 None if bias is None else bias.float(), groups=dim)  # (batch, dim, T)
    if activation == "silu":
        y = F.silu(y)
    new_state = hist[:, :, -K:].to(conv_state.dtype if conv_state is not None else x.dtype)
    return y.transpose(1, 2).to(x.dtype), new_state


@torch.library.custom_op("hymba::causal_conv1d", mutates_args=())
def _causal_conv1d_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      conv_state: Optional[torch.Tensor] = None,
                      activation: Optional[str] = "silu") -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.ops.hymba.causal_conv1d`: one graph node for the exporter, `causal_conv1d` on CPU.
    Outputs are contiguous, as the fake kernel below declares (torch.compile checks the strides)."""
    y, new_state = causal_conv1d(x, weight, bias, conv_state, activation)
    return y.contiguous(), new_state.contiguous()


@_causal_conv1d_op.register_fake
def _(x, weight, bias=None, conv_state=None, activation="silu"):
    batch, _, dim = x.shape
    state_dtype = conv_state.dtype if conv_state is not None else x.dtype
    return x.new_empty(x.shape), x.new_empty((batch, dim, weight.shape[1]), dtype=state_dtype)
