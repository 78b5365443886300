"""Triton kernels for the decode step's GEMMs where cuBLAS leaves weight bandwidth or launches on the table.

At batch 128 the big decode GEMMs are weight-bandwidth-bound (128 rows: ~128 flop per weight byte, under the
~300 an H100/H200 needs to be compute-bound), and the SSM branch is a chain of small dependent launches that
runs beside attention. Two kernels for that:

- `linear_splitk`: y = x @ w.T with K split as well as N, so that an output-narrow GEMM (out_proj, down_proj:
  N = hidden = 1600, 13 tiles of 128 for 132 SMs; x_proj: N = 136) still spreads over every SM. Each split
  writes fp32 partial sums (S, M, N); the consumer adds them up in its own kernel (`add_partials_rms_norm`
  in runtime.py, `ssm_inputs` below), so the split costs no launch of its own.
- `ssm_inputs`: the SSM branch between x_proj and the scan in one kernel: sum of x_proj's partials, the
  three RMSNorms of dt, B and C (§2.3 step 3b), and dt_proj (step 3c). cuBLAS + inductor took six
  launches here (x_proj's split-K reduce, four norm kernels, dt_proj).

At batch 1-8 the decode GEMMs are GEMVs: each weight byte is used by a handful of rows, so a GEMM is its
weight read. The `gemv` kernel (`GemmConfig.kernel`, also behind `linear_splitk`) turns the tile around:
BLOCK_N weight rows are the MMA's row operand and x^T (M ≤ 16 rows, padded to 16) its column operand, so that
narrow weight tiles (16-64 rows) give enough programs to fill every SM on any of the decode GEMMs, with K split
where N is small. Its GLU form (`linear_glu`) reads the packed gate|up weight (2F, K) and writes
silu(gate) · up: the MLP's activation without its own launch.

References beside them (`linear_reference`, `glu_reference`, `ssm_inputs_reference`); the numerics differ from
cuBLAS and the eager ops only in summation order. Which GEMMs a runtime uses is its
`ServingConfig.decode_gemms`, resolved once by `resolve_decode_gemms`; triton is an optional dependency,
imported here only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from ..errors import HymbaDeployError

try:
    import triton
    import triton.language as tl
except ImportError:          # CPU installs: `resolve_decode_gemms` never selects these kernels there
    triton = None

DECODE_GEMMS = ("auto", "cublas", "triton")


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


def triton_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when the Triton GEMMs can run for a model on `device` in `dtype`, else why not."""
    if triton is None:
        return "triton is not installed (pip install triton; it comes with CUDA builds of torch)"
    if torch.device(device).type != "cuda":
        return f"the Triton GEMMs run on CUDA models (this one is on {torch.device(device).type})"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"the Triton GEMMs run in float16/bfloat16 (this model is {str(dtype).replace('torch.', '')})"
    return None


def resolve_decode_gemms(choice: str, device: torch.device, dtype: torch.dtype) -> str:
    """'cublas' (F.linear everywhere) or 'triton' (these kernels where the runtime has tilings). 'auto':
    'triton' where it can run (CUDA, fp16/bf16, triton installed), else 'cublas'; 'triton' where it cannot
    is an error saying why."""
    if choice not in DECODE_GEMMS:
        raise HymbaDeployError(f"decode_gemms {choice!r}: choose one of {', '.join(DECODE_GEMMS)}")
    reason = triton_unavailable(device, dtype)
    if choice == "triton" and reason:
        raise HymbaDeployError(f"decode_gemms='triton': {reason}")
    if choice == "auto":
        return "cublas" if reason else "triton"
    return choice


def rows_block(M: int, cap: int = 128) -> int:
    """Rows per program for M rows: the power of two ≥ M, at least 16 (tl.dot's minimum), at most cap."""
    return min(cap, max(16, 1 << (M - 1).bit_length()))


