#include "windowed_attention_plugin.h"

#include "windowed_attention_kernel.h"

#include <cmath>

namespace hymba
{
namespace plugin
{

namespace
{
char const* const kN = WindowedAttentionPlugin::kNAME;

DType toDType(DataType t)
{
    return t == DataType::kHALF ? DType::kFLOAT16 : t == DataType::kBF16 ? DType::kBFLOAT16 : DType::kFLOAT32;
}
} // namespace

void WindowedAttentionFields::validate(WindowedAttentionFields const& f)
{
    HYMBA_VALIDATE(std::isfinite(f.scale) && f.scale > 0.f,
        "WindowedAttention: field 'scale' is required, a finite float > 0 (e.g. 1/sqrt(qk_head_dim)), got "
            + std::to_string(f.scale));
    HYMBA_VALIDATE(f.num_meta >= 0,
        "WindowedAttention: field 'num_meta' must be >= 0, got " + std::to_string(f.num_meta));
}

void WindowedAttentionPlugin::checkShapes(Dims const* in) const
{
    // 0 q (B,Tq,Hq,Dqk) 1 k (B,Tk,Hkv,Dqk) 2 v (B,Tk,Hkv,Dv) 3 kv_lengths (B,)
    requireRank(kN, "q", in[0], 4);
    requireRank(kN, "k", in[1], 4);
    requireRank(kN, "v", in[2], 4);
    requireRank(kN, "kv_lengths", in[3], 1);
    requireDim(kN, "q and k batch", in[0].d[0], in[1].d[0]);
    requireDim(kN, "v and k batch", in[2].d[0], in[1].d[0]);
    requireDim(kN, "kv_lengths and k batch", in[3].d[0], in[1].d[0]);
    requireDim(kN, "v and k length", in[2].d[1], in[1].d[1]);
    requireDim(kN, "v and k heads", in[2].d[2], in[1].d[2]);
    requireDim(kN, "q and k head dim", in[0].d[3], in[1].d[3]);
    int64_t const Tq = in[0].d[1], Tk = in[1].d[1], Hq = in[0].d[2], Hkv = in[1].d[2];
    HYMBA_VALIDATE(Tq < 0 || Tk < 0 || Tq <= Tk,
        std::string(kN) + ": " + std::to_string(Tq) + " queries over only " + std::to_string(Tk) + " keys");
    HYMBA_VALIDATE(Hq < 0 || Hkv < 0 || (Hkv > 0 && Hq % Hkv == 0),
        std::string(kN) + ": " + std::to_string(Hq) + " query heads are not a multiple of " + std::to_string(Hkv)
            + " kv heads");
    int64_t const dqk = in[0].d[3] >= 0 ? in[0].d[3] : in[1].d[3];
    int64_t const dv = in[2].d[3];
    HYMBA_VALIDATE(dqk < 0 || (dqk >= 4 && dqk <= kWindowedAttentionMaxQkDim && dqk % 4 == 0),
        std::string(kN) + ": q/k head dim " + std::to_string(dqk) + " unsupported (multiples of 4 up to 128)");
    HYMBA_VALIDATE(dv < 0 || dv == 32 || dv == 64 || dv == 128,
        std::string(kN) + ": v head dim " + std::to_string(dv) + " unsupported (32, 64 or 128)");
}

int32_t WindowedAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        HYMBA_VALIDATE(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS,
            "WindowedAttention: expects 4 inputs (q, k, v, kv_lengths), 1 output");
        HYMBA_VALIDATE(inputs[0].nbDims == 4 && inputs[2].nbDims == 4, "WindowedAttention: q and v must be rank 4");
        outputs[0] = inputs[0]; // (B, Tq, Hq, Dv)
        outputs[0].d[3] = inputs[2].d[3];
        return 0;
    }
    catch (std::exception const& e)
    {
        caughtError(kN, e);
    }
    return -1;
}

int32_t WindowedAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        Dims const& q = inputDesc[0].dims;
        Dims const& k = inputDesc[1].dims;
        Dims const& v = inputDesc[2].dims;
        for (int32_t a = 0; a < 4; ++a)
            HYMBA_VALIDATE(q.d[a] < (1LL << 31) && k.d[a] < (1LL << 31), "WindowedAttention: dims exceed int32");
        WindowedAttentionParams p{};
        p.dtype = toDType(inputDesc[0].type);
        p.batch = int32_t(q.d[0]);
        p.q_len = int32_t(q.d[1]);
        p.kv_len = int32_t(k.d[1]);
        p.num_q_heads = int32_t(q.d[2]);
        p.num_kv_heads = int32_t(k.d[2]);
        p.qk_dim = int32_t(q.d[3]);
        p.v_dim = int32_t(v.d[3]);
        p.window = mFields.window;
        p.num_meta = mFields.num_meta;
        p.scale = mFields.scale;
        p.q = inputs[0];
        p.k = inputs[1];
        p.v = inputs[2];
        p.out = outputs[0];
        // Row b's valid keys: k/v[b, :kv_lengths[b]], read on the device (clamped to [Tq, Tk]).
        p.kv_len_device = static_cast<int32_t const*>(inputs[3]);
        p.kv_len_device_stride = 1;
        int64_t const Hq = q.d[2], Hkv = k.d[2], Dqk = q.d[3], Dv = v.d[3];
        p.q_head_stride = Dqk;
        p.q_time_stride = Hq * Dqk;
        p.q_batch_stride = q.d[1] * Hq * Dqk;
        p.k_head_stride = Dqk;
        p.k_time_stride = Hkv * Dqk;
        p.k_batch_stride = k.d[1] * Hkv * Dqk;
        p.v_head_stride = Dv;
        p.v_time_stride = Hkv * Dv;
        p.v_batch_stride = k.d[1] * Hkv * Dv;
        p.out_head_stride = Dv;
        p.out_time_stride = Hq * Dv;
        p.out_batch_stride = q.d[1] * Hq * Dv;
        char const* bad = windowedAttentionCheck(p);
        HYMBA_VALIDATE(bad == nullptr, bad != nullptr ? bad : "");
        cudaError_t const err = windowedAttentionLaunch(p, stream);
        HYMBA_VALIDATE(err == cudaSuccess, std::string("WindowedAttention: launch failed: ") + cudaGetErrorString(err));
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
