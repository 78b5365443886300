/*
 * The state-parallel prefill (T > 1) SelectiveScan kernel, `ssst::stateParallelKernel`, for small batches.
 *
 * A warp holds two channels; the 16 lanes of a channel hold its states (lane n: states n and, for d_state > 16,
 * n + 16) and each walks all of T: h = exp2(dt'·A2)·h + dt'·x·B_t, one dependent FMA per step, the exps and
 * products of a 16-step sub-tile independent of h (they overlap the chain). After a sub-tile each lane holds
 * its 16 products C_t·h_t; a butterfly reduce-scatter over the channel's 16 lanes (xor 8, 4, 2, 1; each level
 * sends half of what the lane holds and adds what comes back) leaves lane n with Σ_states C·h for step n of
 * the sub-tile: one shuffle and one add per product. Lane n then finishes y for that step.
 *
 * The block (4..8 warps = 8..16 consecutive channels, picked per call so the channels spread evenly over the
 * SMs) stages kSteps-step tiles in shared memory as fp32, double-buffered: while the warps scan tile k, each
 * thread's loads of tile k + 1 are in flight in registers. Staging computes the per-(step, channel) values once:
 * dt' = softplus(dt + dt_bias) (0 past T: no decay, no input), dt'·x, D·x and SiLU(z), and B, C as (state, step)
 * rows; y goes back through shared memory so the stores are coalesced along the channels. One barrier per tile.
 */
#pragma once

#include "selective_scan_math.cuh"

namespace hymba
{
namespace ssst
{

constexpr int kLanes = 16;   // lanes per channel = steps per sub-tile
constexpr int kMinWarps = 4; // warps per block: kMinWarps .. kMaxWarps, picked per call (launch)
constexpr int kMaxWarps = 8;

//! kPerLane states per lane: 1 for d_state <= 16, 2 for d_state <= 32.
template <int kPerLane>
struct Config
{
    static constexpr int kStates = kLanes * kPerLane;           // rows of the B and C tiles
    static constexpr int kSteps = kPerLane == 1 ? 64 : 32;      // steps per staged tile
    static constexpr int kPitch = kSteps + 4;                   // floats per row (16-byte aligned rows)
    static constexpr int kChanIters = kSteps / kLanes;          // (kSteps · 2·warps) / (32·warps) per thread
    static constexpr int kStateIters = kStates * kSteps / (32 * kMinWarps); // B or C elements per thread, at most
    //! Floats of one buffer: dt', dt'·x, D·x, gate, y as (channel, step) rows, then B and C as (state, step) rows.
    static __host__ __device__ constexpr int bufferFloats(int warps)
    {
        return (5 * 2 * warps + 2 * kStates) * kPitch;
    }
    static __host__ __device__ constexpr size_t bytes(int warps)
    {
        return size_t(2) * bufferFloats(warps) * sizeof(float);
    }
};

//! One buffer's arrays.
template <int kPerLane>
struct Buffer
{
    float* dt;   // (channel, step): dt' (0 past T or dim)
    float* dx;   // dt'·x
    float* skip; // D·x
    float* gate; // SiLU(z) (1 without z)
    float* y;    // Σ C·h + skip, gated
    float* B;    // (state, step)
    float* C;

    __device__ Buffer(float* base, int chans)
    {
        constexpr int P = Config<kPerLane>::kPitch;
        dt = base;
        dx = dt + chans * P;
        skip = dx + chans * P;
        gate = skip + chans * P;
        y = gate + chans * P;
        B = y + chans * P;
        C = B + Config<kPerLane>::kStates * P;
    }
};

//! One tile's global loads, held in registers between issue (load) and use (commit). Thread i of a block of
//! 16·chans threads owns channel i % chans at steps i / chans + 16·j; B and C element i + j·blockDim.
template <typename T, int kPerLane>
struct Stage
{
    using Cf = Config<kPerLane>;
    T x[Cf::kChanIters], dt[Cf::kChanIters], z[Cf::kChanIters];
    T B[Cf::kStateIters], C[Cf::kStateIters];

