// Times the SelectiveScan prefill kernels of one source tree on fixed inputs (bf16, D 3200, N 16): the sequential
// kernel (ssk) and the chunked kernel (sscc), each launched through its own launcher. Build it once against this
// checkout's headers and once against another commit's (same inputs: the values are a hash of the index), run
// both in one session, and compare: an A/B of two versions of a kernel that the library can hold only one of.
//
//   git archive <commit> plugins/selective_scan plugins/common | tar -x -C /tmp/old
//   nvcc -std=c++17 -O3 -arch=sm_90 -I plugins -I .trt/include tools/scan_prefill_ab.cu -o build/scan_ab_new
//   nvcc -std=c++17 -O3 -arch=sm_90 -I /tmp/old/plugins -I .trt/include tools/scan_prefill_ab.cu -o build/scan_ab_old
//   build/scan_ab_new LABEL [B:T:reps ...]   # a JSON line per (shape, kernel): median ms, y and last_state sums
//
// The checksums (sums of y and of last_state over the whole output) say whether two builds computed the same
// function; correctness against a float64 reference is plugins/tests/scan_chunked_bench.py's and tests/gpu's job.
#include "selective_scan/selective_scan_prefill.cuh"
#include "scan_tool_common.cuh"

using namespace hymba;
using namespace scantool;
using bf16 = __nv_bfloat16;

int main(int argc, char** argv)
{
    char const* label = argc > 1 ? argv[1] : "build";
    std::vector<int> const shapes = parseShapes(argc, argv, 2, {128, 8320, 5, 16, 2048, 10, 1, 8320, 20});
    int numSms = 0;
    CK(currentSmCount(numSms));
    cudaDeviceProp prop{};
    CK(cudaGetDeviceProperties(&prop, 0));
    int const D = 3200, N = 16;
    double* dsum = nullptr;
    CK(cudaMalloc(&dsum, sizeof(double)));
    for (size_t si = 0; si < shapes.size(); si += 3)
    {
        int const Bt = shapes[si], T = shapes[si + 1], reps = shapes[si + 2];
        Inputs const in(Bt, T, D, N);
        struct Kernel
        {
            char const* name;
            cudaError_t (*fn)(SelectiveScanParams const&, int);
        };
        Kernel const kernels[] = {
            {"sequential",
                [](SelectiveScanParams const& q, int) { return ssk::launchWithState<bf16, 16, true>(q, nullptr); }},
            {"chunked",
                [](SelectiveScanParams const& q, int sms) { return sscc::launchT<bf16, 16, true>(q, sms, nullptr); }},
#ifdef SCAN_AB_SEQ_BLOCKS5 // a variant of a tree whose sequential kernel takes kMinBlocks (registers capped for 5)
            {"sequential_blocks5", [](SelectiveScanParams const& q, int) {
                 dim3 const grid((q.dim + ssk::kThreads - 1) / ssk::kThreads, q.batch);
                 ssk::selectiveScanKernel<bf16, 16, true, 5><<<grid, ssk::kThreads>>>(q);
                 return cudaGetLastError();
             }},
#endif
        };
        for (auto const& k : kernels)
        {
            in.poison(); // NaN: an unwritten element shows in the checksum
            float const ms = medianMs([&] { return k.fn(in.p, numSms); }, reps);
            double const ySum = sum(in.y, in.nx, dsum), lsSum = sum(in.ls, in.ns, dsum);
            double const exps = double(Bt) * T * D * N;
            std::printf("{\"label\": \"%s\", \"gpu\": \"%s\", \"B\": %d, \"T\": %d, \"D\": %d, \"N\": %d, "
                        "\"dtype\": \"bfloat16\", \"kernel\": \"%s\", \"median_ms\": %.5f, \"reps\": %d, "
                        "\"state_exps_per_s\": %.4e, \"y_sum\": %.9e, \"last_state_sum\": %.9e}\n",
                label, prop.name, Bt, T, D, N, k.name, ms, reps, exps / (ms * 1e-3), ySum, lsSum);
            std::fflush(stdout);
        }
    }
    CK(cudaFree(dsum));
    return 0;
}
