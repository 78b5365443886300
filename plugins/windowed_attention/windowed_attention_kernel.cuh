/*
 * The templated WindowedAttention kernel (flash-style: online softmax, the Tq×Tk scores never stored)
 * and its launcher; per-dtype .cu files instantiate it.
 *
 * A block owns BQ "rows" of one (batch, kv head): row r is (query r / G, query head g·G + r % G) with
 * G = Hq / Hkv, so the G heads that share a kv head share every K/V tile staged in shared memory.
 * Decode (Tq = 1) packs its G heads into one BQ = 8 block; prefill uses BQ = 64.
 * Key tiles of 64 outside the window and the meta prefix are skipped. 256 threads form an RG×CG grid
 * (16×16 for prefill, 8×32 for decode): thread (rg, cg) holds rows rg·TM..+TM and columns cg, cg+CG, ...
 * of the score and output tiles, so a row's softmax reductions stay inside one warp (shuffles).
 * Global loads are 16 bytes wide when the head rows are aligned.
 * All math on CUDA cores in fp32.
 */
#pragma once

#include "../common/kernel_common.cuh"
#include "windowed_attention_kernel.h"

#include <cfloat>
#include <cstdint>

namespace hymba
{
namespace wak
{

constexpr int kBK = 64;
constexpr int kThreads = 256;
constexpr int kKtStride = kBK + 1; // padded row of the transposed K tile: fewer bank conflicts on stores

__host__ __device__ constexpr int smemFloats(int bq, int dqk, int dv)
{
    return bq * dqk + dqk * kKtStride + kBK * dv + bq * kBK;
}

enum VecFlags : int
{
    kVecQ = 1,
    kVecK = 2,
    kVecV = 4,
};

//! Reads row[0..n) (n a multiple of VW when vec) as fp32 into dst[0..n) with stride dstStride.
template <typename T>
__device__ __forceinline__ void loadRow(
    T const* row, int n, bool vec, float* dst, int dstStride, float mul, int lane, int lanes)
{
    constexpr int VW = 16 / sizeof(T);
    if (vec)
    {
        for (int c = lane; c < n / VW; c += lanes)
        {
            Vec<T, VW> const v = *reinterpret_cast<Vec<T, VW> const*>(row + c * VW);
#pragma unroll
            for (int e = 0; e < VW; ++e)
                dst[(c * VW + e) * dstStride] = toFloat(v.v[e]) * mul;
        }
    }
    else
    {
        for (int c = lane; c < n; c += lanes)
            dst[c * dstStride] = toFloat(row[c]) * mul;
    }
}

//! Thread layout: RG = 256 / CG row groups × CG column groups; a row group's CG lanes share one warp.
template <typename T, int BQ, int DV, int CG>
__global__ void __launch_bounds__(kThreads) windowedAttentionKernel(WindowedAttentionParams const p, int const vecFlags)
{
    constexpr int RG = kThreads / CG;
    constexpr int TM = BQ / RG;   // rows per thread
    constexpr int TNS = kBK / CG; // score columns per thread
    constexpr int TNO = DV / CG;  // output columns per thread
    static_assert(TM >= 1 && TNS >= 1 && TNO >= 1 && CG <= 32, "bad tile shape");
    extern __shared__ float4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    int const DQK = p.qk_dim;
    float* Qs = smem;                 // [BQ][DQK], pre-scaled by scale·log2(e)
    float* Kt = Qs + BQ * DQK;        // [DQK][kKtStride]
    float* Vs = Kt + DQK * kKtStride; // [kBK][DV]
    float* Ps = Vs + kBK * DV;        // [BQ][kBK]

    int const G = p.num_q_heads / p.num_kv_heads;
    int const b = blockIdx.z;
    int const g = blockIdx.y;
    int const row0 = blockIdx.x * BQ;
    int const nRows = p.q_len * G;
    int const tid = threadIdx.x;
    int const rg = tid / CG;
    int const cg = tid % CG;
    int const qOffset = p.kv_len - p.q_len; // key index of query 0

    T const* qg = static_cast<T const*>(p.q) + b * p.q_batch_stride;
    T const* kg = static_cast<T const*>(p.k) + b * p.k_batch_stride + g * p.k_head_stride;
    T const* vg = static_cast<T const*>(p.v) + b * p.v_batch_stride + g * p.v_head_stride;

    // Q tile: one row per group of 8 threads.
    float const qScale = p.scale * kLOG2E;
    for (int r = tid / 8; r < BQ; r += kThreads / 8)
    {
        int const gr = row0 + r;
        if (gr < nRows)
        {
            int const qi = gr / G;
            int const h = g * G + gr % G;
            loadRow(qg + qi * p.q_time_stride + h * p.q_head_stride, DQK, vecFlags & kVecQ, Qs + r * DQK, 1, qScale,
                tid % 8, 8);
        }
        else
        {
            for (int c = tid % 8; c < DQK; c += 8)
                Qs[r * DQK + c] = 0.f;
        }
    }

    int qpos[TM];
#pragma unroll
    for (int i = 0; i < TM; ++i)
    {
        int const gr = row0 + rg * TM + i;
        qpos[i] = gr < nRows ? qOffset + gr / G : -1; // -1: padding row, sees nothing
    }
    int const qLo = qOffset + row0 / G;
    int const qHi = qOffset + (min(row0 + BQ, nRows) - 1) / G;
    bool const windowed = p.window > 0;
    int const winLo = windowed ? max(0, qLo - p.window) : 0;

    float m[TM], l[TM], o[TM][TNO];
#pragma unroll
    for (int i = 0; i < TM; ++i)
    {
        m[i] = -INFINITY;
        l[i] = 0.f;
#pragma unroll
        for (int j = 0; j < TNO; ++j)
            o[i][j] = 0.f;
    }

    for (int k0 = 0; k0 <= qHi; k0 += kBK)
    {
        if (windowed && k0 >= p.num_meta && k0 + kBK <= winLo)
            continue; // neither meta nor window keys in this tile (uniform across the block)
        __syncthreads(); // the previous tile's readers are done with Kt/Vs (and Qs is complete)
        // K tile transposed, V tile row-major: 4 threads per key row, zeros past the end.
        for (int key = tid / 4; key < kBK; key += kThreads / 4)
        {
            int const kv = k0 + key;
            if (kv < p.kv_len)
            {
                loadRow(kg + int64_t(kv) * p.k_time_stride, DQK, vecFlags & kVecK, Kt + key, kKtStride, 1.f, tid % 4, 4);
                loadRow(vg + int64_t(kv) * p.v_time_stride, DV, vecFlags & kVecV, Vs + key * DV, 1, 1.f, tid % 4, 4);
            }
            else
            {
                for (int c = tid % 4; c < DQK; c += 4)
                    Kt[c * kKtStride + key] = 0.f;
                for (int c = tid % 4; c < DV; c += 4)
                    Vs[key * DV + c] = 0.f;
            }
        }
        __syncthreads();

        // S = Q·Kᵀ for this thread's TM×TNS micro-tile (Q read 4 dims at a time, broadcast).
        float s[TM][TNS];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TNS; ++j)
                s[i][j] = 0.f;
#pragma unroll 2
        for (int dd = 0; dd < DQK; dd += 4)
        {
            float4 a[TM];
#pragma unroll
            for (int i = 0; i < TM; ++i)
                a[i] = *reinterpret_cast<float4 const*>(Qs + (rg * TM + i) * DQK + dd);
#pragma unroll
            for (int e = 0; e < 4; ++e)
            {
                float kk[TNS];
#pragma unroll
                for (int j = 0; j < TNS; ++j)
                    kk[j] = Kt[(dd + e) * kKtStride + cg + CG * j];
#pragma unroll
                for (int i = 0; i < TM; ++i)
                {
                    float const ai = e == 0 ? a[i].x : e == 1 ? a[i].y : e == 2 ? a[i].z : a[i].w;
#pragma unroll
                    for (int j = 0; j < TNS; ++j)
                        s[i][j] = fmaf(ai, kk[j], s[i][j]);
                }
            }
        }

        // Mask, online softmax (base 2), P to shared memory for this warp's rows.
#pragma unroll
        for (int i = 0; i < TM; ++i)
        {
            float mx = m[i];
#pragma unroll
            for (int j = 0; j < TNS; ++j)
            {
                int const kv = k0 + cg + CG * j;
                int const q = qpos[i];
                bool const vis = kv <= q && (!windowed || q - kv <= p.window || kv < p.num_meta);
                s[i][j] = vis ? s[i][j] : -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
#pragma unroll
            for (int off = CG / 2; off > 0; off >>= 1)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            float const base = mx == -INFINITY ? 0.f : mx;
            float const alpha = fastExp2(m[i] - base);
            m[i] = mx;
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < TNS; ++j)
            {
                float const pj = fastExp2(s[i][j] - base);
                sum += pj;
                Ps[(rg * TM + i) * kBK + cg + CG * j] = pj;
            }
            l[i] = l[i] * alpha + sum;
#pragma unroll
            for (int j = 0; j < TNO; ++j)
                o[i][j] *= alpha;
        }
        __syncwarp();

        // O += P·V (P read 4 keys at a time, broadcast).
#pragma unroll 2
        for (int kk = 0; kk < kBK; kk += 4)
        {
            float4 pp[TM];
#pragma unroll
            for (int i = 0; i < TM; ++i)
                pp[i] = *reinterpret_cast<float4 const*>(Ps + (rg * TM + i) * kBK + kk);
#pragma unroll
            for (int e = 0; e < 4; ++e)
            {
                float vv[TNO];
#pragma unroll
                for (int j = 0; j < TNO; ++j)
                    vv[j] = Vs[(kk + e) * DV + cg + CG * j];
#pragma unroll
                for (int i = 0; i < TM; ++i)
                {
                    float const pi = e == 0 ? pp[i].x : e == 1 ? pp[i].y : e == 2 ? pp[i].z : pp[i].w;
#pragma unroll
                    for (int j = 0; j < TNO; ++j)
                        o[i][j] = fmaf(pi, vv[j], o[i][j]);
                }
            }
        }
        __syncwarp(); // Ps is rewritten by the same warp next tile
    }