    __device__ __forceinline__ void load(SelectiveScanParams const& p, int b, int d, int t0)
    {
        int const L = p.seqlen;
        int const N = p.dstate;
        int const chans = blockDim.x / kLanes;
        T const zero = fromFloat<T>(0.f);
        bool const dOk = d < p.dim;
        T const* xp = static_cast<T const*>(p.x) + b * p.x_strides.batch + d * p.x_strides.chan;
        T const* dtp = static_cast<T const*>(p.dt) + b * p.dt_strides.batch + d * p.dt_strides.chan;
        T const* zp = p.z != nullptr ? static_cast<T const*>(p.z) + b * p.z_strides.batch + d * p.z_strides.chan
                                     : nullptr;
#pragma unroll
        for (int j = 0; j < Cf::kChanIters; ++j)
        {
            int const t = t0 + int(threadIdx.x) / chans + kLanes * j;
            bool const ok = dOk && t < L;
            x[j] = ok ? xp[t * p.x_strides.time] : zero;
            dt[j] = ok ? dtp[t * p.dt_strides.time] : zero;
            z[j] = ok && zp != nullptr ? zp[t * p.z_strides.time] : zero;
        }
        T const* Bp = static_cast<T const*>(p.B) + b * p.B_strides.batch;
        T const* Cp = static_cast<T const*>(p.C) + b * p.C_strides.batch;
#pragma unroll
        for (int j = 0; j < Cf::kStateIters; ++j)
        {
            int const e = int(threadIdx.x) + j * int(blockDim.x);
            int const t = t0 + e / N;
            int const n = e % N;
            bool const ok = e < N * Cf::kSteps && t < L;
            B[j] = ok ? Bp[t * p.B_strides.time + n * p.B_strides.chan] : zero;
            C[j] = ok ? Cp[t * p.C_strides.time + n * p.C_strides.chan] : zero;
        }
    }

    //! The loaded tile (starting at t0) into `s` as fp32, with the per-(step, channel) values computed once.
    __device__ __forceinline__ void commit(SelectiveScanParams const& p, Buffer<kPerLane> const& s, int d, int t0,
        float bias, float Dd) const
    {
        constexpr int P = Cf::kPitch;
        int const L = p.seqlen;
        int const N = p.dstate;
        int const chans = blockDim.x / kLanes;
        int const c = int(threadIdx.x) % chans;
        bool const dOk = d < p.dim;
        bool const hasZ = p.z != nullptr;
#pragma unroll
        for (int j = 0; j < Cf::kChanIters; ++j)
        {
            int const tt = int(threadIdx.x) / chans + kLanes * j;
            bool const ok = dOk && t0 + tt < L;
            float const xv = toFloat(x[j]);
            float const delta = ok ? softplusDt(toFloat(dt[j]) + bias, p.softplus_threshold) : 0.f;
            s.dt[c * P + tt] = delta;
            s.dx[c * P + tt] = delta * xv;
            s.skip[c * P + tt] = Dd * xv;
            s.gate[c * P + tt] = hasZ ? gateSilu(toFloat(z[j])) : 1.f;
        }
#pragma unroll
        for (int j = 0; j < Cf::kStateIters; ++j)
        {
            int const e = int(threadIdx.x) + j * int(blockDim.x);
            if (e < N * Cf::kSteps)
            {
                s.B[(e % N) * P + e / N] = toFloat(B[j]);
                s.C[(e % N) * P + e / N] = toFloat(C[j]);
            }
        }
    }
};

//! The y rows of the tile starting at t0 from shared memory to global memory (steps < T, channels < dim).
template <typename T, int kPerLane>
__device__ __forceinline__ void storeY(SelectiveScanParams const& p, Buffer<kPerLane> const& s, int b, int d, int t0)
{
    using Cf = Config<kPerLane>;
    int const chans = blockDim.x / kLanes;
    int const c = int(threadIdx.x) % chans;
    if (d >= p.dim)
        return;
    T* yp = static_cast<T*>(p.y) + b * p.y_strides.batch + d * p.y_strides.chan;
#pragma unroll
    for (int j = 0; j < Cf::kChanIters; ++j)
    {
        int const tt = int(threadIdx.x) / chans + kLanes * j;
        if (t0 + tt < p.seqlen)
            yp[(t0 + tt) * p.y_strides.time] = fromFloat<T>(s.y[c * Cf::kPitch + tt]);
    }
}

//! Butterfly reduce-scatter over the 16 lanes of a half-warp: lane n (= lane % 16) gets Σ_lanes v[n].
__device__ __forceinline__ float reduceScatter16(float const (&v)[kLanes], int n)
{
    float w8[8], w4[4], w2[2];
    bool const h8 = (n & 8) != 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) // keep steps j + 8·bit3(n)
    {
        float const send = h8 ? v[j] : v[j + 8];
        float const keep = h8 ? v[j + 8] : v[j];
        w8[j] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
    }
    bool const h4 = (n & 4) != 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) // keep steps j + 4·bit2(n) + 8·bit3(n)
    {
        float const send = h4 ? w8[j] : w8[j + 4];
        float const keep = h4 ? w8[j + 4] : w8[j];
        w4[j] = keep + __shfl_xor_sync(0xffffffffu, send, 4);
    }
    bool const h2 = (n & 2) != 0;
#pragma unroll
    for (int j = 0; j < 2; ++j)
    {
        float const send = h2 ? w4[j] : w4[j + 2];
        float const keep = h2 ? w4[j + 2] : w4[j];
        w2[j] = keep + __shfl_xor_sync(0xffffffffu, send, 2);
    }
    bool const h1 = (n & 1) != 0;
    float const send = h1 ? w2[0] : w2[1];
    float const keep = h1 ? w2[1] : w2[0];
    return keep + __shfl_xor_sync(0xffffffffu, send, 1); // step n
}

