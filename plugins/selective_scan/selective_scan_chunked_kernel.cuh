/*
 * The chunked prefill (T > 1) SelectiveScan kernel, `sscc::chunkedKernel`, for small batches: time split into
 * chunks, every chunk of a channel scanned at once, no global workspace.
 *
 * A block owns `cpb` consecutive channels of one batch row and all K chunks of their time axis (chunk k: steps
 * k·Lc .. k·Lc + Lc - 1, Lc a multiple of the staged tile); thread i holds channel i % cpb of chunk i / cpb with
 * all of its d_state states in registers, as the sequential kernel does (one dependent FMA per state and step,
 * the exps of a step independent of h). Three phases:
 *   1. (K > 1) each chunk scanned from a zero state: its end state e_k and the sum of its dt' (its decay is
 *      exp(A·Σdt'), one exp per state);
 *   2. the carry combine in shared memory: one thread per (channel, state) walks the chunks in order,
 *      H_0 = initial_state (or 0), H_{k+1} = exp(A·Σ_k dt')·H_k + e_k, and leaves H_k for chunk k;
 *   3. each chunk rescanned from H_k, writing y; chunk K - 1's end state is last_state.
 * Per tile of kSteps steps the block stages every chunk's B_t and C_t rows in shared memory as fp32 (16-byte
 * vectors where the rows are contiguous and aligned, else element by element), double buffered: while the
 * threads scan tile j, their loads of tile j + 1 (B, C and their own x, dt, z) are in flight in registers. Each
 * thread's per-step values (dt', dt'·x, D·x, SiLU(z)) go to its own shared-memory row (no barrier needed), read
 * back as one float4 per step. One barrier per tile. Steps past T hold dt' = 0 (h unchanged) and write nothing.
 * The carries reuse the tile buffers between the passes; shared memory ≤ 141 KB (one block per SM, A100 too).
 */
#pragma once

#include "selective_scan_math.cuh"

namespace hymba
{
namespace sscc
{

constexpr int kMinCpb = 16; // channels per block at least (a warp spans at most 3 chunks; staging registers)

//! Compile-time shape for kN register states (8, 16 or 32; N below kN runs with zero A, B and C rows).
template <int kN>
struct Config
{
    static constexpr int kThreads = kN == 32 ? 256 : 512;      // cpb · K at most
    static constexpr int kSteps = kN == 32 ? 4 : 8;             // steps per staged tile
    static constexpr int kRow = kSteps * kN + 4;                // floats per chunk in a B or C tile (bank shift)
    static constexpr int kStepRow = 4 * kSteps + 4;             // floats per thread row of per-step values
    static constexpr int kStageIters = kSteps * kN / kMinCpb;   // B or C elements per thread per tile, at most
    static constexpr int kMaxChunks = kThreads / kMinCpb;
    static constexpr int kUnroll = kSteps; // steps of a tile unrolled in the scan loop
    //! Dynamic shared memory: the thread rows, then the B and C tiles (two buffers) for K chunks, which the
    //! carries (e and decay, between the passes) reuse.
    static __host__ __device__ constexpr size_t tileFloats(int K, int cpb)
    {
        return size_t(4) * K * kRow > size_t(2) * K * kN * cpb ? size_t(4) * K * kRow : size_t(2) * K * kN * cpb;
    }
    static __host__ __device__ constexpr size_t bytes(int K, int cpb)
    {
        return (size_t(K) * cpb * kStepRow + tileFloats(K, cpb)) * sizeof(float);
    }
};

//! The split of a call: cpb channels a block, K chunks of Lc steps (Lc a multiple of kSteps, K·Lc >= T).
struct Plan
{
    int cpb;
    int chunks;
    int chunkLen;
};

//! One thread's place: its batch row, channel and chunk.
struct Lane
{
    int b;       // batch row
    int c;       // channel within the block
    int k;       // chunk
    int d;       // channel
    bool active; // d < dim
    int t0;      // first step of the chunk
};

//! Per-channel constants of a thread.
template <int kN>
struct Channel
{
    float A2[kN]; // A·log2(e): exp(dt'·A) = exp2(dt'·A2); 0 for states >= N
    float bias;
    float Dd;
};

//! Elements of T in one 16-byte vector.
template <typename T>
constexpr int kVecElems = 16 / int(sizeof(T));

//! One tile's global loads, held in registers between issue (load) and use (commit): the thread's own x, dt
//! (and z) for kSteps steps of its chunk, and its share of the block's K·kSteps·kN elements of B (and C).
//! kFinal: the rescan's loads (z and C too). kVecBC: B and C rows are contiguous and 16-byte aligned (see
//! vecRowsOk), so thread i loads 16-byte vectors i + j·blockDim.x of them; else elements, one at a time.
template <typename T, int kN, bool kFinal, bool kVecBC>
struct Stage
{
    using Cf = Config<kN>;
    static constexpr int kV = kVecElems<T>;
    static constexpr int kVecIters = (Cf::kSteps * kN / kV + kMinCpb - 1) / kMinCpb; // vectors per thread, at most
    T x[Cf::kSteps], dt[Cf::kSteps], z[Cf::kSteps];
    T B[kVecBC ? 1 : Cf::kStageIters], C[kVecBC ? 1 : Cf::kStageIters];
    uint4 Bv[kVecBC ? kVecIters : 1], Cv[kVecBC ? kVecIters : 1];
    // The thread's next step of x, dt, z (bytes; advanced by one step per load) and the steps' byte strides.
    char const* xq;
    char const* dtq;
    char const* zq;
    int64_t xs, dts, zs;

