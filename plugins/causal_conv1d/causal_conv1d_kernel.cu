/*
 * CausalConv1d launcher: argument checks and dtype dispatch to the per-dtype instantiations.
 */
#include "causal_conv1d_kernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace hymba
{

char const* causalConv1dCheck(CausalConv1dParams const& p)
{
    if (p.batch < 0 || p.seqlen < 0 || p.dim < 0)
        return "CausalConv1d: batch, seqlen and dim must be >= 0";
    if (p.width < 1 || p.width > kCausalConv1dMaxWidth)
        return "CausalConv1d: kernel width K must be in 1..4 (Hymba uses 4)";
    if (!isValidDType(int32_t(p.dtype)))
        return "CausalConv1d: dtype must be float32, float16 or bfloat16";
    if (p.silu != 0 && p.silu != 1)
        return "CausalConv1d: activation must be 0 (none) or 1 (SiLU)";
    if (p.batch == 0 || p.dim == 0)
        return nullptr;
    if (p.weight == nullptr || (p.seqlen > 0 && (p.x == nullptr || p.y == nullptr)))
        return "CausalConv1d: x, weight and y must not be null";
    if (p.batch > 65535)
        return "CausalConv1d: batch must be <= 65535";
    if (p.new_conv_state != nullptr && p.new_conv_state == p.conv_state && p.seqlen > kCausalConv1dInPlaceMaxT)
        return "CausalConv1d: new_conv_state may alias conv_state only when T <= 64";
    return nullptr;
}

cudaError_t causalConv1dLaunch(CausalConv1dParams const& p, cudaStream_t stream)
{
    if (causalConv1dCheck(p) != nullptr)
        return cudaErrorInvalidValue;
    switch (p.dtype)
    {
    case DType::kFLOAT32: return causalConv1dLaunchT<float>(p, stream);
    case DType::kFLOAT16: return causalConv1dLaunchT<__half>(p, stream);
    case DType::kBFLOAT16: return causalConv1dLaunchT<__nv_bfloat16>(p, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace hymba