//! The warps' scan of one staged tile (steps t0 .. t0 + kSteps - 1; rows past T hold dt' = 0: h unchanged).
//! Lane (c, n): channel c of the warp, states n + 16·j; writes y of step 16·sub + n of each sub-tile.
template <int kPerLane>
__device__ __forceinline__ void scanTile(Buffer<kPerLane> const& s, int c, int n, int stepsLeft,
    float const (&A2)[kPerLane], float (&h)[kPerLane])
{
    using Cf = Config<kPerLane>;
    constexpr int P = Cf::kPitch;
    float const* dtRow = s.dt + c * P;
    float const* dxRow = s.dx + c * P;
#pragma unroll 1
    for (int s0 = 0; s0 < Cf::kSteps && s0 < stepsLeft; s0 += kLanes) // block-uniform: whole warps take it
    {
        float v[kLanes];
#pragma unroll
        for (int q = 0; q < kLanes / 4; ++q)
        {
            float4 const dt4 = *reinterpret_cast<float4 const*>(dtRow + s0 + 4 * q);
            float4 const dx4 = *reinterpret_cast<float4 const*>(dxRow + s0 + 4 * q);
            float const dtq[4] = {dt4.x, dt4.y, dt4.z, dt4.w};
            float const dxq[4] = {dx4.x, dx4.y, dx4.z, dx4.w};
#pragma unroll
            for (int j = 0; j < kPerLane; ++j)
            {
                float4 const b4 = *reinterpret_cast<float4 const*>(s.B + (n + kLanes * j) * P + s0 + 4 * q);
                float4 const c4 = *reinterpret_cast<float4 const*>(s.C + (n + kLanes * j) * P + s0 + 4 * q);
                float const bq[4] = {b4.x, b4.y, b4.z, b4.w};
                float const cq[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
                {
                    float const a = fastExp2(dtq[i] * A2[j]);
                    h[j] = fmaf(a, h[j], dxq[i] * bq[i]);
                    v[4 * q + i] = j == 0 ? cq[i] * h[j] : fmaf(cq[i], h[j], v[4 * q + i]);
                }
            }
        }
        float const yv = reduceScatter16(v, n);
        s.y[c * P + s0 + n] = (yv + s.skip[c * P + s0 + n]) * s.gate[c * P + s0 + n];
    }
}

template <typename T, int kPerLane>
__global__ void __launch_bounds__(32 * kMaxWarps, 2) stateParallelKernel(SelectiveScanParams const p)
{
    using Cf = Config<kPerLane>;
    extern __shared__ __align__(16) float smemF[];
    int const chans = blockDim.x / kLanes; // 2 per warp
    int const b = blockIdx.y;
    int const d0 = blockIdx.x * chans;
    int const N = p.dstate;
    int const L = p.seqlen;
    int const bufFloats = Cf::bufferFloats(chans / 2); // buffer k % 2 starts at smemF + (k % 2) · bufFloats

    // Scan role: lane (c, n) of warp w owns channel d0 + 2w + c, states n + 16·j (those >= N hold A2 = 0,
    // h = 0 and read zero B, C rows: h stays 0).
    int const lane = threadIdx.x % 32;
    int const n = lane % kLanes;
    int const cScan = 2 * (threadIdx.x / 32) + lane / kLanes;
    int const dScan = d0 + cScan;
    int const dc = dScan < p.dim ? dScan : 0; // a valid channel for parameter reads
    float A2[kPerLane], h[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j)
    {
        int const st = n + kLanes * j;
        A2[j] = 0.f;
        h[j] = 0.f;
        if (st < N)
        {
            A2[j] = p.A[dc * p.A_dim_stride + st * p.A_state_stride] * kLOG2E; // exp(dt·A) = exp2(dt·A2)
            if (p.initial_state != nullptr)
                h[j] = loadAny(p.initial_state,
                    b * p.state_strides.batch + dc * p.state_strides.time + st * p.state_strides.chan, p.state_dtype);
        }
    }
    // Staging role: thread i owns channel d0 + i % chans.
    int const dStage = d0 + int(threadIdx.x) % chans;
    int const dsc = dStage < p.dim ? dStage : 0;
    float const bias = p.dt_bias != nullptr ? p.dt_bias[dsc] : 0.f;
    float const Dd = p.D != nullptr ? p.D[dsc] : 0.f;

    // Rows N .. kStates - 1 of B and C stay zero (the staging writes rows < N only).
    {
        int const pad = (Cf::kStates - N) * Cf::kPitch;
        for (int i = threadIdx.x; i < 4 * pad; i += blockDim.x)
        {
            Buffer<kPerLane> const s(smemF + (i / (2 * pad)) * bufFloats, chans);
            float* rows = (i / pad) % 2 == 0 ? s.B : s.C;
            rows[N * Cf::kPitch + i % pad] = 0.f;
        }
    }

    Stage<T, kPerLane> stage;
    stage.load(p, b, dStage, 0);
    int const tiles = (L + Cf::kSteps - 1) / Cf::kSteps;
    for (int k = 0; k < tiles; ++k)
    {
        int const t0 = k * Cf::kSteps;
        Buffer<kPerLane> const s(smemF + (k % 2) * bufFloats, chans);
        stage.commit(p, s, dStage, t0, bias, Dd); // tile k - 2's readers passed the previous barrier
        __syncthreads();
        if (k + 1 < tiles)
            stage.load(p, b, dStage, t0 + Cf::kSteps); // in flight during this tile's scan
        if (k > 0) // tile k - 1's y: its x was read two barriers ago, so y may alias x
            storeY<T, kPerLane>(p, Buffer<kPerLane>(smemF + ((k - 1) % 2) * bufFloats, chans), b, dStage,
                t0 - Cf::kSteps);
        scanTile<kPerLane>(s, cScan, n, L - t0, A2, h);
    }
    __syncthreads();
    if (tiles > 0)
        storeY<T, kPerLane>(p, Buffer<kPerLane>(smemF + ((tiles - 1) % 2) * bufFloats, chans), b, dStage,
            (tiles - 1) * Cf::kSteps);

    if (dScan < p.dim && p.last_state != nullptr)
    {
#pragma unroll
        for (int j = 0; j < kPerLane; ++j)
            if (n + kLanes * j < N)
                p.last_state[b * p.last_state_strides.batch + dScan * p.last_state_strides.time
                    + (n + kLanes * j) * p.last_state_strides.chan] = h[j];
    }
}

//! Warps per block (kMinWarps .. kMaxWarps, 2 channels each): the one that spreads the batch · dim channels
//! most evenly over the SMs (every block walks all of T, so an SM's time is its channel count), ties to more.
inline int pickWarps(int64_t batch, int64_t dim, int numSms)
{
    int best = kMaxWarps;
    double bestEff = 0.0;
    for (int w = kMaxWarps; w >= kMinWarps; --w)
    {
        int64_t const blocks = batch * ((dim + 2 * w - 1) / (2 * w));
        int64_t const perSm = (blocks + numSms - 1) / numSms;
        double const eff = double(batch * dim) / double(perSm * 2 * w * numSms);
        if (eff > bestEff + 1e-3)
        {
            bestEff = eff;
            best = w;
        }
    }
    return best;
}

template <typename T, int kPerLane>
cudaError_t launchT(SelectiveScanParams const& p, int numSms, cudaStream_t stream)
{
    auto kernel = stateParallelKernel<T, kPerLane>;
    int const warps = pickWarps(p.batch, p.dim, numSms);
    cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Config<kPerLane>::bytes(kMaxWarps)));
    if (err == cudaSuccess) // shared memory, not L1, bounds the blocks per SM
        err = cudaFuncSetAttribute(
            kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    if (err != cudaSuccess)
        return err;
    dim3 const grid((p.dim + 2 * warps - 1) / (2 * warps), p.batch);
    kernel<<<grid, 32 * warps, Config<kPerLane>::bytes(warps), stream>>>(p);
    HYMBA_LAUNCH_CHECK();
    return cudaSuccess;
}

//! Any d_state (1..32): one state per lane up to 16, two up to 32.
template <typename T>
cudaError_t launch(SelectiveScanParams const& p, int numSms, cudaStream_t stream)
{
    if (p.dstate <= kLanes)
        return launchT<T, 1>(p, numSms, stream);
    return launchT<T, 2>(p, numSms, stream);
}

} // namespace ssst
} // namespace hymba
