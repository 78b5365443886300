/*
 * PyTorch front door to the plugin kernels (plugins/<op>/<op>_kernel.{h,cu}): the same launchers the
 * TensorRT plugins call, fed from at::Tensor shapes and strides, on the current CUDA stream.
 *
 * Each function takes optional output tensors so the serving runtime can update cache buffers in place
 * (a scan's last_state may alias an fp32 initial_state; a conv's new state may alias its state for T <= 64).
 * Layouts and dtypes are the contracts of hymba_deploy/ops/*.py.
 */
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "causal_conv1d/causal_conv1d_kernel.h"
#include "common/kernel_choice.h"
#include "selective_scan/selective_scan_kernel.h"
#include "windowed_attention/windowed_attention_kernel.h"

namespace
{

using hymba::DType;

DType toDType(at::ScalarType t, char const* what)
{
    switch (t)
    {
    case at::kFloat: return DType::kFLOAT32;
    case at::kHalf: return DType::kFLOAT16;
    case at::kBFloat16: return DType::kBFLOAT16;
    default: TORCH_CHECK(false, what, ": dtype must be float32, float16 or bfloat16, got ", t);
    }
    return DType::kFLOAT32;
}

#define CHECK_CUDA(t) TORCH_CHECK((t).is_cuda(), #t " must be a CUDA tensor")
#define CHECK_SHAPE(t, ...)                                                                                          \
    TORCH_CHECK((t).sizes() == at::IntArrayRef({__VA_ARGS__}), #t " must have shape (" #__VA_ARGS__ "), got ",      \
        (t).sizes())

void checkLaunch(cudaError_t err, char const* (*check)(void const*), void const* params, char const* op)
{
    if (err == cudaSuccess)
        return;
    char const* why = check(params);
    TORCH_CHECK(false, op, " launch failed: ", why != nullptr ? why : cudaGetErrorString(err));
}

char const* scanCheck(void const* p) { return hymba::selectiveScanCheck(*static_cast<hymba::SelectiveScanParams const*>(p)); }
char const* convCheck(void const* p) { return hymba::causalConv1dCheck(*static_cast<hymba::CausalConv1dParams const*>(p)); }
char const* attnCheck(void const* p)
{
    return hymba::windowedAttentionCheck(*static_cast<hymba::WindowedAttentionParams const*>(p));
}

hymba::Strides3 strides3(at::Tensor const& t)
{
    return {t.stride(0), t.stride(1), t.stride(2)};
}

} // namespace

