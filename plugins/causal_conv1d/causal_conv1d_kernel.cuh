/*
 * The templated CausalConv1d kernel and its launcher; per-dtype .cu files instantiate it.
 *
 * A thread owns kVec adjacent channels of one batch row over kCausalConv1dChunk time steps, keeps the
 * K-1 previous inputs in registers and slides them along; with unit channel strides and aligned pointers
 * its loads and stores are 16 bytes wide. The thread of the last time chunk also writes the new state.
 * Weights and states are read and written 16 bytes at a time too where their layout allows (`VecFlags`):
 * weight rows (dim, K) contiguous, or channel-fastest weights / states (the serving cache keeps its conv
 * state channel-fastest). At decode (T = 1) that is the whole job: ~all of a step's bytes are state.
 */
#pragma once

#include "../common/kernel_common.cuh"
#include "causal_conv1d_kernel.h"

#include <cstdint>

namespace hymba
{
namespace cck
{

constexpr int kThreads = 128;

//! Which of the small operands a kVec-channel thread may access 16 bytes at a time (launch-time checks).
enum VecFlags : int
{
    kWeightRows = 1, // weight (dim, K) with rows contiguous: a thread's kVec rows are kVec·K adjacent elements
    kWeightCols = 2, // weight channel stride 1: tap k of the kVec channels is one vector
    kStateVec = 4,   // conv_state channel stride 1
    kNewStateVec = 8 // new_conv_state channel stride 1
};

template <typename T, int kVec>
__device__ __forceinline__ void loadVec(T const* ptr, int64_t stride, float (&out)[kVec])
{
    if constexpr (kVec > 1)
    {
        Vec<T, kVec> const v = *reinterpret_cast<Vec<T, kVec> const*>(ptr); // stride == 1 here
#pragma unroll
        for (int i = 0; i < kVec; ++i)
            out[i] = toFloat(v.v[i]);
    }
    else
    {
        out[0] = toFloat(ptr[0]);
    }
    (void) stride;
}

template <typename T, int kVec>
__device__ __forceinline__ void storeVec(T* ptr, float const (&in)[kVec])
{
    if constexpr (kVec > 1)
    {
        Vec<T, kVec> v;
#pragma unroll
        for (int i = 0; i < kVec; ++i)
            v.v[i] = fromFloat<T>(in[i]);
        *reinterpret_cast<Vec<T, kVec>*>(ptr) = v;
    }
    else
    {
        ptr[0] = fromFloat<T>(in[0]);
    }
}

template <typename T, int K, bool kSilu, int kVec>
__global__ void __launch_bounds__(kThreads) causalConv1dKernel(CausalConv1dParams const p, int const vecFlags)
{
    int const b = blockIdx.z;
    int const t0 = blockIdx.y * kCausalConv1dChunk;
    int const d0 = (blockIdx.x * blockDim.x + threadIdx.x) * kVec;
    if (d0 >= p.dim)
        return;
    int const L = p.seqlen;

    T const* x = static_cast<T const*>(p.x) + b * p.x_batch_stride + d0 * p.x_dim_stride;
    T* y = static_cast<T*>(p.y) + b * p.y_batch_stride + d0 * p.y_dim_stride;
    T const* w = static_cast<T const*>(p.weight);
    T const* st = static_cast<T const*>(p.conv_state);

    float wk[K][kVec];
    float bias[kVec];
    if (kVec > 1 && (vecFlags & kWeightRows))
    {
        // kVec·K adjacent elements: K vectors of kVec; flat element f is (channel f / K, tap f % K).
#pragma unroll
        for (int c = 0; c < K; ++c)
        {
            float v[kVec];
            loadVec<T, kVec>(w + int64_t(d0) * K + c * kVec, 1, v);
#pragma unroll
            for (int e = 0; e < kVec; ++e)
                wk[(c * kVec + e) % K][(c * kVec + e) / K] = v[e];
        }
    }
    else if (kVec > 1 && (vecFlags & kWeightCols))
    {
#pragma unroll
        for (int k = 0; k < K; ++k)
            loadVec<T, kVec>(w + d0 + k * p.weight_width_stride, 1, wk[k]);
    }
    else
    {
#pragma unroll
        for (int i = 0; i < kVec; ++i)
#pragma unroll
            for (int k = 0; k < K; ++k)
                wk[k][i] = toFloat(w[(d0 + i) * p.weight_dim_stride + k * p.weight_width_stride]);
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i)
        bias[i] = p.bias != nullptr ? toFloat(static_cast<T const*>(p.bias)[d0 + i]) : 0.f;
    bool const stateVec = kVec > 1 && (vecFlags & kStateVec);
    // State entry `tap` of this thread's kVec channels (the state must be non-null).
    auto loadState = [&](int tap, float (&out)[kVec]) {
        T const* sp = st + b * p.state_batch_stride + tap * p.state_width_stride;
        if (stateVec)
            loadVec<T, kVec>(sp + d0, 1, out);
        else
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                out[i] = toFloat(sp[(d0 + i) * p.state_dim_stride]);
    };

    // hist[j] = input at time t0 - (K-1) + j; negative times come from the state (entry K + t).
    float hist[K > 1 ? K - 1 : 1][kVec];
#pragma unroll
    for (int j = 0; j < K - 1; ++j)
    {
        int const t = t0 - (K - 1) + j;
        if (t >= 0)
        {
            loadVec<T, kVec>(x + int64_t(t) * p.x_time_stride, p.x_dim_stride, hist[j]);
        }
        else if (st != nullptr)
        {
            loadState(K + t, hist[j]);
        }
        else
        {
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                hist[j][i] = 0.f;
        }
    }
    // The state entries the new state keeps when T < K, read before anything is written (in-place decode).
    float keep[K][kVec];
    bool const lastChunk = blockIdx.y == gridDim.y - 1;
    if (lastChunk && p.new_conv_state != nullptr)
    {
#pragma unroll
        for (int j = 0; j < K; ++j)
        {
            if (L + j < K && st != nullptr)
                loadState(L + j, keep[j]);
            else
#pragma unroll
                for (int i = 0; i < kVec; ++i)
                    keep[j][i] = 0.f;
        }
    }

    int const tEnd = min(t0 + kCausalConv1dChunk, L);
    // One output step from the K-1 previous inputs in hist and the current one; then slide hist.
    auto step = [&](int t, float const (&cur)[kVec]) {
        float out[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i)
        {
            float acc = bias[i] + wk[K - 1][i] * cur[i];
#pragma unroll
            for (int k = 0; k < K - 1; ++k)
                acc += wk[k][i] * hist[k][i];
            out[i] = kSilu ? fastSilu(acc) : acc;
        }
        storeVec<T, kVec>(y + int64_t(t) * p.y_time_stride, out);
#pragma unroll
        for (int k = 0; k < K - 2; ++k)
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                hist[k][i] = hist[k + 1][i];
        if constexpr (K > 1)
        {
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                hist[K - 2][i] = cur[i];
        }
    };
    constexpr int kUnroll = 4; // loads of 4 steps in flight before their use
    int t = t0;
    for (; t + kUnroll <= tEnd; t += kUnroll)
    {
        float cur[kUnroll][kVec];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
            loadVec<T, kVec>(x + int64_t(t + u) * p.x_time_stride, p.x_dim_stride, cur[u]);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
            step(t + u, cur[u]);
    }
    for (; t < tEnd; ++t)
    {
        float cur[kVec];
        loadVec<T, kVec>(x + int64_t(t) * p.x_time_stride, p.x_dim_stride, cur);
        step(t, cur);
    }

    if (lastChunk && p.new_conv_state != nullptr)
    {
        T* ns = static_cast<T*>(p.new_conv_state) + b * p.new_state_batch_stride;
#pragma unroll
        for (int j = 0; j < K; ++j)
        {
            int const t = L - K + j; // time index of new_state[j]; < 0: from the old state
            float v[kVec];
            if (t >= 0)
                loadVec<T, kVec>(x + int64_t(t) * p.x_time_stride, p.x_dim_stride, v);
            else
#pragma unroll
                for (int i = 0; i < kVec; ++i)
                    v[i] = keep[j][i];
            if (kVec > 1 && (vecFlags & kNewStateVec))
                storeVec<T, kVec>(ns + d0 + j * p.new_state_width_stride, v);
            else
#pragma unroll
                for (int i = 0; i < kVec; ++i)
                    ns[(d0 + i) * p.new_state_dim_stride + j * p.new_state_width_stride] = fromFloat<T>(v[i]);
        }
    }
}

template <typename T>
int vecFlagsFor(CausalConv1dParams const& p)
{
    constexpr int kV = 16 / sizeof(T);
    auto aligned = [](void const* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
    int f = 0;
    if (aligned(p.weight) && p.weight_width_stride == 1 && p.weight_dim_stride == p.width)
        f |= kWeightRows;
    if (aligned(p.weight) && p.weight_dim_stride == 1 && p.weight_width_stride % kV == 0)
        f |= kWeightCols;
    if (p.conv_state != nullptr && aligned(p.conv_state) && p.state_dim_stride == 1
        && p.state_batch_stride % kV == 0 && p.state_width_stride % kV == 0)
        f |= kStateVec;
    if (p.new_conv_state != nullptr && aligned(p.new_conv_state) && p.new_state_dim_stride == 1
        && p.new_state_batch_stride % kV == 0 && p.new_state_width_stride % kV == 0)
        f |= kNewStateVec;
    return f;
}

template <typename T, int K, bool kSilu, int kVec>
cudaError_t launch(CausalConv1dParams const& p, cudaStream_t stream)
{
    int const perBlock = kThreads * kVec;
    int const chunks = p.seqlen > 0 ? (p.seqlen + kCausalConv1dChunk - 1) / kCausalConv1dChunk : 1;
    dim3 const grid((p.dim + perBlock - 1) / perBlock, chunks, p.batch);
    causalConv1dKernel<T, K, kSilu, kVec><<<grid, kThreads, 0, stream>>>(p, vecFlagsFor<T>(p));
    HYMBA_LAUNCH_CHECK();
    return cudaSuccess;
}

template <typename T, int K, bool kSilu>
cudaError_t launchVec(CausalConv1dParams const& p, cudaStream_t stream)
{
    constexpr int kV = 16 / sizeof(T);
    auto aligned = [](void const* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
    bool const vec = p.x_dim_stride == 1 && p.y_dim_stride == 1 && p.dim % kV == 0 && aligned(p.x) && aligned(p.y)
        && p.x_time_stride % kV == 0 && p.x_batch_stride % kV == 0 && p.y_time_stride % kV == 0
        && p.y_batch_stride % kV == 0;
    return vec ? launch<T, K, kSilu, kV>(p, stream) : launch<T, K, kSilu, 1>(p, stream);
}

template <typename T, int K>
cudaError_t launchAct(CausalConv1dParams const& p, cudaStream_t stream)
{
    return HYMBA_BOOL_SWITCH(p.silu != 0, kSilu, [&] { return launchVec<T, K, kSilu>(p, stream); });
}

} // namespace cck

template <typename T>
cudaError_t causalConv1dLaunchT(CausalConv1dParams const& p, cudaStream_t stream)
{
    if (p.batch == 0 || p.dim == 0)
        return cudaSuccess;
    switch (p.width)
    {
    case 1: return cck::launchAct<T, 1>(p, stream);
    case 2: return cck::launchAct<T, 2>(p, stream);
    case 3: return cck::launchAct<T, 3>(p, stream);
    case 4: return cck::launchAct<T, 4>(p, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace hymba
