/*
 * The dispatch between the SelectiveScan kernels (selectiveScanLaunchT).
 *
 * T = 1: the decode step kernel (ssk::selectiveScanStepKernel, selective_scan_kernel.cuh).
 * T > 1: autoPrefill's choice between
 *   - the chunked kernel (sscc::chunkedKernel, selective_scan_chunked_kernel.cuh): one thread per (channel,
 *     time chunk) holding all of its states, chunk carries combined in shared memory, then a rescan; fills
 *     the GPU when batch · dim is small;
 *   - the state-parallel kernel (ssst::stateParallelKernel, selective_scan_state_kernel.cuh): lanes over
 *     (channel, state), each walking all of T;
 *   - the sequential kernel (ssk::selectiveScanKernel): one thread per channel holding all of its states;
 *     the fastest once batch · dim fills the GPU.
 * The kernel choice `scan_prefill` (plugins/common/kernel_choice.h; initial value $HYMBA_SCAN_PREFILL) forces one.
 */
#pragma once

#include "../common/kernel_choice.h"
#include "selective_scan_chunked_kernel.cuh"
#include "selective_scan_kernel.cuh"
#include "selective_scan_state_kernel.cuh"

namespace hymba
{

//! Which prefill kernel serves a call with T > 1: the kernel choice `scan_prefill` (for A/B runs and tests)
//! forces one: `sequential` (ssk::selectiveScanKernel), `state` (ssst) or `chunked` (sscc); `auto`: autoPrefill.
//! The values follow the choice names of kKernelFamilies' `scan_prefill` row.
enum class ScanPrefill
{
    kAuto,
    kSequential,
    kStateParallel,
    kChunked,
};

//! The launcher's own choice for T > 1 (the one place the rule lives). One thread per channel (the sequential
//! kernel) leaves the GPU idle at small batch · dim: from kChunkedMinSeqlen steps (enough chunks to fill it) the
//! chunked kernel below kChunkedChannelsPerSm channels per SM; shorter sequences the state-parallel kernel below
//! kStateChannelsPerSm; else the sequential one. H200, bf16, D 3200, N 16 (bench/results/
//! plugins_scan_sequential_h200_2026-12-01): chunked faster than sequential at batch 4, T 2048 (97 channels per
//! SM, 0.395 vs 0.414 ms), slower at batch 8 (194, 0.761 vs 0.570): the sequential kernel's time is flat while
//! its 128-channel blocks leave SMs idle, the chunked kernel's grows with the channels, so they cross near 100;
//! state-parallel faster than the sequential kernel of then at batch 1 and 4 (24 and 97 channels per SM,
//! plugins_gpu_check_h200_prefill_2026-11-30).
constexpr int64_t kChunkedChannelsPerSm = 100;
constexpr int64_t kStateChannelsPerSm = 128;
constexpr int kChunkedMinSeqlen = 128;

inline ScanPrefill autoPrefill(SelectiveScanParams const& p, int numSms)
{
    int64_t const channels = int64_t(p.batch) * p.dim;
    if (p.seqlen >= kChunkedMinSeqlen && channels < kChunkedChannelsPerSm * numSms)
        return ScanPrefill::kChunked;
    if (p.seqlen < kChunkedMinSeqlen && channels < kStateChannelsPerSm * numSms)
        return ScanPrefill::kStateParallel;
    return ScanPrefill::kSequential;
}

template <typename T, int kN, bool kExactN>
cudaError_t launchPrefill(SelectiveScanParams const& p, cudaStream_t stream)
{
    int numSms = 0;
    if (cudaError_t const err = currentSmCount(numSms); err != cudaSuccess)
        return err;
    ScanPrefill path = static_cast<ScanPrefill>(kernelChoice(KernelFamily::kScanPrefill));
    if (path == ScanPrefill::kAuto)
        path = autoPrefill(p, numSms);
    if (path == ScanPrefill::kStateParallel)
        return ssst::launch<T>(p, numSms, stream);
    if (path == ScanPrefill::kChunked)
        return sscc::launchT<T, kN, kExactN>(p, numSms, stream);
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
