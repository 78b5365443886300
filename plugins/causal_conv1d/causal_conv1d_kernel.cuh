/*
 * The templated CausalConv1d kernel and its launcher; per-dtype .cu files instantiate it.
 *
 * A thread owns kVec adjacent channels (16 bytes with unit channel strides and aligned pointers) of one batch
 * row over a span of time steps. It loads kSteps input rows (independent loads, none waiting on arithmetic), then
 * computes and stores kSteps outputs, the K-1 previous inputs in registers. A span is one chunk of kSteps, so
 * a batch-1 prompt of 8k tokens still gives ~400k threads; when new_conv_state aliases conv_state (in place,
 * T <= kCausalConv1dInPlaceMaxT) a thread walks its row's whole T chunk by chunk, so the one thread that reads a
 * row's state also writes it. Threads are numbered channel vector fastest, then span, then batch row: a warp
 * reads and writes contiguous bytes of one time row. The thread whose span holds the last time step writes the
 * new state, after reading every entry it needs (the in-place decode step).
 * Weights, bias and states move 16 bytes at a time where their layout allows (`Layout`): rows of K taps contiguous
 * (weight (dim, K), the plugin's (batch, dim, K) states) or channel-fastest (the serving cache's conv state).
 * At decode (T = 1) the state is ~all of a step's bytes.
 */
#pragma once

#include "../common/kernel_common.cuh"
#include "causal_conv1d_kernel.h"

#include <climits>
#include <cstdint>
#include <type_traits>

namespace hymba
{
namespace cck
{

constexpr int kThreads = 128;
constexpr int kSteps = 8; // time steps whose loads a thread issues at once
constexpr int kMinBlocks = 3; // blocks per SM the registers must allow (<= 168 registers)

//! How a kVec-channel thread accesses a (dim, K)-shaped operand (weight, a batch row of a state).
enum Layout : int
{
    kScalar = 0, // any strides: element by element
    kCols = 1,   // channel stride 1: tap k of the kVec channels is one vector
    kRows = 2    // tap stride 1, channel stride K: the kVec channels' taps are K adjacent vectors
};
constexpr int kLayoutBits = 2; // launch flags: weight layout, state layout << 2, new state layout << 4, then:
constexpr int kBiasVec = 1 << 3 * kLayoutBits; // the bias (contiguous) is 16-byte aligned

//! SiLU, v / (1 + 2^(-v·log2 e)), through MUFU.EX2 and MUFU.RCP with denormals flushed (5 instructions; v < -88
//! gives -0, NaN stays NaN).
__device__ __forceinline__ float siluFast(float v)
{
    float e, r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(-kLOG2E * v));
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.0f + e));
    return v * r;
}

//! A row of kVec elements as loaded: the 16 bytes of a vector as one uint4 (so it stays one access and four
//! registers), else the vector itself (kVec = 1).
template <typename T, int kVec>
using Raw = std::conditional_t<sizeof(Vec<T, kVec>) == 16, uint4, Vec<T, kVec>>;

template <typename T, int kVec>
__device__ __forceinline__ Raw<T, kVec> loadRaw(T const* ptr)
{
    return *reinterpret_cast<Raw<T, kVec> const*>(ptr);
}

//! Element i (a compile-time index after unrolling) of a raw row as a float.
template <typename T, int kVec>
__device__ __forceinline__ float rawAt(Raw<T, kVec> const& r, int i)
{
    if constexpr (sizeof(Vec<T, kVec>) == 16)
    {
        int const word = i * int(sizeof(T)) / 4;
        uint32_t const w = word == 0 ? r.x : word == 1 ? r.y : word == 2 ? r.z : r.w;
        if constexpr (sizeof(T) == 4)
            return __uint_as_float(w);
        else if constexpr (std::is_same_v<T, __nv_bfloat16>)
            return __uint_as_float(i % 2 == 0 ? w << 16 : w & 0xffff0000u);
        else
            return __half2float(__ushort_as_half(static_cast<unsigned short>(i % 2 == 0 ? w & 0xffffu : w >> 16)));
    }
    else
    {
        return toFloat(r.v[i]);
    }
}

template <typename T, int kVec>
__device__ __forceinline__ void loadVec(T const* ptr, float (&out)[kVec])
{
    Raw<T, kVec> const r = loadRaw<T, kVec>(ptr);
#pragma unroll
    for (int i = 0; i < kVec; ++i)
        out[i] = rawAt<T, kVec>(r, i);
}

