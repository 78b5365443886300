"""CPU emulation of the state-parallel SelectiveScan kernel (plugins/selective_scan/selective_scan_state_kernel.cuh).

Runs the kernel's program block by block in numpy fp32, each thread an element of a vector over threadIdx.x:
the same SelectiveScanParams (flat buffers and strides in elements, optional D / z / dt_bias / initial_state /
last_state, y aliasing x, last_state aliasing initial_state), ssst::pickWarps, the same global offsets
(Stage::load, storeY, the parameter reads), one flat shared-memory array with the kernel's layout and
offsets (initialised to NaN, so a read of anything the kernel never wrote poisons the result), the tile loop
with its double buffer, the 16-step sub-tiles and their early stop, the butterfly reduce-scatter through
lane ^ off (xor 8, 4, 2, 1, the same keep / send halves), the finish and the last-state write. The per-step
math is the kernel's (branch-free softplus series, exp2 of dt'·A·log2 e); only FMA roundings and ex2.approx
differ. Results are checked against `hymba_deploy.ops.selective_scan.selective_scan_ref`.

    python plugins/tests/scan_state_emulate.py          # the cases below; exit status 1 on any failure
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import numpy as np

LANES = 16
MIN_WARPS, MAX_WARPS = 4, 8
LOG2E = np.float32(1.4426950408889634)
f32 = np.float32


def pick_warps(batch, dim, num_sms):
    """ssst::pickWarps."""
    best, best_eff = MAX_WARPS, 0.0
    for w in range(MAX_WARPS, MIN_WARPS - 1, -1):
        blocks = batch * (-(-dim // (2 * w)))
        per_sm = -(-blocks // num_sms)
        eff = batch * dim / (per_sm * 2 * w * num_sms)
        if eff > best_eff + 1e-3:
            best_eff, best = eff, w
    return best


def softplus_dt(x, threshold):
    """softplusDt in fp32: max(x, 0) + 2·atanh(u / (2 + u)), u = exp(-|x|), the series to s^13."""
    x = np.asarray(x, f32)
    u = np.exp2(-np.abs(x) * LOG2E).astype(f32)
    sv = (u / (f32(2) + u)).astype(f32)
    s2 = sv * sv
    q = f32(1 / 13)
    for c in (1 / 11, 1 / 9, 1 / 7, 1 / 5, 1 / 3, 1.0):
        q = (q * s2 + f32(c)).astype(f32)
    sp = (f32(2) * sv * q + np.maximum(x, f32(0))).astype(f32)
    return np.where(x > threshold, x, sp).astype(f32)


def gate_silu(z):
    """gateSilu in fp32: z / (1 + 2^(-z·log2 e))."""
    return (z / (f32(1) + np.exp2((-z * LOG2E).astype(f32)))).astype(f32)


def reduce_scatter16(v, tid):
    """reduceScatter16 for every thread at once: v (threads, 16) -> (threads,); thread tid exchanges with
    tid ^ off (__shfl_xor_sync) and keeps the upper half where bit `off` of its lane is set."""
    n = tid % LANES
    cur = v
    for off in (8, 4, 2, 1):
        half = cur.shape[1] // 2
        hi = ((n & off) != 0)[:, None]
        lo_part, hi_part = cur[:, :half], cur[:, half:]
        send = np.where(hi, lo_part, hi_part)
        keep = np.where(hi, hi_part, lo_part)
        cur = (keep + send[tid ^ off]).astype(f32)
    return cur[:, 0]


def _gather(buf, offs, ok):
    """buf[offs] where ok, else 0 (no read)."""
    if buf.size == 0:  # T = 0: nothing is read
        return np.zeros(np.shape(offs), f32)
    return np.where(ok, buf[np.where(ok, offs, 0)], f32(0)).astype(f32)


def run_block(p, b, bx, warps):
    """stateParallelKernel for block (bx, b) with 32·warps threads."""
    per_lane = 1 if p.dstate <= LANES else 2
    states = LANES * per_lane
    steps = 64 if per_lane == 1 else 32
    P = steps + 4
    chan_iters = steps // LANES
    state_iters = states * steps // (32 * MIN_WARPS)
    nthreads = 32 * warps
    chans = nthreads // LANES
    buf_floats = (5 * chans + 2 * states) * P
    smem = np.full(2 * buf_floats, np.nan, f32)
    tid = np.arange(nthreads)
    d0 = bx * chans
    N, L = p.dstate, p.seqlen

    def buf(k):  # Buffer(smemF + (k % 2) · bufFloats, chans): array name -> offset
        base = (k % 2) * buf_floats
        o = dict(dt=base, dx=base + chans * P, skip=base + 2 * chans * P, gate=base + 3 * chans * P,
                 y=base + 4 * chans * P, B=base + 5 * chans * P)
        o["C"] = o["B"] + states * P
        return o

    # Scan role.
    lane = tid % 32
    n = lane % LANES
    c_scan = 2 * (tid // 32) + lane // LANES
    d_scan = d0 + c_scan
    dc = np.where(d_scan < p.dim, d_scan, 0)
    A2 = np.zeros((nthreads, per_lane), f32)
    h = np.zeros((nthreads, per_lane), f32)
    for j in range(per_lane):
        st = n + LANES * j
        ok = st < N
        A2[:, j] = (_gather(p.A, dc * p.A_dim_stride + st * p.A_state_stride, ok) * LOG2E).astype(f32)
        if p.initial_state is not None:
            s = p.state_strides
            h[:, j] = _gather(p.initial_state, b * s[0] + dc * s[1] + st * s[2], ok)
    # Staging role.
    d_stage = d0 + tid % chans
    dsc = np.where(d_stage < p.dim, d_stage, 0)
    bias = p.dt_bias[dsc].astype(f32) if p.dt_bias is not None else np.zeros(nthreads, f32)
    Dd = p.D[dsc].astype(f32) if p.D is not None else np.zeros(nthreads, f32)
    # Zero rows N .. states - 1 of B and C in both buffers.
    pad = (states - N) * P
    for i0 in range(0, 4 * pad, nthreads):
        i = i0 + tid
        i = i[i < 4 * pad]
        arr_b = np.array([buf(k)["B"] for k in (0, 1)])[i // (2 * pad)]
        arr_c = np.array([buf(k)["C"] for k in (0, 1)])[i // (2 * pad)]
        rows = np.where((i // pad) % 2 == 0, arr_b, arr_c)
        smem[rows + N * P + i % pad] = 0

    def load(t0):
        d_ok = d_stage < p.dim
        r = dict(x=[], dt=[], z=[], B=[], C=[])
        for j in range(chan_iters):
            t = t0 + tid // chans + LANES * j
            ok = d_ok & (t < L)
            for name, strides in (("x", p.x_strides), ("dt", p.dt_strides), ("z", p.z_strides)):
                arr = getattr(p, name)
                if arr is None:
                    r[name].append(np.zeros(nthreads, f32))
                else:
                    r[name].append(_gather(arr, b * strides[0] + t * strides[1] + d_stage * strides[2], ok))
        for j in range(state_iters):
            e = tid + j * nthreads
            t = t0 + e // N
            nn = e % N
            ok = (e < N * steps) & (t < L)
            r["B"].append(_gather(p.B, b * p.B_strides[0] + t * p.B_strides[1] + nn * p.B_strides[2], ok))
            r["C"].append(_gather(p.C, b * p.C_strides[0] + t * p.C_strides[1] + nn * p.C_strides[2], ok))
        return r

    def commit(r, o, t0):
        c = tid % chans
        d_ok = d_stage < p.dim
        for j in range(chan_iters):
            tt = tid // chans + LANES * j
            ok = d_ok & (t0 + tt < L)
            xv = r["x"][j]
            delta = np.where(ok, softplus_dt(r["dt"][j] + bias, p.softplus_threshold), f32(0)).astype(f32)
            smem[o["dt"] + c * P + tt] = delta
            smem[o["dx"] + c * P + tt] = (delta * xv).astype(f32)
            smem[o["skip"] + c * P + tt] = (Dd * xv).astype(f32)
            smem[o["gate"] + c * P + tt] = gate_silu(r["z"][j]) if p.z is not None else f32(1)
        for j in range(state_iters):
            e = tid + j * nthreads
            w = e < N * steps
            e = e[w]
            smem[o["B"] + (e % N) * P + e // N] = r["B"][j][w]
            smem[o["C"] + (e % N) * P + e // N] = r["C"][j][w]

    def store_y(o, t0):
        c = tid % chans
        for j in range(chan_iters):
            tt = tid // chans + LANES * j
            w = (d_stage < p.dim) & (t0 + tt < L)
            offs = b * p.y_strides[0] + (t0 + tt) * p.y_strides[1] + d_stage * p.y_strides[2]
            p.y[offs[w]] = p.round_io(smem[o["y"] + c * P + tt][w])

    def scan_tile(o, steps_left):
        for s0 in range(0, steps, LANES):
            if s0 >= steps_left:
                break
            v = np.zeros((nthreads, LANES), f32)
            for i in range(LANES):
                dt_v = smem[o["dt"] + c_scan * P + s0 + i]
                dx_v = smem[o["dx"] + c_scan * P + s0 + i]
                for j in range(per_lane):
                    row = (n + LANES * j) * P + s0 + i
                    a = np.exp2((dt_v * A2[:, j]).astype(f32)).astype(f32)
                    h[:, j] = (a * h[:, j] + (dx_v * smem[o["B"] + row]).astype(f32)).astype(f32)
                    prod = (smem[o["C"] + row] * h[:, j]).astype(f32)
                    v[:, i] = prod if j == 0 else (v[:, i] + prod).astype(f32)
            yv = reduce_scatter16(v, tid)
            at = c_scan * P + s0 + n
            smem[o["y"] + at] = ((yv + smem[o["skip"] + at]) * smem[o["gate"] + at]).astype(f32)

    r = load(0)
    tiles = -(-L // steps)
    for k in range(tiles):
        t0 = k * steps
        commit(r, buf(k), t0)
        # __syncthreads()
        if k + 1 < tiles:
            r = load(t0 + steps)
        if k > 0:
            store_y(buf(k - 1), t0 - steps)
        scan_tile(buf(k), L - t0)
    if tiles > 0:
        store_y(buf(tiles - 1), (tiles - 1) * steps)
    if p.last_state is not None:
        s = p.last_state_strides
        for j in range(per_lane):
            w = (d_scan < p.dim) & (n + LANES * j < N)
            offs = b * s[0] + d_scan * s[1] + (n + LANES * j) * s[2]
            p.last_state[offs[w]] = h[w, j]


def run_kernel(p, num_sms=132):
    """ssst::launch: the grid (ceil(dim / (2·warps)), batch), each block run in turn."""
    warps = pick_warps(p.batch, p.dim, num_sms)
    for b in range(p.batch):
        for bx in range(-(-p.dim // (2 * warps))):
            run_block(p, b, bx, warps)
    return f"warps={warps}"


def _strided(t, torch):
    """(flat fp32 numpy buffer, strides in elements) of a tensor view, offset folded into the buffer."""
    base = t.as_strided((t.untyped_storage().nbytes() // t.element_size(),), (1,), 0)
    flat = base.float().numpy().copy()[t.storage_offset():]
    return flat, tuple(t.stride())


def _case(name, batch, T, dim, N, optionals=True, state=True, noncontig=False, inplace=False, seed=0, run=None):
    """Builds the case's inputs (fresh draws from `seed`), runs `run(p)` (default: this kernel's run_kernel; it
    returns a label for the log line) on flat fp32 buffers and checks y and last_state against the reference."""
    import torch

    from hymba_deploy.ops.selective_scan import selective_scan_ref

    g = torch.Generator().manual_seed(seed)

    def make(*shape, scale=1.0, shift=0.0):
        t = torch.randn(*shape, generator=g) * scale + shift
        if noncontig:  # the same values inside a wider buffer (a fused projection's output)
            wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=g)
            wide[..., : shape[-1]] = t
            t = wide[..., : shape[-1]]
        return t

    x = make(batch, T, dim)
    dt = make(batch, T, dim, scale=0.5, shift=-1.0)
    if T > 0:
        dt[0, :3, :4] = 25.0  # above the softplus threshold
    A = -torch.exp(torch.randn(dim, N, generator=g) * 0.5)
    if noncontig:
        A = A.t().contiguous().t()  # state-major
    Bm, Cm = make(batch, T, N), make(batch, T, N)
    D = torch.randn(dim, generator=g) if optionals else None
    z = make(batch, T, dim) if optionals else None
    bias = torch.randn(dim, generator=g) * 0.3 if optionals else None
    h0 = torch.randn(batch, dim, N, generator=g) if state else None
    if h0 is not None and noncontig:
        h0 = h0.transpose(1, 2).contiguous().transpose(1, 2)  # channel-fastest (the serving layout)
    y_ref, s_ref = selective_scan_ref(x, dt, A, Bm, Cm, D, z, bias, h0)

    fl = lambda t: None if t is None else _strided(t, torch)
    (xb, xs), (dtb, dts), (Bb, Bs), (Cb, Cs) = fl(x), fl(dt), fl(Bm), fl(Cm)
    zb, zs = fl(z) if z is not None else (None, (0, 0, 0))
    Ab, (a0, a1) = fl(A)
    hb, hs = fl(h0) if h0 is not None else (None, (0, 0, 0))
    if inplace:  # y aliases x (same strides), last_state aliases the fp32 initial state
        yb, ys, lb, ls = xb, xs, hb, hs
    else:
        yb, ys = np.full(batch * T * dim, np.nan, f32), (T * dim, dim, 1)
        lb, ls = np.full(batch * dim * N, np.nan, f32), (dim * N, N, 1)
    p = SimpleNamespace(batch=batch, seqlen=T, dim=dim, dstate=N, softplus_threshold=20.0,
                        x=xb, dt=dtb, A=Ab, B=Bb, C=Cb, D=None if D is None else D.numpy(), z=zb,
                        dt_bias=None if bias is None else bias.numpy(), initial_state=hb, y=yb, last_state=lb,
                        x_strides=xs, dt_strides=dts, z_strides=zs, y_strides=ys, B_strides=Bs, C_strides=Cs,
                        state_strides=hs, last_state_strides=ls, A_dim_stride=a0, A_state_stride=a1,
                        round_io=lambda v: v.astype(f32))  # fromFloat<float>
    label = (run or run_kernel)(p)
    view = np.lib.stride_tricks.as_strided  # strides in bytes (fp32)
    y = view(yb, (batch, T, dim), [v * 4 for v in ys]) if T > 0 else np.zeros((batch, 0, dim), f32)
    s = view(lb, (batch, dim, N), [v * 4 for v in ls])

    def rel(a, ref):
        ref = ref.numpy()
        nr = np.linalg.norm(ref)
        return float(np.linalg.norm(a - ref) / nr) if nr > 0 else float(np.linalg.norm(a))

    ey, es = rel(y, y_ref), rel(s, s_ref)
    ok = math.isfinite(ey) and math.isfinite(es) and ey <= 1e-5 and es <= 1e-5
    print(f"{'PASS' if ok else 'FAIL'} {name}: B={batch} T={T} D={dim} N={N} {label} "
          f"y rel {ey:.2e}, last_state rel {es:.2e}")
    return ok


CASES = [  # name, batch, T, dim, N, optionals, initial state, noncontig, in place
    ("N16_T_multiple_of_64", 1, 128, 32, 16),
    ("N16_T37_dim21", 2, 37, 21, 16),
    ("N8_T2", 3, 2, 18, 8),
    ("N5_T77_no_optionals_no_state", 2, 77, 20, 5, False, False),
    ("N12_T100_noncontig", 1, 100, 19, 12, True, True, True),
    ("N24_T70", 2, 70, 17, 24),
    ("N32_T33_no_state", 1, 33, 16, 32, True, False),
    ("N16_T150_inplace", 2, 150, 24, 16, True, True, False, True),
    ("N20_T40_noncontig_inplace", 1, 40, 13, 20, True, True, True, True),
    ("N16_T20_dim3200_seven_warps", 1, 20, 3200, 16),
    ("N16_T0", 1, 0, 16, 16),
]


def main():
    ok = True
    for c in CASES:
        ok &= _case(*c)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
