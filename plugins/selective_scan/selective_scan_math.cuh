/*
 * Per-step SelectiveScan math shared by the prefill kernels: the dt softplus (two forms) and the SiLU gate.
 */
#pragma once

#include "../common/kernel_common.cuh"
#include "selective_scan_kernel.h"

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

//! softplus(x) (identity above the threshold) with one MUFU op: max(x, 0) + log1p(u), u = exp(-|x|) in (0, 1],
//! log1p(u) = u·q(u), q a degree-8 fit of log1p(u)/u on [0, 1] (relative error < 3e-7). softplusDt's series
//! needs a division (a second MUFU op).
__device__ __forceinline__ float softplusPoly(float x, float threshold)
{
    float const u = fastExp2(-fabsf(x) * kLOG2E);
    float q = 0.0052326550f;
    q = fmaf(q, u, -0.029505009f);
    q = fmaf(q, u, 0.078225441f);
    q = fmaf(q, u, -0.13663188f);
    q = fmaf(q, u, 0.19105971f);
    q = fmaf(q, u, -0.24842970f);
    q = fmaf(q, u, 0.33319095f);
    q = fmaf(q, u, -0.49999493f);
    q = fmaf(q, u, 0.99999994f);
    float const sp = fmaf(u, q, fmaxf(x, 0.f));
    return x > threshold ? x : sp;
}

//! SiLU with the fast exp2 and reciprocal (the result is rounded to the I/O dtype or compared at 1e-5): two MUFU
//! ops. exp(-z) below 2^-126 flushes to 0 (gate z); above 2^126 the fast division gives 0.
__device__ __forceinline__ float gateSilu(float z)
{
    return __fdividef(z, 1.0f + fastExp2(-z * kLOG2E));
}

//! *ptr = v where ok, as one predicated store (no branch around it, so the compiler may schedule the steps of an
//! unrolled loop across it).
template <typename T>
__device__ __forceinline__ void storeIf(T* ptr, T v, bool ok)
{
    static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16- or 32-bit elements");
    if constexpr (sizeof(T) == 2)
    {
        unsigned short bits;
        memcpy(&bits, &v, 2);
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %2, 0;\n\t@p st.global.b16 [%0], %1;\n\t}" ::"l"(ptr),
            "h"(bits), "r"(int(ok)));
    }
    else
    {
        unsigned bits;
        memcpy(&bits, &v, 4);
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %2, 0;\n\t@p st.global.b32 [%0], %1;\n\t}" ::"l"(ptr),
            "r"(bits), "r"(int(ok)));
    }
}

} // namespace hymba
