// Instantiation only: one dtype per file so the three compile in parallel.
#include "causal_conv1d_kernel.cuh"

namespace hymba
{
template cudaError_t causalConv1dLaunchT<__nv_bfloat16>(CausalConv1dParams const&, cudaStream_t);
} // namespace hymba