def linear_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (M, K) @ w (N, K).T in float64."""
    return x.double() @ w.double().t()


def glu_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """silu(x @ gate.T) · (x @ up.T) in float64 for the packed w = gate | up (2F, K), the products rounded to
    x's dtype first (the MLP's F.linear output)."""
    F_ = w.shape[0] // 2
    g, u = (linear_reference(x, w[:F_]).to(x.dtype).double(), linear_reference(x, w[F_:]).to(x.dtype).double())
    return g * torch.sigmoid(g) * u


def _rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HymbaRMSNorm in float64 (x already rounded to the activation dtype)."""
    x = x.double()
    return weight.double() * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def ssm_inputs_reference(xp: torch.Tensor, w_dt: torch.Tensor, w_B: torch.Tensor, w_C: torch.Tensor,
                         dt_proj: torch.Tensor, eps: float):
    """x_proj output xp (M, ≥ R + 2N) -> (dt_proj(norm(dt)), norm(B), norm(C)) in float64; dt_proj (I, ≥ R)
    (zero columns past R allowed)."""
    R, N = w_dt.shape[0], w_B.shape[0]
    dt, Bm, Cm = xp[:, :R], xp[:, R:R + N], xp[:, R + N:R + 2 * N]
    dt = _rms_norm_reference(dt, w_dt, eps)
    return (dt @ dt_proj[:, :R].double().t(), _rms_norm_reference(Bm, w_B, eps),
            _rms_norm_reference(Cm, w_C, eps))


GEMM_KERNELS = ("splitk", "gemv")


