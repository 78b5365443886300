/*
 * What the three IPluginV3 plugins share: errors that stop at noexcept, logging through the
 * ILoggerFinder, typed fields with a layout guard, a plugin base class and a creator template.
 *
 * Each plugin supplies a `Fields` struct (int32_t / float members with defaults) plus
 *   static void visitFields(Fields&, V&& v)   // v(name, int32_t&) or v(name, float&), one call per field
 *   static void validate(Fields const&)       // throws PluginError with the bad value named
 * and the tensor rules (nbInputs, supportsFormatCombination, shapes, enqueue).
 */
#pragma once

#include "NvInferRuntime.h"

#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace hymba
{
namespace plugin
{

using namespace nvinfer1;

//! Namespace of the creators named in the ONNX contract; each creator is also registered under "" because
//! TensorRT-RTX 1.7's parser looks custom-domain nodes up there (docs/tensorrt-notes.md).
constexpr char const* kPLUGIN_NAMESPACE = "hymba";

//! The version of every plugin of this library (hymba_deploy/contract.py PLUGIN_VERSION): the three move
//! together. "2" (issue 14): WindowedAttention takes the per-row key counts `kv_lengths`. TensorRT finds a
//! creator by name and version, so an engine or graph of another version does not load with this library.
constexpr char const* kPLUGIN_VERSION = "2";

//! Serialized with every plugin; a rebuild (TensorRTPhase::kRUNTIME) must carry exactly this value.
//! Bump it when the meaning of serialized fields changes, so stale engines fail loudly.
constexpr char const* kLAYOUT_FIELD = "layout_version";
constexpr int32_t kLAYOUT_VERSION = 1;

class PluginError : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

[[noreturn]] void throwPluginError(char const* file, char const* func, int line, char const* cond, std::string const& msg);

//! Throws PluginError naming the condition, function and line. The condition must be a bool expression.
#define HYMBA_VALIDATE(cond, msg)                                                                                    \
    do                                                                                                               \
    {                                                                                                                \
        if (!(cond))                                                                                                 \
            ::hymba::plugin::throwPluginError(__FILE__, __func__, __LINE__, #cond, (msg));                          \
    } while (0)

void setLoggerFinder(ILoggerFinder* finder) noexcept;
void logMessage(ILogger::Severity severity, std::string const& msg) noexcept;
inline void logError(std::string const& msg) noexcept
{
    logMessage(ILogger::Severity::kERROR, msg);
}
inline void logWarning(std::string const& msg) noexcept
{
    logMessage(ILogger::Severity::kWARNING, msg);
}
//! Logs the exception caught at a noexcept boundary, prefixed with the plugin name.
void caughtError(char const* plugin, std::exception const& e) noexcept;

std::string dimsToString(Dims const& d);
char const* dataTypeName(DataType t);
bool isFloatType(DataType t); // kFLOAT, kHALF, kBF16

//! Fields <-> PluginFieldCollection. Values live in the plugin (serialization) or are copied (parsing).
template <typename Fields>
class FieldCodec
{
public:
    //! Names and types with no data: the creator's getFieldNames().
    static std::vector<PluginField> names()
    {
        std::vector<PluginField> out;
        Fields f{};
        Fields::visitFields(f, [&](char const* name, auto& value) { out.emplace_back(name, nullptr, typeOf(value), 1); });
        out.emplace_back(kLAYOUT_FIELD, nullptr, PluginFieldType::kINT32, 1);
        return out;
    }

    //! Points at `f` and `layout` (which must outlive the result): getFieldsToSerialize().
    static std::vector<PluginField> serialize(Fields& f, int32_t const& layout)
    {
        std::vector<PluginField> out;
        Fields::visitFields(f, [&](char const* name, auto& value) { out.emplace_back(name, &value, typeOf(value), 1); });
        out.emplace_back(kLAYOUT_FIELD, &layout, PluginFieldType::kINT32, 1);
        return out;
    }

    //! Defaults overwritten by the collection's fields, each type-checked; a rebuild (kRUNTIME) needs the
    //! current layout_version. Unknown names are ignored with a warning (the ONNX parser sends only ours).
    static Fields parse(char const* plugin, PluginFieldCollection const* fc, TensorRTPhase phase)
    {
        Fields f{};
        bool sawLayout = false;
        int32_t const n = fc != nullptr ? fc->nbFields : 0;
        HYMBA_VALIDATE(n == 0 || fc->fields != nullptr, "field collection has no field array");
        for (int32_t i = 0; i < n; ++i)
        {
            PluginField const& pf = fc->fields[i];
            HYMBA_VALIDATE(pf.name != nullptr, "a field has no name");
            std::string const name = pf.name;
            if (name == kLAYOUT_FIELD)
            {
                int32_t layout = 0;
                read(pf, layout);
                HYMBA_VALIDATE(layout == kLAYOUT_VERSION,
                    std::string(plugin) + ": layout_version " + std::to_string(layout) + " is not the "
                        + std::to_string(kLAYOUT_VERSION)
                        + " this library reads: rebuild the engine with this plugin library");
                sawLayout = true;
                continue;
            }
            bool known = false;
            Fields::visitFields(f, [&](char const* fname, auto& value) {
                if (name == fname)
                {
                    read(pf, value);
                    known = true;
                }
            });
            if (!known)
                logWarning(std::string(plugin) + ": ignoring unknown field '" + name + "'");
        }
        HYMBA_VALIDATE(sawLayout || phase == TensorRTPhase::kBUILD,
            std::string(plugin) + ": serialized fields lack layout_version (engine from another plugin "
                                  "library?): rebuild the engine");
        return f;
    }

private:
    static PluginFieldType typeOf(int32_t const&)
    {
        return PluginFieldType::kINT32;
    }
    static PluginFieldType typeOf(float const&)
    {
        return PluginFieldType::kFLOAT32;
    }
    static char const* typeName(PluginFieldType t)
    {
        return t == PluginFieldType::kINT32 ? "kINT32" : t == PluginFieldType::kFLOAT32 ? "kFLOAT32" : "another type";
    }
    template <typename V>
    static void read(PluginField const& pf, V& value)
    {
        PluginFieldType const want = typeOf(value);
        HYMBA_VALIDATE(pf.type == want,
            std::string("field '") + pf.name + "' must be " + typeName(want) + " (got PluginFieldType "
                + std::to_string(int32_t(pf.type)) + ")");
        HYMBA_VALIDATE(pf.length == 1 && pf.data != nullptr,
            std::string("field '") + pf.name + "' must hold exactly one value (length "
                + std::to_string(pf.length) + ")");
        std::memcpy(&value, pf.data, sizeof(V));
    }
};

//! Allowed element type of one input or output position.
enum class TypeRule : int32_t
{
    kT,      //!< fp32, fp16 or bf16, the same as input 0
    kF32,    //!< fp32 only
    kF32OrT, //!< fp32 or input 0's type
    kI32,    //!< int32 only
};

//! IPluginV3 with the OneCore/OneBuild/OneRuntime capabilities; Derived supplies kNAME, kVERSION, the
//! tensor rules and enqueue. Copyable: clone() and attachToContext() copy the fields.
template <typename Derived, typename Fields>
class PluginBase : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime
{
public:
    PluginBase(Fields const& fields, std::string ns)
        : mFields(fields)
        , mNamespace(std::move(ns))
    {
    }
    PluginBase(PluginBase const& other)
        : IPluginV3(other)
        , IPluginV3OneCore(other)
        , IPluginV3OneBuild(other)
        , IPluginV3OneRuntime(other)
        , mFields(other.mFields)
        , mNamespace(other.mNamespace)
    {
    }
    PluginBase& operator=(PluginBase const&) = delete;
    ~PluginBase() override = default;

    Fields const& fields() const noexcept
    {
        return mFields;
    }

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }
    IPluginV3* clone() noexcept override
    {
        try
        {
            return new Derived(static_cast<Derived const&>(*this));
        }
        catch (std::exception const& e)
        {
            caughtError(Derived::kNAME, e);
        }
        return nullptr;
    }

    // IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override
    {
        return Derived::kNAME;
    }
    AsciiChar const* getPluginVersion() const noexcept override
    {
        return Derived::kVERSION;
    }
    AsciiChar const* getPluginNamespace() const noexcept override
    {
        return mNamespace.c_str();
    }

    // IPluginV3OneRuntime
    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override
    {
        return clone();
    }
    PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        try
        {
            mSerialized = FieldCodec<Fields>::serialize(mFields, mLayout);
            mCollection.nbFields = static_cast<int32_t>(mSerialized.size());
            mCollection.fields = mSerialized.data();
            return &mCollection;
        }
        catch (std::exception const& e)
        {
            caughtError(Derived::kNAME, e);
        }
        return nullptr;
    }

    // IPluginV3OneBuild: no workspace, no tactics.
    int32_t getNbOutputs() const noexcept override
    {
        return Derived::kNB_OUTPUTS;
    }
    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        if (inOut == nullptr || nbInputs != Derived::kNB_INPUTS || nbOutputs != Derived::kNB_OUTPUTS || pos < 0
            || pos >= nbInputs + nbOutputs)
            return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        return d.format == TensorFormat::kLINEAR && typeAllowed(Derived::kTYPES[pos], d.type, inOut[0].desc.type, pos);
    }
    int32_t getOutputDataTypes(
        DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        try
        {
            HYMBA_VALIDATE(nbInputs == Derived::kNB_INPUTS && nbOutputs == Derived::kNB_OUTPUTS,
                std::string(Derived::kNAME) + ": expected " + std::to_string(Derived::kNB_INPUTS) + " inputs and "
                    + std::to_string(Derived::kNB_OUTPUTS) + " outputs");
            for (int32_t i = 0; i < nbInputs; ++i)
                HYMBA_VALIDATE(typeAllowed(Derived::kTYPES[i], inputTypes[i], inputTypes[0], i),
                    std::string(Derived::kNAME) + ": input " + std::to_string(i) + " has type "
                        + dataTypeName(inputTypes[i]) + "; " + ruleText(Derived::kTYPES[i]));
            for (int32_t i = 0; i < nbOutputs; ++i)
                outputTypes[i] = Derived::kTYPES[nbInputs + i] == TypeRule::kF32 ? DataType::kFLOAT : inputTypes[0];
            return 0;
        }
        catch (std::exception const& e)
        {
            caughtError(Derived::kNAME, e);
        }
        return -1;
    }
    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override
    {
        try
        {
            HYMBA_VALIDATE(nbInputs == Derived::kNB_INPUTS && nbOutputs == Derived::kNB_OUTPUTS,
                std::string(Derived::kNAME) + ": wrong number of inputs or outputs");
            std::vector<Dims> dims;
            for (int32_t i = 0; i < nbInputs; ++i)
                dims.push_back(in[i].desc.dims);
            static_cast<Derived const*>(this)->checkShapes(dims.data());
            (void) out;
            return 0;
        }
        catch (std::exception const& e)
        {
            caughtError(Derived::kNAME, e);
        }
        return -1;
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(
        PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept override
    {
        try
        {
            HYMBA_VALIDATE(nbInputs == Derived::kNB_INPUTS && nbOutputs == Derived::kNB_OUTPUTS,
                std::string(Derived::kNAME) + ": wrong number of inputs or outputs");
            std::vector<Dims> dims;
            for (int32_t i = 0; i < nbInputs; ++i)
            {
                HYMBA_VALIDATE(in[i].format == TensorFormat::kLINEAR,
                    std::string(Derived::kNAME) + ": only linear formats are supported");
                for (int32_t a = 0; a < in[i].dims.nbDims; ++a)
                    HYMBA_VALIDATE(in[i].dims.d[a] >= 0,
                        std::string(Derived::kNAME) + ": unresolved dimension in input " + std::to_string(i));
                dims.push_back(in[i].dims);
            }
            static_cast<Derived const*>(this)->checkShapes(dims.data());
            (void) out;
            return 0;
        }
        catch (std::exception const& e)
        {
            caughtError(Derived::kNAME, e);
        }
        return -1;
    }

protected:
    static bool typeAllowed(TypeRule rule, DataType t, DataType t0, int32_t pos)
    {
        bool const isT = isFloatType(t) && (pos == 0 || t == t0);
        switch (rule)
        {
        case TypeRule::kT: return isT;
        case TypeRule::kF32: return t == DataType::kFLOAT;
        case TypeRule::kF32OrT: return t == DataType::kFLOAT || isT;
        case TypeRule::kI32: return t == DataType::kINT32;
        }
        return false;
    }
    static char const* ruleText(TypeRule rule)
    {
        switch (rule)
        {
        case TypeRule::kT: return "must be kFLOAT, kHALF or kBF16, the same as input 0";
        case TypeRule::kF32: return "must be kFLOAT";
        case TypeRule::kF32OrT: return "must be kFLOAT or the type of input 0";
        case TypeRule::kI32: return "must be kINT32";
        }
        return "";
    }

    Fields mFields;
    std::string mNamespace;
    int32_t mLayout{kLAYOUT_VERSION};
    std::vector<PluginField> mSerialized;
    PluginFieldCollection mCollection{};
};

//! IPluginCreatorV3One for Plugin (which has a (Fields, namespace) constructor).
template <typename Plugin, typename Fields>
class CreatorBase : public IPluginCreatorV3One
{
public:
    explicit CreatorBase(char const* ns)
        : mNamespace(ns)
        , mFieldNames(FieldCodec<Fields>::names())
    {
        mCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
        mCollection.fields = mFieldNames.data();
    }

    IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept override
    {
        try
        {
            Fields const f = FieldCodec<Fields>::parse(Plugin::kNAME, fc, phase);
            Fields::validate(f);
            return new Plugin(f, mNamespace);
        }
        catch (std::exception const& e)
        {
            caughtError(Plugin::kNAME, e);
            (void) name;
        }
        return nullptr;
    }
    PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mCollection;
    }
    AsciiChar const* getPluginName() const noexcept override
    {
        return Plugin::kNAME;
    }
    AsciiChar const* getPluginVersion() const noexcept override
    {
        return Plugin::kVERSION;
    }
    AsciiChar const* getPluginNamespace() const noexcept override
    {
        return mNamespace.c_str();
    }

private:
    std::string mNamespace;
    std::vector<PluginField> mFieldNames;
    PluginFieldCollection mCollection{};
};

//! Shape/type helpers used by configurePlugin and onShapeChange: dims of -1 are unknown and match anything.
void requireRank(char const* plugin, char const* tensor, Dims const& d, int32_t rank);
void requireDim(char const* plugin, char const* what, int64_t a, int64_t b);

} // namespace plugin
} // namespace hymba
