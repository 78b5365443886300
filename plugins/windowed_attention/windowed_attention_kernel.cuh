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

#include "../common/kernel_choice.h"
#include "../common/kernel_common.cuh"
#include "windowed_attention_decode_kernel.cuh"
#include "windowed_attention_prefill_kernel.cuh"
#include "windowed_attention_kernel.h"

#include <algorithm>
#include <cfloat>
#include <cooperative_groups.h>
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
    kVecOut = 8,
    kVecAll = kVecQ | kVecK | kVecV | kVecOut,
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
    int const Tk = keyCount(p, b);
    int const qOffset = Tk - p.q_len; // key index of query 0

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
            if (kv < Tk)
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
    if (ok(p.out, p.out_batch_stride, p.out_time_stride, p.out_head_stride, p.v_dim))
        f |= kVecOut;
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

/*
 * Decode path (small Tq): split-KV ("flash-decoding") with the GQA group in registers.
 *
 * A block owns R rows (query, query head of the group) of one (batch, kv head) and one of nSplit
 * contiguous slices of the visible keys; each K/V row is read from global memory once, 16 bytes per lane
 * straight to registers, and serves all R rows. Visible keys are walked as a "virtual" range: the meta
 * prefix below the window, then the window up to the last query, so splits share out only keys that can
 * be visible (the exact mask is still applied per key and row).
 *
 * Warp step: KPW = 32 / KL keys, KL = Dqk / VW lanes per key for K (VW elements of 16 bytes each); the KL
 * lanes reduce q·k with xor shuffles. For V each lane owns a fixed VW-column chunk and VPL keys of the
 * step, fetches their scores by shuffle and keeps its own fp32 online softmax (m, l, acc) per row.
 * Merge: the lanes' partials meet in shared memory (one per (warp, key slot)), then, when nSplit > 1, the
 * nSplit blocks of a thread-block cluster (sm_90, cluster size <= 8) merge through distributed shared
 * memory, each writing a slice of the output. No workspace and one launch; without clusters (older
 * architectures) nSplit is 1.
 */
