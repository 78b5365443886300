/*
 * WindowedAttention decode on tensor cores (fp16 / bf16): the path for large decode batches, where
 * (batch × kv heads) alone fills the GPU and the job is to stream the K/V cache at copy bandwidth.
 *
 * Ground truth: hymba_deploy.ops.windowed_attention_ref (the mask rule is in windowed_attention_kernel.h).
 *
 * A block (W = 4 or 8 warps, see `launch`) owns one (batch, kv head) and all R = Tq·G ≤ 8 rows of it (row
 * r: query r / G, query head kv·G + r % G; Hymba decode: the 5 heads of the GQA group), and one of nSplit
 * contiguous slices of its chunks. The visible keys (the meta prefix below the window, then the window up
 * to the last query) are cut into chunks of 16 keys; warp w takes the slice's chunks w, w + W, ... and
 * keeps its own online softmax; the W warps merge in shared memory at the end.
 *
 * Split-KV (nSplit > 1, small batches: fewer (batch, kv head) tiles than SMs): the nSplit blocks of a
 * tile form a thread-block cluster (sm_90) and merge their (max, sum, acc) partials through distributed
 * shared memory, each block normalising and storing a slice of the tile's outputs: one launch, no
 * workspace. Where the kernel is compiled below sm_90 the launcher keeps nSplit = 1.
 *
 * Per warp, a chunk is one m16n8k16 step of each product (mma.sync, fp32 accumulators):
 *   S (16 × 16 keys) = Q (16 × Dqk; rows ≥ R are zero) · Kᵀ      Dqk/16 × 2 MMAs, K via ldmatrix
 *   O (16 × Dv)     += P (16 × 16 keys, bf16/fp16) · V           Dv/8 MMAs, V via ldmatrix.trans
 * P comes straight from S's accumulator registers (the FlashAttention-2 register layout), so scores never
 * touch shared memory. Rows 8..15 of the MMA tile are padding (A fragments a1 = a3 = 0): tensor-core time
 * is far below the memory time, so the waste costs nothing.
 *
 * K/V reach shared memory through a per-warp kStages-deep cp.async pipeline (16-byte copies; no block-wide
 * barrier in the loop: a warp only waits for its own copies, then __syncwarp). Shared rows are XOR-swizzled
 * in 16-byte units (chunk ^ (row & 7)), so the 8 row addresses of every ldmatrix hit 8 different bank
 * groups. Keys past the last row of the cache are loaded from the last row (finite values) and masked.
 *
 * Masking and the softmax are branch-free: masked scores are -inf, a row whose running max is still -inf
 * uses 0 as its reference (exp2(-inf) = 0, never inf - inf), one max and one rescale per chunk.
 */
#pragma once

#include "../common/kernel_common.cuh"
#include "../common/mma_sm80.cuh"
#include "windowed_attention_kernel.h"

#include <algorithm>
#include <cooperative_groups.h>
#include <cstdint>
#include <type_traits>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace hymba
{

//! Split-KV merge over a thread-block cluster (sm_90+): each of the cluster's nSplit blocks holds its partial
//! of `rows` query rows in shared memory (blkM[r]: running max in log2 units, -inf where the block saw no key;
//! blkL[r]: sum of exp2(score - max); blkAcc[r * DV + d]: the weighted values, relative to 2^max). Block `rank`
//! merges a slice of the rows x DV outputs from every block's partial through distributed shared memory and
//! calls store(r, d, acc, sum). Every thread of every block of the cluster calls it; traps below sm_90 (the
//! launchers split only where the kernel was compiled for sm_90+, ptxVersion).
template <int DV, int kThreads, typename Store>
__device__ __forceinline__ void clusterMergeSplits(
    float* blkM, float* blkL, float* blkAcc, int rows, int nSplit, Store const& store)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync(); // every block's partial written and visible cluster-wide
    int const rank = int(cluster.block_rank());
    for (int idx = rank * kThreads + threadIdx.x; idx < rows * DV; idx += nSplit * kThreads)
    {
        int const r = idx / DV, d = idx % DV;
        float mMax = -INFINITY;
        for (int i = 0; i < nSplit; ++i)
            mMax = fmaxf(mMax, cluster.map_shared_rank(blkM, i)[r]);
        float sumL = 0.f, sumO = 0.f;
        for (int i = 0; i < nSplit; ++i)
        {
            float const mi = cluster.map_shared_rank(blkM, i)[r];
            float const f = mi == -INFINITY ? 0.f : fastExp2(mi - mMax);
            sumL = fmaf(f, cluster.map_shared_rank(blkL, i)[r], sumL);
            sumO = fmaf(f, cluster.map_shared_rank(blkAcc, i)[r * DV + d], sumO);
        }
        store(r, d, sumO, sumL);
    }
    cluster.sync(); // keep this block's shared memory alive until the others have read it
#else
    __trap();
#endif
}