// x, dt, z (batch, T, dim); A (dim, N) fp32; B, C (batch, T, N); D, dt_bias (dim,) fp32;
// initial_state (batch, dim, N) any float dtype. Returns (y, last_state fp32).
std::vector<at::Tensor> selective_scan(at::Tensor const& x, at::Tensor const& dt, at::Tensor const& A,
    at::Tensor const& B, at::Tensor const& C, c10::optional<at::Tensor> const& D, c10::optional<at::Tensor> const& z,
    c10::optional<at::Tensor> const& dt_bias, c10::optional<at::Tensor> const& initial_state,
    double softplus_threshold, c10::optional<at::Tensor> const& y_out, c10::optional<at::Tensor> const& state_out)
{
    CHECK_CUDA(x);
    TORCH_CHECK(x.dim() == 3, "x must be (batch, T, dim), got ", x.sizes());
    int64_t const batch = x.size(0), T = x.size(1), dim = x.size(2), N = A.size(1);
    c10::cuda::CUDAGuard guard(x.device());
    CHECK_SHAPE(dt, batch, T, dim);
    CHECK_SHAPE(A, dim, N);
    CHECK_SHAPE(B, batch, T, N);
    CHECK_SHAPE(C, batch, T, N);
    TORCH_CHECK(dt.scalar_type() == x.scalar_type() && B.scalar_type() == x.scalar_type()
            && C.scalar_type() == x.scalar_type(),
        "selective_scan: x, dt, B, C must share one dtype");
    TORCH_CHECK(A.scalar_type() == at::kFloat, "selective_scan: A must be float32");
    hymba::SelectiveScanParams p{};
    p.batch = int32_t(batch);
    p.seqlen = int32_t(T);
    p.dim = int32_t(dim);
    p.dstate = int32_t(N);
    p.dtype = toDType(x.scalar_type(), "selective_scan x");
    p.state_dtype = DType::kFLOAT32;
    p.softplus_threshold = float(softplus_threshold);
    p.x = x.data_ptr();
    p.dt = dt.data_ptr();
    p.A = A.data_ptr<float>();
    p.B = B.data_ptr();
    p.C = C.data_ptr();
    at::Tensor Dc, biasc;
    if (D.has_value())
    {
        CHECK_SHAPE(*D, dim);
        TORCH_CHECK(D->scalar_type() == at::kFloat, "selective_scan: D must be float32");
        Dc = D->contiguous();
        p.D = Dc.data_ptr<float>();
    }
    if (z.has_value())
    {
        CHECK_SHAPE(*z, batch, T, dim);
        TORCH_CHECK(z->scalar_type() == x.scalar_type(), "selective_scan: z must have x's dtype");
        p.z = z->data_ptr();
        p.z_strides = strides3(*z);
    }
    if (dt_bias.has_value())
    {
        CHECK_SHAPE(*dt_bias, dim);
        TORCH_CHECK(dt_bias->scalar_type() == at::kFloat, "selective_scan: dt_bias must be float32");
        biasc = dt_bias->contiguous();
        p.dt_bias = biasc.data_ptr<float>();
    }
    if (initial_state.has_value())
    {
        CHECK_SHAPE(*initial_state, batch, dim, N);
        p.state_dtype = toDType(initial_state->scalar_type(), "selective_scan initial_state");
        p.initial_state = initial_state->data_ptr();
        p.state_strides = strides3(*initial_state);
    }
    at::Tensor y = y_out.has_value() ? *y_out : at::empty_like(x, x.options().memory_format(at::MemoryFormat::Contiguous));
    CHECK_SHAPE(y, batch, T, dim);
    TORCH_CHECK(y.scalar_type() == x.scalar_type(), "selective_scan: y must have x's dtype");
    at::Tensor last = state_out.has_value() ? *state_out : at::empty({batch, dim, N}, x.options().dtype(at::kFloat));
    CHECK_SHAPE(last, batch, dim, N);
    TORCH_CHECK(last.scalar_type() == at::kFloat, "selective_scan: last_state must be float32");
    if (initial_state.has_value() && state_out.has_value() && initial_state->data_ptr() == last.data_ptr())
        TORCH_CHECK(initial_state->scalar_type() == at::kFloat && initial_state->strides() == last.strides(),
            "selective_scan: an in-place state must be float32 with equal strides");
    p.y = y.data_ptr();
    p.last_state = last.data_ptr<float>();
    p.x_strides = strides3(x);
    p.dt_strides = strides3(dt);
    p.y_strides = strides3(y);
    p.B_strides = strides3(B);
    p.C_strides = strides3(C);
    p.last_state_strides = strides3(last);
    p.A_dim_stride = A.stride(0);
    p.A_state_stride = A.stride(1);
    checkLaunch(hymba::selectiveScanLaunch(p, c10::cuda::getCurrentCUDAStream().stream()), scanCheck, &p, "selective_scan");
    return {y, last};
}

