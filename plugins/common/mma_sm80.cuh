/*
 * sm_80 tensor-core building blocks shared by the kernels (they run on sm_90 too): m16n8k16 `mma.sync`
 * with fp32 accumulators, `ldmatrix`, 16-byte `cp.async`. Callers guard their use with
 * `__CUDA_ARCH__ >= 800` and check the function's `ptxVersion` (the architecture it was compiled for) on
 * the host.
 */
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace hymba
{

//! The m16n8k16 MMA and the fp32 -> operand packing for one 16-bit element type (__half, __nv_bfloat16).
//! Fragment layout (PTX ISA, "mma.m16n8k16"): lane = 4·g + t; a0 = A[g][2t..2t+1], a1 = A[g+8][2t..],
//! a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]; b0 = B[2t..2t+1][g], b1 = B[2t+8..][g]; c0, c1 = C[g][2t..2t+1],
//! c2, c3 = C[g+8][2t..2t+1].
template <typename T>
struct MmaType;

template <>
struct MmaType<__half>
{
    static __device__ __forceinline__ uint32_t pack(float lo, float hi)
    {
        __half2 const h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t const*>(&h);
    }
    //! c += A·B (A 16×16 row-major, B 16×8 column-major).
    static __device__ __forceinline__ void mma(
        float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1)
    {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
};

template <>
struct MmaType<__nv_bfloat16>
{
    static __device__ __forceinline__ uint32_t pack(float lo, float hi)
    {
        __nv_bfloat162 const h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t const*>(&h);
    }
    static __device__ __forceinline__ void mma(
        float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1)
    {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
};

__device__ __forceinline__ void cpAsync16(uint32_t dst, void const* src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cpAsyncCommit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}
//! Waits until at most N of this thread's committed cp.async groups are still in flight.
template <int N>
__device__ __forceinline__ void cpAsyncWait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
//! Four 8×8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i receives it.
__device__ __forceinline__ void ldmatrixX4(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
//! As ldmatrixX4, each matrix transposed.
__device__ __forceinline__ void ldmatrixX4Trans(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

//! Byte offset of 16-byte chunk `ch` of shared row `row` (rows of kRowChunks chunks, a power of two),
//! XOR-swizzled so that the 8 rows of one ldmatrix matrix (the same logical chunk) hit 8 different
//! 16-byte bank groups. Rows of >= 8 chunks: chunk ^ (row & 7); shorter rows share a 128-byte line with
//! their neighbours and XOR with the line index instead.
template <int kRowChunks>
__device__ __forceinline__ uint32_t swizzle16(int row, int ch)
{
    static_assert(kRowChunks >= 1 && (kRowChunks & (kRowChunks - 1)) == 0, "row chunks: a power of two");
    if constexpr (kRowChunks >= 8)
        return uint32_t((row * kRowChunks + (ch ^ (row & 7))) * 16);
    else
        return uint32_t((row * kRowChunks + (ch ^ ((row / (8 / kRowChunks)) & (kRowChunks - 1)))) * 16);
}

} // namespace hymba
