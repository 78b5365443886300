/*
 * Test harness: drives libhymba_plugins.so the way TensorRT does, without TensorRT.
 * Built as libhymba_plugin_harness.so with an extern "C" API for ctypes (plugins/tests/harness.py).
 * It dlopens the plugin library, installs a capturing ILoggerFinder through setLoggerFinder, takes the
 * creators from getCreators, and exposes createPlugin (from a text field spec), getFieldsToSerialize (as
 * text), clone/attachToContext, getOutputDataTypes, getOutputShapes (with a mock IExprBuilder),
 * supportsFormatCombination, configurePlugin, getWorkspaceSize, onShapeChange and enqueue.
 *
 * Field spec text: "name=i:1;other=f:0.125" (i kINT32, f kFLOAT32, d kFLOAT64, c kCHAR, I kINT64, n=i: no data).
 * Dims: an array of int64 per tensor; a negative entry is a symbolic (non-constant) extent with that id.
 */
#include "NvInferRuntime.h"

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

std::string gLog;
std::string gError;
std::string gText;
void* gLib = nullptr;
std::vector<IPluginCreatorInterface*> gCreators;

class CaptureLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        char const* tag[] = {"INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"};
        gLog += std::string(tag[int(severity)]) + ": " + msg + "\n";
    }
};

class Finder : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        return &mLogger;
    }
    CaptureLogger mLogger;
};
Finder gFinder;

// Mock expressions: constants, or symbols identified by a negative id.
class MockExprImpl : public apiv::VDimensionExpr
{
public:
    MockExprImpl(bool c, int64_t v)
        : mConst(c)
        , mValue(v)
    {
    }
    bool isConstant() const override
    {
        return mConst;
    }
    int64_t getConstantValue() const override
    {
        return mConst ? mValue : -1;
    }
    bool isSizeTensor() const override
    {
        return false;
    }
    bool mConst;
    int64_t mValue;
};

class MockExpr : public IDimensionExpr
{
public:
    MockExpr(bool c, int64_t v)
        : impl(c, v)
    {
        mImpl = &impl;
    }
    ~MockExpr() noexcept override = default;
    int64_t code() const
    {
        return impl.mValue;
    }
    MockExprImpl impl;
};

std::vector<std::unique_ptr<MockExpr>> gExprs;

MockExpr const* makeExpr(int64_t v)
{
    gExprs.push_back(std::make_unique<MockExpr>(v >= 0, v));
    return gExprs.back().get();
}

class MockBuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        return makeExpr(value);
    }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        if (!a.isConstant() || !b.isConstant())
            return makeExpr(-999); // a derived symbol
        int64_t const x = a.getConstantValue(), y = b.getConstantValue();
        switch (op)
        {
        case DimensionOperation::kSUM: return makeExpr(x + y);
        case DimensionOperation::kPROD: return makeExpr(x * y);
        case DimensionOperation::kMAX: return makeExpr(x > y ? x : y);
        case DimensionOperation::kMIN: return makeExpr(x < y ? x : y);
        case DimensionOperation::kSUB: return makeExpr(x - y);
        default: return makeExpr(-999);
        }
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
};

class MockBuilder : public IExprBuilder
{
public:
    MockBuilder()
    {
        mImpl = &impl;
    }
    ~MockBuilder() noexcept override = default;
    MockBuilderImpl impl;
};

IPluginCreatorV3One* creatorFor(char const* name, char const* version, char const* ns)
{
    for (IPluginCreatorInterface* c : gCreators)
    {
        if (std::string(c->getInterfaceInfo().kind) != "PLUGIN CREATOR_V3ONE")
            continue;
        auto* v3 = static_cast<IPluginCreatorV3One*>(c);
        if (std::string(v3->getPluginName()) == name && std::string(v3->getPluginVersion()) == version
            && std::string(v3->getPluginNamespace()) == ns)
            return v3;
    }
    return nullptr;
}

std::string fieldTypeCode(PluginFieldType t)
{
    switch (t)
    {
    case PluginFieldType::kINT32: return "i";
    case PluginFieldType::kFLOAT32: return "f";
    case PluginFieldType::kFLOAT64: return "d";
    case PluginFieldType::kCHAR: return "c";
    case PluginFieldType::kINT64: return "I";
    default: return "?" + std::to_string(int(t));
    }
}

