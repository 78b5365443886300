"""CPU emulation of the chunked SelectiveScan kernel (plugins/selective_scan/selective_scan_chunked_kernel.cuh).

Runs the kernel's program block by block in numpy fp32, each thread an element of a vector over threadIdx.x:
sscc::pickPlan (channels a block, chunks, chunk length), the launcher's kN (16 and 8 exact, else 32 with zero
rows), the same global offsets (Stage::load's steps, B / C as elements or, where sscc::vecRowsOk holds, as
16-byte vectors (4 fp32 here), the carry's initial-state read, the y and last-state writes), one flat shared-memory array with the kernel's layout and offsets (thread rows of
per-step values, two B / C tile buffers, the carries reusing them; initialised to NaN, so a read of anything
the kernel never wrote poisons the result), the tile loop with its double buffer, pass 1 from zero states
with the dt' sums, the carry walk over the chunks, the rescan from each chunk's initial state and the last
chunk's end state as last_state. The per-step math is the kernel's (softplusPoly, exp2 of
dt'·A·log2 e); only FMA roundings and ex2.approx differ. Results are checked against
`hymba_deploy.ops.selective_scan.selective_scan_ref`.

    python plugins/tests/scan_chunked_emulate.py        # the cases below; exit status 1 on any failure
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_state_emulate import LOG2E, _case, _gather, f32, gate_silu  # noqa: E402

MIN_CPB = 16
MIN_CHUNK_LEN = 64


LOG1P_Q = (0.0052326550, -0.029505009, 0.078225441, -0.13663188, 0.19105971, -0.24842970, 0.33319095,
           -0.49999493, 0.99999994)


def softplus_poly(x, threshold):
    """softplusPoly in fp32: max(x, 0) + u·q(u), u = exp(-|x|), q the degree-8 fit of log1p(u)/u."""
    x = np.asarray(x, f32)
    u = np.exp2(-np.abs(x) * LOG2E).astype(f32)
    q = f32(LOG1P_Q[0])
    for c in LOG1P_Q[1:]:
        q = (q * u + f32(c)).astype(f32)
    sp = (u * q + np.maximum(x, f32(0))).astype(f32)
    return np.where(x > threshold, x, sp).astype(f32)


def config(kN):
    """sscc::Config<kN>."""
    threads = 256 if kN == 32 else 512
    steps = 4 if kN == 32 else 8
    return dict(threads=threads, steps=steps, row=steps * kN + 4, step_row=4 * steps + 4,
                stage_iters=steps * kN // MIN_CPB)


def pick_plan(kN, batch, dim, seqlen, num_sms):
    """sscc::pickPlan -> (cpb, chunks, chunk_len)."""
    cf = config(kN)
    best_cpb, best_eff = cf["threads"] // 2, 0.0
    for cpb in range(MIN_CPB, cf["threads"] // 2 + 1):
        blocks = batch * (-(-dim // cpb))
        waves = -(-blocks // num_sms)
        eff = batch * dim / (waves * num_sms * cpb)
        if eff > best_eff + 1e-3:
            best_eff, best_cpb = eff, cpb
    K = min(cf["threads"] // best_cpb, -(-seqlen // MIN_CHUNK_LEN))
    K = max(K, 1)
    per = -(-seqlen // K)
    chunk_len = -(-per // cf["steps"]) * cf["steps"]
    chunks = -(-seqlen // chunk_len) if chunk_len > 0 else 0
    return best_cpb, max(chunks, 1), max(chunk_len, cf["steps"])


def kn_for(N):
    """selectiveScanLaunchT's instantiation: (kN, exact)."""
    return (N, True) if N in (16, 8) else (32, False)


def vec_rows_ok(p, kN, exact, vec_elems=4):
    """sscc::vecRowsOk for the emulation's fp32 buffers (vec_elems = 16 bytes / 4; base offsets are 0)."""
    rows = lambda s: s[2] == 1 and s[1] % vec_elems == 0 and s[0] % vec_elems == 0  # noqa: E731
    return exact and kN % vec_elems == 0 and rows(p.B_strides) and rows(p.C_strides)