    __device__ __forceinline__ Stage(SelectiveScanParams const& p, Lane const& ln)
    {
        int64_t const t0 = ln.t0;
        xq = reinterpret_cast<char const*>(static_cast<T const*>(p.x) + ln.b * p.x_strides.batch
            + ln.d * p.x_strides.chan + t0 * p.x_strides.time);
        dtq = reinterpret_cast<char const*>(static_cast<T const*>(p.dt) + ln.b * p.dt_strides.batch
            + ln.d * p.dt_strides.chan + t0 * p.dt_strides.time);
        zq = reinterpret_cast<char const*>(static_cast<T const*>(p.z) + ln.b * p.z_strides.batch
            + ln.d * p.z_strides.chan + t0 * p.z_strides.time);
        xs = p.x_strides.time * int64_t(sizeof(T));
        dts = p.dt_strides.time * int64_t(sizeof(T));
        zs = p.z_strides.time * int64_t(sizeof(T));
    }

    //! Tile `tile`'s loads (the x, dt, z pointers must be at its first step: tiles are loaded in order).
    __device__ __forceinline__ void load(SelectiveScanParams const& p, Lane const& ln, Plan const& pl, int tile)
    {
        int const L = p.seqlen;
        T const zero = fromFloat<T>(0.f);
        int const left = ln.active ? L - (ln.t0 + tile * Cf::kSteps) : 0; // steps of this tile inside T
        bool const hasZ = kFinal && p.z != nullptr;
#pragma unroll
        for (int s = 0; s < Cf::kSteps; ++s)
        {
            bool const ok = s < left;
            x[s] = ok ? *reinterpret_cast<T const*>(xq) : zero;
            dt[s] = ok ? *reinterpret_cast<T const*>(dtq) : zero;
            if (kFinal)
                z[s] = ok && hasZ ? *reinterpret_cast<T const*>(zq) : zero;
            xq += xs;
            dtq += dts;
            if (kFinal)
                zq += zs;
        }
        T const* Bp = static_cast<T const*>(p.B) + ln.b * p.B_strides.batch;
        T const* Cp = static_cast<T const*>(p.C) + ln.b * p.C_strides.batch;
        int tid = int(threadIdx.x);
        asm volatile("" : "+r"(tid)); // element offsets recomputed per tile, not held across it
        if (kVecBC)
        {
            int const total = pl.chunks * Cf::kSteps * (kN / kV);
#pragma unroll
            for (int j = 0; j < kVecIters; ++j)
            {
                int const v = tid + j * int(blockDim.x);
                int const row = v / (kN / kV); // (chunk, step)
                int const t = (row / Cf::kSteps) * pl.chunkLen + tile * Cf::kSteps + row % Cf::kSteps;
                int const n = (v % (kN / kV)) * kV;
                bool const ok = v < total && t < L;
                uint4 const z4 = make_uint4(0u, 0u, 0u, 0u);
                Bv[j] = ok ? *reinterpret_cast<uint4 const*>(Bp + int64_t(t) * p.B_strides.time + n) : z4;
                if (kFinal)
                    Cv[j] = ok ? *reinterpret_cast<uint4 const*>(Cp + int64_t(t) * p.C_strides.time + n) : z4;
            }
            return;
        }
        int const N = p.dstate;
        int const total = pl.chunks * Cf::kSteps * kN;
#pragma unroll
        for (int j = 0; j < Cf::kStageIters; ++j)
        {
            int const e = tid + j * int(blockDim.x);
            int const n = e % kN;
            int const t = (e / (Cf::kSteps * kN)) * pl.chunkLen + tile * Cf::kSteps + (e / kN) % Cf::kSteps;
            bool const ok = e < total && n < N && t < L;
            B[j] = ok ? Bp[int64_t(t) * p.B_strides.time + n * p.B_strides.chan] : zero;
            if (kFinal)
                C[j] = ok ? Cp[int64_t(t) * p.C_strides.time + n * p.C_strides.chan] : zero;
        }
    }

