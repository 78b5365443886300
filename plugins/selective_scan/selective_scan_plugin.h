/*
 * SelectiveScan plugin (IPluginV3), version kPLUGIN_VERSION (plugin_common.h): TensorRT glue around
 * selective_scan_kernel.h.
 * I/O and fields: plugins/selective_scan/README.md.
 */
#pragma once

#include "../common/plugin_common.h"

namespace hymba
{
namespace plugin
{

struct SelectiveScanFields
{
    float softplus_threshold{20.0f};

    template <typename V>
    static void visitFields(SelectiveScanFields& f, V&& v)
    {
        v("softplus_threshold", f.softplus_threshold);
    }
    static void validate(SelectiveScanFields const& f);
};

class SelectiveScanPlugin : public PluginBase<SelectiveScanPlugin, SelectiveScanFields>
{
public:
    static constexpr char const* kNAME = "SelectiveScan";
    static constexpr char const* kVERSION = kPLUGIN_VERSION;
    static constexpr int32_t kNB_INPUTS = 9;
    static constexpr int32_t kNB_OUTPUTS = 2;
    //! x, dt, A, B, C, D, z, dt_bias, initial_state | y, last_state
    static constexpr TypeRule kTYPES[kNB_INPUTS + kNB_OUTPUTS] = {TypeRule::kT, TypeRule::kT, TypeRule::kF32,
        TypeRule::kT, TypeRule::kT, TypeRule::kF32, TypeRule::kT, TypeRule::kF32, TypeRule::kF32OrT, TypeRule::kT,
        TypeRule::kF32};

    using PluginBase::PluginBase;

    void checkShapes(Dims const* in) const;
    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override;
    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
        void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
};

using SelectiveScanCreator = CreatorBase<SelectiveScanPlugin, SelectiveScanFields>;

} // namespace plugin
} // namespace hymba
