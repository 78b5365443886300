"""SelectiveScan: the Mamba-1 recurrence as Hymba runs it (hymba-architecture.md §3, step 8).

    dt'_t[d] = softplus(dt_t[d] + dt_bias[d])            (identity above `softplus_threshold`)
    h_t[d,n] = exp(dt'_t[d]·A[d,n])·h_{t-1}[d,n] + dt'_t[d]·B_t[n]·x_t[d]     h_{-1} = initial_state or 0
    y_t[d]   = (Σ_n C_t[n]·h_t[d,n] + D[d]·x_t[d]) · SiLU(z_t[d])

One signature is shared by the reference (`selective_scan_ref`, a plain time loop), the CPU
implementation (`selective_scan`, chunked: a short loop inside chunks, vectorised over chunks), the
PyTorch custom op `torch.ops.hymba.selective_scan` that the model calls (its CPU kernel is
`selective_scan`, its fake kernel gives shapes to the exporter), the ONNX node `hymba::SelectiveScan`
and the CUDA kernel `plugins/selective_scan/`.

Layouts (channel-last, as the model's Linear layers produce them; `batch` first):
    x       (batch, T, d_inner)     conv output, model dtype
    dt      (batch, T, d_inner)     dt_proj output WITHOUT its bias, model dtype
    A       (d_inner, d_state)      fp32, = -exp(A_log)
    B, C    (batch, T, d_state)     after their inner RMSNorms, model dtype; shared by all channels
    D       (d_inner,)              fp32 or None (no skip)
    z       (batch, T, d_inner)     gate, or None (no gate)
    dt_bias (d_inner,)              fp32 or None
    initial_state (batch, d_inner, d_state), any float dtype, or None (zeros)
Returns:
    y          (batch, T, d_inner)  x.dtype
    last_state (batch, d_inner, d_state) fp32: h_{T-1}
All arithmetic is fp32. Decode is the same op with T = 1.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..contract import SOFTPLUS_THRESHOLD
from .precision import compute_dtype


def _prepare(x, dt, A, B, C, D, z, dt_bias, initial_state, softplus_threshold):
    """Shared upcasting and the discretisation step; returns tensors in compute_dtype(x) (fp32 unless x is fp64)."""
    acc = compute_dtype(x)
    batch, T, d_inner = x.shape
    d_state = A.shape[1]
    if dt.shape != x.shape or B.shape != (batch, T, d_state) or C.shape != (batch, T, d_state):
        raise ValueError(
            f"selective_scan: expected dt {tuple(x.shape)}, B and C {(batch, T, d_state)}; "
            f"got dt {tuple(dt.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    if A.shape != (d_inner, d_state):
        raise ValueError(f"selective_scan: A must be {(d_inner, d_state)}, got {tuple(A.shape)}")
    dt = dt.to(acc)
    if dt_bias is not None:
        dt = dt + dt_bias.to(acc)
    dt = F.softplus(dt, threshold=softplus_threshold)  # (batch, T, d_inner)
    if initial_state is None:
        h0 = x.new_zeros((batch, d_inner, d_state), dtype=acc)
    else:
        if initial_state.shape != (batch, d_inner, d_state):
            raise ValueError(
                f"selective_scan: initial_state must be {(batch, d_inner, d_state)}, "
                f"got {tuple(initial_state.shape)}"
            )
        h0 = initial_state.to(acc)
    return dt, A.to(acc), B.to(acc), C.to(acc), h0


def _finish(y, x, D, z):
    """y (batch, T, d_inner) in compute_dtype(x) -> add the D skip, apply the SiLU(z) gate, cast to x.dtype."""
    if D is not None:
        y = y + x.to(y.dtype) * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(x.dtype)


def selective_scan_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None,
                       softplus_threshold: float = SOFTPLUS_THRESHOLD):
    """The ground truth: one time step at a time, fp32 (mamba-ssm's selective_scan_ref semantics; fp64 for
    fp64 inputs)."""
    dt, A, B, C, h = _prepare(x, dt, A, B, C, D, z, dt_bias, initial_state, softplus_threshold)
    xf = x.to(h.dtype)
    ys = []
    for t in range(x.shape[1]):
        dA = torch.exp(dt[:, t, :, None] * A)                           # (batch, d_inner, d_state)
        dBx = dt[:, t, :, None] * B[:, t, None, :] * xf[:, t, :, None]  # (batch, d_inner, d_state)
        h = dA * h + dBx
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))               # (batch, d_inner)
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(x.shape)
    return _finish(y, x, D, z), h


def selective_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None,
                   softplus_threshold: float = SOFTPLUS_THRESHOLD, chunk_size: int = 0):
    """Same result as `selective_scan_ref`, with ~2·sqrt(T) Python steps instead of T.

    Time is cut into chunks of `chunk_size` (default ≈ sqrt(T)). Pass 1 scans every chunk from a zero
    state at once (a loop over the position inside the chunk, vectorised over chunks), keeping each
    step's cumulative decay. Pass 2 carries the true state across chunk boundaries (a loop over
    chunks). Pass 3 adds each chunk's start state, decayed, to its outputs:
        h_t = local_t + exp(Σ_{s≤t in chunk} dt'_s·A) · h_start
    Every exponent is ≤ 0, so nothing overflows; fp32 results match the reference to ~1e-7.
    """
    dt, A, B, C, h0 = _prepare(x, dt, A, B, C, D, z, dt_bias, initial_state, softplus_threshold)
    batch, T, d_inner = x.shape
    d_state = A.shape[1]
    if T == 0:
        return x.new_zeros(x.shape), h0
    L = chunk_size if chunk_size > 0 else max(1, int(round(T ** 0.5)))
    nc = -(-T // L)
    pad = nc * L - T
    xf = x.to(h0.dtype)
    if pad:  # padded steps have dt' = 0: no decay, no input, so they leave the state untouched
        dt, xf = F.pad(dt, (0, 0, 0, pad)), F.pad(xf, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    dt = dt.view(batch, nc, L, d_inner)
    xf = xf.view(batch, nc, L, d_inner)
    B = B.view(batch, nc, L, d_state)
    C = C.view(batch, nc, L, d_state)

    # Pass 1: local scans from zero, all chunks at once.
    h = xf.new_zeros(batch, nc, d_inner, d_state)
    logdecay = xf.new_zeros(batch, nc, d_inner, d_state)  # Σ dt'·A since the chunk start
    y = []
    for i in range(L):
        dA = dt[:, :, i, :, None] * A                                            # (b, nc, d, n)
        h = torch.exp(dA) * h + dt[:, :, i, :, None] * B[:, :, i, None, :] * xf[:, :, i, :, None]
        logdecay = logdecay + dA
        y.append(torch.einsum("bcdn,bcn->bcd", h, C[:, :, i]))

    # Pass 2: the true state at each chunk start, carried across chunks.
    chunk_decay = torch.exp(logdecay)                                           # (b, nc, d, n)
    starts = []
    state = h0
    for c in range(nc):
        starts.append(state)
        state = chunk_decay[:, c] * state + h[:, c]
    h_start = torch.stack(starts, dim=1)                                        # (b, nc, d, n)

    # Pass 3: add what C_t sees of the start state, Σ_n C_t[n]·exp(Σ_{s≤t} dt'_s·A[d,n])·h_start[d,n].
    logdecay = torch.zeros_like(logdecay)
    for i in range(L):
        logdecay = logdecay + dt[:, :, i, :, None] * A
        y[i] = y[i] + torch.einsum("bcdn,bcdn->bcd", torch.exp(logdecay) * C[:, :, i, None, :], h_start)
    y = torch.stack(y, dim=2).reshape(batch, nc * L, d_inner)[:, :T]            # (b, T, d)
    return _finish(y, x, D, z), state


@torch.library.custom_op("hymba::selective_scan", mutates_args=())
def _selective_scan_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       dt_bias: Optional[torch.Tensor] = None, initial_state: Optional[torch.Tensor] = None,
                       softplus_threshold: float = SOFTPLUS_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.ops.hymba.selective_scan`: one graph node for the exporter, `selective_scan` on CPU."""
    y, state = selective_scan(x, dt, A, B, C, D, z, dt_bias, initial_state, softplus_threshold)
    # A custom op may not return its input: T = 0 hands back the fp32 initial state itself. Outputs are
    # contiguous, as the fake kernel below declares (torch.compile checks the strides).
    return y.contiguous(), state.clone(memory_format=torch.contiguous_format) if state is initial_state \
        else state.contiguous()


@_selective_scan_op.register_fake
def _(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None, softplus_threshold=SOFTPLUS_THRESHOLD):
    batch, _, d_inner = x.shape
    return x.new_empty(x.shape), x.new_empty((batch, d_inner, A.shape[1]), dtype=torch.float32)
