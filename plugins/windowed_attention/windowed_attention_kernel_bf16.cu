// Instantiation only: one dtype per file so the three compile in parallel.
#include "windowed_attention_kernel.cuh"

namespace hymba
{
template cudaError_t windowedAttentionLaunchT<__nv_bfloat16>(WindowedAttentionParams const&, cudaStream_t);
} // namespace hymba
