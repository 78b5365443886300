// Built only by tools/attn_prefill_tune.py: the tensor-core prefill kernel at Hymba's head dims
// (bf16, Dqk 64, Dv 128, contiguous tensors), compiled once per variant (-DHYMBA_WAP_BN, -DHYMBA_WAP_STAGES).
#include "windowed_attention/windowed_attention_prefill_kernel.cuh"

extern "C" int wap_tune_launch(int batch, int q_len, int kv_len, int num_q_heads, int num_kv_heads, int window,
    int num_meta, float scale, void const* q, void const* k, void const* v, void* out, void* stream)
{
    using namespace hymba;
    WindowedAttentionParams p{};
    p.dtype = DType::kBFLOAT16;
    p.batch = batch;
    p.q_len = q_len;
    p.kv_len = kv_len;
    p.num_q_heads = num_q_heads;
    p.num_kv_heads = num_kv_heads;
    p.qk_dim = 64;
    p.v_dim = 128;
    p.window = window;
    p.num_meta = num_meta;
    p.scale = scale;
    p.q = q;
    p.k = k;
    p.v = v;
    p.out = out;
    p.q_head_stride = 64;
    p.q_time_stride = int64_t(num_q_heads) * 64;
    p.q_batch_stride = p.q_time_stride * q_len;
    p.k_head_stride = 64;
    p.k_time_stride = int64_t(num_kv_heads) * 64;
    p.k_batch_stride = p.k_time_stride * kv_len;
    p.v_head_stride = 128;
    p.v_time_stride = int64_t(num_kv_heads) * 128;
    p.v_batch_stride = p.v_time_stride * kv_len;
    p.out_head_stride = 128;
    p.out_time_stride = int64_t(num_q_heads) * 128;
    p.out_batch_stride = p.out_time_stride * q_len;
    cudaError_t status = cudaSuccess;
    if (!wap::launch<__nv_bfloat16, 64, 128>(p, static_cast<cudaStream_t>(stream), status))
        return -1;
    return int(status);
}