def run_block(p, b, bx, plan, kN, exact, vec, V=4):
    """chunkedKernel for block (bx, b); vec: kVecBC (B and C staged as V-element vectors)."""
    cpb, K, Lc = plan
    cf = config(kN)
    S, R, SR = cf["steps"], cf["row"], cf["step_row"]
    nthreads = cpb * K
    tid = np.arange(nthreads)
    N, L = p.dstate, p.seqlen
    tile_floats = max(4 * K * R, 2 * K * kN * cpb)
    smem = np.full(K * cpb * SR + tile_floats, np.nan, f32)
    vec_iters = -(-(S * kN // V) // MIN_CPB)
    tiles_base = K * cpb * SR
    carry_e = tiles_base
    carry_a = carry_e + K * kN * cpb

    c = tid % cpb
    k = tid // cpb
    d = bx * cpb + c
    active = d < p.dim
    t0 = k * Lc
    dc = np.where(active, d, 0)
    A2 = np.zeros((nthreads, kN), f32)
    for n in range(kN):
        if exact or n < N:
            A2[:, n] = (p.A[dc * p.A_dim_stride + n * p.A_state_stride].astype(f32) * LOG2E).astype(f32)
    bias = p.dt_bias[dc].astype(f32) if p.dt_bias is not None else np.zeros(nthreads, f32)
    Dd = p.D[dc].astype(f32) if p.D is not None else np.zeros(nthreads, f32)
    mine = tid * SR  # thread rows

    def load(tile, final):
        ts = t0 + tile * S
        r = dict(x=[], dt=[], z=[], B=[], C=[])
        for s in range(S):
            ok = active & (ts + s < L)
            for name, strides in (("x", p.x_strides), ("dt", p.dt_strides), ("z", p.z_strides)):
                arr = getattr(p, name)
                if name == "z" and (not final or arr is None):
                    r[name].append(np.zeros(nthreads, f32))
                    continue
                off = b * strides[0] + d * strides[2] + (ts + s) * strides[1]
                r[name].append(_gather(arr, off, ok))
        if vec:  # vector v + j·blockDim: row (chunk, step) v // (kN / V), elements (v % (kN / V))·V + 0..V-1
            per_row = kN // V
            total = K * S * per_row
            for j in range(vec_iters):
                v = tid + j * nthreads
                row = v // per_row
                t = (row // S) * Lc + tile * S + row % S
                n0 = (v % per_row) * V
                ok = (v < total) & (t < L)
                for name, arr, st in (("B", p.B, p.B_strides), ("C", p.C, p.C_strides)):
                    if name == "C" and not final:
                        r[name].append(np.zeros((nthreads, V), f32))
                        continue
                    r[name].append(np.stack([_gather(arr, b * st[0] + t * st[1] + n0 + i, ok) for i in range(V)], 1))
            return r
        total = K * S * kN
        for j in range(cf["stage_iters"]):
            e = tid + j * nthreads
            n = e % kN
            t = (e // (S * kN)) * Lc + tile * S + (e // kN) % S
            ok = (e < total) & (n < N) & (t < L)
            r["B"].append(_gather(p.B, b * p.B_strides[0] + t * p.B_strides[1] + n * p.B_strides[2], ok))
            r["C"].append(_gather(p.C, b * p.C_strides[0] + t * p.C_strides[1] + n * p.C_strides[2], ok)
                          if final else np.zeros(nthreads, f32))
        return r

    def commit(r, tile, sB, sC, final):
        ts = t0 + tile * S
        total = K * S * kN
        for j in range(vec_iters if vec else 0):
            per_row = kN // V
            v = tid + j * nthreads
            w = v < K * S * per_row
            row = v[w] // per_row
            at = (row // S) * R + (row % S) * kN + (v[w] % per_row) * V
            for i in range(V):
                smem[sB + at + i] = r["B"][j][w, i]
                if final:
                    smem[sC + at + i] = r["C"][j][w, i]
        for j in range(0 if vec else cf["stage_iters"]):
            e = tid + j * nthreads
            w = e < total
            e = e[w]
            at = (e // (S * kN)) * R + e % (S * kN)
            smem[sB + at] = r["B"][j][w]
            if final:
                smem[sC + at] = r["C"][j][w]
        for s in range(S):
            ok = active & (ts + s < L)
            xv = r["x"][s]
            delta = np.where(ok, softplus_poly(r["dt"][s] + bias, p.softplus_threshold), f32(0)).astype(f32)
            smem[mine + 4 * s] = delta
            smem[mine + 4 * s + 1] = (delta * xv).astype(f32)
            smem[mine + 4 * s + 2] = (Dd * xv).astype(f32) if final else f32(0)
            smem[mine + 4 * s + 3] = gate_silu(r["z"][s]) if (final and p.z is not None) else f32(1)

    def scan_chunk(h, final):
        dt_sum = np.zeros(nthreads, f32)
        tiles = Lc // S
        r = load(0, final)
        for tile in range(tiles):
            ts = t0 + tile * S
            sB = tiles_base + (tile % 2) * 2 * K * R
            sC = sB + K * R
            commit(r, tile, sB, sC, final)
            # __syncthreads()
            if tile + 1 < tiles:
                r = load(tile + 1, final)
            b_row = sB + k * R
            c_row = sC + k * R
            for s in range(S):
                vx, vy, vz, vw = (smem[mine + 4 * s + i] for i in range(4))
                y = np.zeros((nthreads, 4), f32)
                for n in range(kN):
                    bq = smem[b_row + s * kN + n]
                    a = np.exp2((vx * A2[:, n]).astype(f32)).astype(f32)
                    h[:, n] = (a * h[:, n] + (vy * bq).astype(f32)).astype(f32)
                    if final:
                        cq = smem[c_row + s * kN + n]
                        y[:, n % 4] = (cq * h[:, n] + y[:, n % 4]).astype(f32)
                if final:
                    w = active & (ts + s < L)
                    out = ((((y[:, 0] + y[:, 1]) + (y[:, 2] + y[:, 3])) + vz) * vw).astype(f32)
                    offs = b * p.y_strides[0] + (ts + s) * p.y_strides[1] + d * p.y_strides[2]
                    p.y[offs[w]] = p.round_io(out[w])
                else:
                    dt_sum = (dt_sum + vx).astype(f32)
        return dt_sum

    h = np.zeros((nthreads, kN), f32)
    # 1. Each chunk from zero.
    if K > 1:
        dt_sum = scan_chunk(h, False)
        # __syncthreads()
        for n in range(kN):
            at = (k * kN + n) * cpb + c
            smem[carry_e + at] = h[:, n]
            smem[carry_a + at] = np.exp2((A2[:, n] * dt_sum).astype(f32)).astype(f32)
    # __syncthreads()
    # 2. The carry walk: thread i < cpb·kN is (channel i % cpb, state i // cpb).
    i = np.arange(cpb * kN)
    cc, nn = i % cpb, i // cpb
    dd = bx * cpb + cc
    H = np.zeros(i.size, f32)
    if p.initial_state is not None:
        s_ = p.state_strides
        H = _gather(p.initial_state, b * s_[0] + dd * s_[1] + nn * s_[2], (dd < p.dim) & (nn < N))
    for kk in range(K):
        at = (kk * kN + nn) * cpb + cc
        e = smem[carry_e + at] if K > 1 else np.zeros(i.size, f32)
        smem[carry_e + at] = H
        if K > 1:
            H = (smem[carry_a + at] * H + e).astype(f32)
    # __syncthreads()
    # 3. Rescan from each chunk's initial state.
    for n in range(kN):
        h[:, n] = smem[carry_e + (k * kN + n) * cpb + c]
    # __syncthreads(): the rescan's tiles overwrite the carries
    smem[tiles_base:] = np.nan
    scan_chunk(h, True)
    if p.last_state is not None:
        s_ = p.last_state_strides
        for n in range(kN):
            if exact or n < N:
                w = (k == K - 1) & active
                offs = b * s_[0] + d * s_[1] + n * s_[2]
                p.last_state[offs[w]] = h[w, n]


def make_runner(num_sms=132, elements=False):
    """sscc::launchT: the grid (ceil(dim / cpb), batch) of blocks, each run in turn. elements: B and C by
    elements even where vecRowsOk holds (as for misaligned rows, which these flat buffers cannot have)."""

    def run(p):
        kN, exact = kn_for(p.dstate)
        plan = pick_plan(kN, p.batch, p.dim, p.seqlen, num_sms)
        vec = vec_rows_ok(p, kN, exact) and not elements
        for b in range(p.batch):
            for bx in range(-(-p.dim // plan[0])):
                run_block(p, b, bx, plan, kN, exact, vec)
        return f"plan(cpb, chunks, len)={plan} {'vector' if vec else 'element'} B/C"

    return run


CASES = [  # name, batch, T, dim, N, optionals, initial state, noncontig, in place, SM count[, B/C by elements]
    ("N16_T3000_32_chunks", 1, 3000, 40, 16, True, True, False, False, 132),
    ("N16_T37_one_chunk_dim21", 2, 37, 21, 16, True, True, False, False, 132),
    ("N8_T2", 3, 2, 18, 8, True, True, False, False, 132),
    ("N8_T700_wide_blocks", 2, 700, 300, 8, True, True, False, False, 4),
    ("N5_T333_no_optionals_no_state", 2, 333, 20, 5, False, False, False, False, 132),
    ("N12_T250_noncontig", 1, 250, 19, 12, True, True, True, False, 132),
    ("N24_T130", 2, 130, 17, 24, True, True, False, False, 132),
    ("N32_T201_no_state", 1, 201, 16, 32, True, False, False, False, 132),
    ("N16_T500_inplace_cpb25", 2, 500, 60, 16, True, True, False, True, 5),
    ("N20_T90_noncontig_inplace", 1, 90, 13, 20, True, True, True, True, 132),
    ("N16_T129_three_chunks", 1, 129, 16, 16, True, True, False, False, 132),
    ("N16_T0", 1, 0, 16, 16, True, True, False, False, 132),
    ("N16_T300_BC_by_elements", 2, 300, 50, 16, True, True, True, False, 132, True),
]


def check(case):
    name, batch, T, dim, N, opt, state, noncontig, inplace, sms, *elements = case
    return _case(name, batch, T, dim, N, opt, state, noncontig, inplace, run=make_runner(sms, bool(elements)))


def main():
    ok = True
    for c in CASES:
        ok &= check(c)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