//! One cudaLaunchKernelEx configuration for `grid` blocks in clusters of `size` consecutive blocks along x
//! (the split kernels' launch shape). `cfg.attrs` points into the object itself: not copyable.
struct ClusterLaunch
{
    cudaLaunchAttribute attr[1];
    cudaLaunchConfig_t cfg{};

    ClusterLaunch(dim3 grid, int threads, size_t smem, cudaStream_t stream, int size)
    {
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = unsigned(size);
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        cfg.gridDim = grid;
        cfg.blockDim = dim3(unsigned(threads));
        cfg.dynamicSmemBytes = smem;
        cfg.stream = stream;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
    }
    ClusterLaunch(ClusterLaunch const&) = delete;
    ClusterLaunch& operator=(ClusterLaunch const&) = delete;
};

namespace wam
{

// Tuning hooks: tools/attn_tune.py rebuilds this kernel with other values (-D...) and times them.
// HYMBA_WAM_WARPS, when defined, replaces the launcher's choice of 4 or 8 warps per block.
#ifndef HYMBA_WAM_STAGES
#define HYMBA_WAM_STAGES 3
#endif
constexpr int kKeys = 16;                 // keys per chunk: one k-step of P·V
constexpr int kStages = HYMBA_WAM_STAGES; // cp.async pipeline depth per warp (kStages - 1 chunks in flight)
constexpr int kMaxRows = 8; // rows g = lane / 4 of the MMA tile
constexpr int kMaxSplits = 16; // cluster size; above 8 (the portable size) only where the GPU allows it

template <int DQK, int DV, int kWarps>
struct Shape
{
    static constexpr int KCH = DQK / 8; // 16-byte chunks per K row
    static constexpr int VCH = DV / 8;  // 16-byte chunks per V row
    static constexpr int kStageBytes = kKeys * (DQK + DV) * 2;
    static constexpr int kPipeBytes = kWarps * kStages * kStageBytes;
    static constexpr int kMergeBytes = kWarps * kMaxRows * (DV + 2) * 4; // the warps' partials
    static constexpr int kBlockBytes = kMaxRows * (DV + 2) * 4;          // the block's partial (split-KV)
    static constexpr int kSmemBytes
        = kPipeBytes > kMergeBytes + kBlockBytes ? kPipeBytes : kMergeBytes + kBlockBytes;
    static_assert(DQK % 16 == 0 && DQK >= 64 && DQK <= 128, "q/k head dim: 64..128, a multiple of 16");
    static_assert(DV % 16 == 0 && DV >= 64 && DV <= 128, "v head dim: 64..128, a multiple of 16");
};

//! kWarps warps per block (4 or 8), each streaming its own chunks through its own pipeline. kSplit: block x is
//! split x % nSplit of tile x / nSplit (tile = batch row · Hkv + kv head), in a cluster of nSplit blocks;
//! otherwise block x is tile x (nSplitArg ignored: the unsplit kernel carries no split arithmetic).
template <typename T, int DQK, int DV, int kWarps, bool kSplit>
__global__ void __launch_bounds__(kWarps * 32) decodeMmaKernel(WindowedAttentionParams const p, int const nSplitArg)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using S = Shape<DQK, DV, kWarps>;
    using M = MmaType<T>;
    constexpr int kThreads = kWarps * 32;
    constexpr int KCH = S::KCH, VCH = S::VCH;
    extern __shared__ float4 smem4[];
    unsigned char* smem = reinterpret_cast<unsigned char*>(smem4);

    int const lane = threadIdx.x & 31;
    int const warp = threadIdx.x >> 5;
    int const g = lane >> 2; // MMA row of this lane (and of its c0/c1 accumulators)
    int const t = lane & 3;
    int const nSplit = kSplit ? nSplitArg : 1;
    int const split = int(blockIdx.x % unsigned(nSplit));
    int const tile = int(blockIdx.x / unsigned(nSplit));
    int const hkv = tile % p.num_kv_heads;
    int const b = tile / p.num_kv_heads;
    int const G = p.num_q_heads / p.num_kv_heads;
    int const nRows = p.q_len * G; // <= kMaxRows (launcher)
    int const Tk = keyCount(p, b);
    int const qOffset = Tk - p.q_len;
    bool const windowed = p.window > 0;