//! Word q of a 16-byte vector of T from floats (two fp16 / bf16 per conversion instruction).
template <typename T>
__device__ __forceinline__ uint32_t packWord(float const* in, int q)
{
    uint32_t w;
    if constexpr (sizeof(T) == 4)
        w = __float_as_uint(in[q]);
    else if constexpr (std::is_same_v<T, __nv_bfloat16>)
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(in[2 * q + 1]), "f"(in[2 * q]));
    else
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(in[2 * q + 1]), "f"(in[2 * q]));
    return w;
}

template <typename T, int kVec>
__device__ __forceinline__ void storeVec(T* ptr, float const (&in)[kVec])
{
    if constexpr (sizeof(Vec<T, kVec>) == 16)
    {
        // __stcg: one 16-byte store (a plain uint4 store is split into four when its words come from asm)
        __stcg(reinterpret_cast<uint4*>(ptr),
            make_uint4(packWord<T>(in, 0), packWord<T>(in, 1), packWord<T>(in, 2), packWord<T>(in, 3)));
    }
    else
    {
        Vec<T, kVec> v;
#pragma unroll
        for (int i = 0; i < kVec; ++i)
            v.v[i] = fromFloat<T>(in[i]);
        *reinterpret_cast<Vec<T, kVec>*>(ptr) = v;
    }
}

//! Taps [first, K) of kVec channels of a (dim, K) operand at ptr (channel d0, tap 0) into out[tap][channel];
//! taps below `first` are zero.
template <typename T, int K, int kVec>
__device__ __forceinline__ void loadTaps(
    T const* ptr, int64_t dimStride, int64_t widthStride, int layout, int first, float (&out)[K][kVec])
{
    if (kVec > 1 && layout == kRows)
    {
        // K·kVec adjacent elements: K vectors of kVec; flat element f is (channel f / K, tap f % K).
#pragma unroll
        for (int c = 0; c < K; ++c)
        {
            float v[kVec];
            loadVec<T, kVec>(ptr + c * kVec, v);
#pragma unroll
            for (int e = 0; e < kVec; ++e)
                out[(c * kVec + e) % K][(c * kVec + e) / K] = (c * kVec + e) % K >= first ? v[e] : 0.f;
        }
        return;
    }
#pragma unroll
    for (int k = 0; k < K; ++k)
    {
        if (k < first)
        {
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                out[k][i] = 0.f;
        }
        else if (kVec > 1 && layout == kCols)
        {
            loadVec<T, kVec>(ptr + k * widthStride, out[k]);
        }
        else
        {
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                out[k][i] = toFloat(ptr[i * dimStride + k * widthStride]);
        }
    }
}

//! The inverse of loadTaps (all K taps).
template <typename T, int K, int kVec>
__device__ __forceinline__ void storeTaps(
    T* ptr, int64_t dimStride, int64_t widthStride, int layout, float const (&in)[K][kVec])
{
    if (kVec > 1 && layout == kRows)
    {
#pragma unroll
        for (int c = 0; c < K; ++c)
        {
            float v[kVec];
#pragma unroll
            for (int e = 0; e < kVec; ++e)
                v[e] = in[(c * kVec + e) % K][(c * kVec + e) / K];
            storeVec<T, kVec>(ptr + c * kVec, v);
        }
        return;
    }
#pragma unroll
    for (int k = 0; k < K; ++k)
    {
        if (kVec > 1 && layout == kCols)
        {
            storeVec<T, kVec>(ptr + k * widthStride, in[k]);
        }
        else
        {
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                ptr[i * dimStride + k * widthStride] = fromFloat<T>(in[k][i]);
        }
    }
}

//! The new state of a row shorter than K (T = kL < K: one chunk from t = 0) from the window in registers: entry j
//! is window row kL - 1 + j (hist: the old state's taps 1..K-1; cur[t]: x_t); for kL = 0 entry 0 (the old
//! state's tap 0) is left to the caller.
template <typename T, int K, int kVec, int kL, int kHist, int kSteps_>
__device__ __forceinline__ void shortRowState(
    float const (&hist)[kHist][kVec], Raw<T, kVec> const (&cur)[kSteps_], float (&ns)[K][kVec])
{
#pragma unroll
    for (int j = 0; j < K; ++j)
    {
        int const w = kL - 1 + j;
        if (w >= 0 && w < K - 1)
        {
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                ns[j][i] = hist[w >= 0 && w < kHist ? w : 0][i];
        }
        else if (w >= K - 1)
        {
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                ns[j][i] = rawAt<T, kVec>(cur[w >= K - 1 && w - (K - 1) < kSteps_ ? w - (K - 1) : 0], i);
        }
    }
}

