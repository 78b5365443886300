/*
 * WindowedAttention prefill on tensor cores (fp16 / bf16): FlashAttention-2 style forward on sm_80
 * `mma.sync` (one source for the A100 target and the H100/H200).
 *
 * Ground truth: hymba_deploy.ops.windowed_attention_ref (the mask rule is in windowed_attention_kernel.h).
 *
 * Rows. Row r of a (batch, kv head) is (query r / G, query head kv·G + r % G), G = Hq / Hkv: the G query
 * heads of a GQA group are packed into the M dimension, so every K/V tile staged in shared memory serves
 * all of them (Hymba: 5). A block (kWarps = 4 warps) owns kBM = 64·kMT consecutive rows; warp w owns
 * rows w·16·kMT .. +16·kMT (kMT m16 tiles). Blocks run heaviest first (the latest queries see the most
 * keys under the causal mask), kv heads and batch fastest.
 *
 * Keys. The block's visible keys, the meta prefix [0, num_meta) below the window and the window
 * [first query − window, last query], are walked in tiles of kBN = 64 keys (window tiles start at the
 * window's first key); keys in neither are never loaded. Tiles stream through a kStages-deep cp.async
 * ring (16-byte copies into XOR-swizzled rows, one block barrier per tile). Keys past the end of the
 * cache load the last row (finite) and are masked. The block's Q rows sit in shared memory beside the
 * ring (Q fragments kept in registers next to a Dv 128 accumulator would spill).
 *
 * Per tile and warp (m16n8k16, fp32 accumulators):
 *   S (16·kMT × 64)  = Q · Kᵀ        Q and K fragments via ldmatrix
 *   online softmax    exp2 with scale·log2(e) folded into one FFMA; masked (−inf) only on tiles that
 *                     straddle the causal diagonal or the window's lower edge; a row whose max is still
 *                     −inf uses 0 as its reference (exp2(−inf) = 0, never inf − inf); O is rescaled only
 *                     when some row's max moved (a warp vote)
 *   O (16·kMT × Dv) += P · V        P packed from S's accumulators (no shared-memory round trip), V via
 *                                    ldmatrix.trans
 * The output is normalised, converted and staged through shared memory for 16-byte row stores.
 *
 * Head dims: Dqk ∈ {16, 32, 64, 128} compiled (a smaller multiple of 8 runs in the next one up with zero
 * padding), Dv ∈ {32, 64, 128}. Needs 16-byte aligned rows of q, k, v and out (the launcher checks).
 */
#pragma once

#include "../common/kernel_common.cuh"
#include "../common/mma_sm80.cuh"
#include "windowed_attention_kernel.h"

#include <cstdint>
#include <type_traits>

namespace hymba
{
namespace wap
{

// Tuning hooks: tools/attn_prefill_tune.py rebuilds this kernel with other values (-D...) and
// times them (bench/results/attn_prefill_tune_h200_2026-11-30.json: 64 keys × 2 stages).
#ifndef HYMBA_WAP_BN
#define HYMBA_WAP_BN 64
#endif
#ifndef HYMBA_WAP_STAGES
#define HYMBA_WAP_STAGES 2
#endif
constexpr int kBN = HYMBA_WAP_BN;         // keys per tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kStages = HYMBA_WAP_STAGES; // cp.async ring depth (kStages - 1 tiles in flight)

template <int DQK, int DV>
struct Shape
{
    // m16 tiles per warp: 2 (32 rows: each K/V fragment from shared memory feeds two MMAs).
    static constexpr int kMT = 2;
    static constexpr int kBM = kWarps * 16 * kMT; // rows per block
    static constexpr int KCH = DQK / 8;           // 16-byte chunks per K row
    static constexpr int VCH = DV / 8;            // 16-byte chunks per V row
    static constexpr int kQBytes = kBM * DQK * 2;
    static constexpr int kStageBytes = kBN * (DQK + DV) * 2;
    static constexpr int kOutStride = DV + 8;     // elements per staged output row (16-byte aligned, no conflicts)
    static constexpr int kOutBytes = kBM * kOutStride * 2;
    static constexpr int kMainBytes = kQBytes + kStages * kStageBytes;
    static constexpr int kSmemBytes = kMainBytes > kOutBytes ? kMainBytes : kOutBytes;
    static constexpr int kMinBlocks = 2; // resident blocks per SM (register budget: <= 255 per thread)
    static_assert(DQK % 16 == 0 && DQK >= 16 && DQK <= 128, "q/k head dim: 16..128, a multiple of 16");
    static_assert(DV == 32 || DV == 64 || DV == 128, "v head dim: 32, 64 or 128");
};

template <typename T, int DQK, int DV>
__global__ void __launch_bounds__(kThreads, Shape<DQK, DV>::kMinBlocks)
    prefillKernel(WindowedAttentionParams const p, int const rowTiles)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using S = Shape<DQK, DV>;
    using M = MmaType<T>;
    constexpr int kMT = S::kMT, KCH = S::KCH, VCH = S::VCH;
    constexpr int NS = kBN / 8; // n-tiles of S per tile
    constexpr int NO = DV / 8;  // n-tiles of O
    extern __shared__ float4 smem4[];
    unsigned char* smem = reinterpret_cast<unsigned char*>(smem4);

