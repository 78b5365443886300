/*
 * Element types shared by the kernel launchers (no TensorRT, no CUDA headers needed).
 */
#pragma once

#include <cstdint>

namespace hymba
{

//! Element type of a kernel's "T" tensors. Values are part of the extern "C" ABI (kernels_c_api.h).
enum class DType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
    kBFLOAT16 = 2,
};

inline char const* dtypeName(DType t)
{
    switch (t)
    {
    case DType::kFLOAT32: return "float32";
    case DType::kFLOAT16: return "float16";
    case DType::kBFLOAT16: return "bfloat16";
    }
    return "unknown";
}

inline bool isValidDType(int32_t t)
{
    return t >= 0 && t <= 2;
}

} // namespace hymba