    //! The loaded tile (starting at step ts of the thread's chunk) into shared memory as fp32: B (and C) into
    //! the block's tile buffers (rows of states n >= N get 0), and the thread's per-step values into its row
    //! `mine`: (dt', dt'·x, D·x, SiLU(z)) per step, dt' = 0 past T (h unchanged, nothing written).
    __device__ __forceinline__ void commit(SelectiveScanParams const& p, Lane const& ln, Plan const& pl,
        Channel<kN> const& ch, int ts, float* sB, float* sC, float* mine) const
    {
        if (kVecBC)
        {
            int const total = pl.chunks * Cf::kSteps * (kN / kV);
#pragma unroll
            for (int j = 0; j < kVecIters; ++j)
            {
                int const v = int(threadIdx.x) + j * int(blockDim.x);
                if (v < total)
                {
                    int const row = v / (kN / kV);
                    int const at = (row / Cf::kSteps) * Cf::kRow + (row % Cf::kSteps) * kN + (v % (kN / kV)) * kV;
                    storeVec(sB + at, Bv[j]);
                    if (kFinal)
                        storeVec(sC + at, Cv[j]);
                }
            }
        }
        else
        {
            int const total = pl.chunks * Cf::kSteps * kN;
#pragma unroll
            for (int j = 0; j < Cf::kStageIters; ++j)
            {
                int const e = int(threadIdx.x) + j * int(blockDim.x);
                if (e < total)
                {
                    int const at = (e / (Cf::kSteps * kN)) * Cf::kRow + e % (Cf::kSteps * kN);
                    sB[at] = toFloat(B[j]);
                    if (kFinal)
                        sC[at] = toFloat(C[j]);
                }
            }
        }
        bool const hasZ = p.z != nullptr;
#pragma unroll
        for (int s = 0; s < Cf::kSteps; ++s)
        {
            bool const ok = ln.active && ts + s < p.seqlen;
            float const xv = toFloat(x[s]);
            // Computed unconditionally and then selected: no branch per step.
            float const sp = softplusPoly(toFloat(dt[s]) + ch.bias, p.softplus_threshold);
            float4 v;
            v.x = ok ? sp : 0.f;
            v.y = v.x * xv;
            v.z = kFinal ? ch.Dd * xv : 0.f;
            v.w = kFinal && hasZ ? gateSilu(toFloat(z[s])) : 1.f;
            *reinterpret_cast<float4*>(mine + 4 * s) = v;
        }
    }