template <typename T, int K, bool kSilu, int kVec>
__global__ void __launch_bounds__(kThreads, kMinBlocks) causalConv1dKernel(
    CausalConv1dParams const p, int const flags, int const chunks)
{
    constexpr int kHist = K > 1 ? K - 1 : 1;
    int const L = p.seqlen;
    int const nVec = p.dim / kVec;
    int const span = chunks * kSteps;
    int const spans = L > 0 ? (L + span - 1) / span : 1;
    // Within batch row blockIdx.y: channel vector fastest, then span (the launcher keeps spans · nVec in int).
    unsigned const r = blockIdx.x * kThreads + threadIdx.x;
    if (r >= unsigned(spans) * unsigned(nVec))
        return;
    int const b = blockIdx.y;
    int const d0 = int(r % unsigned(nVec)) * kVec;
    int const t0 = int(r / unsigned(nVec)) * span;
    int const wLayout = flags & 3, sLayout = (flags >> kLayoutBits) & 3, nsLayout = (flags >> 2 * kLayoutBits) & 3;

    T const* x = static_cast<T const*>(p.x) + b * p.x_batch_stride + d0 * p.x_dim_stride;
    T* y = static_cast<T*>(p.y) + b * p.y_batch_stride + d0 * p.y_dim_stride;
    T const* st = p.conv_state != nullptr
        ? static_cast<T const*>(p.conv_state) + b * p.state_batch_stride + d0 * p.state_dim_stride
        : nullptr;

    float wk[K][kVec];
    loadTaps<T, K, kVec>(static_cast<T const*>(p.weight) + d0 * p.weight_dim_stride, p.weight_dim_stride,
        p.weight_width_stride, wLayout, 0, wk);
    float bias[kVec];
    if (kVec > 1 && (flags & kBiasVec))
        loadVec<T, kVec>(static_cast<T const*>(p.bias) + d0, bias);
    else
#pragma unroll
        for (int i = 0; i < kVec; ++i)
            bias[i] = p.bias != nullptr ? toFloat(static_cast<T const*>(p.bias)[d0 + i]) : 0.f;

    // The window of a chunk starting at tc: row w is the input at time tc - (K-1) + w, hist[w] for w < K-1 (floats),
    // cur[w - (K-1)] above (as loaded). Spans start at 0 or at a multiple of kSteps >= K - 1: the first span's
    // history is the state's taps 1..K-1 (or zeros), any other's is x.
    float hist[kHist][kVec];
    if (t0 == 0)
    {
        float taps[K][kVec];
        if (st != nullptr)
            loadTaps<T, K, kVec>(st, p.state_dim_stride, p.state_width_stride, sLayout, 1, taps);
#pragma unroll
        for (int j = 0; j < K - 1; ++j)
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                hist[j][i] = st != nullptr ? taps[j + 1][i] : 0.f;
    }
    else
    {
#pragma unroll
        for (int j = 0; j < K - 1; ++j)
            loadVec<T, kVec>(x + int64_t(t0 - (K - 1) + j) * p.x_time_stride, hist[j]);
    }
    Raw<T, kVec> cur[kSteps];
    auto row = [&](int w, int i) {
        return w < K - 1 ? hist[w < K - 1 ? w : 0][i] : rawAt<T, kVec>(cur[w >= K - 1 ? w - (K - 1) : 0], i);
    };
    // One chunk of kSteps outputs from tc; kFull: all kSteps inside the row (no per-step checks).
    auto chunk = [&](auto full, int tc) {
        constexpr bool kFull = decltype(full)::value;
        T const* xr = x + int64_t(tc) * p.x_time_stride;
#pragma unroll
        for (int s = 0; s < kSteps; ++s)
        {
            if (kFull || tc + s < L)
                cur[s] = loadRaw<T, kVec>(xr + s * p.x_time_stride);
            else
                cur[s] = Raw<T, kVec>{};
        }
        T* yr = y + int64_t(tc) * p.y_time_stride;
#pragma unroll
        for (int s = 0; s < kSteps; ++s)
        {
            if (kFull || tc + s < L)
            {
                float out[kVec];
#pragma unroll
                for (int i = 0; i < kVec; ++i)
                {
                    float acc = bias[i];
#pragma unroll
                    for (int k = 0; k < K; ++k)
                        acc = fmaf(wk[k][i], row(s + k, i), acc);
                    out[i] = kSilu ? siluFast(acc) : acc;
                }
                storeVec<T, kVec>(yr + s * p.y_time_stride, out);
            }
        }
    };
    for (int c = 0; c < chunks; ++c)
    {
        int const tc = t0 + c * kSteps;
        if (tc >= L)
            break;
        if (c > 0) // slide the window: the previous chunk (full) ends with this one's history
#pragma unroll
            for (int j = 0; j < K - 1; ++j)
#pragma unroll
                for (int i = 0; i < kVec; ++i)
                    hist[j][i] = row(kSteps + j, i);
        if (tc + kSteps <= L)
            chunk(std::true_type{}, tc);
        else
            chunk(std::false_type{}, tc);
    }

    // The new state: entry j is the input at time L - K + j, from the old state's tap L + j where that is < 0.
    // Every entry is read before any is written (in place, this thread's row of the state is its own).
    bool const ownsEnd = L == 0 || (t0 <= L - 1 && L - 1 < t0 + span);
    if (p.new_conv_state == nullptr || !ownsEnd)
        return;
    float ns[K][kVec];
    if (L >= K)
    {
#pragma unroll
        for (int j = 0; j < K; ++j)
            loadVec<T, kVec>(x + int64_t(L - K + j) * p.x_time_stride, ns[j]);
    }
    else
    {
        switch (L) // the window in registers holds all of it but the old state's tap 0 (T = 0)
        {
        case 0: shortRowState<T, K, kVec, 0>(hist, cur, ns); break;
        case 1: shortRowState<T, K, kVec, 1>(hist, cur, ns); break;
        case 2: shortRowState<T, K, kVec, 2>(hist, cur, ns); break;
        default: shortRowState<T, K, kVec, 3>(hist, cur, ns); break;
        }
        if (L == 0)
        {
            float taps[K][kVec];
            if (st != nullptr)
                loadTaps<T, K, kVec>(st, p.state_dim_stride, p.state_width_stride, sLayout, 0, taps);
#pragma unroll
            for (int i = 0; i < kVec; ++i)
                ns[0][i] = st != nullptr ? taps[0][i] : 0.f;
        }
    }
    T* nsp = static_cast<T*>(p.new_conv_state) + b * p.new_state_batch_stride + d0 * p.new_state_dim_stride;
    storeTaps<T, K, kVec>(nsp, p.new_state_dim_stride, p.new_state_width_stride, nsLayout, ns);
}