    // 1. This lane's Q fragments (row g; a0: dims 16kk + 2t, +1; a2: dims 16kk + 8 + 2t, +1) and position.
    uint32_t qa[DQK / 16][2];
    int qpos = -1; // padding rows see no key
    {
        T const* qrow = nullptr;
        if (g < nRows)
        {
            int const qi = g / G;
            qpos = qOffset + qi;
            qrow = static_cast<T const*>(p.q) + b * p.q_batch_stride + qi * p.q_time_stride
                + (hkv * G + g % G) * p.q_head_stride;
        }
#pragma unroll
        for (int kk = 0; kk < DQK / 16; ++kk)
        {
#pragma unroll
            for (int h = 0; h < 2; ++h)
            {
                int const d = kk * 16 + h * 8 + 2 * t;
                qa[kk][h] = qrow ? M::pack(toFloat(qrow[d]), toFloat(qrow[d + 1])) : 0u;
            }
        }
    }

    // 2. Chunks of the visible keys: [0, metaEnd) then [winLo rounded down to 16, last query].
    int const winLo = windowed ? max(0, qOffset - p.window) : 0;
    int const metaEnd = windowed ? min(p.num_meta, winLo) : 0;
    int nA = (metaEnd + kKeys - 1) / kKeys;
    int bStart = winLo & ~(kKeys - 1);
    if (nA * kKeys >= bStart) // the two ranges touch: one range from key 0
    {
        nA = 0;
        bStart = 0;
    }
    int const nChunks = nA + (Tk - bStart + kKeys - 1) / kKeys;
    auto chunkKey0 = [&](int c) { return c < nA ? c * kKeys : bStart + (c - nA) * kKeys; };
    // This split's chunks [cBegin, cEnd) (this row's own count: splits past it have none).
    int const cBegin = int(int64_t(split) * nChunks / nSplit);
    int const cEnd = int(int64_t(split + 1) * nChunks / nSplit);

    T const* kg = static_cast<T const*>(p.k) + b * p.k_batch_stride + hkv * p.k_head_stride;
    T const* vg = static_cast<T const*>(p.v) + b * p.v_batch_stride + hkv * p.v_head_stride;
    uint32_t const pipe = uint32_t(__cvta_generic_to_shared(smem)) + uint32_t(warp * kStages * S::kStageBytes);

    // Issues the copies of this warp's i-th chunk into stage i % kStages (an empty group past the end).
    auto load = [&](int i) {
        int const c = cBegin + warp + i * kWarps;
        if (c < cEnd)
        {
            int const key0 = chunkKey0(c);
            uint32_t const sK = pipe + uint32_t((i % kStages) * S::kStageBytes);
            uint32_t const sV = sK + kKeys * DQK * 2;
#pragma unroll
            for (int j = lane; j < kKeys * KCH; j += 32)
            {
                int const row = j / KCH, ch = j % KCH;
                int const key = min(key0 + row, Tk - 1);
                cpAsync16(sK + swizzle16<KCH>(row, ch), kg + int64_t(key) * p.k_time_stride + ch * 8);
            }
#pragma unroll
            for (int j = lane; j < kKeys * VCH; j += 32)
            {
                int const row = j / VCH, ch = j % VCH;
                int const key = min(key0 + row, Tk - 1);
                cpAsync16(sV + swizzle16<VCH>(row, ch), vg + int64_t(key) * p.v_time_stride + ch * 8);
            }
        }
        cpAsyncCommit();
    };

    float const qScale = p.scale * kLOG2E;
    float m = -INFINITY; // running max of row g (log2 units), the same in the 4 lanes of the row
    float l = 0.f;       // this lane's part of the row sum
    float acc[DV / 8][4];
#pragma unroll
    for (int n = 0; n < DV / 8; ++n)
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    int const nMine = cEnd - cBegin > warp ? (cEnd - cBegin - warp + kWarps - 1) / kWarps : 0;
#pragma unroll
    for (int i = 0; i < kStages - 1; ++i)
        load(i);

