/*
 * The dispatch between the SelectiveScan kernels (selectiveScanLaunchT).
 *
 * T = 1: the decode step kernel (ssk::selectiveScanStepKernel, selective_scan_kernel.cuh).
 * T > 1: autoPrefill's choice between
 *   - the state-parallel kernel (ssst::stateParallelKernel, selective_scan_state_kernel.cuh): lanes over
 *     (channel, state), each walking all of T; fills the GPU when batch · dim is small;
 *   - the sequential kernel (ssk::selectiveScanKernel): one thread per channel holding all of its states;
 *     the fastest once batch · dim fills the GPU.
 * HYMBA_SCAN_PREFILL forces one of them (scanPrefillFromEnv).
 */
#pragma once

#include "selective_scan_kernel.cuh"
#include "selective_scan_state_kernel.cuh"

#include <cstdlib>
#include <cstring>

namespace hymba
{

//! Which prefill kernel serves a call with T > 1. `HYMBA_SCAN_PREFILL` (read per launch; for A/B runs and
//! tests) forces one: `sequential` (ssk::selectiveScanKernel) or `state` (ssst); unset or `auto`: autoPrefill.
enum class ScanPrefill
{
    kAuto,
    kSequential,
    kStateParallel,
};

inline ScanPrefill scanPrefillFromEnv()
{
    char const* v = std::getenv("HYMBA_SCAN_PREFILL");
    if (v == nullptr)
        return ScanPrefill::kAuto;
    if (std::strcmp(v, "sequential") == 0)
        return ScanPrefill::kSequential;
    if (std::strcmp(v, "state") == 0)
        return ScanPrefill::kStateParallel;
    return ScanPrefill::kAuto;
}

//! The launcher's own choice for T > 1 (the one place the rule lives): the state-parallel kernel below
//! kSmallBatchChannelsPerSm channels (batch · dim) per SM, where one thread per channel leaves the GPU idle,
//! else the sequential one. H200, bf16, D 3200, N 16 (bench/results/plugins_gpu_check_h200_prefill_2026-11-30):
//! state-parallel faster at batch 1 and 4 (24 and 97 channels per SM), sequential from batch 16 (388).
constexpr int64_t kSmallBatchChannelsPerSm = 128;

inline ScanPrefill autoPrefill(SelectiveScanParams const& p, int numSms)
{
    return int64_t(p.batch) * p.dim < kSmallBatchChannelsPerSm * numSms ? ScanPrefill::kStateParallel
                                                                         : ScanPrefill::kSequential;
}

template <typename T, int kN, bool kExactN>
cudaError_t launchPrefill(SelectiveScanParams const& p, cudaStream_t stream)
{
    int numSms = 0;
    if (cudaError_t const err = currentSmCount(numSms); err != cudaSuccess)
        return err;
    ScanPrefill path = scanPrefillFromEnv();
    if (path == ScanPrefill::kAuto)
        path = autoPrefill(p, numSms);
    if (path == ScanPrefill::kStateParallel)
        return ssst::launch<T>(p, numSms, stream);
    return ssk::launchWithState<T, kN, kExactN>(p, stream);
}

template <typename T>
cudaError_t selectiveScanLaunchT(SelectiveScanParams const& p, cudaStream_t stream)
{
    if (p.batch == 0 || p.dim == 0)
        return cudaSuccess;
    // Exact d_state for Hymba (16) and its tiny preset (8): no per-state guards.
    if (p.seqlen == 1)
    {
        if (p.dstate == 16)
            return ssk::launchStep<T, 16, true>(p, stream);
        if (p.dstate == 8)
            return ssk::launchStep<T, 8, true>(p, stream);
        return ssk::launchStep<T, 32, false>(p, stream);
    }
    if (p.dstate == 16)
        return launchPrefill<T, 16, true>(p, stream);
    if (p.dstate == 8)
        return launchPrefill<T, 8, true>(p, stream);
    return launchPrefill<T, 32, false>(p, stream);
}

} // namespace hymba