std::string fieldsToText(PluginFieldCollection const* fc, bool withValues)
{
    std::string out;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        out += std::string(i ? ";" : "") + f.name + "=" + fieldTypeCode(f.type) + ":";
        if (withValues && f.data != nullptr && f.length == 1)
        {
            char buf[64];
            if (f.type == PluginFieldType::kINT32)
                std::snprintf(buf, sizeof(buf), "%d", *static_cast<int32_t const*>(f.data));
            else if (f.type == PluginFieldType::kFLOAT32)
                std::snprintf(buf, sizeof(buf), "%.9g", double(*static_cast<float const*>(f.data)));
            else
                std::snprintf(buf, sizeof(buf), "?");
            out += buf;
        }
        out += ":" + std::to_string(f.length);
    }
    return out;
}

IPluginV3OneBuild* build(void* p)
{
    return static_cast<IPluginV3OneBuild*>(
        static_cast<IPluginV3*>(p)->getCapabilityInterface(PluginCapabilityType::kBUILD));
}
IPluginV3OneRuntime* runtime(void* p)
{
    return static_cast<IPluginV3OneRuntime*>(
        static_cast<IPluginV3*>(p)->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}
IPluginV3OneCore* core(void* p)
{
    return static_cast<IPluginV3OneCore*>(static_cast<IPluginV3*>(p)->getCapabilityInterface(PluginCapabilityType::kCORE));
}

Dims toDims(int rank, long long const* d)
{
    Dims out{};
    out.nbDims = rank;
    for (int i = 0; i < rank; ++i)
        out.d[i] = d[i];
    return out;
}

std::vector<PluginTensorDesc> descs(int n, int const* ranks, long long const* dims, int const* types)
{
    std::vector<PluginTensorDesc> out(n);
    for (int i = 0; i < n; ++i)
    {
        out[i].dims = toDims(ranks[i], dims + 8 * i);
        out[i].type = DataType(types[i]);
        out[i].format = TensorFormat::kLINEAR;
        out[i].scale = -1.f;
    }
    return out;
}

std::vector<DynamicPluginTensorDesc> dynDescs(int n, int const* ranks, long long const* dims, int const* types)
{
    std::vector<PluginTensorDesc> d = descs(n, ranks, dims, types);
    std::vector<DynamicPluginTensorDesc> out(n);
    for (int i = 0; i < n; ++i)
    {
        out[i].desc = d[i];
        out[i].min = out[i].max = out[i].opt = d[i].dims;
    }
    return out;
}

} // namespace