    for (int i = 0; i < nMine; ++i)
    {
        cpAsyncWait<kStages - 2>(); // this lane's copies of chunk i have landed
        __syncwarp();               // ... and every lane's; stage (i - 1) % kStages is free again
        load(i + kStages - 1);

        uint32_t const sK = pipe + uint32_t((i % kStages) * S::kStageBytes);
        uint32_t const sV = sK + kKeys * DQK * 2;
        int const key0 = chunkKey0(cBegin + warp + i * kWarps);

        // S = Q·Kᵀ for keys key0 + 8j + 2t + e (two n-tiles of 8 keys).
        float s[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j)
        {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < DQK / 16; kk += 2)
            {
                uint32_t kb[4]; // b0, b1 of k-step kk, then of kk + 1
                ldmatrixX4(kb, sK + swizzle16<KCH>(8 * j + (lane & 7), 2 * kk + (lane >> 3)));
                M::mma(s[j], qa[kk][0], 0u, qa[kk][1], 0u, kb[0], kb[1]);
                M::mma(s[j], qa[kk + 1][0], 0u, qa[kk + 1][1], 0u, kb[2], kb[3]);
            }
        }

        // Mask, scale, online softmax (row g; its 4 lanes t hold 4 scores each).
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 2; ++j)
        {
#pragma unroll
            for (int e = 0; e < 2; ++e)
            {
                int const key = key0 + 8 * j + 2 * t + e;
                bool const vis = key <= qpos && (!windowed || qpos - key <= p.window || key < p.num_meta);
                s[j][e] = vis ? s[j][e] * qScale : -INFINITY;
                mx = fmaxf(mx, s[j][e]);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float const mNew = fmaxf(m, mx);
        float const mRef = mNew == -INFINITY ? 0.f : mNew;
        float const alpha = fastExp2(m - mRef);
        m = mNew;
        float pr[2][2];
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e)
                pr[j][e] = fastExp2(s[j][e] - mRef);
        l = l * alpha + (pr[0][0] + pr[0][1]) + (pr[1][0] + pr[1][1]);
        uint32_t const pa0 = M::pack(pr[0][0], pr[0][1]); // P row g, keys 2t, 2t + 1
        uint32_t const pa2 = M::pack(pr[1][0], pr[1][1]); // P row g, keys 8 + 2t, 8 + 2t + 1

        // O = O·alpha + P·V, two n-tiles of 8 v columns per ldmatrix.
#pragma unroll
        for (int n = 0; n < DV / 8; n += 2)
        {
            uint32_t vb[4]; // b0, b1 of n-tile n, then of n + 1
            ldmatrixX4Trans(vb, sV + swizzle16<VCH>((lane & 7) + ((lane >> 3) & 1) * 8, n + (lane >> 4)));
            acc[n][0] *= alpha;
            acc[n][1] *= alpha;
            acc[n + 1][0] *= alpha;
            acc[n + 1][1] *= alpha;
            M::mma(acc[n], pa0, 0u, pa2, 0u, vb[0], vb[1]);
            M::mma(acc[n + 1], pa0, 0u, pa2, 0u, vb[2], vb[3]);
        }
    }
    cpAsyncWait<0>();

    // 3. Merge the warps' partials (row g: m, l, acc columns 8n + 2t, +1) in shared memory.
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    __syncthreads(); // every warp is done with its pipeline stages
    float* mW = reinterpret_cast<float*>(smem);      // [kWarps][kMaxRows]
    float* lW = mW + kWarps * kMaxRows;              // [kWarps][kMaxRows]
    float* accW = lW + kWarps * kMaxRows;            // [kWarps][kMaxRows][DV]
    float* blkM = accW + kWarps * kMaxRows * DV;     // [kMaxRows] the block's partial (nSplit > 1)
    float* blkL = blkM + kMaxRows;                   // [kMaxRows]
    float* blkAcc = blkL + kMaxRows;                 // [kMaxRows][DV]
    if (t == 0)
    {
        mW[warp * kMaxRows + g] = m;
        lW[warp * kMaxRows + g] = l;
    }
