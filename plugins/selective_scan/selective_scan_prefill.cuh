/*
 * The time-parallel prefill (T > 1) SelectiveScan kernel and the dispatch between the SelectiveScan kernels.
 *
 * `sstp::timeParallelKernel`: one warp per (batch, channel); its 32 lanes hold 32 consecutive runs of kItems
 * time steps, so a tile of 32 · kItems steps is scanned in parallel. Per state n, each lane runs its own steps
 * from a zero state (h = a·h + b, with the running product of the a's); the lanes' (decay product, end state)
 * pairs go through an inclusive warp scan (shuffles; (a1, b1) then (a2, b2) compose to (a1·a2, a2·b1 + b2));
 * each lane applies its exclusive prefix to the state that the warp carries across tiles and adds C·h to its
 * outputs. Every exp is computed once, all state math is fp32, no workspace: the block walks all of T. The
 * block (4..8 channels, picked per call so the channels spread evenly over the SMs) stages each tile in shared
 * memory with loads coalesced along the channel axis, transposed, so a lane reads its steps 16 bytes at a time.
 *
 * Which kernel serves a call (selectiveScanLaunchT): T = 1 the decode step kernel (ssk::selectiveScanStepKernel);
 * T > 1 the time-parallel kernel while batch · dim is below kTimeParallelChannelsPerSm channels per SM (one
 * thread per channel leaves the GPU idle there), else the sequential kernel (ssk::selectiveScanKernel, one
 * thread per channel). HYMBA_SCAN_PREFILL forces one of the two (scanPrefillFromEnv).
 */
#pragma once

#include "selective_scan_kernel.cuh"

#include <cstdlib>
#include <cstring>

namespace hymba
{

//! softplus(x) (identity above the threshold) without branches: max(x, 0) + log1p(u), u = exp(-|x|) in (0, 1],
//! log1p(u) = 2·atanh(s) with s = u / (2 + u) in (0, 1/3], the atanh series to s^13 (truncation < 5e-9
//! relative). Branch-free, so the steps of a tile overlap.
__device__ __forceinline__ float softplusDt(float x, float threshold)
{
    float const u = fastExp2(-fabsf(x) * kLOG2E);
    float const sv = __fdividef(u, 2.f + u);
    float const s2 = sv * sv;
    float q = 1.f / 13.f;
    q = fmaf(q, s2, 1.f / 11.f);
    q = fmaf(q, s2, 1.f / 9.f);
    q = fmaf(q, s2, 1.f / 7.f);
    q = fmaf(q, s2, 1.f / 5.f);
    q = fmaf(q, s2, 1.f / 3.f);
    q = fmaf(q, s2, 1.f);
    float const sp = fmaf(2.f * sv, q, fmaxf(x, 0.f));
    return x > threshold ? x : sp;
}

//! SiLU with the fast reciprocal (the result is rounded to the I/O dtype or compared at 1e-5).
__device__ __forceinline__ float gateSilu(float z)
{
    return __fdividef(z, 1.0f + __expf(-z));
}

namespace sstp
{

constexpr int kMaxWarps = 8;           // channels per block: 4 .. 8, picked per call (launch)
constexpr int kMinWarps = 4;
constexpr int kItems = 8;              // consecutive time steps per lane
constexpr int kTile = 32 * kItems;     // time steps per block iteration
constexpr int kChanPitch = kTile + 8;  // elements per channel row of the x/dt/z/y tiles (16-byte rows)
constexpr int kStatePitch = kTile + 4; // floats per state row of the B/C tiles

//! Shared memory of a block with `warps` channels: x, dt, z, y as (channel, time) rows of T, then B and C
//! as (state, time) rows of fp32.
template <typename T, int kN>
struct SmemLayout
{
    static __host__ __device__ constexpr size_t chanBytes(int warps)
    {
        return size_t(4) * warps * kChanPitch * sizeof(T);
    }
    static __host__ __device__ constexpr size_t bytes(int warps)
    {
        return chanBytes(warps) + size_t(2) * kN * kStatePitch * sizeof(float);
    }
};

//! kItems consecutive T values from shared memory (16-byte aligned) as floats.
template <typename T>
__device__ __forceinline__ void loadItems(T const* src, float (&v)[kItems])
{
    constexpr int kPer = 16 / sizeof(T);
    using V = Vec<T, kPer>;
#pragma unroll
    for (int k = 0; k < kItems / kPer; ++k)
    {
        V const w = reinterpret_cast<V const*>(src)[k];
#pragma unroll
        for (int e = 0; e < kPer; ++e)
            v[k * kPer + e] = toFloat(w.v[e]);
    }
}

template <typename T>
__device__ __forceinline__ void storeItems(T* dst, float const (&v)[kItems])
{
    constexpr int kPer = 16 / sizeof(T);
    using V = Vec<T, kPer>;
#pragma unroll
    for (int k = 0; k < kItems / kPer; ++k)
    {
        V w;
#pragma unroll
        for (int e = 0; e < kPer; ++e)
            w.v[e] = fromFloat<T>(v[k * kPer + e]);
        reinterpret_cast<V*>(dst)[k] = w;
    }
}

//! The block's view of its tiles.
template <typename T, int kN>
struct Tiles
{
    T* x;
    T* dt;
    T* z;
    T* y;
    float* B;
    float* C;

