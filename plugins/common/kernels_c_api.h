/*
 * extern "C" shim over the three kernel launchers, for ctypes and other FFI callers (raw device pointers,
 * a cudaStream_t passed as void*, int dtype codes of hymba::DType: 0 fp32, 1 fp16, 2 bf16).
 * A null strides pointer means contiguous. Strides are in elements.
 * Each returns 0, or a cudaError_t code with hymba_kernel_error() describing it (thread-local).
 */
#pragma once

#include <stdint.h>

#if defined(__GNUC__)
#define HYMBA_API __attribute__((visibility("default")))
#else
#define HYMBA_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

//! x/dt/z/y strides: (batch, time, chan); B/C: (batch, time, state); A: (chan, state);
//! initial_state/last_state: (batch, chan, state). D, dt_bias, z, initial_state, last_state may be null.
HYMBA_API int hymba_selective_scan(int batch, int seqlen, int dim, int dstate, int dtype, int state_dtype,
    float softplus_threshold, void const* x, int64_t const* x_strides, void const* dt, int64_t const* dt_strides,
    float const* A, int64_t const* A_strides, void const* B, int64_t const* B_strides, void const* C,
    int64_t const* C_strides, float const* D, void const* z, int64_t const* z_strides, float const* dt_bias,
    void const* initial_state, int64_t const* state_strides, void* y, int64_t const* y_strides, float* last_state,
    int64_t const* last_state_strides, void* stream);

//! x/y strides: (batch, time, chan); weight: (chan, width); states: (batch, chan, width). bias, conv_state,
//! new_conv_state may be null.
HYMBA_API int hymba_causal_conv1d(int batch, int seqlen, int dim, int width, int dtype, int silu, void const* x,
    int64_t const* x_strides, void const* weight, int64_t const* weight_strides, void const* bias,
    void const* conv_state, int64_t const* state_strides, void* y, int64_t const* y_strides, void* new_conv_state,
    int64_t const* new_state_strides, void* stream);

//! q/k/v/out strides: (batch, time, head); head dims contiguous. kv_lengths: null (every row has kv_len keys) or
//! a device array of `batch` int32 key counts (row b's valid keys k/v[b, :kv_lengths[b]], each clamped to
//! [q_len, kv_len]; the plugin's kv_lengths input).
HYMBA_API int hymba_windowed_attention(int batch, int q_len, int kv_len, int num_q_heads, int num_kv_heads,
    int qk_dim, int v_dim, int dtype, int window, int num_meta, float scale, void const* q, int64_t const* q_strides,
    void const* k, int64_t const* k_strides, void const* v, int64_t const* v_strides, void* out,
    int64_t const* out_strides, int32_t const* kv_lengths, void* stream);

//! Forces one kernel of a family for every later launch in this process (common/kernel_choice.h):
//! family "attention", choice auto | split | mma | prefill | flash. Returns 0, or nonzero for an unknown family
//! or choice (hymba_kernel_error says which; the setting is unchanged).
HYMBA_API int hymba_set_kernel_choice(char const* family, char const* choice);

//! The family's current choice ("auto" unless set or given by its environment variable); null if unknown.
HYMBA_API char const* hymba_kernel_choice(char const* family);

//! Message for the last nonzero return on this thread.
HYMBA_API char const* hymba_kernel_error(void);

#ifdef __cplusplus
}
#endif