#pragma unroll
    for (int n = 0; n < DV / 8; ++n)
    {
        float2 const v2 = make_float2(acc[n][0], acc[n][1]);
        *reinterpret_cast<float2*>(accW + (warp * kMaxRows + g) * DV + 8 * n + 2 * t) = v2;
    }
    __syncthreads();

    T* og = static_cast<T*>(p.out) + b * p.out_batch_stride;
    auto store = [&](int r, int d, float sumO, float sumL) {
        og[(r / G) * p.out_time_stride + (hkv * G + r % G) * p.out_head_stride + d]
            = fromFloat<T>(sumL > 0.f ? sumO / sumL : 0.f);
    };
    for (int idx = threadIdx.x; idx < nRows * DV; idx += kThreads)
    {
        int const r = idx / DV, d = idx % DV;
        float mMax = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps; ++w)
            mMax = fmaxf(mMax, mW[w * kMaxRows + r]);
        float const mRef = mMax == -INFINITY ? 0.f : mMax;
        float sumL = 0.f, sumO = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w)
        {
            float const f = fastExp2(mW[w * kMaxRows + r] - mRef);
            sumL += lW[w * kMaxRows + r] * f;
            sumO += accW[(w * kMaxRows + r) * DV + d] * f;
        }
        if (nSplit == 1)
            store(r, d, sumO, sumL);
        else
        {
            blkAcc[r * DV + d] = sumO; // relative to 2^mMax (0 where the block saw no key of row r)
            if (d == 0)
            {
                blkM[r] = mMax;
                blkL[r] = sumL;
            }
        }
    }

    // 4. Split-KV: merge the cluster's nSplit block partials (distributed shared memory), a slice per block.
    if (nSplit > 1)
        clusterMergeSplits<DV, kThreads>(blkM, blkL, blkAcc, nRows, nSplit, store);
#else
    __trap(); // mma.sync / ldmatrix / cp.async need sm_80; the launcher checks ptxVersion first
#endif
}

//! Whether this GPU co-schedules a cluster of `size` blocks of the kernel (sizes above 8, the portable
//! limit, need the non-portable attribute, which the caller sets before each such launch).
template <typename K>
bool clusterFits(K kernel, int threads, int smem, int size)
{
    ClusterLaunch const launch(dim3(unsigned(size)), threads, size_t(smem), nullptr, size);
    int clusters = 0;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess
        || cudaOccupancyMaxActiveClusters(&clusters, kernel, &launch.cfg) != cudaSuccess)
    {
        (void) cudaGetLastError(); // not supported here: the caller uses a smaller cluster
        return false;
    }
    return clusters >= 1;
}

//! Launches the unsplit kernel (one block per tile); returns false (nothing launched) when the kernel was not
//! compiled for sm_80+ (`ptxVersion`: the architecture it was compiled for, not the one the driver
//! JIT-compiled it to).
template <typename T, int DQK, int DV, int kWarps>
bool launchWhole(WindowedAttentionParams const& p, cudaStream_t stream, cudaError_t& status)
{
    auto kernel = decodeMmaKernel<T, DQK, DV, kWarps, false>;
    cudaFuncAttributes fa{};
    status = cudaFuncGetAttributes(&fa, kernel);
    if (status != cudaSuccess)
        return true; // report the error, launch nothing
    if (fa.ptxVersion < 80)
        return false;
    int const smem = Shape<DQK, DV, kWarps>::kSmemBytes;
    status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (status != cudaSuccess)
        return true;
    kernel<<<unsigned(int64_t(p.batch) * p.num_kv_heads), kWarps * 32, smem, stream>>>(p, 1);
    status = cudaGetLastError();
    return true;
}

//! Launches the split kernel: nSplit (2..16) blocks per tile in a cluster. Where the kernel was compiled
//! below sm_90 (`ptxVersion`; no clusters) the unsplit kernel runs instead; where the GPU cannot
//! co-schedule 16 blocks, 8 splits.
template <typename T, int DQK, int DV, int kWarps>
bool launchSplit(WindowedAttentionParams const& p, cudaStream_t stream, cudaError_t& status, int nSplit)
{
    auto kernel = decodeMmaKernel<T, DQK, DV, kWarps, true>;
    cudaFuncAttributes fa{};
    status = cudaFuncGetAttributes(&fa, kernel);
    if (status != cudaSuccess)
        return true;
    if (fa.ptxVersion < 90)
        return launchWhole<T, DQK, DV, kWarps>(p, stream, status);
    int const smem = Shape<DQK, DV, kWarps>::kSmemBytes;
    status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (status != cudaSuccess)
        return true;
    if (nSplit > 8)
    {
        static bool const fits = clusterFits(kernel, kWarps * 32, smem, kMaxSplits); // once per kernel
        nSplit = fits ? nSplit : 8;
    }
    if (nSplit > 8)
    {
        status = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
        if (status != cudaSuccess)
            return true;
    }
    ClusterLaunch const launch(dim3(unsigned(int64_t(p.batch) * p.num_kv_heads * nSplit)), kWarps * 32, size_t(smem),
        stream, nSplit);
    status = cudaLaunchKernelEx(&launch.cfg, kernel, p, nSplit);
    if (status == cudaSuccess)
        status = cudaGetLastError();
    return true;
}