@dataclass(frozen=True)
class GemmConfig:
    """One tiling. block_m is the most rows one program covers (smaller batches take a smaller power of two).
    splits: K ranges. kernel: "splitk" (rows of x as the MMA's row operand; batches of 16 rows and more) or
    "gemv" (BLOCK_N weight rows as the row operand, x^T as the column operand; batches of up to 16 rows)."""
    block_n: int = 64
    block_k: int = 64
    splits: int = 1
    num_warps: int = 8
    num_stages: int = 4
    kernel: str = "splitk"

    def __post_init__(self):
        if self.kernel not in GEMM_KERNELS:
            raise HymbaDeployError(f"GEMM kernel {self.kernel!r}: choose one of {', '.join(GEMM_KERNELS)}")

    def block_m(self, M: int) -> int:
        return rows_block(M)

    def k_per_split(self, K: int) -> int:
        per = -(-K // self.splits)
        return -(-per // self.block_k) * self.block_k

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SsmInputsConfig:
    """`ssm_inputs` launch: programs of block_m rows × one of programs_i channel ranges (dt_proj tiles of
    block_i channels, looped)."""
    block_m: int = 16
    block_i: int = 128
    programs_i: int = 4
    num_warps: int = 4
    num_stages: int = 3

    def as_dict(self) -> dict:
        return asdict(self)


if triton is not None:
    @triton.jit
    def _splitk_kernel(x_ptr, w_ptr, out_ptr, M, N, K, k_per_split, stride_xm, stride_wn, stride_os, stride_om,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        pid_m = tl.program_id(2)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        k0 = pid_s * k_per_split
        k1 = tl.minimum(k0 + k_per_split, K)
        x_ptrs = x_ptr + rm[:, None] * stride_xm + (k0 + rk)[None, :]
        w_ptrs = w_ptr + rn[:, None] * stride_wn + (k0 + rk)[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k0, k1, BLOCK_K):
            if EVEN_K:                                          # K and k_per_split multiples of BLOCK_K
                a = tl.load(x_ptrs, mask=rm[:, None] < M, other=0.0)
                b = tl.load(w_ptrs, mask=rn[:, None] < N, other=0.0)
            else:
                kmask = (k + rk) < k1
                a = tl.load(x_ptrs, mask=(rm[:, None] < M) & kmask[None, :], other=0.0)
                b = tl.load(w_ptrs, mask=(rn[:, None] < N) & kmask[None, :], other=0.0)
            acc = tl.dot(a, tl.trans(b), acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        out = out_ptr + pid_s * stride_os + rm[:, None] * stride_om + rn[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, out_ptr, M, N, K, k_per_split, up_rows, stride_xm, stride_wn, stride_os,
                     stride_om, state_ptr, conv_w_ptr, conv_b_ptr, xc_ptr, stride_sb, stride_sc, stride_st,
                     stride_xcm, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     EVEN_K: tl.constexpr, GLU: tl.constexpr, CONV_K: tl.constexpr, CONV_BIAS: tl.constexpr):
        """Program (weight rows tile, K range, x rows block): acc (BLOCK_N, BLOCK_M) = w tile @ x^T, stored
        transposed into out[pid_s] (M, N). GLU (one K range): a second tile of rows up_rows + n, and out =
        silu(gate) · up with each product rounded to out's dtype first, as F.linear then silu_mul round.
        CONV_K > 0: x is the pre-conv input and the operand is the decode conv of it (`_conv_silu_t`), which
        the programs of the first weight rows tile also store into xc (M, K); the state is left as it was."""
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        pid_m = tl.program_id(2)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rk = tl.arange(0, BLOCK_K)
        k0 = pid_s * k_per_split
        k1 = tl.minimum(k0 + k_per_split, K)
        w_ptrs = w_ptr + rn[:, None] * stride_wn + (k0 + rk)[None, :]       # (BLOCK_N, BLOCK_K)
        x_ptrs = x_ptr + rm[None, :] * stride_xm + (k0 + rk)[:, None]       # x^T: (BLOCK_K, BLOCK_M)
        n_ok = rn[:, None] < N
        m_ok = rm[None, :] < M
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k in range(k0, k1, BLOCK_K):
            if EVEN_K:                                          # K and k_per_split multiples of BLOCK_K
                w = tl.load(w_ptrs, mask=n_ok, other=0.0)
                xt = tl.load(x_ptrs, mask=m_ok, other=0.0)
            else:
                k_ok = (k + rk) < k1
                w = tl.load(w_ptrs, mask=n_ok & k_ok[None, :], other=0.0)
                xt = tl.load(x_ptrs, mask=m_ok & k_ok[:, None], other=0.0)
            if CONV_K > 0:
                xt = _conv_silu_t(xt, k + rk, (k + rk) < k1, rm, m_ok, state_ptr, conv_w_ptr, conv_b_ptr,
                                  stride_sb, stride_sc, stride_st, CONV_K, CONV_BIAS)
                if pid_n == 0:
                    tl.store(xc_ptr + rm[None, :] * stride_xcm + (k + rk)[:, None], xt,
                             mask=m_ok & ((k + rk) < k1)[:, None])
            acc = tl.dot(w, xt, acc)
            if GLU:
                if EVEN_K:
                    wu = tl.load(w_ptrs + up_rows * stride_wn, mask=n_ok, other=0.0)
                else:
                    wu = tl.load(w_ptrs + up_rows * stride_wn, mask=n_ok & k_ok[None, :], other=0.0)
                acc_up = tl.dot(wu, xt, acc_up)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        dtype = out_ptr.dtype.element_ty
        out = out_ptr + pid_s * stride_os + rm[None, :] * stride_om + rn[:, None]
        if GLU:
            g = acc.to(dtype).to(tl.float32)
            act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32) * acc_up.to(dtype).to(tl.float32)
            tl.store(out, act.to(dtype), mask=m_ok & n_ok)
        else:
            tl.store(out, acc.to(dtype), mask=m_ok & n_ok)

    @triton.jit
    def _conv_silu_t(xt, kk, k_ok, rm, m_ok, state_ptr, conv_w_ptr, conv_b_ptr, stride_sb, stride_sc, stride_st,
                     CONV_K: tl.constexpr, CONV_BIAS: tl.constexpr):
        """The decode step of CausalConv1d (SiLU) on a tile x^T (channels kk, rows rm) of pre-conv inputs:
        silu(bias + Σ_j w[c, j] · state[m, c, j + 1] + w[c, K-1] · x) in fp32, taps in the CUDA kernel's
        order, rounded to x's dtype; 0 where channels (k_ok) or rows (m_ok) are past the ends, so they add
        nothing to the dot. conv_w (channels, CONV_K) contiguous."""
        dtype = xt.dtype
        ok = m_ok & k_ok[:, None]
        acc = tl.zeros(xt.shape, dtype=tl.float32)
        if CONV_BIAS:
            acc += tl.load(conv_b_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)[:, None]
        s_ptrs = state_ptr + rm[None, :] * stride_sb + kk[:, None] * stride_sc
        for j in tl.static_range(CONV_K - 1):
            s = tl.load(s_ptrs + (j + 1) * stride_st, mask=ok, other=0.0).to(tl.float32)
            w = tl.load(conv_w_ptr + kk * CONV_K + j, mask=k_ok, other=0.0).to(tl.float32)
            acc += w[:, None] * s
        w = tl.load(conv_w_ptr + kk * CONV_K + (CONV_K - 1), mask=k_ok, other=0.0).to(tl.float32)
        acc += w[:, None] * xt.to(tl.float32)
        y = acc / (1.0 + tl.exp(-acc))
        return tl.where(ok, y, 0.0).to(dtype)

    @triton.jit
    def _rms_norm_rows(x, w_ptr, cols, n: tl.constexpr, eps, dtype: tl.constexpr):
        """HymbaRMSNorm of the rows of x (fp32, zero past column n), as the model rounds it."""
        x = x.to(dtype).to(tl.float32)                          # the x_proj output, in the activation dtype
        x = x * tl.rsqrt(tl.sum(x * x, axis=1) / n + eps)[:, None]
        w = tl.load(w_ptr + cols, mask=cols < n, other=0.0).to(tl.float32)
        return (w[None, :] * x.to(dtype).to(tl.float32)).to(dtype)

    @triton.jit
    def _ssm_inputs_kernel(part_ptr, S, M, stride_ps, stride_pm, wdt_ptr, wB_ptr, wC_ptr, dtw_ptr, stride_dtw,
                           dt_ptr, B_ptr, C_ptr, I, i_per_prog, eps, xr_ptr, stride_xrm, st_ptr, stride_sb,
                           stride_sc, stride_st, R: tl.constexpr, N: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_I: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                           CONV_W: tl.constexpr):
        """Program (row block, channel range): sums x_proj's partials for its rows, normalises dt, B, C, then
        runs dt_proj over channels [pid_i · i_per_prog, +i_per_prog) in tiles of BLOCK_I. Each program
        re-reads its rows' partials (from L2), so few channel ranges keep that cheap. CONV_W > 0: also shifts
        the conv state (M, I, CONV_W) of those channels by one step, x (pre-conv) entering last, the state
        update of the conv that `linear_conv` ran without writing it."""
        pid_m = tl.program_id(0)
        pid_i = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rr = tl.arange(0, BLOCK_R)
        rn = tl.arange(0, BLOCK_N)
        row = rm[:, None] < M
        p = part_ptr + rm[:, None] * stride_pm
        acc_dt = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_c = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for s in range(S):                                      # x_proj = sum of its split-K partials
            acc_dt += tl.load(p + rr[None, :], mask=row & (rr[None, :] < R), other=0.0).to(tl.float32)
            acc_b += tl.load(p + R + rn[None, :], mask=row & (rn[None, :] < N), other=0.0).to(tl.float32)
            acc_c += tl.load(p + R + N + rn[None, :], mask=row & (rn[None, :] < N), other=0.0).to(tl.float32)
            p += stride_ps
        dtype = dt_ptr.dtype.element_ty
        dt = _rms_norm_rows(acc_dt, wdt_ptr, rr, R, eps, dtype)                 # (BLOCK_M, BLOCK_R), 0 past R
        if pid_i == 0:
            bm = _rms_norm_rows(acc_b, wB_ptr, rn, N, eps, dtype)
            cm = _rms_norm_rows(acc_c, wC_ptr, rn, N, eps, dtype)
            tl.store(B_ptr + rm[:, None] * N + rn[None, :], bm, mask=row & (rn[None, :] < N))
            tl.store(C_ptr + rm[:, None] * N + rn[None, :], cm, mask=row & (rn[None, :] < N))
        i0 = pid_i * i_per_prog
        i1 = tl.minimum(i0 + i_per_prog, I)
        for i in range(i0, i1, BLOCK_I):                        # dt_proj rows (output channels)
            ri = i + tl.arange(0, BLOCK_I)
            w = tl.load(dtw_ptr + ri[:, None] * stride_dtw + rr[None, :],
                        mask=(ri[:, None] < i1) & (rr[None, :] < R), other=0.0)
            out = tl.dot(dt, tl.trans(w))                       # (BLOCK_M, BLOCK_I) fp32
            tl.store(dt_ptr + rm[:, None] * I + ri[None, :], out.to(dtype), mask=row & (ri[None, :] < i1))
            if CONV_W > 0:
                ok = row & (ri[None, :] < i1)
                s_ptrs = st_ptr + rm[:, None] * stride_sb + ri[None, :] * stride_sc
                for j in tl.static_range(CONV_W - 1):           # tap j <- tap j + 1, every load before its store
                    tap = tl.load(s_ptrs + (j + 1) * stride_st, mask=ok)
                    tl.debug_barrier()
                    tl.store(s_ptrs + j * stride_st, tap, mask=ok)
                tl.store(s_ptrs + (CONV_W - 1) * stride_st,
                         tl.load(xr_ptr + rm[:, None] * stride_xrm + ri[None, :], mask=ok), mask=ok)


def _check(x: torch.Tensor, w: torch.Tensor, what: str) -> tuple[int, int, int]:
    if triton is None:
        raise HymbaDeployError(f"{what} needs triton (a CUDA build of torch)")
    M, K = x.shape
    N, Kw = w.shape
    if Kw != K or x.stride(1) != 1 or w.stride(1) != 1 or x.dtype != w.dtype:
        raise ValueError(f"{what}: x {tuple(x.shape)} {x.dtype} / w {tuple(w.shape)} {w.dtype} must share K "
                         "(unit stride) and dtype")
    return M, N, K


def linear_splitk(x: torch.Tensor, w: torch.Tensor, cfg: GemmConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K), w (N, K) -> partial sums (cfg.splits, M, N) of x @ w.T with cfg.kernel: fp32 when
    cfg.splits > 1, else x's dtype (then out[0] is the finished product)."""
    M, N, K = _check(x, w, "linear_splitk")
    if out is None:
        out = torch.empty(cfg.splits, M, N, device=x.device, dtype=torch.float32 if cfg.splits > 1 else x.dtype)
    if cfg.kernel == "gemv":
        _launch_gemv(x, w, out, cfg, M, N, K, cfg.k_per_split(K), cfg.splits)
        return out
    bm, kps = cfg.block_m(M), cfg.k_per_split(K)
    grid = (triton.cdiv(N, cfg.block_n), cfg.splits, triton.cdiv(M, bm))
    even_k = K % cfg.block_k == 0 and kps % cfg.block_k == 0
    _splitk_kernel[grid](x, w, out, M, N, K, kps, x.stride(0), w.stride(0), out.stride(0), out.stride(1),
                         BLOCK_M=bm, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, EVEN_K=even_k,
                         num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


def linear_glu(x: torch.Tensor, w: torch.Tensor, cfg: GemmConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K), packed w = gate | up (2F, K) -> silu(x @ gate.T) · (x @ up.T) (M, F) in x's dtype, each
    product rounded to that dtype first (the MLP's F.linear + silu_mul), in one `gemv` launch (cfg.kernel
    "gemv", cfg.splits 1)."""
    M, N2, K = _check(x, w, "linear_glu")
    if cfg.kernel != "gemv" or cfg.splits != 1 or N2 % 2:
        raise ValueError(f"linear_glu: a gemv tiling of one K range over an even number of rows, not {cfg} / "
                         f"{N2} rows")
    F_ = N2 // 2
    if out is None:
        out = torch.empty(M, F_, device=x.device, dtype=x.dtype)
    _launch_gemv(x, w, out, cfg, M, F_, K, K, 1, up_rows=F_)
    return out


def linear_conv(x: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor | None, state: torch.Tensor,
                w: torch.Tensor, cfg: GemmConfig, out: torch.Tensor | None = None, xc: torch.Tensor | None = None):
    """The decode step of CausalConv1d (SiLU) then a GEMM, in one `gemv` launch: pre-conv x (M, K) (row stride
    free), conv_w (K, W) contiguous, conv_b (K,) or None, state (M, K, W) (the last W pre-conv inputs, any
    strides) -> (partial sums (cfg.splits, M, N) of xc @ w.T as `linear_splitk` gives them, xc (M, K) = the
    conv output in x's dtype). The state is only read: `ssm_inputs(..., conv=(x, state))` shifts it after."""
    M, N, K = _check(x, w, "linear_conv")
    W = conv_w.shape[1]
    if (cfg.kernel != "gemv" or conv_w.shape[0] != K or conv_w.stride() != (W, 1) or state.shape != (M, K, W)
            or (conv_b is not None and conv_b.shape != (K,)) or any(t.dtype != x.dtype for t in (conv_w, state))):
        raise ValueError(f"linear_conv: a gemv tiling, conv_w ({K}, W) contiguous, state ({M}, {K}, W) in x's dtype; "
                         f"got {cfg.kernel}, conv_w {tuple(conv_w.shape)} {conv_w.dtype}, state {tuple(state.shape)} "
                         f"{state.dtype}")
    if out is None:
        out = torch.empty(cfg.splits, M, N, device=x.device, dtype=torch.float32 if cfg.splits > 1 else x.dtype)
    if xc is None:
        xc = torch.empty(M, K, device=x.device, dtype=x.dtype)
    _launch_gemv(x, w, out, cfg, M, N, K, cfg.k_per_split(K), cfg.splits, conv=(conv_w, conv_b, state, xc))
    return out, xc


def _launch_gemv(x, w, out, cfg: GemmConfig, M: int, N: int, K: int, kps: int, splits: int, up_rows: int = 0,
                 conv=None) -> None:
    """One `_gemv_kernel` launch: plain (split-K partials), GLU (up_rows > 0: out (M, N)) or with the conv
    prologue (conv = (conv_w, conv_b, state, xc))."""
    bm = cfg.block_m(M)
    grid = (triton.cdiv(N, cfg.block_n), splits, triton.cdiv(M, bm))
    conv_w, conv_b, state, xc = conv if conv is not None else (x, None, x.new_empty(0, 0, 0), x)
    _gemv_kernel[grid](x, w, out, M, N, K, kps, up_rows, x.stride(0), w.stride(0), 0 if up_rows else out.stride(0),
                       out.stride(-2), state, conv_w, conv_b if conv_b is not None else conv_w,
                       xc, *state.stride(), xc.stride(0), BLOCK_M=bm, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                       EVEN_K=K % cfg.block_k == 0 and kps % cfg.block_k == 0, GLU=up_rows > 0,
                       CONV_K=conv_w.shape[1] if conv is not None else 0, CONV_BIAS=conv_b is not None,
                       num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def ssm_inputs(partials: torch.Tensor, w_dt: torch.Tensor, w_B: torch.Tensor, w_C: torch.Tensor,
               dt_proj: torch.Tensor, eps: float, cfg: SsmInputsConfig, conv=None):
    """x_proj's partial sums (S, M, ≥ R + 2N) (`linear_splitk`; S = 1 in the activation dtype allowed) ->
    dt (M, I) = dt_proj(RMSNorm(dt)), B (M, N), C (M, N) = RMSNorm(B), RMSNorm(C), in w_dt's dtype.
    dt_proj (I, ≥ R): zero columns past R (`PackedWeights.dt_proj`) are never read. conv = (x, state): the
    pre-conv x (M, I) and its conv state (M, I, W), shifted in place by one step (after `linear_conv`)."""
    if triton is None:
        raise HymbaDeployError("ssm_inputs needs triton (a CUDA build of torch)")
    S, M, W = partials.shape
    R, N, I = w_dt.shape[0], w_B.shape[0], dt_proj.shape[0]
    if W < R + 2 * N or partials.stride(2) != 1 or dt_proj.shape[1] < R or dt_proj.stride(1) != 1:
        raise ValueError(f"ssm_inputs: partials {tuple(partials.shape)} / dt_proj {tuple(dt_proj.shape)} do not "
                         f"fit R = {R}, N = {N}")
    dtype = w_dt.dtype
    dt = torch.empty(M, I, device=partials.device, dtype=dtype)
    Bm = torch.empty(M, N, device=partials.device, dtype=dtype)
    Cm = torch.empty(M, N, device=partials.device, dtype=dtype)
    bm = rows_block(M, cfg.block_m)
    i_per_prog = -(-I // cfg.programs_i)
    i_per_prog = -(-i_per_prog // cfg.block_i) * cfg.block_i
    grid = (triton.cdiv(M, bm), triton.cdiv(I, i_per_prog))
    xr, state = conv if conv is not None else (dt, dt.new_empty(0, 0, 0))
    if conv is not None and (xr.shape != (M, I) or xr.stride(1) != 1 or state.shape[:2] != (M, I)
                             or state.dtype != xr.dtype):
        raise ValueError(f"ssm_inputs: conv x {tuple(xr.shape)} / state {tuple(state.shape)} {state.dtype} do not "
                         f"fit {M} rows of {I} channels (x unit stride, state in x's dtype)")
    _ssm_inputs_kernel[grid](partials, S, M, partials.stride(0), partials.stride(1), w_dt, w_B, w_C, dt_proj,
                             dt_proj.stride(0), dt, Bm, Cm, I, i_per_prog, eps, xr, xr.stride(0), state,
                             *state.stride(), R=R, N=N, BLOCK_M=bm, BLOCK_I=cfg.block_i,
                             BLOCK_R=max(16, triton.next_power_of_2(R)), BLOCK_N=max(16, triton.next_power_of_2(N)),
                             CONV_W=state.shape[2] if conv is not None else 0, num_warps=cfg.num_warps,
                             num_stages=cfg.num_stages)
    return dt, Bm, Cm


def load_configs(path: str) -> dict:
    """Tilings by name from JSON (`gemm_bench --best-out`, `gemm_step_ab --best-out`): GemmConfig fields, or
    SsmInputsConfig fields under "ssm_inputs"; null keeps that GEMM on cuBLAS."""
    with open(path) as f:
        data = json.load(f)
    try:
        return {name: None if fields is None else (SsmInputsConfig if name == "ssm_inputs" else GemmConfig)(**fields)
                for name, fields in data.items()}
    except TypeError as e:
        raise HymbaDeployError(f"{path}: not a GEMM tiling file ({e})") from None
