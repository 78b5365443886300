"""WindowedAttention: causal GQA attention with a sliding window and always-visible meta tokens
(hymba-architecture.md §4.2).

Keys are indexed 0..Tk-1 in cache order. Row b's valid keys are the first L_b = kv_lengths[b] (all Tk
when `kv_lengths` is None) and its query i sits at key index L_b - Tq + i (prefill: Tq = L_b = Tk;
decode: Tq = 1 over a cache). Query index q sees key index kv when

    kv ≤ q  and  (window ≤ 0  or  q - kv ≤ window  or  kv < num_meta)

so keys ≥ L_b are never seen. Requires Tq ≤ L_b ≤ Tk (checked). A row of a ragged decode batch passes
its own count of valid cache entries plus its new token (`HybridMambaAttentionDynamicCache.kv_counts` + 1);
the entries after them are padding, whatever their values.

window ≤ 0 means a global (plain causal) layer. A cache that holds the meta tokens followed by a
contiguous run of the latest tokens keeps index distances equal to position distances, so the same
rule serves prefill, decode and chunked prefill.

GQA: query head h reads kv head h // (Hq // Hkv) (upstream `repeat_kv`).

Layouts (time before heads, as the projections produce them):
    q (batch, Tq, Hq, d_qk)   k (batch, Tk, Hkv, d_qk)   v (batch, Tk, Hkv, d_v)
    kv_lengths (batch,) int32, or None (Tk for every row)
Returns (batch, Tq, Hq, d_v) in q.dtype. Softmax and products in fp32.

The model calls the PyTorch custom op `torch.ops.hymba.windowed_attention` (CPU kernel:
`windowed_attention`; a fake kernel gives shapes to the exporter), exported as the ONNX node
`hymba::WindowedAttention`.
"""

from __future__ import annotations

from typing import Optional

import torch

from .precision import compute_dtype


def _check(q, k, v, kv_lengths=None):
    batch, Tq, Hq, d_qk = q.shape
    _, Tk, Hkv, _ = k.shape
    if k.shape[0] != batch or k.shape[3] != d_qk or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"windowed_attention: shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if Hq % Hkv:
        raise ValueError(f"windowed_attention: {Hq} query heads are not a multiple of {Hkv} kv heads")
    if Tq > Tk:
        raise ValueError(f"windowed_attention: {Tq} queries over only {Tk} keys")
    if kv_lengths is not None:
        if kv_lengths.shape != (batch,) or kv_lengths.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"windowed_attention: kv_lengths must be ({batch},) int32, "
                             f"got {tuple(kv_lengths.shape)} {kv_lengths.dtype}")
        if not torch.compiler.is_compiling() and bool(((kv_lengths < Tq) | (kv_lengths > Tk)).any()):
            raise ValueError(f"windowed_attention: kv_lengths {kv_lengths.tolist()} must lie in "
                             f"[Tq={Tq}, Tk={Tk}]")


def window_mask(Tq: int, Tk: int, window: int, num_meta: int, device=None,
                kv_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """True where query i may see key j (rule in the module docstring): (Tq, Tk) bool, or with per-row
    `kv_lengths` (batch,) the per-row form (batch, 1, Tq, Tk), broadcastable over the heads."""
    if kv_lengths is None:
        q_idx = torch.arange(Tk - Tq, Tk, device=device)[:, None]                      # (Tq, 1)
    else:
        first = kv_lengths.to(device=device, dtype=torch.int64) - Tq                   # (batch,)
        q_idx = (first[:, None] + torch.arange(Tq, device=device))[:, None, :, None]   # (batch, 1, Tq, 1)
    kv_idx = torch.arange(Tk, device=device)
    mask = kv_idx <= q_idx
    if window > 0:
        mask &= ((q_idx - kv_idx) <= window) | (kv_idx < num_meta)
    return mask


def masked_attention(q, k, v, mask, scale):
    """Masked softmax attention in fp32 (fp64 for fp64 inputs); mask (Tq, Tk) or broadcastable to (batch, Hq, Tq, Tk)."""
    Hq, Hkv = q.shape[2], k.shape[2]
    acc = compute_dtype(q)
    qf = q.to(acc).transpose(1, 2)                                         # (b, Hq, Tq, d_qk)
    kf = k.to(acc).transpose(1, 2).repeat_interleave(Hq // Hkv, dim=1)     # (b, Hq, Tk, d_qk)
    vf = v.to(acc).transpose(1, 2).repeat_interleave(Hq // Hkv, dim=1)     # (b, Hq, Tk, d_v)
    scores = (qf @ kf.transpose(-1, -2)) * scale                           # (b, Hq, Tq, Tk)
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ vf                               # (b, Hq, Tq, d_v)
    return out.transpose(1, 2).to(q.dtype)                                 # (b, Tq, Hq, d_v)


def windowed_attention_ref(q, k, v, window: int, num_meta: int, scale: float,
                           kv_lengths: torch.Tensor | None = None):
    """The ground truth: the full (Tq, Tk) score matrix with the mask of `window_mask`."""
    _check(q, k, v, kv_lengths)
    mask = window_mask(q.shape[1], k.shape[1], window, num_meta, q.device, kv_lengths)
    return masked_attention(q, k, v, mask, scale)


def windowed_attention(q, k, v, window: int, num_meta: int, scale: float, kv_lengths: torch.Tensor | None = None):
    """The CPU implementation the model runs; PyTorch's fused SDPA with the same boolean mask."""
    _check(q, k, v, kv_lengths)
    Hq, Hkv = q.shape[2], k.shape[2]
    mask = window_mask(q.shape[1], k.shape[1], window, num_meta, q.device, kv_lengths)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(1, 2),
        k.float().transpose(1, 2).repeat_interleave(Hq // Hkv, dim=1),
        v.float().transpose(1, 2).repeat_interleave(Hq // Hkv, dim=1),
        attn_mask=mask, scale=scale,
    )                                                                       # (b, Hq, Tq, d_v)
    return out.transpose(1, 2).to(q.dtype)


@torch.library.custom_op("hymba::windowed_attention", mutates_args=())
def _windowed_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, num_meta: int,
                           scale: float, kv_lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`torch.ops.hymba.windowed_attention`: one graph node for the exporter, `windowed_attention` on CPU.
    The output is contiguous, as the fake kernel below declares (torch.compile checks the strides)."""
    return windowed_attention(q, k, v, window, num_meta, scale, kv_lengths).contiguous()


@_windowed_attention_op.register_fake
def _(q, k, v, window, num_meta, scale, kv_lengths=None):
    return q.new_empty((*q.shape[:3], v.shape[3]))
