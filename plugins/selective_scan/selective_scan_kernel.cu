/*
 * SelectiveScan launcher: argument checks and dtype dispatch to the per-dtype instantiations.
 */
#include "selective_scan_kernel.h"

#include <cmath>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace hymba
{

char const* selectiveScanCheck(SelectiveScanParams const& p)
{
    if (p.batch < 0 || p.seqlen < 0 || p.dim < 0)
        return "SelectiveScan: batch, seqlen and dim must be >= 0";
    if (p.dstate < 1 || p.dstate > kSelectiveScanMaxState)
        return "SelectiveScan: d_state must be in 1..32";
    if (!isValidDType(int32_t(p.dtype)) || !isValidDType(int32_t(p.state_dtype)))
        return "SelectiveScan: dtype must be float32, float16 or bfloat16";
    if (!std::isfinite(p.softplus_threshold))
        return "SelectiveScan: softplus_threshold must be finite";
    if (p.batch == 0 || p.dim == 0)
        return nullptr;
    if (p.A == nullptr || p.y == nullptr)
        return "SelectiveScan: A and y must not be null";
    if (p.seqlen > 0 && (p.x == nullptr || p.dt == nullptr || p.B == nullptr || p.C == nullptr))
        return "SelectiveScan: x, dt, B and C must not be null";
    if (p.batch > 65535)
        return "SelectiveScan: batch must be <= 65535";
    return nullptr;
}

cudaError_t selectiveScanLaunch(SelectiveScanParams const& p, cudaStream_t stream)
{
    if (selectiveScanCheck(p) != nullptr)
        return cudaErrorInvalidValue;
    switch (p.dtype)
    {
    case DType::kFLOAT32: return selectiveScanLaunchT<float>(p, stream);
    case DType::kFLOAT16: return selectiveScanLaunchT<__half>(p, stream);
    case DType::kBFLOAT16: return selectiveScanLaunchT<__nv_bfloat16>(p, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace hymba