    int const lane = threadIdx.x & 31;
    int const warp = threadIdx.x >> 5;
    int const g = lane >> 2;
    int const t = lane & 3;

    // Block -> (row tile, kv head, batch): kv heads fastest, then batch, row tiles from the last.
    unsigned const id = blockIdx.x;
    int const hkv = int(id % unsigned(p.num_kv_heads));
    unsigned const rest = id / unsigned(p.num_kv_heads);
    int const b = int(rest % unsigned(p.batch));
    int const tile = rowTiles - 1 - int(rest / unsigned(p.batch));

    int const G = p.num_q_heads / p.num_kv_heads;
    int const nRows = p.q_len * G;
    int const row0 = tile * S::kBM;
    int const Tk = keyCount(p, b);
    int const qOffset = Tk - p.q_len; // key index of query 0
    bool const windowed = p.window > 0;
    int const qLo = qOffset + row0 / G;
    int const qHi = qOffset + (min(row0 + S::kBM, nRows) - 1) / G;

    // 1. Positions of this lane's rows (m-tile i, half h: row warp·16·kMT + 16i + 8h + g).
    int qpos[kMT][2];
#pragma unroll
    for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h)
        {
            int const gr = row0 + warp * 16 * kMT + 16 * i + 8 * h + g;
            qpos[i][h] = gr < nRows ? qOffset + gr / G : -1; // padding row: never stored
        }

    // 2. Key tiles: [0, metaEnd) rounded up, then [winLo, qHi] (tiles start at any key: rows are copied one
    // by one, so no rounding down to a tile boundary); one range from key 0 when the two touch.
    int const winLo = windowed ? max(0, qLo - p.window) : 0;
    int const metaEnd = windowed ? min(p.num_meta, winLo) : 0;
    int nA = (metaEnd + kBN - 1) / kBN;
    int bStart = winLo;
    if (nA * kBN >= bStart)
    {
        nA = 0;
        bStart = 0;
    }
    int const nTiles = nA + (qHi - bStart) / kBN + 1;
    auto tileKey0 = [&](int c) { return c < nA ? c * kBN : bStart + (c - nA) * kBN; };

    T const* kg = static_cast<T const*>(p.k) + b * p.k_batch_stride + hkv * p.k_head_stride;
    T const* vg = static_cast<T const*>(p.v) + b * p.v_batch_stride + hkv * p.v_head_stride;
    uint32_t const sQ = uint32_t(__cvta_generic_to_shared(smem));
    uint32_t const ring = sQ + uint32_t(S::kQBytes);
    int const kch = p.qk_dim / 8; // Q/K chunks present in memory (< KCH: the rest stay zero)

