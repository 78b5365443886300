#include "kernels_c_api.h"
#include "kernel_choice.h"

#include "../causal_conv1d/causal_conv1d_kernel.h"
#include "../selective_scan/selective_scan_kernel.h"
#include "../windowed_attention/windowed_attention_kernel.h"

#include <cuda_runtime_api.h>
#include <string>

using namespace hymba;

namespace
{
thread_local std::string tError;

int fail(char const* msg)
{
    tError = msg;
    return int(cudaErrorInvalidValue);
}

int finish(cudaError_t err)
{
    if (err != cudaSuccess)
        tError = cudaGetErrorString(err);
    return int(err);
}

Strides3 s3(int64_t const* s, int64_t a, int64_t b)
{
    return s != nullptr ? Strides3{s[0], s[1], s[2]} : Strides3{a * b, b, 1};
}
} // namespace

extern "C" int hymba_selective_scan(int batch, int seqlen, int dim, int dstate, int dtype, int state_dtype,
    float softplus_threshold, void const* x, int64_t const* x_strides, void const* dt, int64_t const* dt_strides,
    float const* A, int64_t const* A_strides, void const* B, int64_t const* B_strides, void const* C,
    int64_t const* C_strides, float const* D, void const* z, int64_t const* z_strides, float const* dt_bias,
    void const* initial_state, int64_t const* state_strides, void* y, int64_t const* y_strides, float* last_state,
    int64_t const* last_state_strides, void* stream)
{
    if (!isValidDType(dtype) || !isValidDType(state_dtype))
        return fail("hymba_selective_scan: dtype codes are 0 (fp32), 1 (fp16), 2 (bf16)");
    SelectiveScanParams p{};
    p.batch = batch;
    p.seqlen = seqlen;
    p.dim = dim;
    p.dstate = dstate;
    p.dtype = DType(dtype);
    p.state_dtype = DType(state_dtype);
    p.softplus_threshold = softplus_threshold;
    p.x = x;
    p.dt = dt;
    p.A = A;
    p.B = B;
    p.C = C;
    p.D = D;
    p.z = z;
    p.dt_bias = dt_bias;
    p.initial_state = initial_state;
    p.y = y;
    p.last_state = last_state;
    p.x_strides = s3(x_strides, seqlen, dim);
    p.dt_strides = s3(dt_strides, seqlen, dim);
    p.z_strides = s3(z_strides, seqlen, dim);
    p.y_strides = s3(y_strides, seqlen, dim);
    p.B_strides = s3(B_strides, seqlen, dstate);
    p.C_strides = s3(C_strides, seqlen, dstate);
    p.state_strides = s3(state_strides, dim, dstate);
    p.last_state_strides = s3(last_state_strides, dim, dstate);
    p.A_dim_stride = A_strides != nullptr ? A_strides[0] : dstate;
    p.A_state_stride = A_strides != nullptr ? A_strides[1] : 1;
    if (char const* bad = selectiveScanCheck(p))
        return fail(bad);
    return finish(selectiveScanLaunch(p, static_cast<cudaStream_t>(stream)));
}

