#include "selective_scan_plugin.h"

#include "selective_scan_kernel.h"

#include <cmath>

namespace hymba
{
namespace plugin
{

namespace
{
char const* const kN = SelectiveScanPlugin::kNAME;

DType toDType(DataType t)
{
    return t == DataType::kHALF ? DType::kFLOAT16 : t == DataType::kBF16 ? DType::kBFLOAT16 : DType::kFLOAT32;
}
} // namespace

void SelectiveScanFields::validate(SelectiveScanFields const& f)
{
    HYMBA_VALIDATE(std::isfinite(f.softplus_threshold),
        "SelectiveScan: field 'softplus_threshold' must be a finite float (mamba-ssm uses 20.0)");
}

void SelectiveScanPlugin::checkShapes(Dims const* in) const
{
    // 0 x (B,T,D) 1 dt (B,T,D) 2 A (D,N) 3 B (B,T,N) 4 C (B,T,N) 5 D (D,) 6 z (B,T,D) 7 dt_bias (D,) 8 h0 (B,D,N)
    char const* names[] = {"x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state"};
    int32_t const ranks[] = {3, 3, 2, 3, 3, 1, 3, 1, 3};
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
        requireRank(kN, names[i], in[i], ranks[i]);
    Dims const& x = in[0];
    for (int32_t i : {1, 6})
        for (int32_t a = 0; a < 3; ++a)
            requireDim(kN, (std::string(names[i]) + " and x dims").c_str(), in[i].d[a], x.d[a]);
    int64_t const N = in[2].d[1];
    for (int32_t i : {3, 4})
    {
        requireDim(kN, (std::string(names[i]) + " and x batch").c_str(), in[i].d[0], x.d[0]);
        requireDim(kN, (std::string(names[i]) + " and x time").c_str(), in[i].d[1], x.d[1]);
        requireDim(kN, (std::string(names[i]) + " and A d_state").c_str(), in[i].d[2], N);
    }
    requireDim(kN, "A and x d_inner", in[2].d[0], x.d[2]);
    requireDim(kN, "D and x d_inner", in[5].d[0], x.d[2]);
    requireDim(kN, "dt_bias and x d_inner", in[7].d[0], x.d[2]);
    requireDim(kN, "initial_state and x batch", in[8].d[0], x.d[0]);
    requireDim(kN, "initial_state and x d_inner", in[8].d[1], x.d[2]);
    requireDim(kN, "initial_state and A d_state", in[8].d[2], N);
    HYMBA_VALIDATE(N < 0 || (N >= 1 && N <= kSelectiveScanMaxState),
        std::string(kN) + ": d_state (A's last dim) must be in 1..32, got " + std::to_string(N));
}

int32_t SelectiveScanPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        HYMBA_VALIDATE(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS, "SelectiveScan: expects 9 inputs, 2 outputs");
        HYMBA_VALIDATE(inputs[0].nbDims == 3 && inputs[2].nbDims == 2, "SelectiveScan: x must be (B,T,D) and A (D,N)");
        outputs[0] = inputs[0]; // y (B, T, D)
        outputs[1].nbDims = 3;  // last_state (B, D, N)
        outputs[1].d[0] = inputs[0].d[0];
        outputs[1].d[1] = inputs[0].d[2];
        outputs[1].d[2] = inputs[2].d[1];
        return 0;
    }
    catch (std::exception const& e)
    {
        caughtError(kN, e);
    }
    return -1;
}

int32_t SelectiveScanPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        Dims const& x = inputDesc[0].dims;
        int64_t const Bt = x.d[0], T = x.d[1], D = x.d[2], N = inputDesc[2].dims.d[1];
        HYMBA_VALIDATE(Bt < (1LL << 31) && T < (1LL << 31) && D < (1LL << 31), "SelectiveScan: dims exceed int32");
        SelectiveScanParams p{};
        p.batch = int32_t(Bt);
        p.seqlen = int32_t(T);
        p.dim = int32_t(D);
        p.dstate = int32_t(N);
        p.dtype = toDType(inputDesc[0].type);
        p.state_dtype = toDType(inputDesc[8].type);
        p.softplus_threshold = mFields.softplus_threshold;
        p.x = inputs[0];
        p.dt = inputs[1];
        p.A = static_cast<float const*>(inputs[2]);
        p.B = inputs[3];
        p.C = inputs[4];
        p.D = static_cast<float const*>(inputs[5]);
        p.z = inputs[6];
        p.dt_bias = static_cast<float const*>(inputs[7]);
        p.initial_state = inputs[8];
        p.y = outputs[0];
        p.last_state = static_cast<float*>(outputs[1]);
        Strides3 const btd{T * D, D, 1};
        Strides3 const btn{T * N, N, 1};
        Strides3 const bdn{D * N, N, 1};
        p.x_strides = p.dt_strides = p.z_strides = p.y_strides = btd;
        p.B_strides = p.C_strides = btn;
        p.state_strides = p.last_state_strides = bdn;
        p.A_dim_stride = N;
        p.A_state_stride = 1;
        char const* bad = selectiveScanCheck(p);
        HYMBA_VALIDATE(bad == nullptr, bad != nullptr ? bad : "");
        cudaError_t const err = selectiveScanLaunch(p, stream);
        HYMBA_VALIDATE(err == cudaSuccess, std::string("SelectiveScan: launch failed: ") + cudaGetErrorString(err));
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
