// Variants of the chunked SelectiveScan prefill kernel (sscc::chunkedKernel's kVecBC and kUnroll), timed side
// by side with the state-parallel and default chunked launches on the same inputs (bf16, D 3200, N 16;
// scan_tool_common.cuh's hash-generated ones), each checked against the state-parallel kernel's output. A tuning
// aid, not a test.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -I plugins -I .trt/include tools/scan_chunked_tune.cu -o build/scan_chunked_tune
//   build/scan_chunked_tune            # prints one line per (shape, variant)
#include "selective_scan/selective_scan_prefill.cuh"
#include "scan_tool_common.cuh"

#include <cmath>
#include <cstdio>
#include <vector>

using namespace hymba;
using namespace scantool;
using bf16 = __nv_bfloat16;

template <bool kVec, int kUnroll>
cudaError_t launchVariant(SelectiveScanParams const& p, int numSms)
{
    using Cf = sscc::Config<16>;
    sscc::Plan const pl = sscc::pickPlan<16>(p.batch, p.dim, p.seqlen, numSms);
    auto kernel = sscc::chunkedKernel<bf16, 16, true, kVec, kUnroll>;
    CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        int(Cf::bytes(Cf::kMaxChunks, sscc::kMinCpb))));
    dim3 const grid((p.dim + pl.cpb - 1) / pl.cpb, p.batch);
    kernel<<<grid, pl.cpb * pl.chunks, Cf::bytes(pl.chunks, pl.cpb)>>>(p, pl);
    return cudaGetLastError();
}

struct Variant
{
    char const* name;
    cudaError_t (*fn)(SelectiveScanParams const&, int);
};

//! ||a - b|| / ||b|| over n device values.
template <typename T>
double relErr(T const* a, T const* b, size_t n)
{
    std::vector<T> ha(n), hb(n);
    CK(cudaMemcpy(ha.data(), a, n * sizeof(T), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hb.data(), b, n * sizeof(T), cudaMemcpyDeviceToHost));
    double e = 0, r = 0;
    for (size_t i = 0; i < n; ++i)
    {
        double const x = toFloat(ha[i]), y = toFloat(hb[i]);
        e += (x - y) * (x - y);
        r += y * y;
    }
    return std::sqrt(e / r);
}

int main()
{
    int numSms = 0;
    CK(currentSmCount(numSms));
    Variant const variants[] = {
        {"elem_unroll8", launchVariant<false, 8>},
        {"vec_unroll8", launchVariant<true, 8>},
        {"vec_unroll2", launchVariant<true, 2>},
        {"vec_unroll1", launchVariant<true, 1>},
    };
    int const shapes[][2] = {{1, 8320}, {4, 2048}};
    int const D = 3200, N = 16;
    for (auto const& sh : shapes)
    {
        int const Bt = sh[0], T = sh[1];
        Inputs in(Bt, T, D, N);
        bf16* yRef = nullptr;
        float* lsRef = nullptr;
        CK(cudaMalloc(&yRef, in.nx * 2));
        CK(cudaMalloc(&lsRef, in.ns * 4));
        SelectiveScanParams pr = in.p;
        pr.y = yRef;
        pr.last_state = lsRef;
        float const tState = medianMs([&] { return ssst::launch<bf16>(pr, numSms, nullptr); }, 10);
        float const tDefault = medianMs([&] { return sscc::launchT<bf16, 16, true>(in.p, numSms, nullptr); }, 20);
        sscc::Plan const pl = sscc::pickPlan<16>(Bt, D, T, numSms);
        std::printf("B%d T%d plan cpb %d chunks %d len %d | state %.4f ms | chunked default %.4f ms\n", Bt, T,
            pl.cpb, pl.chunks, pl.chunkLen, tState, tDefault);
        for (auto const& v : variants)
        {
            in.poison();
            float const ms = medianMs([&] { return v.fn(in.p, numSms); }, 20);
            std::printf("  %-16s %.4f ms  y vs state %.2e  last_state vs state %.2e\n", v.name, ms,
                relErr(in.y, yRef, in.nx), relErr(in.ls, lsRef, in.ns));
        }
        CK(cudaFree(yRef));
        CK(cudaFree(lsRef));
    }
    return 0;
}