// x (batch, T, dim); weight (dim, K); bias (dim,); conv_state (batch, dim, K). Returns (y, new_state).
std::vector<at::Tensor> causal_conv1d(at::Tensor const& x, at::Tensor const& weight, c10::optional<at::Tensor> const& bias,
    c10::optional<at::Tensor> const& conv_state, bool silu, c10::optional<at::Tensor> const& y_out,
    c10::optional<at::Tensor> const& state_out)
{
    CHECK_CUDA(x);
    TORCH_CHECK(x.dim() == 3, "x must be (batch, T, dim), got ", x.sizes());
    int64_t const batch = x.size(0), T = x.size(1), dim = x.size(2), K = weight.size(1);
    c10::cuda::CUDAGuard guard(x.device());
    CHECK_SHAPE(weight, dim, K);
    TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "causal_conv1d: weight must have x's dtype");
    hymba::CausalConv1dParams p{};
    p.batch = int32_t(batch);
    p.seqlen = int32_t(T);
    p.dim = int32_t(dim);
    p.width = int32_t(K);
    p.dtype = toDType(x.scalar_type(), "causal_conv1d x");
    p.silu = silu ? 1 : 0;
    p.x = x.data_ptr();
    p.weight = weight.data_ptr();
    p.weight_dim_stride = weight.stride(0);
    p.weight_width_stride = weight.stride(1);
    at::Tensor biasc;
    if (bias.has_value())
    {
        CHECK_SHAPE(*bias, dim);
        TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "causal_conv1d: bias must have x's dtype");
        biasc = bias->contiguous();
        p.bias = biasc.data_ptr();
    }
    if (conv_state.has_value())
    {
        CHECK_SHAPE(*conv_state, batch, dim, K);
        TORCH_CHECK(conv_state->scalar_type() == x.scalar_type(), "causal_conv1d: conv_state must have x's dtype");
        p.conv_state = conv_state->data_ptr();
        p.state_batch_stride = conv_state->stride(0);
        p.state_dim_stride = conv_state->stride(1);
        p.state_width_stride = conv_state->stride(2);
    }
    at::Tensor y = y_out.has_value() ? *y_out : at::empty({batch, T, dim}, x.options());
    CHECK_SHAPE(y, batch, T, dim);
    at::Tensor ns = state_out.has_value() ? *state_out : at::empty({batch, dim, K}, x.options());
    CHECK_SHAPE(ns, batch, dim, K);
    TORCH_CHECK(ns.scalar_type() == x.scalar_type(), "causal_conv1d: new state must have x's dtype");
    p.y = y.data_ptr();
    p.new_conv_state = ns.data_ptr();
    p.x_batch_stride = x.stride(0);
    p.x_time_stride = x.stride(1);
    p.x_dim_stride = x.stride(2);
    p.y_batch_stride = y.stride(0);
    p.y_time_stride = y.stride(1);
    p.y_dim_stride = y.stride(2);
    p.new_state_batch_stride = ns.stride(0);
    p.new_state_dim_stride = ns.stride(1);
    p.new_state_width_stride = ns.stride(2);
    checkLaunch(hymba::causalConv1dLaunch(p, c10::cuda::getCurrentCUDAStream().stream()), convCheck, &p, "causal_conv1d");
    return {y, ns};
}

