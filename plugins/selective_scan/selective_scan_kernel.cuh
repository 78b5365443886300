/*
 * The sequential SelectiveScan kernel (prefill with many channels) and the decode-step kernel (T = 1); the
 * state-parallel prefill kernel is in selective_scan_state_kernel.cuh and the launcher that picks among them in
 * selective_scan_prefill.cuh, which the per-dtype .cu files instantiate.
 *
 * Sequential: one thread owns one (batch, channel) pair and keeps its d_state values in registers, walking
 * time in chunks of kChunk steps: the block stages the chunk's B_t and C_t (shared by every channel) in shared
 * memory as fp32, each thread loads its chunk of x, dt, z first (kChunk independent loads in flight), then runs
 * the recurrence.
 */
#pragma once

#include "../common/kernel_common.cuh"
#include "selective_scan_kernel.h"

namespace hymba
{
namespace ssk
{

constexpr int kChunk = 8;
constexpr int kMaxThreads = 128;

//! One chunk of time steps for one channel. kFull: all kChunk steps valid, so the fully unrolled body has
//! no branches and the compiler can overlap the exp2 of later steps with the h chain of earlier ones.
template <typename T, int kN, bool kExactN, bool kFull>
__device__ __forceinline__ void scanChunk(SelectiveScanParams const& p, int t0, int len, float const (&A2)[kN],
    float (&h)[kN], float Dd, float bias, bool hasZ, T const* xp, T const* dtp, T const* zp, T* yp,
    float const (&sB)[kChunk][kN], float const (&sC)[kChunk][kN])
{
    int const N = p.dstate;
    float xv[kChunk], dv[kChunk], zv[kChunk];
#pragma unroll
    for (int tt = 0; tt < kChunk; ++tt)
    {
        if (kFull || tt < len)
        {
            int64_t const t = t0 + tt;
            xv[tt] = toFloat(xp[t * p.x_strides.time]);
            dv[tt] = toFloat(dtp[t * p.dt_strides.time]);
            zv[tt] = hasZ ? toFloat(zp[t * p.z_strides.time]) : 0.f;
        }
    }
    // Per-step scalars first (independent of the state): dt' = softplus(dt + bias), dt'·x, the gate.
#pragma unroll
    for (int tt = 0; tt < kChunk; ++tt)
    {
        if (kFull || tt < len)
        {
            float const delta = dv[tt] + bias;
            dv[tt] = delta > p.softplus_threshold ? delta : log1pf(expf(delta));
            zv[tt] = hasZ ? zv[tt] / (1.0f + __expf(-zv[tt])) : 1.f;
        }
    }
#pragma unroll
    for (int tt = 0; tt < kChunk; ++tt)
    {
        if (kFull || tt < len)
        {
            float const delta = dv[tt];
            float const dx = delta * xv[tt];
            float y[4] = {0.f, 0.f, 0.f, 0.f}; // four partial sums: a shorter dependency chain
#pragma unroll
            for (int n = 0; n < kN; ++n)
            {
                if (kExactN || n < N)
                {
                    h[n] = fastExp2(delta * A2[n]) * h[n] + dx * sB[tt][n];
                    y[n % 4] += sC[tt][n] * h[n];
                }
            }
            float const out = ((y[0] + y[1]) + (y[2] + y[3]) + Dd * xv[tt]) * zv[tt];
            yp[(t0 + tt) * p.y_strides.time] = fromFloat<T>(out);
        }
    }
}

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

template <typename T, int kN, bool kExactN>
__global__ void __launch_bounds__(kMaxThreads) selectiveScanKernel(SelectiveScanParams const p)
{
    __shared__ float sB[kChunk][kN];
    __shared__ float sC[kChunk][kN];

    int const b = blockIdx.y;
    int const d = blockIdx.x * blockDim.x + threadIdx.x;
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

    T const* xp = static_cast<T const*>(p.x) + b * p.x_strides.batch + d * p.x_strides.chan;
    T const* dtp = static_cast<T const*>(p.dt) + b * p.dt_strides.batch + d * p.dt_strides.chan;
    T const* zp = hasZ ? static_cast<T const*>(p.z) + b * p.z_strides.batch + d * p.z_strides.chan : nullptr;
    T* yp = static_cast<T*>(p.y) + b * p.y_strides.batch + d * p.y_strides.chan;
    T const* Bp = static_cast<T const*>(p.B) + b * p.B_strides.batch;
    T const* Cp = static_cast<T const*>(p.C) + b * p.C_strides.batch;

    for (int t0 = 0; t0 < L; t0 += kChunk)
    {
        int const len = min(kChunk, L - t0);
        __syncthreads(); // the previous chunk's readers are done with sB/sC
        for (int i = threadIdx.x; i < kChunk * kN; i += blockDim.x)
        {
            int const tt = i / kN;
            int const n = i % kN;
            bool const ok = tt < len && n < N;
            sB[tt][n] = ok ? toFloat(Bp[(t0 + tt) * p.B_strides.time + n * p.B_strides.chan]) : 0.f;
            sC[tt][n] = ok ? toFloat(Cp[(t0 + tt) * p.C_strides.time + n * p.C_strides.chan]) : 0.f;
        }
        __syncthreads();
        if (!active)
            continue;
        if (len == kChunk)
            scanChunk<T, kN, kExactN, true>(p, t0, len, A2, h, Dd, bias, hasZ, xp, dtp, zp, yp, sB, sC);
        else
            scanChunk<T, kN, kExactN, false>(p, t0, len, A2, h, Dd, bias, hasZ, xp, dtp, zp, yp, sB, sC);
    }

    if (active && p.last_state != nullptr)
    {
        float* sp = p.last_state + b * p.last_state_strides.batch + d * p.last_state_strides.time;
#pragma unroll
        for (int n = 0; n < kN; ++n)
            if (n < N)
                sp[n * p.last_state_strides.chan] = h[n];
    }
}

template <typename T, int kN, bool kExactN>
cudaError_t launchWithState(SelectiveScanParams const& p, cudaStream_t stream)
{
    // Enough blocks to fill the chip: small batches get narrower blocks (B = 1 → 32 channels a block).
    int numSms = 0;
    if (cudaError_t const err = currentSmCount(numSms); err != cudaSuccess)
        return err;
    int threads = kMaxThreads;
    while (threads > 32 && int64_t(p.batch) * ((p.dim + threads - 1) / threads) < 2 * int64_t(numSms))
        threads /= 2;
    dim3 const grid((p.dim + threads - 1) / threads, p.batch);
    selectiveScanKernel<T, kN, kExactN><<<grid, threads, 0, stream>>>(p);
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