//! Splits per tile (1, 2, 4, 8 or 16): the fewest that give every SM a block (tiles · nSplit ≥ SMs), each
//! split keeping at least one chunk per warp (`chunks`: an upper bound of a tile's visible chunks).
inline int chooseSplits(int64_t tiles, int chunks, int sms, int warps)
{
    int n = 1;
    while (2 * n <= kMaxSplits && tiles * n < sms && chunks >= 2 * n * warps)
        n *= 2;
    return n;
}

/*
 * Warps per block and splits. 8 warps (one block of 8 warps per SM) for long key ranges over many tiles, 4
 * (two or three blocks per SM) otherwise. Measured on one H200 (tools/attn_tune.py, Hymba decode, bf16,
 * bench/results/attn_tune_h200_2026-11-27.json; stages = 3): batch 128 × 8320 keys 463 us with 8 warps vs
 * 497 us with 4 (finer waves: 640 tiles over 132 slots vs 396), batch 128 × 1152 keys 76 vs 79 us, batch
 * 32 × 1152 keys 27 vs 30 us (4 better: few tiles, short ranges). Below one tile per SM the keys are split
 * (chooseSplits; Hymba batch 1: 16 splits, 80 blocks).
 */
template <typename T, int DQK, int DV>
bool launch(WindowedAttentionParams const& p, cudaStream_t stream, cudaError_t& status)
{
    int sms = 0;
    status = currentSmCount(sms);
    if (status != cudaSuccess)
        return true;
    int64_t const tiles = int64_t(p.batch) * p.num_kv_heads;
    // Visible keys of the whole call (an upper bound of every tile's): the meta prefix below the window, then
    // the window up to the last query.
    bool const windowed = p.window > 0;
    int const winLo = windowed ? std::max(0, p.kv_len - p.q_len - p.window) : 0;
    int const visible = (windowed ? std::min(p.num_meta, winLo) : 0) + (p.kv_len - winLo);
    int const visibleChunks = (visible + kKeys - 1) / kKeys;
#ifdef HYMBA_WAM_WARPS
    constexpr int kW = HYMBA_WAM_WARPS;
#else
    constexpr int kW = 4;
    int const chunks = (p.kv_len + kKeys - 1) / kKeys; // an upper bound of a tile's chunks
    if (chunks >= 256 && tiles >= 2 * int64_t(sms))
        return launchWhole<T, DQK, DV, 8>(p, stream, status);
#endif
    int const nSplit = chooseSplits(tiles, visibleChunks, sms, kW);
    return nSplit > 1 ? launchSplit<T, DQK, DV, kW>(p, stream, status, nSplit)
                      : launchWhole<T, DQK, DV, kW>(p, stream, status);
}

//! Launches the tensor-core decode kernel when it applies (fp16/bf16, Tq·G <= 8 rows, 16-byte aligned K/V
//! rows, (Dqk, Dv) in {(64, 128), (64, 64), (128, 128)}, built for sm_80+) and returns true (`status` holds
//! the launch result); false: nothing launched.
template <typename T>
bool tryLaunch(WindowedAttentionParams const& p, cudaStream_t stream, bool kvVec, cudaError_t& status)
{
    if constexpr (std::is_same<T, float>::value)
        return false;
    else
    {
        if (int64_t(p.q_len) * (p.num_q_heads / p.num_kv_heads) > kMaxRows || !kvVec
            || int64_t(p.batch) * p.num_kv_heads * kMaxSplits > int64_t(0x7fffffff))
            return false;
        if (p.qk_dim == 64 && p.v_dim == 128)
            return launch<T, 64, 128>(p, stream, status);
        if (p.qk_dim == 64 && p.v_dim == 64)
            return launch<T, 64, 64>(p, stream, status);
        if (p.qk_dim == 128 && p.v_dim == 128)
            return launch<T, 128, 128>(p, stream, status);
        return false;
    }
}

} // namespace wam
} // namespace hymba
