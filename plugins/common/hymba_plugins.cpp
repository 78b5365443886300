/*
 * Library entry points read by IPluginRegistry::loadLibrary, get_plugin_registry().load_library() and
 * trtexec --dynamicPlugins. No TensorRT library is linked: only these two symbols are looked up.
 * A new plugin is one folder plus one line in kCreators below.
 */
#include "../causal_conv1d/causal_conv1d_plugin.h"
#include "../selective_scan/selective_scan_plugin.h"
#include "../windowed_attention/windowed_attention_plugin.h"
#include "plugin_common.h"

//! TENSORRTAPI exports only when building TensorRT itself; plugin libraries export explicitly.
#define HYMBA_EXPORT __attribute__((visibility("default")))

#define HYMBA_STR(x) #x
#define HYMBA_XSTR(x) HYMBA_STR(x)

//! The TensorRT headers this library was compiled against, as a string in the file itself: a copied or
//! installed library still says which TensorRT it is for. hymba_deploy.engine.plugins reads it from the
//! file's bytes (no loading), so a library for another TensorRT major is refused before TensorRT sees it.
extern "C" HYMBA_EXPORT __attribute__((used)) char const hymba_plugins_build_info[] = "hymba-plugins tensorrt="
    HYMBA_XSTR(NV_TENSORRT_MAJOR) "." HYMBA_XSTR(NV_TENSORRT_MINOR) "." HYMBA_XSTR(NV_TENSORRT_PATCH) ";";

using namespace hymba::plugin;

extern "C" HYMBA_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    // Each creator twice: namespace "hymba" (the ONNX contract) and "" (TensorRT-RTX 1.7's parser).
    static SelectiveScanCreator selectiveScan(kPLUGIN_NAMESPACE), selectiveScanRtx("");
    static CausalConv1dCreator causalConv1d(kPLUGIN_NAMESPACE), causalConv1dRtx("");
    static WindowedAttentionCreator windowedAttention(kPLUGIN_NAMESPACE), windowedAttentionRtx("");
    static IPluginCreatorInterface* const kCreators[] = {
        &selectiveScan, &causalConv1d, &windowedAttention, &selectiveScanRtx, &causalConv1dRtx, &windowedAttentionRtx};
    nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}

extern "C" HYMBA_EXPORT void setLoggerFinder(ILoggerFinder* finder)
{
    hymba::plugin::setLoggerFinder(finder);
}
