/*
 * SelectiveScan kernel: the Mamba-1 recurrence as Hymba runs it (hymba_deploy/ops/selective_scan.py).
 *
 *   dt'_t[d]  = softplus(dt_t[d] + dt_bias[d])          (identity above softplus_threshold)
 *   h_t[d,n]  = exp(dt'_t[d]·A[d,n])·h_{t-1}[d,n] + dt'_t[d]·B_t[n]·x_t[d]      h_{-1} = initial_state or 0
 *   y_t[d]    = (Σ_n C_t[n]·h_t[d,n] + D[d]·x_t[d]) · SiLU(z_t[d])
 *
 * No TensorRT headers: the plugin, the extern "C" shim and PyTorch custom ops call the same launcher.
 */
#pragma once

#include "../common/hymba_dtype.h"

#include <cstdint>
#include <cuda_runtime_api.h>

namespace hymba
{

//! Strides in elements of a (batch, time, channel) tensor; for (batch, channel, state) read time as channel.
struct Strides3
{
    int64_t batch;
    int64_t time;
    int64_t chan;
};

struct SelectiveScanParams
{
    int32_t batch;
    int32_t seqlen;    // T >= 0; decode is T = 1
    int32_t dim;       // d_inner
    int32_t dstate;    // N, 1..kSelectiveScanMaxState
    DType dtype;       // x, dt, B, C, z, y
    DType state_dtype; // initial_state (fp32 or any T)
    float softplus_threshold;

    void const* x;             // (batch, T, dim) dtype
    void const* dt;            // (batch, T, dim) dtype, dt_proj output without its bias
    float const* A;            // (dim, dstate) fp32
    void const* B;             // (batch, T, dstate) dtype
    void const* C;             // (batch, T, dstate) dtype
    float const* D;            // (dim,) fp32 or nullptr (no skip)
    void const* z;             // (batch, T, dim) dtype or nullptr (no gate)
    float const* dt_bias;      // (dim,) fp32 or nullptr
    void const* initial_state; // (batch, dim, dstate) state_dtype or nullptr (zeros)
    void* y;                   // (batch, T, dim) dtype; may alias x (same strides)
    float* last_state;         // (batch, dim, dstate) fp32 or nullptr; may alias an fp32 initial_state

    Strides3 x_strides, dt_strides, z_strides, y_strides;
    Strides3 B_strides, C_strides;                  // (batch, time, state)
    Strides3 state_strides, last_state_strides;     // (batch, chan, state)
    int64_t A_dim_stride, A_state_stride;           // D and dt_bias are contiguous
};

constexpr int32_t kSelectiveScanMaxState = 32;

//! nullptr if the launcher accepts `p`, else a message naming the offending value.
char const* selectiveScanCheck(SelectiveScanParams const& p);

//! Launches on `stream`; cudaErrorInvalidValue if selectiveScanCheck(p) fails, else the launch status.
cudaError_t selectiveScanLaunch(SelectiveScanParams const& p, cudaStream_t stream);

//! Per-dtype entry points (selective_scan_kernel_{fp32,fp16,bf16}.cu); use selectiveScanLaunch.
template <typename T>
cudaError_t selectiveScanLaunchT(SelectiveScanParams const& p, cudaStream_t stream);

} // namespace hymba