extern "C"
{

__attribute__((visibility("default"))) int hh_load(char const* path)
{
    gCreators.clear();
    gLib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (gLib == nullptr)
    {
        gError = std::string("dlopen failed: ") + dlerror();
        return -1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(gLib, "getCreators"));
    auto setFinder = reinterpret_cast<SetFinder>(dlsym(gLib, "setLoggerFinder"));
    if (getCreators == nullptr || setFinder == nullptr)
    {
        gError = "library lacks getCreators or setLoggerFinder";
        return -1;
    }
    setFinder(&gFinder);
    int32_t n = 0;
    IPluginCreatorInterface* const* list = getCreators(n);
    for (int32_t i = 0; i < n; ++i)
        gCreators.push_back(list[i]);
    return n;
}

__attribute__((visibility("default"))) char const* hh_error()
{
    return gError.c_str();
}

__attribute__((visibility("default"))) char const* hh_log()
{
    return gLog.c_str();
}

__attribute__((visibility("default"))) void hh_clear_log()
{
    gLog.clear();
}

//! "kind|name|version|namespace|fields" for creator i.
__attribute__((visibility("default"))) char const* hh_creator_info(int i)
{
    if (i < 0 || i >= int(gCreators.size()))
        return "";
    IPluginCreatorInterface* c = gCreators[i];
    InterfaceInfo const info = c->getInterfaceInfo();
    gText = std::string(info.kind) + " " + std::to_string(info.major) + "." + std::to_string(info.minor);
    if (std::string(info.kind) == "PLUGIN CREATOR_V3ONE")
    {
        auto* v3 = static_cast<IPluginCreatorV3One*>(c);
        gText += std::string("|") + v3->getPluginName() + "|" + v3->getPluginVersion() + "|" + v3->getPluginNamespace()
            + "|" + fieldsToText(v3->getFieldNames(), false);
    }
    return gText.c_str();
}

__attribute__((visibility("default"))) void* hh_create(
    char const* name, char const* version, char const* ns, char const* spec, int phase)
{
    IPluginCreatorV3One* c = creatorFor(name, version, ns);
    if (c == nullptr)
    {
        gError = std::string("no creator ") + name + " v" + version + " in namespace '" + ns + "'";
        return nullptr;
    }
    // Parse "name=t:value;..." into owned storage.
    std::vector<std::string> names;
    std::vector<std::vector<char>> data;
    std::vector<PluginFieldType> types;
    std::vector<int32_t> lengths;
    std::string s = spec != nullptr ? spec : "";
    size_t pos = 0;
    while (pos < s.size())
    {
        size_t end = s.find(';', pos);
        if (end == std::string::npos)
            end = s.size();
        std::string item = s.substr(pos, end - pos);
        pos = end + 1;
        size_t eq = item.find('='), colon = item.find(':', eq + 1);
        if (eq == std::string::npos || colon == std::string::npos)
            continue;
        names.push_back(item.substr(0, eq));
        char const t = item[eq + 1];
        std::string value = item.substr(colon + 1);
        std::vector<char> bytes;
        int32_t length = 1;
        PluginFieldType type = PluginFieldType::kUNKNOWN;
        if (t == 'i')
        {
            type = PluginFieldType::kINT32;
            int32_t v = std::stoi(value);
            bytes.assign(reinterpret_cast<char*>(&v), reinterpret_cast<char*>(&v) + 4);
        }
        else if (t == 'f')
        {
            type = PluginFieldType::kFLOAT32;
            float v = std::stof(value);
            bytes.assign(reinterpret_cast<char*>(&v), reinterpret_cast<char*>(&v) + 4);
        }
        else if (t == 'd')
        {
            type = PluginFieldType::kFLOAT64;
            double v = std::stod(value);
            bytes.assign(reinterpret_cast<char*>(&v), reinterpret_cast<char*>(&v) + 8);
        }
        else if (t == 'I')
        {
            type = PluginFieldType::kINT64;
            long long v = std::stoll(value);
            bytes.assign(reinterpret_cast<char*>(&v), reinterpret_cast<char*>(&v) + 8);
        }
        else if (t == 'c')
        {
            type = PluginFieldType::kCHAR;
            bytes.assign(value.begin(), value.end());
            length = int32_t(value.size());
        }
        else if (t == 'n')
        {
            type = PluginFieldType::kINT32;
            length = 0;
        }
        data.push_back(bytes);
        types.push_back(type);
        lengths.push_back(length);
    }
    std::vector<PluginField> fields;
    for (size_t i = 0; i < names.size(); ++i)
        fields.emplace_back(names[i].c_str(), data[i].empty() ? nullptr : data[i].data(), types[i], lengths[i]);
    PluginFieldCollection fc{int32_t(fields.size()), fields.data()};
    IPluginV3* p = c->createPlugin(name, &fc, phase == 0 ? TensorRTPhase::kBUILD : TensorRTPhase::kRUNTIME);
    if (p == nullptr)
        gError = "createPlugin returned null";
    return p;
}

//! getFieldsToSerialize as "name=t:value:length;...".
__attribute__((visibility("default"))) char const* hh_serialize(void* p)
{
    gText = fieldsToText(runtime(p)->getFieldsToSerialize(), true);
    return gText.c_str();
}

//! "name|version|namespace|nbOutputs|core x.y|build x.y|runtime x.y"
__attribute__((visibility("default"))) char const* hh_plugin_info(void* p)
{
    auto* plugin = static_cast<IPluginV3*>(p);
    auto ver = [](IVersionedInterface* i) {
        InterfaceInfo const info = i->getInterfaceInfo();
        return std::string(info.kind) + " " + std::to_string(info.major) + "." + std::to_string(info.minor);
    };
    gText = std::string(core(p)->getPluginName()) + "|" + core(p)->getPluginVersion() + "|" + core(p)->getPluginNamespace()
        + "|" + std::to_string(build(p)->getNbOutputs()) + "|" + ver(plugin) + "|" + ver(core(p)) + "|" + ver(build(p)) + "|"
        + ver(runtime(p));
    return gText.c_str();
}

__attribute__((visibility("default"))) void* hh_clone(void* p)
{
    return static_cast<IPluginV3*>(p)->clone();
}

__attribute__((visibility("default"))) void* hh_attach(void* p)
{
    return runtime(p)->attachToContext(nullptr);
}

__attribute__((visibility("default"))) void hh_destroy(void* p)
{
    delete static_cast<IPluginV3*>(p);
}

__attribute__((visibility("default"))) int hh_output_types(void* p, int nbIn, int const* inTypes, int nbOut, int* outTypes)
{
    std::vector<DataType> in(nbIn), out(nbOut);
    for (int i = 0; i < nbIn; ++i)
        in[i] = DataType(inTypes[i]);
    int32_t const r = build(p)->getOutputDataTypes(out.data(), nbOut, in.data(), nbIn);
    for (int i = 0; i < nbOut; ++i)
        outTypes[i] = int(out[i]);
    return r;
}

//! dims: 8 slots per tensor. Output extents: the constant, or the symbol id (< 0) of the input extent.
__attribute__((visibility("default"))) int hh_output_shapes(
    void* p, int nbIn, int const* ranks, long long const* dims, int nbOut, int* outRanks, long long* outDims)
{
    gExprs.clear();
    MockBuilder builder;
    std::vector<DimsExprs> in(nbIn), out(nbOut);
    for (int i = 0; i < nbIn; ++i)
    {
        in[i].nbDims = ranks[i];
        for (int a = 0; a < ranks[i]; ++a)
            in[i].d[a] = makeExpr(dims[8 * i + a]);
    }
    int32_t const r = build(p)->getOutputShapes(in.data(), nbIn, nullptr, 0, out.data(), nbOut, builder);
    for (int i = 0; r == 0 && i < nbOut; ++i)
    {
        outRanks[i] = out[i].nbDims;
        for (int a = 0; a < out[i].nbDims; ++a)
            outDims[8 * i + a] = out[i].d[a] != nullptr ? static_cast<MockExpr const*>(out[i].d[a])->code() : -12345;
    }
    return r;
}

__attribute__((visibility("default"))) int hh_supports(
    void* p, int pos, int nbIn, int nbOut, int const* ranks, long long const* dims, int const* types, int const* formats)
{
    std::vector<DynamicPluginTensorDesc> d = dynDescs(nbIn + nbOut, ranks, dims, types);
    for (int i = 0; i < nbIn + nbOut; ++i)
        d[i].desc.format = TensorFormat(formats[i]);
    return build(p)->supportsFormatCombination(pos, d.data(), nbIn, nbOut) ? 1 : 0;
}

__attribute__((visibility("default"))) int hh_configure(
    void* p, int nbIn, int nbOut, int const* ranks, long long const* dims, int const* types)
{
    std::vector<DynamicPluginTensorDesc> d = dynDescs(nbIn + nbOut, ranks, dims, types);
    return build(p)->configurePlugin(d.data(), nbIn, d.data() + nbIn, nbOut);
}

__attribute__((visibility("default"))) long long hh_workspace(
    void* p, int nbIn, int nbOut, int const* ranks, long long const* dims, int const* types)
{
    std::vector<DynamicPluginTensorDesc> d = dynDescs(nbIn + nbOut, ranks, dims, types);
    return static_cast<long long>(build(p)->getWorkspaceSize(d.data(), nbIn, d.data() + nbIn, nbOut));
}

__attribute__((visibility("default"))) int hh_on_shape_change(
    void* p, int nbIn, int nbOut, int const* ranks, long long const* dims, int const* types)
{
    std::vector<PluginTensorDesc> d = descs(nbIn + nbOut, ranks, dims, types);
    return runtime(p)->onShapeChange(d.data(), nbIn, d.data() + nbIn, nbOut);
}

__attribute__((visibility("default"))) int hh_enqueue(void* p, int nbIn, int nbOut, int const* ranks,
    long long const* dims, int const* types, void* const* ptrs, void* workspace, void* stream)
{
    std::vector<PluginTensorDesc> d = descs(nbIn + nbOut, ranks, dims, types);
    std::vector<void const*> in(ptrs, ptrs + nbIn);
    std::vector<void*> out(ptrs + nbIn, ptrs + nbIn + nbOut);
    return runtime(p)->enqueue(d.data(), d.data() + nbIn, in.data(), out.data(), workspace, static_cast<cudaStream_t>(stream));
}

} // extern "C"
