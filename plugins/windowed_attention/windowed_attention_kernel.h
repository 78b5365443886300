/*
 * WindowedAttention kernel: causal GQA attention with a sliding window and always-visible meta tokens
 * (hymba_deploy/ops/windowed_attention.py).
 *
 * Query i sits at key index Tk - Tq + i (Tk: the row's key count, see kv_len_device) and sees key kv when
 *     kv <= q  and  (window <= 0  or  q - kv <= window  or  kv < num_meta)
 * Query head h reads kv head h / (Hq / Hkv). out = softmax(scale · q·kᵀ + mask) · v, fp32 inside.
 *
 * No TensorRT headers: the plugin, the extern "C" shim and PyTorch custom ops call the same launcher.
 */
#pragma once

#include "../common/hymba_dtype.h"

#include <cstdint>
#include <cuda_runtime_api.h>

namespace hymba
{

struct WindowedAttentionParams
{
    DType dtype; // q, k, v, out
    int32_t batch;
    int32_t q_len;        // Tq <= kv_len
    int32_t kv_len;       // Tk
    int32_t num_q_heads;  // Hq, a multiple of num_kv_heads
    int32_t num_kv_heads; // Hkv
    int32_t qk_dim;       // multiple of 4, <= 128 (Hymba: 64)
    int32_t v_dim;        // 32, 64 or 128 (Hymba: 128)
    int32_t window;       // <= 0: global (plain causal)
    int32_t num_meta;     // always-visible leading keys (used only when window > 0)
    float scale;

    void const* q; // (batch, Tq, Hq, qk_dim)
    void const* k; // (batch, Tk, Hkv, qk_dim)
    void const* v; // (batch, Tk, Hkv, v_dim)
    void* out;     // (batch, Tq, Hq, v_dim)

    // Strides in elements of (batch, time, head); the head dimension itself must be contiguous.
    int64_t q_batch_stride, q_time_stride, q_head_stride;
    int64_t k_batch_stride, k_time_stride, k_head_stride;
    int64_t v_batch_stride, v_time_stride, v_head_stride;
    int64_t out_batch_stride, out_time_stride, out_head_stride;

    // Optional (nullptr: every row has kv_len keys): the key counts read on the device when the kernel
    // starts; row b's is kv_len_device[b * kv_len_device_stride], clamped to [q_len, kv_len], and k and v then
    // hold kv_len rows of capacity (keys past a row's count are never read). Row b's query i sits at key index
    // count_b - q_len + i. Stride 0: one count for every row (a captured CUDA graph replays over a growing
    // cache); stride 1: one count per row (ragged batches: the plugin's kv_lengths input, the serving runtime).
    int32_t const* kv_len_device;
    int32_t kv_len_device_stride; // 0 (broadcast) or 1 (per row)
};

constexpr int32_t kWindowedAttentionMaxQkDim = 128;

char const* windowedAttentionCheck(WindowedAttentionParams const& p);
cudaError_t windowedAttentionLaunch(WindowedAttentionParams const& p, cudaStream_t stream);

template <typename T>
cudaError_t windowedAttentionLaunchT(WindowedAttentionParams const& p, cudaStream_t stream);

} // namespace hymba
