/*
 * Per-step SelectiveScan math shared by the prefill kernels: the dt softplus and the SiLU gate.
 */
#pragma once

#include "selective_scan_kernel.cuh"

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

} // namespace hymba
