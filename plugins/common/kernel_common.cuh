/*
 * Device helpers shared by the kernels: fp32 <-> element type, dtype dispatch, a launch check; and the
 * current device's multiprocessor count for the launchers.
 */
#pragma once

#include "hymba_dtype.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace hymba
{

//! The current device's multiprocessor count in `sms`; the CUDA error of the query, else cudaSuccess.
inline cudaError_t currentSmCount(int& sms)
{
    int device = 0;
    cudaError_t const err = cudaGetDevice(&device);
    return err != cudaSuccess ? err : cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
}

template <typename T>
__device__ __forceinline__ float toFloat(T v);
template <>
__device__ __forceinline__ float toFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ float toFloat<__half>(__half v)
{
    return __half2float(v);
}
template <>
__device__ __forceinline__ float toFloat<__nv_bfloat16>(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

//! Reads element i of a buffer whose type is only known at run time (used for rarely read tensors).
__device__ __forceinline__ float loadAny(void const* ptr, int64_t i, DType t)
{
    switch (t)
    {
    case DType::kFLOAT16: return __half2float(static_cast<__half const*>(ptr)[i]);
    case DType::kBFLOAT16: return __bfloat162float(static_cast<__nv_bfloat16 const*>(ptr)[i]);
    default: return static_cast<float const*>(ptr)[i];
    }
}

__device__ __forceinline__ float siluf(float v)
{
    return v / (1.0f + expf(-v));
}

//! 2^x with one MUFU.EX2 (max rel. error ~2^-22; flushes results below 2^-126 to 0).
__device__ __forceinline__ float fastExp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

//! SiLU with the fast exp: used on outputs rounded to the I/O dtype or compared at 1e-5.
__device__ __forceinline__ float fastSilu(float v)
{
    return v / (1.0f + __expf(-v));
}

//! The key count of batch row b of a WindowedAttention-style call: `kv_len`, or the row's device-side count
//! clamped to [q_len, kv_len] when the params carry them (see WindowedAttentionParams::kv_len_device).
template <typename P>
__device__ __forceinline__ int keyCount(P const& p, int b)
{
    return p.kv_len_device != nullptr
        ? max(p.q_len, min(p.kv_len_device[int64_t(b) * p.kv_len_device_stride], p.kv_len))
        : p.kv_len;
}

//! `kLOG2E` turns exp(x) into exp2(x * kLOG2E), one MUFU.EX2 on the GPU.
constexpr float kLOG2E = 1.4426950408889634f;

//! Fixed-size vector of T for 16-byte loads and stores.
template <typename T, int kN>
struct alignas(sizeof(T) * kN) Vec
{
    T v[kN];
};

} // namespace hymba

//! Runs __VA_ARGS__ with `T` bound to the C++ type of `dtype` (float, __half, __nv_bfloat16).
#define HYMBA_DTYPE_SWITCH(dtype, T, ...)                                                                            \
    [&]() -> cudaError_t {                                                                                           \
        switch (dtype)                                                                                               \
        {                                                                                                            \
        case ::hymba::DType::kFLOAT32: { using T = float; return __VA_ARGS__(); }                                   \
        case ::hymba::DType::kFLOAT16: { using T = __half; return __VA_ARGS__(); }                                  \
        case ::hymba::DType::kBFLOAT16: { using T = __nv_bfloat16; return __VA_ARGS__(); }                          \
        }                                                                                                            \
        return cudaErrorInvalidValue;                                                                                \
    }()

//! Turns a run-time bool into the compile-time constant `NAME` for __VA_ARGS__ (mamba's static_switch.h).
#define HYMBA_BOOL_SWITCH(cond, NAME, ...)                                                                           \
    [&]() -> cudaError_t {                                                                                           \
        if (cond)                                                                                                    \
        {                                                                                                            \
            constexpr bool NAME = true;                                                                              \
            return __VA_ARGS__();                                                                                    \
        }                                                                                                            \
        constexpr bool NAME = false;                                                                                 \
        return __VA_ARGS__();                                                                                        \
    }()

//! The check after each launch: returns the launch error to the caller.
#define HYMBA_LAUNCH_CHECK()                                                                                         \
    do                                                                                                               \
    {                                                                                                                \
        cudaError_t const launchStatus_ = cudaGetLastError();                                                       \
        if (launchStatus_ != cudaSuccess)                                                                            \
            return launchStatus_;                                                                                    \
    } while (0)
