/*
 * The sequential SelectiveScan kernel (prefill with many channels) and the decode-step kernel (T = 1); the
 * state-parallel prefill kernel is in selective_scan_state_kernel.cuh and the launcher that picks among them in
 * selective_scan_prefill.cuh, which the per-dtype .cu files instantiate.
 *
 * Sequential: one thread owns one (batch, channel) pair and keeps its d_state values in registers, walking
 * time in tiles of kSteps steps, kThreads channels a block. Per tile the block stages B_t and C_t (shared by
 * every channel) in shared memory as fp32, double buffered, and each thread writes its per-step values (dt',
 * dt'·x, D·x, SiLU(z)) to its own shared-memory row; while the threads scan tile j, the global loads of tile
 * j + 1 (each thread's x, dt, z and its share of B and C) are in flight in registers. One barrier per tile; the
 * scan loop is an exp2, a multiply and two FMAs per (step, state).
 */
#pragma once

#include "../common/kernel_common.cuh"
#include "selective_scan_kernel.h"
#include "selective_scan_math.cuh"

namespace hymba
{
namespace ssk
{

constexpr int kThreads = 128; // channels per block

//! Compile-time shape of a staged tile for kN register states.
template <int kN>
struct Tile
{
    static constexpr int kSteps = kN == 32 ? 4 : 8;                   // steps per tile
    static constexpr int kElems = kSteps * kN;                        // B (or C) elements per tile
    static constexpr int kStage = (kElems + kThreads - 1) / kThreads; // of them per thread, at most
    static constexpr int kRow = 4 * kSteps + 4;                       // floats per thread row (bank shift)
};

//! One tile's global loads, held in registers from issue (load) to use (commit): the thread's x, dt, z for
//! kSteps steps and its share of the block's kSteps x kN elements of B and C.
template <typename T, int kN, bool kExactN>
struct Stage
{
    using Tl = Tile<kN>;
    T x[Tl::kSteps], dt[Tl::kSteps], z[Tl::kSteps];
    T B[Tl::kStage], C[Tl::kStage];
    // The thread's next step of x, dt, z (bytes; advanced one step per load; z's is x's when there is no z) and
    // the steps' byte strides.
    char const* xq;
    char const* dtq;
    char const* zq;
    int64_t xs, dts, zs;

    __device__ __forceinline__ Stage(SelectiveScanParams const& p, int b, int d, bool hasZ)
    {
        xq = reinterpret_cast<char const*>(static_cast<T const*>(p.x) + b * p.x_strides.batch + d * p.x_strides.chan);
        dtq = reinterpret_cast<char const*>(
            static_cast<T const*>(p.dt) + b * p.dt_strides.batch + d * p.dt_strides.chan);
        zq = hasZ ? reinterpret_cast<char const*>(
                 static_cast<T const*>(p.z) + b * p.z_strides.batch + d * p.z_strides.chan)
                  : xq;
        xs = p.x_strides.time * int64_t(sizeof(T));
        dts = p.dt_strides.time * int64_t(sizeof(T));
        zs = hasZ ? p.z_strides.time * int64_t(sizeof(T)) : xs;
    }

    //! The loads of the tile starting at step t0 (tiles in order: the x, dt, z pointers are at t0); `left`:
    //! the thread's steps of the tile inside T (0 for a thread without a channel).
    __device__ __forceinline__ void load(SelectiveScanParams const& p, T const* Bp, T const* Cp, int t0, int left,
        bool hasZ)
    {
        T const zero = fromFloat<T>(0.f);
#pragma unroll
        for (int s = 0; s < Tl::kSteps; ++s)
        {
            bool const ok = s < left;
            x[s] = ok ? *reinterpret_cast<T const*>(xq) : zero;
            dt[s] = ok ? *reinterpret_cast<T const*>(dtq) : zero;
            z[s] = ok && hasZ ? *reinterpret_cast<T const*>(zq) : zero;
            xq += xs;
            dtq += dts;
            zq += zs;
        }
        int const N = kExactN ? kN : p.dstate;
#pragma unroll
        for (int j = 0; j < Tl::kStage; ++j)
        {
            int const e = int(threadIdx.x) + j * kThreads;
            int const n = e % kN;
            int const t = t0 + e / kN;
            bool const ok = e < Tl::kElems && (kExactN || n < N) && t < p.seqlen;
            B[j] = ok ? Bp[int64_t(t) * p.B_strides.time + n * p.B_strides.chan] : zero;
            C[j] = ok ? Cp[int64_t(t) * p.C_strides.time + n * p.C_strides.chan] : zero;
        }
    }