    __device__ Tiles(unsigned char* raw, int warps)
    {
        x = reinterpret_cast<T*>(raw);
        dt = x + warps * kChanPitch;
        z = dt + warps * kChanPitch;
        y = z + warps * kChanPitch;
        B = reinterpret_cast<float*>(raw + SmemLayout<T, kN>::chanBytes(warps));
        C = B + kN * kStatePitch;
    }
};

//! Tile [t0, t0 + kTile) of x, dt, z (channels d0 .. d0 + warps - 1) and B, C into shared memory; rows past
//! the sequence and channels past dim read as 0. Consecutive threads read consecutive channels / states.
template <typename T, int kN, bool kExactN>
__device__ __forceinline__ void loadTile(SelectiveScanParams const& p, Tiles<T, kN> const& s, int warps, int b,
    int d0, int t0)
{
    int const L = p.seqlen;
    T const zero = fromFloat<T>(0.f);
    T const* xp = static_cast<T const*>(p.x) + b * p.x_strides.batch;
    T const* dtp = static_cast<T const*>(p.dt) + b * p.dt_strides.batch;
    T const* zp = p.z != nullptr ? static_cast<T const*>(p.z) + b * p.z_strides.batch : nullptr;
    int const c = threadIdx.x % warps; // blockDim.x = 32 · warps: thread i + k·blockDim.x has row i / warps + 32k
    int const d = d0 + c;
    bool const dOk = d < p.dim;
#pragma unroll
    for (int k = 0; k < kTile / 32; ++k)
    {
        int const r = threadIdx.x / warps + 32 * k;
        int const t = t0 + r;
        bool const ok = dOk && t < L;
        s.x[c * kChanPitch + r] = ok ? xp[t * p.x_strides.time + d * p.x_strides.chan] : zero;
        s.dt[c * kChanPitch + r] = ok ? dtp[t * p.dt_strides.time + d * p.dt_strides.chan] : zero;
        s.z[c * kChanPitch + r] = ok && zp != nullptr ? zp[t * p.z_strides.time + d * p.z_strides.chan] : zero;
    }
    int const N = kExactN ? kN : p.dstate;
    T const* Bp = static_cast<T const*>(p.B) + b * p.B_strides.batch;
    T const* Cp = static_cast<T const*>(p.C) + b * p.C_strides.batch;
    constexpr int kBatch = 8; // loads in flight per thread before their stores
    for (int e0 = threadIdx.x; e0 < kTile * N; e0 += kBatch * blockDim.x)
    {
        float vb[kBatch], vc[kBatch];
#pragma unroll
        for (int k = 0; k < kBatch; ++k)
        {
            int const e = e0 + k * blockDim.x;
            int const n = e % N;
            int const t = t0 + e / N;
            bool const ok = e < kTile * N && t < L;
            vb[k] = ok ? toFloat(Bp[t * p.B_strides.time + n * p.B_strides.chan]) : 0.f;
            vc[k] = ok ? toFloat(Cp[t * p.C_strides.time + n * p.C_strides.chan]) : 0.f;
        }
#pragma unroll
        for (int k = 0; k < kBatch; ++k)
        {
            int const e = e0 + k * blockDim.x;
            if (e < kTile * N)
            {
                s.B[(e % N) * kStatePitch + e / N] = vb[k];
                s.C[(e % N) * kStatePitch + e / N] = vc[k];
            }
        }
    }
}

//! y tile from shared memory to global memory (rows < seqlen, channels < dim).
template <typename T, int kN>
__device__ __forceinline__ void storeTile(SelectiveScanParams const& p, Tiles<T, kN> const& s, int warps, int b,
    int d0, int t0)
{
    T* yp = static_cast<T*>(p.y) + b * p.y_strides.batch;
    int const c = threadIdx.x % warps;
    int const d = d0 + c;
    if (d >= p.dim)
        return;
#pragma unroll
    for (int k = 0; k < kTile / 32; ++k)
    {
        int const r = threadIdx.x / warps + 32 * k;
        if (t0 + r < p.seqlen)
            yp[(t0 + r) * p.y_strides.time + d * p.y_strides.chan] = s.y[c * kChanPitch + r];
    }
}

template <typename T, int kN, bool kExactN>
__global__ void __launch_bounds__(32 * kMaxWarps, kN > 16 ? 2 : 4) timeParallelKernel(SelectiveScanParams const p)
{
    extern __shared__ __align__(16) unsigned char smemRaw[];
    int const warps = blockDim.x / 32;
    Tiles<T, kN> const s(smemRaw, warps);

    int const warp = threadIdx.x / 32;
    int const lane = threadIdx.x % 32;
    int const b = blockIdx.y;
    int const d0 = blockIdx.x * warps;
    int const d = d0 + warp;
    bool const active = d < p.dim; // inactive warps still join the barriers and the tile loads
    int const dc = active ? d : 0; // a valid channel for parameter reads
    int const N = kExactN ? kN : p.dstate;
    int const L = p.seqlen;

    // Lane n < N keeps state n: A[d, n]·log2(e) (exp(dt·A) = exp2(dt·A2)) and the state after the previous
    // tile; the other lanes hold A2 = 0, h = 0 (padded states: a = 1, b = 0).
    float a2Mine = 0.f, hMine = 0.f; // hMine: fixed during a tile; its update goes to hNext
    if (lane < N)
    {
        a2Mine = p.A[dc * p.A_dim_stride + lane * p.A_state_stride] * kLOG2E;
        if (p.initial_state != nullptr)
            hMine = loadAny(p.initial_state,
                b * p.state_strides.batch + dc * p.state_strides.time + lane * p.state_strides.chan, p.state_dtype);
    }
    float const Dd = p.D != nullptr ? p.D[dc] : 0.f;
    float const bias = p.dt_bias != nullptr ? p.dt_bias[dc] : 0.f;
    bool const hasZ = p.z != nullptr;
    int const row = warp * kChanPitch + lane * kItems; // this lane's steps in the x/dt/z/y tiles

    loadTile<T, kN, kExactN>(p, s, warps, b, d0, 0);
    __syncthreads();
    for (int t0 = 0; t0 < L; t0 += kTile)
    {
        int const tl = t0 + lane * kItems; // this lane's first step
        float hNext = hMine;
        float dtv[kItems], dx[kItems], y[kItems];
        {
            float xv[kItems];
            loadItems(s.x + row, xv);
            loadItems(s.dt + row, dtv);
#pragma unroll
            for (int i = 0; i < kItems; ++i)
            {
                dtv[i] = tl + i < L ? softplusDt(dtv[i] + bias, p.softplus_threshold) : 0.f; // past T: a = 1, b = 0
                dx[i] = dtv[i] * xv[i];
                y[i] = Dd * xv[i];
            }
        }
#pragma unroll
        for (int n = 0; n < kN; ++n)
        {
            if (!kExactN && n >= N)
                break;
            float const A2n = __shfl_sync(0xffffffffu, a2Mine, n);
            float const hn = __shfl_sync(0xffffffffu, hMine, n);
            float a[kItems], hl[kItems]; // running decay product and state from zero, inside this lane's run
            {
                float Bv[kItems];
                loadItems(s.B + n * kStatePitch + lane * kItems, Bv);
#pragma unroll
                for (int i = 0; i < kItems; ++i)
                {
                    float const ai = fastExp2(dtv[i] * A2n);
                    float const bi = dx[i] * Bv[i];
                    a[i] = i == 0 ? ai : a[i - 1] * ai;
                    hl[i] = i == 0 ? bi : fmaf(ai, hl[i - 1], bi);
                }
            }
            // Inclusive scan of the lanes' (decay, end state) pairs.
            // Selects, not branches: the unrolled states stay one basic block and their scans interleave.
            float Ag = a[kItems - 1], Bg = hl[kItems - 1];
#pragma unroll
            for (int off = 1; off < 32; off *= 2)
            {
                float Ap = __shfl_up_sync(0xffffffffu, Ag, off);
                float Bp = __shfl_up_sync(0xffffffffu, Bg, off);
                Ap = lane >= off ? Ap : 1.f; // identity below lane `off`
                Bp = lane >= off ? Bp : 0.f;
                Bg = fmaf(Ag, Bp, Bg);
                Ag *= Ap;
            }
            float Ae = __shfl_up_sync(0xffffffffu, Ag, 1);
            float Be = __shfl_up_sync(0xffffffffu, Bg, 1);
            float const Aall = __shfl_sync(0xffffffffu, Ag, 31);
            float const Ball = __shfl_sync(0xffffffffu, Bg, 31);
            Ae = lane == 0 ? 1.f : Ae;
            Be = lane == 0 ? 0.f : Be;
            float const hin = fmaf(Ae, hn, Be); // the state before this lane's first step
            float const hEnd = fmaf(Aall, hn, Ball); // the state after the tile, kept by lane n
            hNext = lane == n ? hEnd : hNext;
            float Cv[kItems];
            loadItems(s.C + n * kStatePitch + lane * kItems, Cv);
#pragma unroll
            for (int i = 0; i < kItems; ++i)
                y[i] = fmaf(Cv[i], fmaf(a[i], hin, hl[i]), y[i]);
        }
        if (hasZ)
        {
            float zv[kItems];
            loadItems(s.z + row, zv);
#pragma unroll
            for (int i = 0; i < kItems; ++i)
                y[i] *= gateSilu(zv[i]);
        }
        hMine = hNext;
        storeItems(s.y + row, y);
        __syncthreads(); // the tile is consumed and y is staged
        storeTile<T, kN>(p, s, warps, b, d0, t0);
        if (t0 + kTile < L)
            loadTile<T, kN, kExactN>(p, s, warps, b, d0, t0 + kTile);
        __syncthreads();
    }

    if (active && p.last_state != nullptr && lane < N)
        p.last_state[b * p.last_state_strides.batch + d * p.last_state_strides.time
            + lane * p.last_state_strides.chan] = hMine;
}

//! Channels per block (kMinWarps .. kMaxWarps): the one that spreads the batch · dim channels most evenly
//! over the SMs (every block walks all of T, so an SM's time is its channel count), ties to more channels.
inline int pickWarps(int64_t batch, int64_t dim, int numSms)
{
    int best = kMaxWarps;
    double bestEff = 0.0;
    for (int w = kMaxWarps; w >= kMinWarps; --w)
    {
        int64_t const blocks = batch * ((dim + w - 1) / w);
        int64_t const perSm = (blocks + numSms - 1) / numSms;
        double const eff = double(batch * dim) / double(perSm * w * numSms);
        if (eff > bestEff + 1e-3)
        {
            bestEff = eff;
            best = w;
        }
    }
    return best;
}

template <typename T, int kN, bool kExactN>
cudaError_t launch(SelectiveScanParams const& p, int numSms, cudaStream_t stream)
{
    auto kernel = timeParallelKernel<T, kN, kExactN>;
    int const warps = pickWarps(p.batch, p.dim, numSms);
    size_t const smem = SmemLayout<T, kN>::bytes(warps);
    cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(SmemLayout<T, kN>::bytes(kMaxWarps)));
    if (err == cudaSuccess) // shared memory, not L1, bounds the blocks per SM
        err = cudaFuncSetAttribute(
            kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    if (err != cudaSuccess)
        return err;
    dim3 const grid((p.dim + warps - 1) / warps, p.batch);
    kernel<<<grid, 32 * warps, smem, stream>>>(p);
    HYMBA_LAUNCH_CHECK();
    return cudaSuccess;
}

} // namespace sstp

//! Which prefill kernel serves a call with T > 1. `HYMBA_SCAN_PREFILL` (read per launch; for A/B runs and
//! tests) forces one: `sequential` (ssk::selectiveScanKernel) or `time` (sstp); unset or `auto`: the
//! time-parallel kernel below kTimeParallelChannelsPerSm channels (batch · dim) per SM, else the sequential one.
enum class ScanPrefill
{
    kAuto,
    kSequential,
    kTimeParallel,
};

inline ScanPrefill scanPrefillFromEnv()
{
    char const* v = std::getenv("HYMBA_SCAN_PREFILL");
    if (v == nullptr)
        return ScanPrefill::kAuto;
    if (std::strcmp(v, "sequential") == 0)
        return ScanPrefill::kSequential;
    if (std::strcmp(v, "time") == 0)
        return ScanPrefill::kTimeParallel;
    return ScanPrefill::kAuto;
}

//! H200, bf16, T = 2048 (bench/results/plugins_gpu_check_scan_h200_2026-11-30.json): the time-parallel kernel
//! is 1.5x faster at 97 channels per SM (batch 4), the sequential one 4x faster at 388 (batch 16).
constexpr int64_t kTimeParallelChannelsPerSm = 128;

template <typename T, int kN, bool kExactN>
cudaError_t launchPrefill(SelectiveScanParams const& p, cudaStream_t stream)
{
    int device = 0;
    int numSms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess)
        err = cudaDeviceGetAttribute(&numSms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess)
        return err;
    ScanPrefill path = scanPrefillFromEnv();
    if (path == ScanPrefill::kAuto)
        path = int64_t(p.batch) * p.dim < kTimeParallelChannelsPerSm * numSms ? ScanPrefill::kTimeParallel
                                                                               : ScanPrefill::kSequential;
    if (path == ScanPrefill::kSequential)
        return ssk::launchWithState<T, kN, kExactN>(p, stream);
    return sstp::launch<T, kN, kExactN>(p, numSms, stream);
}

template <typename T>
cudaError_t selectiveScanLaunchT(SelectiveScanParams const& p, cudaStream_t stream)
{
    if (p.batch == 0 || p.dim == 0)
        return cudaSuccess;
    // Exact d_state for Hymba (16) and its tiny preset (8): no per-state guards.
    if (p.seqlen == 1)
    {
        if (p.dstate == 16)
            return ssk::launchStep<T, 16, true>(p, stream);
        if (p.dstate == 8)
            return ssk::launchStep<T, 8, true>(p, stream);
        return ssk::launchStep<T, 32, false>(p, stream);
    }
    if (p.dstate == 16)
        return launchPrefill<T, 16, true>(p, stream);
    if (p.dstate == 8)
        return launchPrefill<T, 8, true>(p, stream);
    return launchPrefill<T, 32, false>(p, stream);
}

} // namespace hymba
