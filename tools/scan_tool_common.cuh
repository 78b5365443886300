// Helpers of the scan timing tools (tools/scan_prefill_ab.cu; the prototype in
// bench/results/scan_blockscan_proto_unmeasured_2026-12-01.patch): a CUDA check, hash-generated inputs (the same
// values in every build), a device sum and a median event timer.
#pragma once

#include "common/kernel_common.cuh"
#include "selective_scan/selective_scan_kernel.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace scantool
{
using namespace hymba;

#define CK(x)                                                                                                        \
    do                                                                                                               \
    {                                                                                                                \
        cudaError_t e_ = (x);                                                                                        \
        if (e_ != cudaSuccess)                                                                                       \
        {                                                                                                            \
            std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__);                     \
            std::exit(1);                                                                                            \
        }                                                                                                            \
    } while (0)

//! A uniform value in [0, 1) from (index, stream): the same inputs in every build.
__device__ __forceinline__ float hashUniform(uint64_t i, uint32_t stream)
{
    uint64_t h = i * 0x9E3779B97F4A7C15ull + stream * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 29;
    return float(h >> 40) * (1.0f / 16777216.0f);
}

//! out[i] = scale · u + shift, u uniform in [0, 1).
template <typename T>
__global__ void fillKernel(T* out, size_t n, uint32_t stream, float scale, float shift)
{
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        out[i] = fromFloat<T>(scale * hashUniform(i, stream) + shift);
}

template <typename T>
void fill(T* out, size_t n, uint32_t stream, float scale, float shift)
{
    fillKernel<T><<<1024, 256>>>(out, n, stream, scale, shift);
    CK(cudaGetLastError());
}

//! Sum of n values as double (one atomic per block).
template <typename T>
__global__ void sumKernel(T const* v, size_t n, double* out)
{
    double s = 0.0;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        s += double(toFloat(v[i]));
    for (int o = 16; o > 0; o /= 2)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0)
        atomicAdd(out, s);
}

template <typename T>
double sum(T const* v, size_t n, double* dev)
{
    CK(cudaMemset(dev, 0, sizeof(double)));
    sumKernel<T><<<1024, 256>>>(v, n, dev);
    CK(cudaGetLastError());
    double h = 0.0;
    CK(cudaMemcpy(&h, dev, sizeof(double), cudaMemcpyDeviceToHost));
    return h;
}

template <typename F>
float medianMs(F f, int reps)
{
    for (int i = 0; i < 2; ++i)
        CK(f());
    CK(cudaDeviceSynchronize());
    std::vector<float> t;
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < reps; ++i)
    {
        CK(cudaEventRecord(a));
        CK(f());
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms = 0.f;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

//! The inputs of one timed call (bf16, contiguous (B, T, D) x, dt, z, y; (B, T, N) B and C; fp32 state), with
//! magnitudes as plugins/tests/kernels.py's scan_inputs: x, z, B, C in ±1.7, dt in [-1.9, -0.1], A in -(1 .. 16),
//! mamba's dt_bias range; y and last_state NaN-filled by poison().
struct Inputs
{
    using bf16 = __nv_bfloat16;
    size_t nx, nb, ns;
    bf16 *x, *dt, *z, *B, *C, *y;
    float *A, *Dv, *bias, *h0, *ls;
    SelectiveScanParams p{};

    Inputs(int Bt, int T, int D, int N)
        : nx(size_t(Bt) * T * D)
        , nb(size_t(Bt) * T * N)
        , ns(size_t(Bt) * D * N)
    {
        CK(cudaMalloc(&x, nx * 2));
        CK(cudaMalloc(&dt, nx * 2));
        CK(cudaMalloc(&z, nx * 2));
        CK(cudaMalloc(&y, nx * 2));
        CK(cudaMalloc(&B, nb * 2));
        CK(cudaMalloc(&C, nb * 2));
        CK(cudaMalloc(&A, size_t(D) * N * 4));
        CK(cudaMalloc(&Dv, D * 4));
        CK(cudaMalloc(&bias, D * 4));
        CK(cudaMalloc(&h0, ns * 4));
        CK(cudaMalloc(&ls, ns * 4));
        fill(x, nx, 1, 3.4f, -1.7f);
        fill(dt, nx, 2, 1.8f, -1.9f);
        fill(z, nx, 3, 3.4f, -1.7f);
        fill(B, nb, 4, 3.4f, -1.7f);
        fill(C, nb, 5, 3.4f, -1.7f);
        fill(A, size_t(D) * N, 6, -15.f, -1.f);
        fill(Dv, D, 7, 2.f, -1.f);
        fill(bias, D, 8, 4.6f, -6.9f);
        fill(h0, ns, 9, 1.f, -0.5f);
        CK(cudaDeviceSynchronize());
        p.batch = Bt;
        p.seqlen = T;
        p.dim = D;
        p.dstate = N;
        p.dtype = DType::kBFLOAT16;
        p.state_dtype = DType::kFLOAT32;
        p.softplus_threshold = 20.f;
        p.x = x;
        p.dt = dt;
        p.A = A;
        p.B = B;
        p.C = C;
        p.D = Dv;
        p.z = z;
        p.dt_bias = bias;
        p.initial_state = h0;
        p.y = y;
        p.last_state = ls;
        Strides3 const sx{int64_t(T) * D, D, 1}, sb{int64_t(T) * N, N, 1}, ss{int64_t(D) * N, N, 1};
        p.x_strides = p.dt_strides = p.z_strides = p.y_strides = sx;
        p.B_strides = p.C_strides = sb;
        p.state_strides = p.last_state_strides = ss;
        p.A_dim_stride = N;
        p.A_state_stride = 1;
    }
    Inputs(Inputs const&) = delete;
    Inputs& operator=(Inputs const&) = delete;
    ~Inputs()
    {
        for (void* ptr : {(void*) x, (void*) dt, (void*) z, (void*) y, (void*) B, (void*) C, (void*) A, (void*) Dv,
                 (void*) bias, (void*) h0, (void*) ls})
            cudaFree(ptr);
    }
    void poison() const
    {
        CK(cudaMemset(y, 0xff, nx * 2));
        CK(cudaMemset(ls, 0xff, ns * 4));
    }
};

//! "B:T:reps" arguments from argv[first] on (or `fallback`), flattened.
inline std::vector<int> parseShapes(int argc, char** argv, int first, std::vector<int> fallback)
{
    std::vector<int> shapes;
    for (int i = first; i < argc; ++i)
    {
        int b = 0, t = 0, r = 0;
        if (std::sscanf(argv[i], "%d:%d:%d", &b, &t, &r) != 3 || b < 1 || t < 2 || r < 1)
        {
            std::printf("bad shape '%s' (want B:T:reps)\n", argv[i]);
            std::exit(2);
        }
        shapes.insert(shapes.end(), {b, t, r});
    }
    return shapes.empty() ? fallback : shapes;
}

} // namespace scantool