// q (batch, Tq, Hq, d_qk); k (batch, Tk, Hkv, d_qk); v (batch, Tk, Hkv, d_v). Returns (batch, Tq, Hq, d_v).
// kv_len: optional int32 tensor on q's device of shape (1,) (one count for every row) or (batch,) (one per row):
// the numbers of valid keys, read when the kernel runs (each clamped to [Tq, Tk]); k and v are then buffers of
// capacity Tk, row b's query i sits at key index kv_len[b] - Tq + i and keys past kv_len[b] are never read.
// Lets a CUDA graph replay over a cache that grows by one key per step, rows at different positions.
at::Tensor windowed_attention(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, int64_t window,
    int64_t num_meta, double scale, c10::optional<at::Tensor> const& out_opt,
    c10::optional<at::Tensor> const& kv_len_opt)
{
    CHECK_CUDA(q);
    TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "windowed_attention: q, k, v must be 4-D");
    int64_t const batch = q.size(0), Tq = q.size(1), Hq = q.size(2), dqk = q.size(3);
    int64_t const Tk = k.size(1), Hkv = k.size(2), dv = v.size(3);
    c10::cuda::CUDAGuard guard(q.device());
    CHECK_SHAPE(k, batch, Tk, Hkv, dqk);
    CHECK_SHAPE(v, batch, Tk, Hkv, dv);
    TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
        "windowed_attention: q, k, v must share one dtype");
    TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
        "windowed_attention: head dims must be contiguous");
    at::Tensor out = out_opt.has_value() ? *out_opt : at::empty({batch, Tq, Hq, dv}, q.options());
    CHECK_SHAPE(out, batch, Tq, Hq, dv);
    TORCH_CHECK(out.stride(3) == 1 && out.scalar_type() == q.scalar_type(), "windowed_attention: bad out");
    hymba::WindowedAttentionParams p{};
    p.dtype = toDType(q.scalar_type(), "windowed_attention q");
    p.batch = int32_t(batch);
    p.q_len = int32_t(Tq);
    p.kv_len = int32_t(Tk);
    p.num_q_heads = int32_t(Hq);
    p.num_kv_heads = int32_t(Hkv);
    p.qk_dim = int32_t(dqk);
    p.v_dim = int32_t(dv);
    p.window = int32_t(window);
    p.num_meta = int32_t(num_meta);
    p.scale = float(scale);
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.out = out.data_ptr();
    p.q_batch_stride = q.stride(0);
    p.q_time_stride = q.stride(1);
    p.q_head_stride = q.stride(2);
    p.k_batch_stride = k.stride(0);
    p.k_time_stride = k.stride(1);
    p.k_head_stride = k.stride(2);
    p.v_batch_stride = v.stride(0);
    p.v_time_stride = v.stride(1);
    p.v_head_stride = v.stride(2);
    p.out_batch_stride = out.stride(0);
    p.out_time_stride = out.stride(1);
    p.out_head_stride = out.stride(2);
    if (kv_len_opt.has_value())
    {
        at::Tensor const& n = *kv_len_opt;
        TORCH_CHECK(n.is_cuda() && n.device() == q.device() && n.scalar_type() == at::kInt && n.dim() == 1
                && (n.numel() == 1 || n.numel() == batch) && (n.numel() == 1 || n.stride(0) == 1),
            "windowed_attention: kv_len must be a contiguous int32 tensor of shape (1,) or (batch,) = (", batch,
            ",) on q's device, got ", n.scalar_type(), " ", n.sizes(), " on ", n.device());
        p.kv_len_device = n.data_ptr<int32_t>();
        p.kv_len_device_stride = n.numel() == 1 ? 0 : 1;
    }
    checkLaunch(hymba::windowedAttentionLaunch(p, c10::cuda::getCurrentCUDAStream().stream()), attnCheck, &p,
        "windowed_attention");
    return out;
}

// The kernel choice of this extension's launchers (plugins/common/kernel_choice.h), by family and choice name.
void set_kernel_choice(std::string const& family, std::string const& choice)
{
    TORCH_CHECK(hymba::setKernelChoice(family.c_str(), choice.c_str()), "unknown kernel choice ", family, "=",
        choice, " (plugins/common/kernel_choice.h lists them)");
}

std::string kernel_choice(std::string const& family)
{
    char const* name = hymba::kernelChoiceName(family.c_str());
    TORCH_CHECK(name != nullptr, "unknown kernel family ", family);
    return name;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.doc() = "hymba plugin kernels (plugins/*/_kernel.cu) for PyTorch tensors";
    m.def("selective_scan", &selective_scan, "SelectiveScan", py::arg("x"), py::arg("dt"), py::arg("A"),
        py::arg("B"), py::arg("C"), py::arg("D") = py::none(), py::arg("z") = py::none(),
        py::arg("dt_bias") = py::none(), py::arg("initial_state") = py::none(),
        py::arg("softplus_threshold") = 20.0, py::arg("y") = py::none(), py::arg("last_state") = py::none());
    m.def("causal_conv1d", &causal_conv1d, "CausalConv1d", py::arg("x"), py::arg("weight"),
        py::arg("bias") = py::none(), py::arg("conv_state") = py::none(), py::arg("silu") = true,
        py::arg("y") = py::none(), py::arg("new_conv_state") = py::none());
    m.def("windowed_attention", &windowed_attention, "WindowedAttention", py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("window"), py::arg("num_meta"), py::arg("scale"), py::arg("out") = py::none(),
        py::arg("kv_len") = py::none());
    m.def("set_kernel_choice", &set_kernel_choice, "Force one kernel of a family for later launches",
        py::arg("family"), py::arg("choice"));
    m.def("kernel_choice", &kernel_choice, "A family's current kernel choice", py::arg("family"));
}
