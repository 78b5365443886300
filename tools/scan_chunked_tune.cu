// Variants of the chunked SelectiveScan prefill kernel (sscc::chunkedKernel's kVecBC and kUnroll), timed side
// by side with the state-parallel and default chunked launches on the same inputs (bf16, D 3200, N 16), each
// checked against the state-parallel kernel's output. A tuning aid, not a test.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -I plugins -I .trt/include tools/scan_chunked_tune.cu -o build/scan_chunked_tune
//   build/scan_chunked_tune            # prints one line per (shape, variant)
#include "selective_scan/selective_scan_prefill.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using namespace hymba;
using bf16 = __nv_bfloat16;

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

template <typename F>
float timeMs(F f, int reps)
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
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
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
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::uniform_real_distribution<float> ud(0.f, 1.f);
    for (auto const& sh : shapes)
    {
        int const Bt = sh[0], T = sh[1];
        size_t const nx = size_t(Bt) * T * D, nb = size_t(Bt) * T * N, ns = size_t(Bt) * D * N;
        std::vector<bf16> hx(nx), hdt(nx), hz(nx), hB(nb), hC(nb);
        for (size_t i = 0; i < nx; ++i)
        {
            hx[i] = __float2bfloat16(nd(rng));
            hdt[i] = __float2bfloat16(nd(rng) * 0.5f - 1.f);
            hz[i] = __float2bfloat16(nd(rng));
        }
        for (size_t i = 0; i < nb; ++i)
        {
            hB[i] = __float2bfloat16(nd(rng));
            hC[i] = __float2bfloat16(nd(rng));
        }
        std::vector<float> hA(size_t(D) * N), hD(D), hbias(D), hh0(ns);
        for (auto& v : hA)
            v = -std::exp(ud(rng) * std::log(float(N)));
        for (int d = 0; d < D; ++d)
        {
            hD[d] = nd(rng);
            hbias[d] = std::log(std::expm1(ud(rng) * 0.099f + 0.001f));
        }
        for (auto& v : hh0)
            v = 0.5f * nd(rng);
        bf16 *x, *dt, *z, *B, *C, *y, *yRef;
        float *A, *Dv, *bias, *h0, *ls, *lsRef;
        CK(cudaMalloc(&x, nx * 2));
        CK(cudaMalloc(&dt, nx * 2));
        CK(cudaMalloc(&z, nx * 2));
        CK(cudaMalloc(&y, nx * 2));
        CK(cudaMalloc(&yRef, nx * 2));
        CK(cudaMalloc(&B, nb * 2));
        CK(cudaMalloc(&C, nb * 2));
        CK(cudaMalloc(&A, hA.size() * 4));
        CK(cudaMalloc(&Dv, D * 4));
        CK(cudaMalloc(&bias, D * 4));
        CK(cudaMalloc(&h0, ns * 4));
        CK(cudaMalloc(&ls, ns * 4));
        CK(cudaMalloc(&lsRef, ns * 4));
        CK(cudaMemcpy(x, hx.data(), nx * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dt, hdt.data(), nx * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(z, hz.data(), nx * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(B, hB.data(), nb * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(C, hC.data(), nb * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(A, hA.data(), hA.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(Dv, hD.data(), D * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(bias, hbias.data(), D * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(h0, hh0.data(), ns * 4, cudaMemcpyHostToDevice));

        SelectiveScanParams p{};
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
        Strides3 const sx{int64_t(T) * D, D, 1}, sb{int64_t(T) * N, N, 1}, ss{int64_t(D) * N, N, 1};
        p.x_strides = p.dt_strides = p.z_strides = p.y_strides = sx;
        p.B_strides = p.C_strides = sb;
        p.state_strides = p.last_state_strides = ss;
        p.A_dim_stride = N;
        p.A_state_stride = 1;

        SelectiveScanParams pr = p;
        pr.y = yRef;
        pr.last_state = lsRef;
        float const tState = timeMs([&] { return ssst::launch<bf16>(pr, numSms, nullptr); }, 10);
        p.y = y;
        p.last_state = ls;
        float const tDefault = timeMs([&] { return sscc::launchT<bf16, 16, true>(p, numSms, nullptr); }, 20);
        sscc::Plan const pl = sscc::pickPlan<16>(Bt, D, T, numSms);
        std::printf("B%d T%d plan cpb %d chunks %d len %d | state %.4f ms | chunked default %.4f ms\n", Bt, T,
            pl.cpb, pl.chunks, pl.chunkLen, tState, tDefault);
        std::vector<bf16> gy(nx), gr(nx);
        std::vector<float> gl(ns), glr(ns);
        CK(cudaMemcpy(gr.data(), yRef, nx * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(glr.data(), lsRef, ns * 4, cudaMemcpyDeviceToHost));
        for (auto const& v : variants)
        {
            CK(cudaMemset(y, 0xff, nx * 2));
            CK(cudaMemset(ls, 0xff, ns * 4));
            float const ms = timeMs([&] { return v.fn(p, numSms); }, 20);
            CK(cudaMemcpy(gy.data(), y, nx * 2, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(gl.data(), ls, ns * 4, cudaMemcpyDeviceToHost));
            double e = 0, r = 0, es = 0, rs = 0;
            for (size_t i = 0; i < nx; ++i)
            {
                double const a = __bfloat162float(gy[i]), b = __bfloat162float(gr[i]);
                e += (a - b) * (a - b);
                r += b * b;
            }
            for (size_t i = 0; i < ns; ++i)
            {
                es += double(gl[i] - glr[i]) * (gl[i] - glr[i]);
                rs += double(glr[i]) * glr[i];
            }
            std::printf("  %-16s %.4f ms  y vs state %.2e  last_state vs state %.2e\n", v.name, ms,
                std::sqrt(e / r), std::sqrt(es / rs));
        }
        for (void* ptr : {(void*) x, (void*) dt, (void*) z, (void*) y, (void*) yRef, (void*) B, (void*) C, (void*) A,
                 (void*) Dv, (void*) bias, (void*) h0, (void*) ls, (void*) lsRef})
            CK(cudaFree(ptr));
    }
    return 0;
}
