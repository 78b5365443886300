"""Device kernel time by category under torch.profiler, for the cuda runtime's decode steps and prefills.

Kernel name fragments by category (first match wins: the plugin kernels by name or by their namespace in
plugins/<op>/*.cuh); kernels matching none are "other elementwise" (eager PyTorch: copies, casts, norms).
Glue = the two elementwise categories.
"""

from __future__ import annotations

CATEGORIES = (("attention (plugin kernel)", ("windowedAttention", "wak::", "wad::", "wam::", "wap::")),
              ("scan (plugin kernel)", ("selectiveScan", "ssk::", "ssst::", "sscc::")),
              ("conv (plugin kernel)", ("causalConv1d", "cck::")),
              ("matmul", ("gemm", "gemv", "cutlass", "xmma", "cublas", "splitK", "Kernel2", "nvjet",
                          "_splitk_kernel", "_ssm_inputs_kernel")),
              ("fused elementwise (triton)", ("triton",)))
GLUE = ("fused elementwise (triton)", "other elementwise")


def category(kernel: str) -> str:
    """The category (`CATEGORIES`) of a kernel by its name."""
    return next((c for c, keys in CATEGORIES if any(k in kernel for k in keys)), "other elementwise")


def by_category(prof, reps: int, per: str) -> dict:
    """A torch.profiler run of `reps` repetitions of a `per` ("step", "prefill") -> device kernel time per
    repetition by category (`CATEGORIES`), the glue's sum, and the top kernels."""
    us_key, n_key = f"us_per_{per}", f"kernels_per_{per}"
    cats: dict = {}
    kernels = []
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if not us:
            continue
        entry = cats.setdefault(category(evt.key), {us_key: 0.0, n_key: 0.0})
        entry[us_key] += us / reps
        entry[n_key] += evt.count / reps
        kernels.append((us / reps, evt.count / reps, evt.key[:120]))
    kernels.sort(reverse=True)
    return {"by_category": cats, f"glue_{us_key}": sum(cats[c][us_key] for c in GLUE if c in cats),
            f"total_kernel_{us_key}": sum(c[us_key] for c in cats.values()),
            "top_kernels": [{us_key: a, f"calls_per_{per}": b, "name": c} for a, b, c in kernels[:24]]}


def profiled(fn, reps: int, per: str) -> dict:
    """fn() once untimed, then `reps` times under torch.profiler (CUDA activity) -> `by_category`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return by_category(prof, reps, per)
