/*
 * CausalConv1d plugin (IPluginV3), version kPLUGIN_VERSION (plugin_common.h): TensorRT glue around
 * causal_conv1d_kernel.h.
 * I/O and fields: plugins/causal_conv1d/README.md.
 */
#pragma once

#include "../common/plugin_common.h"

namespace hymba
{
namespace plugin
{

struct CausalConv1dFields
{
    int32_t activation{1}; // 1 = SiLU, 0 = none

    template <typename V>
    static void visitFields(CausalConv1dFields& f, V&& v)
    {
        v("activation", f.activation);
    }
    static void validate(CausalConv1dFields const& f);
};

class CausalConv1dPlugin : public PluginBase<CausalConv1dPlugin, CausalConv1dFields>
{
public:
    static constexpr char const* kNAME = "CausalConv1d";
    static constexpr char const* kVERSION = kPLUGIN_VERSION;
    static constexpr int32_t kNB_INPUTS = 4;
    static constexpr int32_t kNB_OUTPUTS = 2;
    //! x, weight, bias, conv_state | y, new_conv_state
    static constexpr TypeRule kTYPES[kNB_INPUTS + kNB_OUTPUTS]
        = {TypeRule::kT, TypeRule::kT, TypeRule::kT, TypeRule::kT, TypeRule::kT, TypeRule::kT};

    using PluginBase::PluginBase;

    void checkShapes(Dims const* in) const;
    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override;
    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
        void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
};

using CausalConv1dCreator = CreatorBase<CausalConv1dPlugin, CausalConv1dFields>;

} // namespace plugin
} // namespace hymba