    //! kV elements of T (one 16-byte vector) to fp32 at `dst` (16-byte aligned).
    static __device__ __forceinline__ void storeVec(float* dst, uint4 const& raw)
    {
        T vals[kV];
        static_assert(sizeof(vals) == sizeof(uint4), "one vector");
        memcpy(vals, &raw, sizeof(uint4));
#pragma unroll
        for (int i = 0; i < kV; i += 4)
            *reinterpret_cast<float4*>(dst + i)
                = make_float4(toFloat(vals[i]), toFloat(vals[i + 1]), toFloat(vals[i + 2]), toFloat(vals[i + 3]));
    }
};

//! One scan over the thread's chunk. kFinal = false: from h (zeros) without outputs, summing dt' into
//! `dtSum`; kFinal = true: from h (the chunk's true initial state), writing y.
template <typename T, int kN, bool kFinal, bool kVecBC, int kUnroll>
__device__ __forceinline__ void scanChunk(SelectiveScanParams const& p, Lane const& ln, Plan const& pl,
    Channel<kN> const& ch, float* smemF, float (&h)[kN], float& dtSum)
{
    using Cf = Config<kN>;
    int const K = pl.chunks;
    int const tiles = pl.chunkLen / Cf::kSteps;
    float* const mine = smemF + int(threadIdx.x) * Cf::kStepRow; // thread-private: no barrier between write and read
    float* const tilesF = smemF + K * pl.cpb * Cf::kStepRow;
    // The thread's y at the current step (bytes), advanced one step at a time like the loads.
    char* yq = reinterpret_cast<char*>(static_cast<T*>(p.y) + ln.b * p.y_strides.batch + ln.d * p.y_strides.chan
        + int64_t(ln.t0) * p.y_strides.time);
    int64_t ys = p.y_strides.time * int64_t(sizeof(T));
    asm volatile("" : "+l"(ys));

    Stage<T, kN, kFinal, kVecBC> stage(p, ln);
    stage.load(p, ln, pl, 0);
#pragma unroll 1
    for (int tile = 0; tile < tiles; ++tile)
    {
        int const ts = ln.t0 + tile * Cf::kSteps;
        float* const sB = tilesF + (tile % 2) * 2 * K * Cf::kRow;
        float* const sC = sB + K * Cf::kRow;
        stage.commit(p, ln, pl, ch, ts, sB, sC, mine); // tile - 2's readers passed the previous barrier
        __syncthreads();
        if (tile + 1 < tiles)
            stage.load(p, ln, pl, tile + 1); // in flight during this tile's scan
        float const* bRow = sB + ln.k * Cf::kRow;
        float const* cRow = sC + ln.k * Cf::kRow;
#pragma unroll kUnroll
        for (int s = 0; s < Cf::kSteps; ++s)
        {
            float4 const v = *reinterpret_cast<float4 const*>(mine + 4 * s);
            float y[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int q = 0; q < kN / 4; ++q)
            {
                float4 const b4 = *reinterpret_cast<float4 const*>(bRow + s * kN + 4 * q);
                float const bq[4] = {b4.x, b4.y, b4.z, b4.w};
                float cq[4] = {0.f, 0.f, 0.f, 0.f};
                if (kFinal)
                {
                    float4 const c4 = *reinterpret_cast<float4 const*>(cRow + s * kN + 4 * q);
                    cq[0] = c4.x;
                    cq[1] = c4.y;
                    cq[2] = c4.z;
                    cq[3] = c4.w;
                }
#pragma unroll
                for (int i = 0; i < 4; ++i)
                {
                    int const n = 4 * q + i;
                    h[n] = fmaf(fastExp2(v.x * ch.A2[n]), h[n], v.y * bq[i]);
                    if (kFinal)
                        y[i] = fmaf(cq[i], h[n], y[i]);
                }
            }
            if (kFinal)
            {
                storeIf(reinterpret_cast<T*>(yq), fromFloat<T>(((y[0] + y[1]) + (y[2] + y[3]) + v.z) * v.w),
                    ln.active && ts + s < p.seqlen);
                yq += ys;
            }
            else
            {
                dtSum += v.x;
            }
        }
    }
}

template <typename T, int kN, bool kExactN, bool kVecBC, int kUnroll = Config<kN>::kUnroll>
__global__ void __launch_bounds__(Config<kN>::kThreads, 1) chunkedKernel(SelectiveScanParams const p, Plan const pl)
{
    using Cf = Config<kN>;
    extern __shared__ __align__(16) float smemF[];
    int const K = pl.chunks;
    int const cpb = pl.cpb;
    int const N = kExactN ? kN : p.dstate;
    // Between the passes the tile buffers hold the carries, (chunk, state, channel) each.
    float* const carryE = smemF + K * cpb * Cf::kStepRow; // e_k, then H_k
    float* const carryA = carryE + K * kN * cpb;         // exp(A·Σ_k dt')

    Lane ln;
    ln.b = blockIdx.y;
    ln.c = int(threadIdx.x) % cpb;
    ln.k = int(threadIdx.x) / cpb;
    ln.d = blockIdx.x * cpb + ln.c;
    ln.active = ln.d < p.dim;
    ln.t0 = ln.k * pl.chunkLen;
    int const dc = ln.active ? ln.d : 0; // a valid channel for parameter reads

    Channel<kN> ch;
#pragma unroll
    for (int n = 0; n < kN; ++n)
        ch.A2[n] = (kExactN || n < N) ? p.A[dc * p.A_dim_stride + n * p.A_state_stride] * kLOG2E : 0.f;
    ch.bias = p.dt_bias != nullptr ? p.dt_bias[dc] : 0.f;
    ch.Dd = p.D != nullptr ? p.D[dc] : 0.f;

    float h[kN];
#pragma unroll
    for (int n = 0; n < kN; ++n)
        h[n] = 0.f;

    // 1. Each chunk from a zero state (a single chunk needs no carry: phase 3 starts from initial_state).
    float dtSum = 0.f;
    if (K > 1)
        scanChunk<T, kN, false, kVecBC, kUnroll>(p, ln, pl, ch, smemF, h, dtSum);
    __syncthreads(); // the last tile's readers are done with the buffers the carries reuse
    if (K > 1)
    {
#pragma unroll
        for (int n = 0; n < kN; ++n)
        {
            int const at = (ln.k * kN + n) * cpb + ln.c;
            carryE[at] = h[n];
            carryA[at] = fastExp2(ch.A2[n] * dtSum);
        }
    }
    __syncthreads();

    // 2. The carries: thread (channel c, state n) walks the chunks in order, leaving H_k in carryE.
    for (int i = threadIdx.x; i < cpb * kN; i += blockDim.x)
    {
        int const c = i % cpb;
        int const n = i / cpb;
        int const d = blockIdx.x * cpb + c;
        float H = 0.f;
        if (p.initial_state != nullptr && d < p.dim && n < N)
            H = loadAny(p.initial_state,
                ln.b * p.state_strides.batch + d * p.state_strides.time + n * p.state_strides.chan, p.state_dtype);
        for (int k = 0; k < K; ++k)
        {
            int const at = (k * kN + n) * cpb + c;
            float const e = K > 1 ? carryE[at] : 0.f;
            carryE[at] = H;
            H = K > 1 ? fmaf(carryA[at], H, e) : H;
        }
    }
    __syncthreads();

    // 3. Each chunk from its true initial state, writing y.
#pragma unroll
    for (int n = 0; n < kN; ++n)
        h[n] = carryE[(ln.k * kN + n) * cpb + ln.c];
    __syncthreads(); // every H_k read before the rescan's first tile overwrites the carries
    scanChunk<T, kN, true, kVecBC, kUnroll>(p, ln, pl, ch, smemF, h, dtSum);

    if (ln.k == K - 1 && ln.active && p.last_state != nullptr)
    {
        float* sp = p.last_state + ln.b * p.last_state_strides.batch + ln.d * p.last_state_strides.time;
#pragma unroll
        for (int n = 0; n < kN; ++n)
            if (kExactN || n < N)
                sp[n * p.last_state_strides.chan] = h[n];
    }
}

//! The split for a call: channels a block (kMinCpb .. kThreads / 2) so that the batch · dim channels spread
//! most evenly over the SMs (one block resident per SM; ties to fewer channels a block, i.e. more chunks),
//! then as many chunks as the block's threads allow, each at least kMinChunkLen steps.
constexpr int kMinChunkLen = 64;

template <int kN>
inline Plan pickPlan(int64_t batch, int64_t dim, int seqlen, int numSms)
{
    using Cf = Config<kN>;
    int bestCpb = Cf::kThreads / 2;
    double bestEff = 0.0;
    for (int cpb = kMinCpb; cpb <= Cf::kThreads / 2; ++cpb)
    {
        int64_t const blocks = batch * ((dim + cpb - 1) / cpb);
        int64_t const waves = (blocks + numSms - 1) / numSms;
        double const eff = double(batch * dim) / double(waves * numSms * cpb);
        if (eff > bestEff + 1e-3)
        {
            bestEff = eff;
            bestCpb = cpb;
        }
    }
    int const maxChunks = Cf::kThreads / bestCpb;
    int const byLength = (seqlen + kMinChunkLen - 1) / kMinChunkLen;
    int K = maxChunks < byLength ? maxChunks : byLength;
    K = K < 1 ? 1 : K;
    int const per = (seqlen + K - 1) / K;
    int const chunkLen = (per + Cf::kSteps - 1) / Cf::kSteps * Cf::kSteps;
    int const chunks = (seqlen + chunkLen - 1) / chunkLen;
    return Plan{bestCpb, chunks < 1 ? 1 : chunks, chunkLen < Cf::kSteps ? Cf::kSteps : chunkLen};
}

//! Whether B and C can be staged as 16-byte vectors: every state a row holds is read (N = kN), rows contiguous
//! (state stride 1), and every row start 16-byte aligned (base, batch and time strides).
template <typename T, int kN, bool kExactN>
inline bool vecRowsOk(SelectiveScanParams const& p)
{
    constexpr int64_t V = kVecElems<T>;
    auto rows = [&](void const* base, Strides3 const& s) {
        return reinterpret_cast<uintptr_t>(base) % 16 == 0 && s.chan == 1 && s.time % V == 0 && s.batch % V == 0;
    };
    return kExactN && kN % V == 0 && rows(p.B, p.B_strides) && rows(p.C, p.C_strides);
}

template <typename T, int kN, bool kExactN, bool kVecBC>
cudaError_t launchKernel(SelectiveScanParams const& p, Plan const& pl, cudaStream_t stream)
{
    using Cf = Config<kN>;
    auto kernel = chunkedKernel<T, kN, kExactN, kVecBC>;
    cudaError_t const err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Cf::bytes(Cf::kMaxChunks, kMinCpb)));
    if (err != cudaSuccess)
        return err;
    dim3 const grid((p.dim + pl.cpb - 1) / pl.cpb, p.batch);
    kernel<<<grid, pl.cpb * pl.chunks, Cf::bytes(pl.chunks, pl.cpb), stream>>>(p, pl);
    HYMBA_LAUNCH_CHECK();
    return cudaSuccess;
}

template <typename T, int kN, bool kExactN>
cudaError_t launchT(SelectiveScanParams const& p, int numSms, cudaStream_t stream)
{
    Plan const pl = pickPlan<kN>(p.batch, p.dim, p.seqlen, numSms);
    if constexpr (kExactN && kN % kVecElems<T> == 0)
        if (vecRowsOk<T, kN, kExactN>(p))
            return launchKernel<T, kN, kExactN, true>(p, pl, stream);
    return launchKernel<T, kN, kExactN, false>(p, pl, stream);
}

} // namespace sscc
} // namespace hymba
