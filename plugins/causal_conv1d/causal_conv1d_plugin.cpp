#include "causal_conv1d_plugin.h"

#include "causal_conv1d_kernel.h"

namespace hymba
{
namespace plugin
{

namespace
{
char const* const kN = CausalConv1dPlugin::kNAME;

DType toDType(DataType t)
{
    return t == DataType::kHALF ? DType::kFLOAT16 : t == DataType::kBF16 ? DType::kBFLOAT16 : DType::kFLOAT32;
}
} // namespace

void CausalConv1dFields::validate(CausalConv1dFields const& f)
{
    HYMBA_VALIDATE(f.activation == 0 || f.activation == 1,
        "CausalConv1d: field 'activation' must be 1 (SiLU) or 0 (none), got " + std::to_string(f.activation));
}

void CausalConv1dPlugin::checkShapes(Dims const* in) const
{
    // 0 x (B,T,D) 1 weight (D,K) 2 bias (D,) 3 conv_state (B,D,K)
    requireRank(kN, "x", in[0], 3);
    requireRank(kN, "weight", in[1], 2);
    requireRank(kN, "bias", in[2], 1);
    requireRank(kN, "conv_state", in[3], 3);
    requireDim(kN, "weight and x dim", in[1].d[0], in[0].d[2]);
    requireDim(kN, "bias and x dim", in[2].d[0], in[0].d[2]);
    requireDim(kN, "conv_state and x batch", in[3].d[0], in[0].d[0]);
    requireDim(kN, "conv_state and x dim", in[3].d[1], in[0].d[2]);
    requireDim(kN, "conv_state and weight width", in[3].d[2], in[1].d[1]);
    int64_t const K = in[1].d[1];
    HYMBA_VALIDATE(K < 0 || (K >= 1 && K <= kCausalConv1dMaxWidth),
        std::string(kN) + ": kernel width K (weight's last dim) must be in 1..4, got " + std::to_string(K));
}

int32_t CausalConv1dPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        HYMBA_VALIDATE(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS, "CausalConv1d: expects 4 inputs, 2 outputs");
        HYMBA_VALIDATE(inputs[0].nbDims == 3 && inputs[1].nbDims == 2, "CausalConv1d: x must be (B,T,D), weight (D,K)");
        outputs[0] = inputs[0]; // y (B, T, D)
        outputs[1].nbDims = 3;  // new_conv_state (B, D, K)
        outputs[1].d[0] = inputs[0].d[0];
        outputs[1].d[1] = inputs[0].d[2];
        outputs[1].d[2] = inputs[1].d[1];
        return 0;
    }
    catch (std::exception const& e)
    {
        caughtError(kN, e);
    }
    return -1;
}

int32_t CausalConv1dPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        Dims const& x = inputDesc[0].dims;
        int64_t const Bt = x.d[0], T = x.d[1], D = x.d[2], K = inputDesc[1].dims.d[1];
        HYMBA_VALIDATE(Bt < (1LL << 31) && T < (1LL << 31) && D < (1LL << 31), "CausalConv1d: dims exceed int32");
        CausalConv1dParams p{};
        p.batch = int32_t(Bt);
        p.seqlen = int32_t(T);
        p.dim = int32_t(D);
        p.width = int32_t(K);
        p.dtype = toDType(inputDesc[0].type);
        p.silu = mFields.activation;
        p.x = inputs[0];
        p.weight = inputs[1];
        p.bias = inputs[2];
        p.conv_state = inputs[3];
        p.y = outputs[0];
        p.new_conv_state = outputs[1];
        p.x_batch_stride = p.y_batch_stride = T * D;
        p.x_time_stride = p.y_time_stride = D;
        p.x_dim_stride = p.y_dim_stride = 1;
        p.weight_dim_stride = K;
        p.weight_width_stride = 1;
        p.state_batch_stride = p.new_state_batch_stride = D * K;
        p.state_dim_stride = p.new_state_dim_stride = K;
        p.state_width_stride = p.new_state_width_stride = 1;
        char const* bad = causalConv1dCheck(p);
        HYMBA_VALIDATE(bad == nullptr, bad != nullptr ? bad : "");
        cudaError_t const err = causalConv1dLaunch(p, stream);
        HYMBA_VALIDATE(err == cudaSuccess, std::string("CausalConv1d: launch failed: ") + cudaGetErrorString(err));
        return 0;
    }
    catch (std::exception const& e)
    {
        caughtError(kN, e);
    }
    return -1;
}

} // namespace plugin
} // namespace hymba