namespace wad
{

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxSplits = 8; // portable cluster size
constexpr int kUnroll = 2;    // warp steps whose loads are issued before the first use

template <typename T, int DQK, int DV, int R>
struct Shape
{
    static constexpr int VW = 16 / int(sizeof(T)); // elements per 16-byte vector
    static constexpr int KL = DQK / VW;            // lanes per key for K
    static constexpr int KPW = 32 / KL;            // keys per warp step
    static constexpr int VC = DV / VW;             // lanes per key for V (column chunks)
    static constexpr int VPL = KPW * VC / 32;      // V vectors (keys) per lane per step
    static constexpr int P = kWarps * (32 / VC);   // lane partials per block
    static constexpr int kSmemFloats = (P + 1) * R * (DV + 2);
    static_assert(DQK % VW == 0 && KL >= 1 && KL <= 32 && (KL & (KL - 1)) == 0, "unsupported q/k head dim");
    static_assert(DV % VW == 0 && VC >= KL && VC <= 32 && VPL >= 1, "unsupported v head dim");
    static_assert(kSmemFloats * 4 <= 48 * 1024, "decode shared memory above the default limit");
};

template <typename T, int DQK, int DV, int R>
__global__ void __launch_bounds__(kThreads) decodeKernel(WindowedAttentionParams const p, int const nSplit)
{
    using S = Shape<T, DQK, DV, R>;
    constexpr int VW = S::VW, KL = S::KL, KPW = S::KPW, VC = S::VC, VPL = S::VPL, P = S::P;
    constexpr int kStep = kWarps * KPW; // keys per block step
    extern __shared__ float4 smem4[];
    float* partM = reinterpret_cast<float*>(smem4); // [P][R]
    float* partL = partM + P * R;                   // [P][R]
    float* partAcc = partL + P * R;                 // [P][R][DV]
    float* blkM = partAcc + P * R * DV;             // [R]
    float* blkL = blkM + R;                         // [R]
    float* blkAcc = blkL + R;                       // [R][DV]

    int const G = p.num_q_heads / p.num_kv_heads;
    int const split = blockIdx.x % nSplit;
    int const row0 = (blockIdx.x / nSplit) * R;
    int const g = blockIdx.y;
    int const b = blockIdx.z;
    int const nr = min(R, p.q_len * G - row0); // rows of this tile (block-uniform)
    int const lane = threadIdx.x & 31;
    int const warp = threadIdx.x >> 5;
    int const qOffset = keyCount(p, b) - p.q_len;
    bool const windowed = p.window > 0;

    // 1. q rows (scaled to log2 units), this lane's K chunk only; padding rows see nothing.
    int const kc = lane % KL;
    float const qScale = p.scale * kLOG2E;
    T const* qg = static_cast<T const*>(p.q) + b * p.q_batch_stride;
    float q[R][VW];
    int qpos[R];
#pragma unroll
    for (int r = 0; r < R; ++r)
    {
        qpos[r] = -1;
#pragma unroll
        for (int e = 0; e < VW; ++e)
            q[r][e] = 0.f;
        if (r < nr)
        {
            int const gr = row0 + r;
            int const qi = gr / G;
            T const* qrow = qg + qi * p.q_time_stride + (g * G + gr % G) * p.q_head_stride + kc * VW;
#pragma unroll
            for (int e = 0; e < VW; ++e)
                q[r][e] = toFloat(qrow[e]) * qScale;
            qpos[r] = qOffset + qi;
        }
    }

    // 2. This split's slice of the virtual key range [meta prefix below the window) + [window .. last query].
    int const qLo = qOffset + row0 / G;
    int const qHi = qOffset + (row0 + nr - 1) / G;
    int const winLo = windowed ? max(0, qLo - p.window) : 0;
    int const metaEnd = windowed ? min(p.num_meta, winLo) : 0;
    int const nVirt = metaEnd + (qHi + 1 - winLo);
    int const per = (nVirt + nSplit - 1) / nSplit;
    int const v0 = split * per;
    int const v1 = min(nVirt, v0 + per);
    auto realKey = [&](int v) { return v < metaEnd ? v : winLo + (v - metaEnd); };

    T const* kg = static_cast<T const*>(p.k) + b * p.k_batch_stride + g * p.k_head_stride + kc * VW;
    int const vcol = (lane % VC) * VW;
    T const* vg = static_cast<T const*>(p.v) + b * p.v_batch_stride + g * p.v_head_stride + vcol;
    int const kSlot = lane / KL;  // key of this lane's K chunk within the warp step
    int const vSlot0 = lane / VC; // key of this lane's V chunk j: j * (32 / VC) + vSlot0

    float m[R], l[R], acc[R][VW];
#pragma unroll
    for (int r = 0; r < R; ++r)
    {
        m[r] = -INFINITY;
        l[r] = 0.f;
#pragma unroll
        for (int e = 0; e < VW; ++e)
            acc[r][e] = 0.f;
    }

    // 3. Stream K/V: kUnroll warp steps of loads in flight, then scores, mask, online softmax, P·V.
    for (int base = v0 + warp * KPW; base < v1; base += kStep * kUnroll)
    {
        Vec<T, VW> kv[kUnroll];
        Vec<T, VW> vv[kUnroll][VPL];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
        {
            int const vk = base + u * kStep + kSlot;
            if (vk < v1)
                kv[u] = *reinterpret_cast<Vec<T, VW> const*>(kg + int64_t(realKey(vk)) * p.k_time_stride);
            else
#pragma unroll
                for (int e = 0; e < VW; ++e)
                    kv[u].v[e] = fromFloat<T>(0.f);
#pragma unroll
            for (int j = 0; j < VPL; ++j)
            {
                int const vk2 = base + u * kStep + j * (32 / VC) + vSlot0;
                if (vk2 < v1)
                    vv[u][j] = *reinterpret_cast<Vec<T, VW> const*>(vg + int64_t(realKey(vk2)) * p.v_time_stride);
                else
#pragma unroll
                    for (int e = 0; e < VW; ++e)
                        vv[u][j].v[e] = fromFloat<T>(0.f);
            }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
        {
            int const vk = base + u * kStep + kSlot;
            int const kvIdx = realKey(vk);
            float kf[VW];
#pragma unroll
            for (int e = 0; e < VW; ++e)
                kf[e] = toFloat(kv[u].v[e]);
            float s[R];
#pragma unroll
            for (int r = 0; r < R; ++r)
            {
                s[r] = -INFINITY;
                if (r < nr)
                {
                    float d = 0.f;
#pragma unroll
                    for (int e = 0; e < VW; ++e)
                        d = fmaf(q[r][e], kf[e], d);
#pragma unroll
                    for (int off = KL / 2; off > 0; off >>= 1)
                        d += __shfl_xor_sync(0xffffffffu, d, off);
                    int const qp = qpos[r];
                    bool const vis = vk < v1 && kvIdx <= qp && (!windowed || qp - kvIdx <= p.window || kvIdx < p.num_meta);
                    s[r] = vis ? d : -INFINITY;
                }
            }
#pragma unroll
            for (int j = 0; j < VPL; ++j)
            {
                int const src = (j * (32 / VC) + vSlot0) * KL; // a lane holding that key's scores
                float vf[VW];
#pragma unroll
                for (int e = 0; e < VW; ++e)
                    vf[e] = toFloat(vv[u][j].v[e]);
#pragma unroll
                for (int r = 0; r < R; ++r)
                {
                    if (r < nr)
                    {
                        float const sv = __shfl_sync(0xffffffffu, s[r], src);
                        if (sv != -INFINITY)
                        {
                            if (sv > m[r])
                            {
                                float const alpha = fastExp2(m[r] - sv); // 0 on the first visible key
                                l[r] *= alpha;
#pragma unroll
                                for (int e = 0; e < VW; ++e)
                                    acc[r][e] *= alpha;
                                m[r] = sv;
                            }
                            float const pr = fastExp2(sv - m[r]);
                            l[r] += pr;
#pragma unroll
                            for (int e = 0; e < VW; ++e)
                                acc[r][e] = fmaf(pr, vf[e], acc[r][e]);
                        }
                    }
                }
            }
        }
    }

    // 4. Lane partials -> shared memory; lanes of one key slot share (m, l) and split the columns.
    int const pIdx = warp * (32 / VC) + vSlot0;
#pragma unroll
    for (int r = 0; r < R; ++r)
    {
        if (lane % VC == 0)
        {
            partM[pIdx * R + r] = m[r];
            partL[pIdx * R + r] = l[r];
        }
#pragma unroll
        for (int e = 0; e < VW; ++e)
            partAcc[(pIdx * R + r) * DV + vcol + e] = acc[r][e];
    }
    __syncthreads();

    T* og = static_cast<T*>(p.out) + b * p.out_batch_stride;
    auto store = [&](int r, int c, float a, float sum) {
        int const gr = row0 + r;
        og[(gr / G) * p.out_time_stride + (g * G + gr % G) * p.out_head_stride + c]
            = fromFloat<T>(sum > 0.f ? a / sum : 0.f);
    };

    // 5. Block merge: one thread per (row, column).
    for (int idx = threadIdx.x; idx < nr * DV; idx += kThreads)
    {
        int const r = idx / DV;
        int const c = idx % DV;
        float mx = -INFINITY;
#pragma unroll 8
        for (int i = 0; i < P; ++i)
            mx = fmaxf(mx, partM[i * R + r]);
        float sum = 0.f, a = 0.f;
#pragma unroll 8
        for (int i = 0; i < P; ++i)
        {
            float const mi = partM[i * R + r];
            float const w = mi == -INFINITY ? 0.f : fastExp2(mi - mx);
            sum = fmaf(w, partL[i * R + r], sum);
            a = fmaf(w, partAcc[(i * R + r) * DV + c], a);
        }
        if (nSplit == 1)
            store(r, c, a, sum);
        else
        {
            blkAcc[r * DV + c] = a;
            if (c == 0)
            {
                blkM[r] = mx;
                blkL[r] = sum;
            }
        }
    }

    // 6. Cluster merge over the nSplit blocks of this tile (distributed shared memory), a slice per block.
    if (nSplit > 1)
        clusterMergeSplits<DV, kThreads>(blkM, blkL, blkAcc, nr, nSplit, store);
}

//! Splits over keys (a power of two <= 8): at least 16 blocks per SM (~5 waves of 3 resident blocks, so
//! the last wave's tail stays small), each split keeping >= 2 iterations of the block's key loop.
inline int chooseSplits(int64_t blocks, int nVirt, int keysPerIter, int sms)
{
    int n = 1;
    while (n < kMaxSplits && blocks * n < int64_t(16) * sms && nVirt >= 2 * n * 2 * keysPerIter)
        n *= 2;
    return n;
}

template <typename T, int DQK, int DV, int R>
cudaError_t launch(WindowedAttentionParams const& p, cudaStream_t stream, int sms)
{
    using S = Shape<T, DQK, DV, R>;
    auto kernel = decodeKernel<T, DQK, DV, R>;
    size_t const smem = size_t(S::kSmemFloats) * sizeof(float);
    cudaFuncAttributes fa{};
    cudaError_t const err = cudaFuncGetAttributes(&fa, kernel);
    if (err != cudaSuccess)
        return err;

    int const G = p.num_q_heads / p.num_kv_heads;
    int const tiles = (p.q_len * G + R - 1) / R;
    // Virtual key count of the whole problem (an upper bound for every tile's).
    bool const windowed = p.window > 0;
    int const winLo = windowed ? std::max(0, p.kv_len - p.q_len - p.window) : 0;
    int const metaEnd = windowed ? std::min(p.num_meta, winLo) : 0;
    int const nVirt = metaEnd + (p.kv_len - winLo);
    int64_t const blocks = int64_t(tiles) * p.num_kv_heads * p.batch;
    // Clusters only where the kernel's cluster merge was compiled in: `ptxVersion` is the architecture the
    // kernel was compiled for (its __CUDA_ARCH__), whereas `binaryVersion` is the one the driver JIT-compiled
    // it to (90 on an H200 running an 80-virtual build, whose merge is compiled out and traps).
    int nSplit = fa.ptxVersion >= 90 ? chooseSplits(blocks, nVirt, kWarps * S::KPW * kUnroll, sms) : 1;

    dim3 grid(unsigned(tiles * nSplit), unsigned(p.num_kv_heads), unsigned(p.batch));
    if (nSplit > 1)
    {
        ClusterLaunch const launch(grid, kThreads, smem, stream, nSplit);
        if (cudaLaunchKernelEx(&launch.cfg, kernel, p, nSplit) == cudaSuccess)
        {
            HYMBA_LAUNCH_CHECK();
            return cudaSuccess;
        }
        (void) cudaGetLastError(); // no cluster launch here: one block per tile instead
        nSplit = 1;
        grid.x = unsigned(tiles);
    }
    kernel<<<grid, kThreads, smem, stream>>>(p, nSplit);
    HYMBA_LAUNCH_CHECK();
    return cudaSuccess;
}

//! Rows per block: 2, 5 (Hymba: G = 5) or 8, the fewest padded rows.
template <typename T, int DQK, int DV>
cudaError_t launchR(WindowedAttentionParams const& p, cudaStream_t stream, int rows, int sms)
{
    if (rows <= 2)
        return launch<T, DQK, DV, 2>(p, stream, sms);
    if (rows <= 5 || rows % 5 == 0)
        return launch<T, DQK, DV, 5>(p, stream, sms);
    return launch<T, DQK, DV, 8>(p, stream, sms);
}

//! The split-KV path for decode and small Tq (<= 32 rows), when K and V rows load as 16-byte vectors,
//! the head dims are instantiated and (unless `force`) the other kernels would leave SMs idle (fewer
//! (batch, kv head) pairs than SMs); returns false (nothing launched) otherwise. Measured on one H200
//! (hymba-1.5b, bf16, 8k context, serving decode step): batch 1 7.20 -> 4.24 ms with this path, but batch
//! 128 20.6 ms without it vs 24.4 ms with it, so large batches take another kernel.
template <typename T>
bool tryLaunch(WindowedAttentionParams const& p, cudaStream_t stream, bool force, cudaError_t& status)
{
    int64_t const rows = int64_t(p.q_len) * (p.num_q_heads / p.num_kv_heads);
    int const vf = wak::vecFlagsFor<T>(p);
    if (rows > 32 || (vf & wak::kVecK) == 0 || (vf & wak::kVecV) == 0)
        return false;
    int sms = 0;
    status = currentSmCount(sms);
    if (status != cudaSuccess)
        return true;                                   // report the error, launch nothing
    if (!force && int64_t(p.batch) * p.num_kv_heads >= sms)
        return false;                                  // enough blocks already
    int const r = int(rows);
    if (p.qk_dim == 64 && p.v_dim == 128)
        status = launchR<T, 64, 128>(p, stream, r, sms);
    else if (p.qk_dim == 64 && p.v_dim == 64)
        status = launchR<T, 64, 64>(p, stream, r, sms);
    else if (p.qk_dim == 128 && p.v_dim == 128)
        status = launchR<T, 128, 128>(p, stream, r, sms);
    else if (p.qk_dim == 16 && p.v_dim == 32)
        status = launchR<T, 16, 32>(p, stream, r, sms);
    else
        return false;
    return true;
}

} // namespace wad

//! Which kernel serves a call. The `attention` kernel choice (common/kernel_choice.h; for A/B runs and tests)
//! narrows it: `split`, `mma` or `prefill` pick that kernel wherever it applies (else the general kernel),
//! `flash` keeps the general CUDA-core kernel for every call; `auto`: the tensor-core decode kernel (fp16 /
//! bf16, <= 8 rows; its keys split across a cluster below one (batch, kv head) per SM), then the CUDA-core
//! split-KV kernel below one (batch, kv head) per SM (fp32, 9..32 rows), then the tensor-core prefill kernel
//! (fp16 / bf16, aligned rows), then the general kernel. Values in the order of the choice names.
enum class AttnPath
{
    kAuto,
    kSplit,
    kMma,
    kPrefill,
    kFlash,
};

template <typename T>
cudaError_t windowedAttentionLaunchT(WindowedAttentionParams const& p, cudaStream_t stream)
{
    if (p.batch == 0 || p.q_len == 0)
        return cudaSuccess;
    AttnPath const path = static_cast<AttnPath>(kernelChoice(KernelFamily::kAttention));
    auto allowed = [path](AttnPath k) { return path == AttnPath::kAuto || path == k; };
    cudaError_t status = cudaSuccess;
    int const vf = wak::vecFlagsFor<T>(p);
    bool const kvVec = (vf & wak::kVecK) != 0 && (vf & wak::kVecV) != 0;
    if (allowed(AttnPath::kMma) && wam::tryLaunch<T>(p, stream, kvVec, status))
        return status;
    if (allowed(AttnPath::kSplit) && wad::tryLaunch<T>(p, stream, path == AttnPath::kSplit, status))
        return status;
    if (allowed(AttnPath::kPrefill) && wap::tryLaunch<T>(p, stream, vf == wak::kVecAll, status))
        return status;
    int64_t const rows = int64_t(p.q_len) * (p.num_q_heads / p.num_kv_heads);
    return rows <= 8 ? wak::launchDv<T, 8, 32>(p, stream) : wak::launchDv<T, 64, 16>(p, stream);
}

} // namespace hymba