//! The layout of a (dim, K) operand with these strides for kVec-channel threads (`Layout`).
template <typename T>
int layoutOf(void const* ptr, int64_t batchStride, int64_t dimStride, int64_t widthStride, int width)
{
    constexpr int kV = 16 / sizeof(T);
    if (ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 != 0 || batchStride % kV != 0)
        return kScalar;
    if (widthStride == 1 && dimStride == width)
        return kRows;
    if (dimStride == 1 && widthStride % kV == 0)
        return kCols;
    return kScalar;
}

template <typename T, int K, bool kSilu, int kVec>
cudaError_t launch(CausalConv1dParams const& p, cudaStream_t stream)
{
    int flags = 0;
    if (kVec > 1)
    {
        flags = layoutOf<T>(p.weight, 0, p.weight_dim_stride, p.weight_width_stride, p.width)
            | layoutOf<T>(p.conv_state, p.state_batch_stride, p.state_dim_stride, p.state_width_stride, p.width)
                << kLayoutBits
            | layoutOf<T>(p.new_conv_state, p.new_state_batch_stride, p.new_state_dim_stride,
                  p.new_state_width_stride, p.width)
                << 2 * kLayoutBits;
        if (p.bias != nullptr && reinterpret_cast<uintptr_t>(p.bias) % 16 == 0)
            flags |= kBiasVec;
    }
    // In place: one thread per row walks all of T (<= kCausalConv1dInPlaceMaxT), reading the state it writes.
    bool const inPlace = p.new_conv_state != nullptr && p.new_conv_state == p.conv_state;
    int const chunks = inPlace && p.seqlen > kSteps ? (p.seqlen + kSteps - 1) / kSteps : 1;
    int64_t const span = int64_t(chunks) * kSteps;
    int64_t const perRow = (p.seqlen > 0 ? (p.seqlen + span - 1) / span : 1) * (p.dim / kVec);
    if (perRow > INT_MAX)
        return cudaErrorInvalidValue;
    dim3 const grid(unsigned((perRow + kThreads - 1) / kThreads), unsigned(p.batch));
    causalConv1dKernel<T, K, kSilu, kVec><<<grid, kThreads, 0, stream>>>(p, flags, chunks);
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