    // Q tile [kBM rows][KCH chunks] (swizzled) through cp.async, committed with the first K/V tile; zeros
    // for padding rows and padding chunks. Read back per tile by ldmatrix (registers go to S and O).
    {
        T const* qg = static_cast<T const*>(p.q) + b * p.q_batch_stride;
        for (int j = threadIdx.x; j < S::kBM * KCH; j += kThreads)
        {
            int const r = j / KCH, ch = j % KCH;
            int const gr = row0 + r;
            if (gr < nRows && ch < kch)
            {
                int const qi = gr / G;
                cpAsync16(sQ + swizzle16<KCH>(r, ch),
                    qg + qi * p.q_time_stride + (hkv * G + gr % G) * p.q_head_stride + ch * 8);
            }
            else
                *reinterpret_cast<float4*>(smem + swizzle16<KCH>(r, ch)) = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }

    if (kch < KCH) // zero the padding chunks of every stage once (cp.async never writes them)
    {
        for (int j = threadIdx.x; j < kStages * kBN * KCH; j += kThreads)
        {
            int const st = j / (kBN * KCH), row = (j / KCH) % kBN, ch = j % KCH;
            if (ch >= kch)
                *reinterpret_cast<float4*>(smem + S::kQBytes + st * S::kStageBytes + swizzle16<KCH>(row, ch))
                    = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }

    // Issues the copies of tile i into stage i % kStages (an empty group past the end). Thread j copies
    // chunk j % RC of rows j / RC + pass·(kThreads / RC); kThreads / RC is a multiple of 8 rows, so the
    // swizzled offset of a pass is the first pass's plus a constant.
    constexpr int kKRows = kThreads / KCH, kVRows = kThreads / VCH; // rows per pass
    static_assert(kKRows % 8 == 0 && kVRows % 8 == 0, "copy passes must keep the swizzle pattern");
    int const kRow = threadIdx.x / KCH, kCh = threadIdx.x % KCH;
    int const vRow = threadIdx.x / VCH, vCh = threadIdx.x % VCH;
    uint32_t const kOff = swizzle16<KCH>(kRow, kCh);
    uint32_t const vOff = uint32_t(kBN * DQK * 2) + swizzle16<VCH>(vRow, vCh);
    auto load = [&](int i) {
        if (i < nTiles)
        {
            int const key0 = tileKey0(i);
            uint32_t const stage = ring + uint32_t((i % kStages) * S::kStageBytes);
#pragma unroll
            for (int pass = 0; pass < (kBN + kKRows - 1) / kKRows; ++pass)
            {
                int const key = min(key0 + kRow + pass * kKRows, Tk - 1);
                if (kCh < kch && (kKRows <= kBN || kRow < kBN))
                    cpAsync16(stage + kOff + uint32_t(pass * kKRows * KCH * 16),
                        kg + int64_t(key) * p.k_time_stride + kCh * 8);
            }
#pragma unroll
            for (int pass = 0; pass < (kBN + kVRows - 1) / kVRows; ++pass)
            {
                int const key = min(key0 + vRow + pass * kVRows, Tk - 1);
                if (kVRows <= kBN || vRow < kBN)
                    cpAsync16(stage + vOff + uint32_t(pass * kVRows * VCH * 16),
                        vg + int64_t(key) * p.v_time_stride + vCh * 8);
            }
        }
        cpAsyncCommit();
    };

    // ldmatrix row addresses: per-lane swizzled bases; a k-step / n-tile pair XORs its chunk bits in
    // (an even chunk offset leaves bit 0, the lane's, alone; 16-row steps keep every lane's XOR pattern).
    uint32_t const qBase = uint32_t(warp * kMT * 16 * KCH * 16) + swizzle16<KCH>(lane & 15, lane >> 4);
    uint32_t const kBase = swizzle16<KCH>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
    uint32_t const vBase = swizzle16<VCH>((lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);

    float const sl2 = p.scale * kLOG2E;
    float m[kMT][2], l[kMT][2];
    float o[kMT][NO][4];
#pragma unroll
    for (int i = 0; i < kMT; ++i)
    {
#pragma unroll
        for (int h = 0; h < 2; ++h)
        {
            m[i][h] = -INFINITY;
            l[i][h] = 0.f;
        }
#pragma unroll
        for (int n = 0; n < NO; ++n)
            o[i][n][0] = o[i][n][1] = o[i][n][2] = o[i][n][3] = 0.f;
    }

#pragma unroll
    for (int i = 0; i < kStages - 1; ++i)
        load(i);

    for (int it = 0; it < nTiles; ++it)
    {
        cpAsyncWait<kStages - 2>(); // this thread's copies of tile `it` have landed
        __syncthreads();            // ... and every thread's; stage (it - 1) % kStages is free again
        load(it + kStages - 1);

        uint32_t const sK = ring + uint32_t((it % kStages) * S::kStageBytes);
        uint32_t const sV = sK + kBN * DQK * 2;
        int const key0 = tileKey0(it);

        // S = Q·Kᵀ: per k-step, one ldmatrix.x4 gives the B fragments of two n-tiles (16 keys).
        float s[kMT][NS][4];
#pragma unroll
        for (int i = 0; i < kMT; ++i)
#pragma unroll
            for (int j = 0; j < NS; ++j)
                s[i][j][0] = s[i][j][1] = s[i][j][2] = s[i][j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < DQK / 16; ++kk)
        {
            uint32_t qa[kMT][4]; // A fragments of this warp's Q rows, k-step kk
#pragma unroll
            for (int i = 0; i < kMT; ++i)
                ldmatrixX4(qa[i], sQ + ((qBase + uint32_t(i * 16 * KCH * 16)) ^ uint32_t(2 * kk * 16)));
#pragma unroll
            for (int j2 = 0; j2 < NS / 2; ++j2)
            {
                uint32_t kb[4]; // b0, b1 of n-tile 2·j2, then of 2·j2 + 1
                ldmatrixX4(kb, sK + uint32_t(j2 * 16 * KCH * 16) + (kBase ^ uint32_t(2 * kk * 16)));
#pragma unroll
                for (int i = 0; i < kMT; ++i)
                {
                    M::mma(s[i][2 * j2], qa[i][0], qa[i][1], qa[i][2], qa[i][3], kb[0], kb[1]);
                    M::mma(s[i][2 * j2 + 1], qa[i][0], qa[i][1], qa[i][2], qa[i][3], kb[2], kb[3]);
                }
            }
        }

        // Mask (only tiles on the causal diagonal or the window's lower edge; block-uniform test).
        bool const causalEdge = key0 + kBN - 1 > qLo;
        bool const windowEdge = windowed && key0 + kBN > p.num_meta && qHi - key0 > p.window;
        if (causalEdge || windowEdge)
        {
#pragma unroll
            for (int i = 0; i < kMT; ++i)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                {
                    int const q = qpos[i][h];
#pragma unroll
                    for (int j = 0; j < NS; ++j)
#pragma unroll
                        for (int e = 0; e < 2; ++e)
                        {
                            int const kv = key0 + 8 * j + 2 * t + e;
                            bool const vis = kv <= q && (!windowed || q - kv <= p.window || kv < p.num_meta);
                            s[i][j][2 * h + e] = vis ? s[i][j][2 * h + e] : -INFINITY;
                        }
                }
        }

        // Online softmax per row (its 4 lanes t hold 2·NS scores each), then O = O·alpha + P·V.
        uint32_t pa[kMT][kBN / 16][4]; // A fragments of P per key k-step
#pragma unroll
        for (int i = 0; i < kMT; ++i)
        {
            float al[2];
#pragma unroll
            for (int h = 0; h < 2; ++h)
            {
                float mx = -INFINITY;
#pragma unroll
                for (int j = 0; j < NS; ++j)
                    mx = fmaxf(mx, fmaxf(s[i][j][2 * h], s[i][j][2 * h + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                float const mNew = fmaxf(m[i][h], mx * sl2);
                float const mRef = mNew == -INFINITY ? 0.f : mNew;
                float const alpha = fastExp2(m[i][h] - mRef);
                m[i][h] = mNew;
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < NS; ++j)
                {
                    float const p0 = fastExp2(fmaf(s[i][j][2 * h], sl2, -mRef));
                    float const p1 = fastExp2(fmaf(s[i][j][2 * h + 1], sl2, -mRef));
                    sum += p0 + p1;
                    // key k-step j / 2: n-tile 2kk -> a0 (row g) / a1 (row g + 8); 2kk + 1 -> a2 / a3
                    pa[i][j / 2][h + 2 * (j % 2)] = M::pack(p0, p1);
                }
                l[i][h] = l[i][h] * alpha + sum;
                al[h] = alpha;
            }
            // Rescale O only when some row's max moved (alpha < 1): warp-uniform, rare after the first tiles.
            if (__any_sync(0xffffffffu, al[0] != 1.f || al[1] != 1.f))
            {
#pragma unroll
                for (int n = 0; n < NO; ++n)
                {
                    o[i][n][0] *= al[0];
                    o[i][n][1] *= al[0];
                    o[i][n][2] *= al[1];
                    o[i][n][3] *= al[1];
                }
            }
        }
#pragma unroll
        for (int kk = 0; kk < kBN / 16; ++kk)
        {
#pragma unroll
            for (int n = 0; n < NO; n += 2)
            {
                uint32_t vb[4]; // b0, b1 of v n-tile n, then of n + 1
                ldmatrixX4Trans(vb, sV + uint32_t(kk * 16 * VCH * 16) + (vBase ^ uint32_t(n * 16)));
#pragma unroll
                for (int i = 0; i < kMT; ++i)
                {
                    M::mma(o[i][n], pa[i][kk][0], pa[i][kk][1], pa[i][kk][2], pa[i][kk][3], vb[0], vb[1]);
                    M::mma(o[i][n + 1], pa[i][kk][0], pa[i][kk][1], pa[i][kk][2], pa[i][kk][3], vb[2], vb[3]);
                }
            }
        }
    }
    cpAsyncWait<0>();
    __syncthreads(); // every warp is done with Q and the ring: they become the output staging area

    // 3. Normalise, convert, stage rows in shared memory, store 16 bytes per lane.
    T* stage = reinterpret_cast<T*>(smem);
#pragma unroll
    for (int i = 0; i < kMT; ++i)
    {
#pragma unroll
        for (int h = 0; h < 2; ++h)
        {
            float sum = l[i][h];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            float const inv = sum > 0.f ? 1.f / sum : 0.f;
            int const r = warp * 16 * kMT + 16 * i + 8 * h + g;
#pragma unroll
            for (int n = 0; n < NO; ++n)
                *reinterpret_cast<uint32_t*>(stage + r * S::kOutStride + 8 * n + 2 * t)
                    = M::pack(o[i][n][2 * h] * inv, o[i][n][2 * h + 1] * inv);
        }
    }
    __syncthreads();
    T* og = static_cast<T*>(p.out) + b * p.out_batch_stride;
    for (int j = threadIdx.x; j < S::kBM * VCH; j += kThreads)
    {
        int const r = j / VCH, ch = j % VCH;
        int const gr = row0 + r;
        if (gr < nRows)
        {
            int const qi = gr / G;
            *reinterpret_cast<float4*>(og + qi * p.out_time_stride + (hkv * G + gr % G) * p.out_head_stride + ch * 8)
                = *reinterpret_cast<float4 const*>(stage + r * S::kOutStride + ch * 8);
        }
    }
#else
    __trap(); // mma.sync / ldmatrix / cp.async need sm_80; the launcher checks ptxVersion first
#endif
}

//! Launches the kernel; returns false (nothing launched) when it was not compiled for sm_80+ (`ptxVersion`:
//! the architecture it was compiled for, not the one the driver JIT-compiled it to) or the grid is too large.
template <typename T, int DQK, int DV>
bool launch(WindowedAttentionParams const& p, cudaStream_t stream, cudaError_t& status)
{
    using S = Shape<DQK, DV>;
    auto kernel = prefillKernel<T, DQK, DV>;
    cudaFuncAttributes fa{};
    status = cudaFuncGetAttributes(&fa, kernel);
    if (status != cudaSuccess)
        return true; // report the error, launch nothing
    if (fa.ptxVersion < 80)
        return false;
    int64_t const rows = int64_t(p.q_len) * (p.num_q_heads / p.num_kv_heads);
    int64_t const rowTiles = (rows + S::kBM - 1) / S::kBM;
    int64_t const blocks = rowTiles * p.num_kv_heads * p.batch;
    if (blocks > int64_t(0x7fffffff) || rows > int64_t(0x7fffffff))
        return false;
    status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
    if (status != cudaSuccess)
        return true;
    kernel<<<unsigned(blocks), kThreads, S::kSmemBytes, stream>>>(p, int(rowTiles));
    status = cudaGetLastError();
    return true;
}

template <typename T, int DQK>
bool launchDv(WindowedAttentionParams const& p, cudaStream_t stream, cudaError_t& status)
{
    switch (p.v_dim)
    {
    case 32: return launch<T, DQK, 32>(p, stream, status);
    case 64: return launch<T, DQK, 64>(p, stream, status);
    case 128: return launch<T, DQK, 128>(p, stream, status);
    }
    return false;
}

//! Launches the tensor-core prefill kernel when it applies (fp16/bf16, 16-byte aligned rows of q, k, v and
//! out, Dqk a multiple of 8, Dv ∈ {32, 64, 128}, scale > 0, compiled for sm_80+) and returns true (`status` holds the
//! launch result); false: nothing launched. `aligned`: q, k, v and out rows load/store as 16-byte vectors.
template <typename T>
bool tryLaunch(WindowedAttentionParams const& p, cudaStream_t stream, bool aligned, cudaError_t& status)
{
    if constexpr (std::is_same<T, float>::value)
        return false;
    else
    {
        if (!aligned || p.qk_dim % 8 != 0 || !(p.scale > 0.f)) // scale > 0: max(s)·scale = max(s·scale)
            return false;
        if (p.qk_dim <= 16)
            return launchDv<T, 16>(p, stream, status);
        if (p.qk_dim <= 32)
            return launchDv<T, 32>(p, stream, status);
        if (p.qk_dim <= 64)
            return launchDv<T, 64>(p, stream, status);
        return launchDv<T, 128>(p, stream, status);
    }
}

} // namespace wap
} // namespace hymba
