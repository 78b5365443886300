/*
 * Which kernel, of those that compute one op, serves the launches of this process: "auto" (the launcher's own
 * rule) or one forced by name, for A/B runs and tests.
 *
 * One setting per family, held by each loaded library (the plugin library and the torch extension each have
 * their own). A launcher reads it with kernelChoice(family): one relaxed atomic load per launch. It is set
 * through hymba_set_kernel_choice (kernels_c_api.h) or the torch binding's set_kernel_choice
 * (hymba_deploy/cuda/csrc/hymba_torch.cpp). A family's environment variable, when set to one of its choices,
 * is the initial value: read once, at the library's first launch or first set/get.
 *
 * Adding a family: one KernelFamily value and one kKernelFamilies row (same order); the launcher casts
 * kernelChoice(family) to its own enum, whose values follow the row's choices.
 */
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__)
#define HYMBA_LIBRARY_LOCAL __attribute__((visibility("hidden")))
#else
#define HYMBA_LIBRARY_LOCAL
#endif

namespace hymba
{

enum class KernelFamily : int
{
    kAttention,   //!< windowedAttentionLaunchT (AttnPath)
    kScanPrefill, //!< selectiveScanLaunchT for T > 1 (ScanPrefill)
    kCount,
};

struct KernelFamilyInfo
{
    char const* name;        //!< the family's name at the C / Python doors
    char const* env;         //!< environment variable giving the initial choice
    char const* choices[6];  //!< choice names, index = the launcher's enum value; [0] = "auto"; null-terminated
};

inline constexpr KernelFamilyInfo kKernelFamilies[int(KernelFamily::kCount)] = {
    {"attention", "HYMBA_ATTN_DECODE", {"auto", "split", "mma", "prefill", "flash", nullptr}},
    {"scan_prefill", "HYMBA_SCAN_PREFILL", {"auto", "sequential", "state", "chunked", nullptr}},
};

namespace kernel_choice_detail
{

inline int familyIndex(char const* name)
{
    for (int f = 0; name != nullptr && f < int(KernelFamily::kCount); ++f)
        if (std::strcmp(kKernelFamilies[f].name, name) == 0)
            return f;
    return -1;
}

inline int choiceIndex(int family, char const* name)
{
    char const* const* choices = kKernelFamilies[family].choices;
    for (int c = 0; name != nullptr && choices[c] != nullptr; ++c)
        if (std::strcmp(choices[c], name) == 0)
            return c;
    return -1;
}

struct Slots
{
    std::atomic<int> choice[int(KernelFamily::kCount)];

    Slots()
    {
        for (int f = 0; f < int(KernelFamily::kCount); ++f)
        {
            int const c = choiceIndex(f, std::getenv(kKernelFamilies[f].env));
            choice[f].store(c < 0 ? 0 : c, std::memory_order_relaxed);
        }
    }
};

//! This library's settings (hidden: never shared with another loaded library through symbol lookup).
HYMBA_LIBRARY_LOCAL inline Slots& slots()
{
    static Slots s;
    return s;
}

} // namespace kernel_choice_detail

//! The family's current choice, an index into its kKernelFamilies row (0: auto).
inline int kernelChoice(KernelFamily family)
{
    return kernel_choice_detail::slots().choice[int(family)].load(std::memory_order_relaxed);
}

//! Sets a family's choice by names for every later launch; false (nothing changes) for an unknown name.
inline bool setKernelChoice(char const* family, char const* choice)
{
    int const f = kernel_choice_detail::familyIndex(family);
    int const c = f < 0 ? -1 : kernel_choice_detail::choiceIndex(f, choice);
    if (c < 0)
        return false;
    kernel_choice_detail::slots().choice[f].store(c, std::memory_order_relaxed);
    return true;
}

//! The family's current choice by name; nullptr for an unknown family.
inline char const* kernelChoiceName(char const* family)
{
    int const f = kernel_choice_detail::familyIndex(family);
    return f < 0 ? nullptr : kKernelFamilies[f].choices[kernel_choice_detail::slots().choice[f].load()];
}

} // namespace hymba