    //! The loaded tile (starting at step t0) into shared memory as fp32: B and C into the block's tile buffers
    //! ([step][state]; states n >= N get 0), the thread's per-step values into its row: (dt', dt'·x, D·x,
    //! SiLU(z)) per step, dt' = 0 past T or without a channel (h unchanged; nothing is written there).
    __device__ __forceinline__ void commit(SelectiveScanParams const& p, bool active, int t0, float bias, float Dd,
        bool hasZ, float* sB, float* sC, float* row) const
    {
#pragma unroll
        for (int j = 0; j < Tl::kStage; ++j)
        {
            int const e = int(threadIdx.x) + j * kThreads;
            if (e < Tl::kElems)
            {
                sB[e] = toFloat(B[j]);
                sC[e] = toFloat(C[j]);
            }
        }
#pragma unroll
        for (int s = 0; s < Tl::kSteps; ++s)
        {
            bool const ok = active && t0 + s < p.seqlen;
            float const xv = toFloat(x[s]);
            // Both computed unconditionally and then selected: no branch per step.
            float const sp = softplusPoly(toFloat(dt[s]) + bias, p.softplus_threshold);
            float const gate = gateSilu(toFloat(z[s]));
            float4 v;
            v.x = ok ? sp : 0.f;
            v.y = v.x * xv;
            v.z = Dd * xv;
            v.w = hasZ ? gate : 1.f;
            *reinterpret_cast<float4*>(row + 4 * s) = v;
        }
    }
};

//! h[n] = state[n · stride] as fp32 for the n < N this thread owns. One dtype per call, so the kN loads
//! sit in one basic block and are all in flight together (a per-element dtype switch serialised them:
//! at decode, T = 1, these loads are most of the kernel's bytes).
template <typename S, int kN, bool kExactN>
__device__ __forceinline__ void loadState(void const* state, int64_t offset, int64_t stride, int N, float (&h)[kN])
{
    S const* sp = static_cast<S const*>(state) + offset;
#pragma unroll
    for (int n = 0; n < kN; ++n)
        if (kExactN || n < N)
            h[n] = toFloat(sp[n * stride]);
}

//! kMinBlocks: blocks per SM that the registers are capped for (4: 128 registers, no spills at kN 16).
template <typename T, int kN, bool kExactN, int kMinBlocks = 4>
__global__ void __launch_bounds__(kThreads, kMinBlocks) selectiveScanKernel(SelectiveScanParams const p)
{
    using Tl = Tile<kN>;
    __shared__ __align__(16) float sB[2][Tl::kElems];
    __shared__ __align__(16) float sC[2][Tl::kElems];
    __shared__ __align__(16) float sRows[kThreads * Tl::kRow];

    int const b = blockIdx.y;
    int const d = blockIdx.x * kThreads + threadIdx.x;
    bool const active = d < p.dim;
    int const N = kExactN ? kN : p.dstate;
    int const L = p.seqlen;

    float A2[kN]; // A·log2(e): exp(dt·A) = exp2(dt·A2)
    float h[kN];
#pragma unroll
    for (int n = 0; n < kN; ++n)
        A2[n] = h[n] = 0.f;
    if (active)
    {
        float const* Ad = p.A + d * p.A_dim_stride;
#pragma unroll
        for (int n = 0; n < kN; ++n)
            if (kExactN || n < N)
                A2[n] = Ad[n * p.A_state_stride] * kLOG2E;
        if (p.initial_state != nullptr)
        {
            int64_t const off = b * p.state_strides.batch + d * p.state_strides.time;
            int64_t const st = p.state_strides.chan;
            switch (p.state_dtype)
            {
            case DType::kFLOAT32: loadState<float, kN, kExactN>(p.initial_state, off, st, N, h); break;
            case DType::kFLOAT16: loadState<__half, kN, kExactN>(p.initial_state, off, st, N, h); break;
            case DType::kBFLOAT16: loadState<__nv_bfloat16, kN, kExactN>(p.initial_state, off, st, N, h); break;
            }
        }
    }
    float const Dd = (active && p.D != nullptr) ? p.D[d] : 0.f;
    float const bias = (active && p.dt_bias != nullptr) ? p.dt_bias[d] : 0.f;
    bool const hasZ = p.z != nullptr;
    int const dc = active ? d : 0; // a valid channel for the pointers below

    T const* Bp = static_cast<T const*>(p.B) + b * p.B_strides.batch;
    T const* Cp = static_cast<T const*>(p.C) + b * p.C_strides.batch;
    // The thread's y at the current step (bytes), advanced one step at a time.
    char* yq = reinterpret_cast<char*>(static_cast<T*>(p.y) + b * p.y_strides.batch + dc * p.y_strides.chan);
    int64_t const ys = p.y_strides.time * int64_t(sizeof(T));
    float* const row = sRows + threadIdx.x * Tl::kRow; // thread-private: no barrier between write and read

    Stage<T, kN, kExactN> stage(p, b, dc, hasZ);
    stage.load(p, Bp, Cp, 0, active ? L : 0, hasZ);
    int buf = 0;
#pragma unroll 1
    for (int t0 = 0; t0 < L; t0 += Tl::kSteps, buf ^= 1)
    {
        // Tile - 2's readers of this buffer passed the previous barrier.
        stage.commit(p, active, t0, bias, Dd, hasZ, sB[buf], sC[buf], row);
        __syncthreads();
        int const next = t0 + Tl::kSteps;
        if (next < L)
            stage.load(p, Bp, Cp, next, active ? L - next : 0, hasZ); // in flight during this tile's scan
        float const* bRow = sB[buf];
        float const* cRow = sC[buf];
#pragma unroll
        for (int s = 0; s < Tl::kSteps; ++s)
        {
            float4 const v = *reinterpret_cast<float4 const*>(row + 4 * s);
            float y[4] = {0.f, 0.f, 0.f, 0.f}; // four partial sums: a shorter dependency chain
#pragma unroll
            for (int q = 0; q < kN / 4; ++q)
            {
                float4 const b4 = *reinterpret_cast<float4 const*>(bRow + s * kN + 4 * q);
                float4 const c4 = *reinterpret_cast<float4 const*>(cRow + s * kN + 4 * q);
                float const bq[4] = {b4.x, b4.y, b4.z, b4.w};
                float const cq[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
                {
                    int const n = 4 * q + i;
                    if (kExactN || n < N)
                    {
                        h[n] = fmaf(fastExp2(v.x * A2[n]), h[n], v.y * bq[i]);
                        y[i] = fmaf(cq[i], h[n], y[i]);
                    }
                }
            }
            storeIf(reinterpret_cast<T*>(yq), fromFloat<T>(((y[0] + y[1]) + (y[2] + y[3]) + v.z) * v.w),
                active && t0 + s < L);
            yq += ys;
        }
    }

    if (active && p.last_state != nullptr)
    {
        float* sp = p.last_state + b * p.last_state_strides.batch + d * p.last_state_strides.time;
#pragma unroll
        for (int n = 0; n < kN; ++n)
            if (kExactN || n < N)
                sp[n * p.last_state_strides.chan] = h[n];
    }
}

template <typename T, int kN, bool kExactN>
cudaError_t launchWithState(SelectiveScanParams const& p, cudaStream_t stream)
{
    dim3 const grid((p.dim + kThreads - 1) / kThreads, p.batch);
    selectiveScanKernel<T, kN, kExactN><<<grid, kThreads, 0, stream>>>(p);
    HYMBA_LAUNCH_CHECK();
    return cudaSuccess;
}

/*
 * Decode step (T = 1): nothing to walk, so the job is one round trip to memory per state. Two threads
 * share a channel, each holding kN / 2 states (half the registers of the scan kernel, twice the threads
 * in flight), and issue all their loads (state, A, x, dt, z, B, C) before any use: no shared memory, no
 * barrier. Lanes c and c + 16 of a warp own channel c's two halves; their y partials meet by one shuffle.
 */
constexpr int kStepThreads = 128;
constexpr int kStepChannels = kStepThreads / 2; // channels per block

template <typename T, int kN, bool kExactN>
__global__ void __launch_bounds__(kStepThreads) selectiveScanStepKernel(SelectiveScanParams const p)
{
    constexpr int NH = kN / 2;
    int const lane = threadIdx.x & 31;
    int const half = lane >> 4;
    int const b = blockIdx.y;
    int const d = blockIdx.x * kStepChannels + (threadIdx.x >> 5) * 16 + (lane & 15);
    bool const active = d < p.dim;
    int const N = kExactN ? kN : p.dstate;
    int const n0 = half * NH; // this thread's states: n0 .. n0 + NH - 1

    float A2[NH], h[NH], Bv[NH], Cv[NH];
#pragma unroll
    for (int j = 0; j < NH; ++j)
        A2[j] = h[j] = Bv[j] = Cv[j] = 0.f;
    float xv = 0.f, dv = 0.f, zv = 0.f, Dd = 0.f, bias = 0.f;
    bool const hasZ = p.z != nullptr;
    if (active)
    {
        float const* Ad = p.A + d * p.A_dim_stride;
        T const* Bp = static_cast<T const*>(p.B) + b * p.B_strides.batch;
        T const* Cp = static_cast<T const*>(p.C) + b * p.C_strides.batch;
#pragma unroll
        for (int j = 0; j < NH; ++j)
        {
            if (kExactN || n0 + j < N)
            {
                A2[j] = Ad[(n0 + j) * p.A_state_stride] * kLOG2E;
                Bv[j] = toFloat(Bp[(n0 + j) * p.B_strides.chan]);
                Cv[j] = toFloat(Cp[(n0 + j) * p.C_strides.chan]);
            }
        }
        if (p.initial_state != nullptr)
        {
            int64_t const off = b * p.state_strides.batch + d * p.state_strides.time + n0 * p.state_strides.chan;
            int64_t const st = p.state_strides.chan;
            int const nh = kExactN ? NH : max(0, min(NH, N - n0));
            switch (p.state_dtype)
            {
            case DType::kFLOAT32: loadState<float, NH, kExactN>(p.initial_state, off, st, nh, h); break;
            case DType::kFLOAT16: loadState<__half, NH, kExactN>(p.initial_state, off, st, nh, h); break;
            case DType::kBFLOAT16: loadState<__nv_bfloat16, NH, kExactN>(p.initial_state, off, st, nh, h); break;
            }
        }
        xv = toFloat(static_cast<T const*>(p.x)[b * p.x_strides.batch + d * p.x_strides.chan]);
        dv = toFloat(static_cast<T const*>(p.dt)[b * p.dt_strides.batch + d * p.dt_strides.chan]);
        zv = hasZ ? toFloat(static_cast<T const*>(p.z)[b * p.z_strides.batch + d * p.z_strides.chan]) : 0.f;
        Dd = p.D != nullptr ? p.D[d] : 0.f;
        bias = p.dt_bias != nullptr ? p.dt_bias[d] : 0.f;
    }

    float const delta0 = dv + bias;
    float const delta = delta0 > p.softplus_threshold ? delta0 : log1pf(expf(delta0));
    float const dx = delta * xv;
    float y[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < NH; ++j)
    {
        h[j] = fastExp2(delta * A2[j]) * h[j] + dx * Bv[j]; // zero-padded states stay 0 (A2 = B = 0)
        y[j % 2] += Cv[j] * h[j];
    }
    float yh = y[0] + y[1];
    yh += __shfl_xor_sync(0xffffffffu, yh, 16); // the other half of this channel's states
    if (!active)
        return;
    if (half == 0)
    {
        float const gate = hasZ ? zv / (1.0f + __expf(-zv)) : 1.f;
        static_cast<T*>(p.y)[b * p.y_strides.batch + d * p.y_strides.chan] = fromFloat<T>((yh + Dd * xv) * gate);
    }
    if (p.last_state != nullptr)
    {
        float* sp = p.last_state + b * p.last_state_strides.batch + d * p.last_state_strides.time;
#pragma unroll
        for (int j = 0; j < NH; ++j)
            if (kExactN || n0 + j < N)
                sp[(n0 + j) * p.last_state_strides.chan] = h[j];
    }
}

template <typename T, int kN, bool kExactN>
cudaError_t launchStep(SelectiveScanParams const& p, cudaStream_t stream)
{
    dim3 const grid((p.dim + kStepChannels - 1) / kStepChannels, p.batch);
    selectiveScanStepKernel<T, kN, kExactN><<<grid, kStepThreads, 0, stream>>>(p);
    HYMBA_LAUNCH_CHECK();
    return cudaSuccess;
}

} // namespace ssk

} // namespace hymba
