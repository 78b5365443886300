/*
 * CausalConv1d kernel: Hymba's depthwise causal convolution with a carried state
 * (hymba_deploy/ops/causal_conv1d.py).
 *
 *   y_t[d] = act( bias[d] + Σ_{k=0..K-1} weight[d,k] · x_{t-K+1+k}[d] ),   x_{<0} from conv_state (or 0)
 *   new_conv_state = the last K entries of concat(conv_state, x) along time, oldest first
 *
 * No TensorRT headers: the plugin, the extern "C" shim and PyTorch custom ops call the same launcher.
 */
#pragma once

#include "../common/hymba_dtype.h"

#include <cstdint>
#include <cuda_runtime_api.h>

namespace hymba
{

struct CausalConv1dParams
{
    int32_t batch;
    int32_t seqlen; // T >= 0; decode is T = 1
    int32_t dim;
    int32_t width;  // K, 1..kCausalConv1dMaxWidth
    DType dtype;    // every tensor
    int32_t silu;   // 1: SiLU after the bias, 0: none

    void const* x;          // (batch, T, dim)
    void const* weight;     // (dim, K)
    void const* bias;       // (dim,) contiguous, or nullptr
    void const* conv_state; // (batch, dim, K) or nullptr (zeros)
    void* y;                // (batch, T, dim)
    void* new_conv_state;   // (batch, dim, K) or nullptr; may alias conv_state only when T <= kCausalConv1dInPlaceMaxT

    // Strides in elements.
    int64_t x_batch_stride, x_time_stride, x_dim_stride;
    int64_t y_batch_stride, y_time_stride, y_dim_stride;
    int64_t weight_dim_stride, weight_width_stride;
    int64_t state_batch_stride, state_dim_stride, state_width_stride;
    int64_t new_state_batch_stride, new_state_dim_stride, new_state_width_stride;
};

constexpr int32_t kCausalConv1dMaxWidth = 4;
constexpr int32_t kCausalConv1dInPlaceMaxT = 64; // the longest T whose new state may overwrite the state

char const* causalConv1dCheck(CausalConv1dParams const& p);
cudaError_t causalConv1dLaunch(CausalConv1dParams const& p, cudaStream_t stream);

template <typename T>
cudaError_t causalConv1dLaunchT(CausalConv1dParams const& p, cudaStream_t stream);

} // namespace hymba
