// Instantiation only: one dtype per file so the three compile in parallel.
#include "selective_scan_prefill.cuh"

namespace hymba
{
template cudaError_t selectiveScanLaunchT<__half>(SelectiveScanParams const&, cudaStream_t);
} // namespace hymba