extern "C" int hymba_causal_conv1d(int batch, int seqlen, int dim, int width, int dtype, int silu, void const* x,
    int64_t const* x_strides, void const* weight, int64_t const* weight_strides, void const* bias,
    void const* conv_state, int64_t const* state_strides, void* y, int64_t const* y_strides, void* new_conv_state,
    int64_t const* new_state_strides, void* stream)
{
    if (!isValidDType(dtype))
        return fail("hymba_causal_conv1d: dtype codes are 0 (fp32), 1 (fp16), 2 (bf16)");
    CausalConv1dParams p{};
    p.batch = batch;
    p.seqlen = seqlen;
    p.dim = dim;
    p.width = width;
    p.dtype = DType(dtype);
    p.silu = silu;
    p.x = x;
    p.weight = weight;
    p.bias = bias;
    p.conv_state = conv_state;
    p.y = y;
    p.new_conv_state = new_conv_state;
    Strides3 const xs = s3(x_strides, seqlen, dim), ys = s3(y_strides, seqlen, dim);
    Strides3 const ss = s3(state_strides, dim, width), ns = s3(new_state_strides, dim, width);
    p.x_batch_stride = xs.batch;
    p.x_time_stride = xs.time;
    p.x_dim_stride = xs.chan;
    p.y_batch_stride = ys.batch;
    p.y_time_stride = ys.time;
    p.y_dim_stride = ys.chan;
    p.weight_dim_stride = weight_strides != nullptr ? weight_strides[0] : width;
    p.weight_width_stride = weight_strides != nullptr ? weight_strides[1] : 1;
    p.state_batch_stride = ss.batch;
    p.state_dim_stride = ss.time;
    p.state_width_stride = ss.chan;
    p.new_state_batch_stride = ns.batch;
    p.new_state_dim_stride = ns.time;
    p.new_state_width_stride = ns.chan;
    if (char const* bad = causalConv1dCheck(p))
        return fail(bad);
    return finish(causalConv1dLaunch(p, static_cast<cudaStream_t>(stream)));
}

extern "C" int hymba_windowed_attention(int batch, int q_len, int kv_len, int num_q_heads, int num_kv_heads,
    int qk_dim, int v_dim, int dtype, int window, int num_meta, float scale, void const* q, int64_t const* q_strides,
    void const* k, int64_t const* k_strides, void const* v, int64_t const* v_strides, void* out,
    int64_t const* out_strides, int32_t const* kv_lengths, void* stream)
{
    if (!isValidDType(dtype))
        return fail("hymba_windowed_attention: dtype codes are 0 (fp32), 1 (fp16), 2 (bf16)");
    WindowedAttentionParams p{};
    p.dtype = DType(dtype);
    p.batch = batch;
    p.q_len = q_len;
    p.kv_len = kv_len;
    p.num_q_heads = num_q_heads;
    p.num_kv_heads = num_kv_heads;
    p.qk_dim = qk_dim;
    p.v_dim = v_dim;
    p.window = window;
    p.num_meta = num_meta;
    p.scale = scale;
    p.q = q;
    p.k = k;
    p.v = v;
    p.out = out;
    p.kv_len_device = kv_lengths;
    p.kv_len_device_stride = 1;
    // Default (batch, time, head) strides of a contiguous (batch, time, heads, head_dim) tensor.
    auto bth = [](int64_t const* given, int64_t len, int64_t heads, int64_t hd) {
        return given != nullptr ? Strides3{given[0], given[1], given[2]} : Strides3{len * heads * hd, heads * hd, hd};
    };
    Strides3 const q3 = bth(q_strides, q_len, num_q_heads, qk_dim), k3 = bth(k_strides, kv_len, num_kv_heads, qk_dim);
    Strides3 const v3 = bth(v_strides, kv_len, num_kv_heads, v_dim), o3 = bth(out_strides, q_len, num_q_heads, v_dim);
    p.q_batch_stride = q3.batch;
    p.q_time_stride = q3.time;
    p.q_head_stride = q3.chan;
    p.k_batch_stride = k3.batch;
    p.k_time_stride = k3.time;
    p.k_head_stride = k3.chan;
    p.v_batch_stride = v3.batch;
    p.v_time_stride = v3.time;
    p.v_head_stride = v3.chan;
    p.out_batch_stride = o3.batch;
    p.out_time_stride = o3.time;
    p.out_head_stride = o3.chan;
    if (char const* bad = windowedAttentionCheck(p))
        return fail(bad);
    return finish(windowedAttentionLaunch(p, static_cast<cudaStream_t>(stream)));
}

extern "C" int hymba_set_kernel_choice(char const* family, char const* choice)
{
    if (!setKernelChoice(family, choice))
        return fail("hymba_set_kernel_choice: unknown family or choice (see common/kernel_choice.h)");
    return 0;
}

extern "C" char const* hymba_kernel_choice(char const* family)
{
    return kernelChoiceName(family);
}

extern "C" char const* hymba_kernel_error(void)
{
    return tError.c_str();
}
