/*
 * WindowedAttention launcher: argument checks and dtype dispatch to the per-dtype instantiations.
 */
#include "windowed_attention_kernel.h"

#include <cmath>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace hymba
{

char const* windowedAttentionCheck(WindowedAttentionParams const& p)
{
    if (p.batch < 0 || p.q_len < 0 || p.kv_len < 0)
        return "WindowedAttention: batch, Tq and Tk must be >= 0";
    if (p.q_len > p.kv_len)
        return "WindowedAttention: more queries than keys (Tq > Tk)";
    if (p.num_q_heads < 1 || p.num_kv_heads < 1 || p.num_q_heads % p.num_kv_heads != 0)
        return "WindowedAttention: query heads must be a positive multiple of kv heads";
    if (p.qk_dim < 4 || p.qk_dim > kWindowedAttentionMaxQkDim || p.qk_dim % 4 != 0)
        return "WindowedAttention: q/k head dim must be a multiple of 4 in 4..128 (e.g. 16, 32, 64)";
    if (p.v_dim != 32 && p.v_dim != 64 && p.v_dim != 128)
        return "WindowedAttention: v head dim must be 32, 64 or 128";
    if (!isValidDType(int32_t(p.dtype)))
        return "WindowedAttention: dtype must be float32, float16 or bfloat16";
    if (p.num_meta < 0)
        return "WindowedAttention: num_meta must be >= 0";
    if (!std::isfinite(p.scale))
        return "WindowedAttention: scale must be finite";
    if (p.batch > 65535 || p.num_kv_heads > 65535)
        return "WindowedAttention: batch and kv heads must be <= 65535";
    if (p.kv_len_device_stride != 0 && p.kv_len_device_stride != 1)
        return "WindowedAttention: kv_len_device_stride must be 0 (one count for all rows) or 1 (one per row)";
    if (p.batch > 0 && p.q_len > 0 && (p.q == nullptr || p.k == nullptr || p.v == nullptr || p.out == nullptr))
        return "WindowedAttention: q, k, v and out must not be null";
    return nullptr;
}

cudaError_t windowedAttentionLaunch(WindowedAttentionParams const& p, cudaStream_t stream)
{
    if (windowedAttentionCheck(p) != nullptr)
        return cudaErrorInvalidValue;
    switch (p.dtype)
    {
    case DType::kFLOAT32: return windowedAttentionLaunchT<float>(p, stream);
    case DType::kFLOAT16: return windowedAttentionLaunchT<__half>(p, stream);
    case DType::kBFLOAT16: return windowedAttentionLaunchT<__nv_bfloat16>(p, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace hymba