    T* og = static_cast<T*>(p.out) + b * p.out_batch_stride;
#pragma unroll
    for (int i = 0; i < TM; ++i)
    {
        float sum = l[i];
#pragma unroll
        for (int off = CG / 2; off > 0; off >>= 1)
            sum += __shfl_xor_sync(0xffffffffu, sum, off);
        int const gr = row0 + rg * TM + i;
        if (gr >= nRows)
            continue;
        int const qi = gr / G;
        int const h = g * G + gr % G;
        float const inv = sum > 0.f ? 1.f / sum : 0.f;
        T* orow = og + qi * p.out_time_stride + h * p.out_head_stride;
#pragma unroll
        for (int j = 0; j < TNO; ++j)
            orow[cg + CG * j] = fromFloat<T>(o[i][j] * inv);
    }
}

template <typename T>
int vecFlagsFor(WindowedAttentionParams const& p)
{
    constexpr int VW = 16 / sizeof(T);
    auto ok = [](void const* ptr, int64_t s0, int64_t s1, int64_t s2, int dim) {
        return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && s0 % VW == 0 && s1 % VW == 0 && s2 % VW == 0
            && dim % VW == 0;
    };
    int f = 0;
    if (ok(p.q, p.q_batch_stride, p.q_time_stride, p.q_head_stride, p.qk_dim))
        f |= kVecQ;
    if (ok(p.k, p.k_batch_stride, p.k_time_stride, p.k_head_stride, p.qk_dim))
        f |= kVecK;
    if (ok(p.v, p.v_batch_stride, p.v_time_stride, p.v_head_stride, p.v_dim))
        f |= kVecV;
    return f;
}

template <typename T, int BQ, int DV, int CG>
cudaError_t launch(WindowedAttentionParams const& p, cudaStream_t stream)
{
    size_t const smem = size_t(smemFloats(BQ, p.qk_dim, DV)) * sizeof(float);
    auto kernel = windowedAttentionKernel<T, BQ, DV, CG>;
    int device = 0;
    int maxSmem = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess)
        err = cudaDeviceGetAttribute(&maxSmem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess)
        return err;
    if (smem > size_t(maxSmem))
        return cudaErrorInvalidConfiguration;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess)
        return err;
    int const G = p.num_q_heads / p.num_kv_heads;
    int64_t const rows = int64_t(p.q_len) * G;
    dim3 const grid(unsigned((rows + BQ - 1) / BQ), p.num_kv_heads, p.batch);
    kernel<<<grid, kThreads, smem, stream>>>(p, vecFlagsFor<T>(p));
    HYMBA_LAUNCH_CHECK();
    return cudaSuccess;
}

//! Prefill: 64 rows (16 row groups × 16 lanes). Decode (<= 8 rows: one query's GQA group): 8 rows × 32 lanes.
template <typename T, int BQ, int CG>
cudaError_t launchDv(WindowedAttentionParams const& p, cudaStream_t stream)
{
    switch (p.v_dim)
    {
    case 32: return launch<T, BQ, 32, CG>(p, stream);
    case 64: return launch<T, BQ, 64, CG>(p, stream);
    case 128: return launch<T, BQ, 128, CG>(p, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace wak

template <typename T>
cudaError_t windowedAttentionLaunchT(WindowedAttentionParams const& p, cudaStream_t stream)
{
    if (p.batch == 0 || p.q_len == 0)
        return cudaSuccess;
    int64_t const rows = int64_t(p.q_len) * (p.num_q_heads / p.num_kv_heads);
    return rows <= 8 ? wak::launchDv<T, 8, 32>(p, stream) : wak::launchDv<T, 64, 16>(p, stream);
}

} // namespace hymba
