/*
 * WindowedAttention plugin (IPluginV3), version kPLUGIN_VERSION (plugin_common.h): TensorRT glue around
 * windowed_attention_kernel.h.
 * I/O and fields: plugins/windowed_attention/README.md.
 */
#pragma once

#include "../common/plugin_common.h"

#include <limits>

namespace hymba
{
namespace plugin
{

struct WindowedAttentionFields
{
    int32_t window{0};   // <= 0: global (causal) layer
    int32_t num_meta{0}; // always-visible leading keys
    float scale{std::numeric_limits<float>::quiet_NaN()}; // required

    template <typename V>
    static void visitFields(WindowedAttentionFields& f, V&& v)
    {
        v("window", f.window);
        v("num_meta", f.num_meta);
        v("scale", f.scale);
    }
    static void validate(WindowedAttentionFields const& f);
};

class WindowedAttentionPlugin : public PluginBase<WindowedAttentionPlugin, WindowedAttentionFields>
{
public:
    static constexpr char const* kNAME = "WindowedAttention";
    static constexpr char const* kVERSION = kPLUGIN_VERSION;
    static constexpr int32_t kNB_INPUTS = 4;
    static constexpr int32_t kNB_OUTPUTS = 1;
    //! q, k, v, kv_lengths | out
    static constexpr TypeRule kTYPES[kNB_INPUTS + kNB_OUTPUTS]
        = {TypeRule::kT, TypeRule::kT, TypeRule::kT, TypeRule::kI32, TypeRule::kT};

    using PluginBase::PluginBase;

    void checkShapes(Dims const* in) const;
    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override;
    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
        void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
};

using WindowedAttentionCreator = CreatorBase<WindowedAttentionPlugin, WindowedAttentionFields>;

} // namespace plugin
} // namespace hymba
