#include "plugin_common.h"

#include <atomic>
#include <cstdio>

namespace hymba
{
namespace plugin
{

namespace
{
std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};
} // namespace

void throwPluginError(char const* file, char const* func, int line, char const* cond, std::string const& msg)
{
    std::ostringstream os;
    os << msg << " [" << cond << " failed in " << func << " at " << file << ":" << line << "]";
    throw PluginError(os.str());
}

void setLoggerFinder(ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void logMessage(ILogger::Severity severity, std::string const& msg) noexcept
{
    try
    {
        ILoggerFinder* finder = gLoggerFinder.load();
        ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
        std::string const full = "hymba plugins: " + msg;
        if (logger != nullptr)
            logger->log(severity, full.c_str());
        else if (severity <= ILogger::Severity::kWARNING)
            std::fprintf(stderr, "%s\n", full.c_str());
    }
    catch (...)
    {
    }
}

void caughtError(char const* plugin, std::exception const& e) noexcept
{
    std::string const what = e.what();
    logError(what.rfind(plugin, 0) == 0 ? what : std::string(plugin) + ": " + what);
}

std::string dimsToString(Dims const& d)
{
    std::string s = "(";
    for (int32_t i = 0; i < d.nbDims; ++i)
        s += (i ? ", " : "") + std::to_string(d.d[i]);
    return s + (d.nbDims == 1 ? ",)" : ")");
}

char const* dataTypeName(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return "kFLOAT";
    case DataType::kHALF: return "kHALF";
    case DataType::kBF16: return "kBF16";
    case DataType::kINT8: return "kINT8";
    case DataType::kINT32: return "kINT32";
    case DataType::kINT64: return "kINT64";
    case DataType::kBOOL: return "kBOOL";
    default: return "another type";
    }
}

bool isFloatType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

void requireRank(char const* plugin, char const* tensor, Dims const& d, int32_t rank)
{
    HYMBA_VALIDATE(d.nbDims == rank,
        std::string(plugin) + ": input '" + tensor + "' must have rank " + std::to_string(rank) + ", got "
            + dimsToString(d));
}

void requireDim(char const* plugin, char const* what, int64_t a, int64_t b)
{
    HYMBA_VALIDATE(a < 0 || b < 0 || a == b,
        std::string(plugin) + ": " + what + " disagree (" + std::to_string(a) + " vs " + std::to_string(b) + ")");
}

} // namespace plugin
} // namespace hymba
