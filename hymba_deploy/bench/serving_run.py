"""`hymba-deploy bench --runtimes cuda`: the serving runtime on our CUDA kernels against the reference, one
JSON report per model (`serving_cuda_<model>.json`, rewritten after every measurement so that a timeout
keeps what ran; `serving_cuda_<model>.md`: its tables).

Sections, in order (`run_cuda`):
1. setup: the GPU, the kernel sources' hash, the copy bandwidth, the weights (random, `--seed`);
2. prefill: batch 1 at each prefill length, the runtime's prefill body (`prefill`) against the model's own
   forward on the same kernels (`prefill_model_forward`); kernel time by category at `prefill_profile`
   (default: the longest length) for both;
3. decode: CUDA graphs at each batch, halving a batch that runs out of memory (the paper's rule), with the
   storage floor; kernel profiles (eager and graphs) at `profile_batches`;
4. ablations at their own batches: decode GEMMs on cuBLAS, uncompiled glue, attention not overlapped,
   time-major K/V, SSM-stream priority off / on;
5. reference (unless `reference=False`): the reference kernels through the model's forward (eager decode,
   prefill) and through the serving runtime's graphs, and optionally the model under torch.compile.
`prefill_only`: sections 1, 2 and the reference prefill.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

from .. import cuda
from ..contract import plugin_sources
from ..errors import HymbaDeployError
from ..kernels import REFERENCE
from ..fileio import atomic_write_json
from . import serving
from .settings import BenchSettings, CudaSections
from .timing import copy_bandwidth, free_cached_memory, halve_on_oom, is_oom

DESCRIPTION = {
    "cache_contents": "random values of the right shapes (no real prefill) for decode",
    "ssm_state_dtype_cuda": "float32 (updated in place by the scan kernel)",
    "cuda_engine": "serving cache + one CUDA graph per step and batch bucket (global-layer attention reads "
                   "its key count on the device; attention on a side stream beside the SSM branch) + "
                   "torch.compile'd elementwise glue; plugin kernels for scan/conv/attention; Triton kernels "
                   "(serving/gemm.py) for x_proj + dt/B/C norms + dt_proj and split-K out_proj/down_proj; in buckets of up to "
                   "gemv_max_rows rows the weight-streaming gemv kernel for every decode GEMM but lm_head (gate_up "
                   "with silu·up in its epilogue)",
    "cuda_prefill": "prefill: the engine's prefill body (packed weights, torch.compile'd glue, plugin kernels over "
                    "the whole prompt, attention on a side stream beside the SSM branch); prefill_model_forward: "
                    "the model's own forward (eager glue) on the same kernels",
    "timing": "CUDA events; decode: mean over steps after warm-up; prefill: median",
}
# Same-run ablations: (report key, runtime options, the CudaSections field holding their batches). The split-K
# ablation (the batch-128 tilings at every batch, as before the gemv kernel) runs only at the batches the gemv
# kernel serves (`_ablation_batches`).
ABLATIONS = (("decode_graphs_cublas_gemms", {"decode_gemms": "cublas"}, "gemm_ablation_batches"),
             ("decode_graphs_splitk_gemms", {"gemv_max_rows": 0}, "gemm_ablation_batches"),
             ("decode_graphs_conv_kernel", {"conv_in_gemv": False}, "gemm_ablation_batches"),
             ("decode_graphs_uncompiled_elementwise", {"compile_elementwise": False}, "uncompiled_batches"),
             ("decode_graphs_no_attention_overlap", {"overlap_attention": False}, "no_overlap_batches"),
             ("decode_graphs_time_major_kv", {"kv_layout": "time_major"}, "no_overlap_batches"),
             ("decode_graphs_no_ssm_stream_priority", {"prioritize_ssm": False}, "no_overlap_batches"),
             ("decode_graphs_ssm_stream_priority", {"prioritize_ssm": True}, "no_overlap_batches"))


def cuda_unavailable() -> str | None:
    """Why the cuda runtime cannot run here, or None."""
    import torch

    return None if torch.cuda.is_available() else "the cuda runtime needs a CUDA GPU"


def report_name(spec: str) -> str:
    """serving_cuda_<model>: the report's file name without suffix (a directory by its last part)."""
    return f"serving_cuda_{Path(spec).name or 'model'}"


class _Report:
    """The JSON report of one run: each measurement is added to a list, logged, and the file rewritten."""

    def __init__(self, path: Path | None, say):
        self.data: dict = {}
        self.path, self.say = path, say

    def add(self, where: list, label: str, row: dict) -> None:
        where.append(row)
        self.say(f"{label} {json.dumps(row)}")
        self.write()

    def write(self) -> None:
        if self.path:
            atomic_write_json(self.path, self.data)


def _or_error(batch: int, fn) -> dict:
    """fn(), or {"batch", "error"} when it raises: one failed measurement is reported, not fatal."""
    try:
        return fn()
    except Exception as e:                                                  # noqa: BLE001 - reported in the row
        free_cached_memory()
        return {"batch": batch, "error": f"{type(e).__name__}: {e}"[:400]}


def _halved(batch: int, fn) -> dict:
    """fn(b) from b = batch, halving on out-of-memory -> the row, with the batches that ran out."""
    got = halve_on_oom(batch, fn)
    return {"requested_batch": batch, "oom_batches": got.oom_batches, **(got.result or {})}


def _runtime(model, max_context: int, buckets, packed=None, **options):
    """A serving runtime for `model`: `ServingRuntime` with `ServingConfig` fields `options`, sharing the packed
    decode weights `packed` of another runtime of the same model when given."""
    from ..serving import ServingConfig, ServingRuntime
    return ServingRuntime(model, ServingConfig(max_context=max_context, buckets=buckets, **options), packed=packed)


def _header(spec: str, s: BenchSettings) -> dict:
    import torch

    root = plugin_sources()
    sources = sorted(root.glob("*/*_kernel*")) + sorted(root.glob("common/*.cuh"))
    return {
        "gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__, "cuda_version": torch.version.cuda,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": spec, "weights": f"random (seed {s.seed}), upstream init", "dtype": s.dtype,
        "context_tokens": s.context, "meta_tokens": None, **DESCRIPTION,
        "plugin_kernel_sources_sha256": hashlib.sha256(b"".join(f.read_bytes() for f in sources)).hexdigest()[:16]}


def run_cuda(spec: str, s: BenchSettings, out: Path | None = None, say=lambda msg: None) -> dict:
    """The cuda runtime's report for MODEL `spec` (`s`: the cuda runtime's settings, `for_runtime("cuda")`);
    written to `out` (JSON) after every measurement when given. HymbaDeployError without a GPU."""
    from ..serving.gemm import load_configs

    reason = cuda_unavailable()
    if reason:
        raise HymbaDeployError(reason)
    c = s.cuda if not s.prefill_only else replace(
        s.cuda, profile_batches=(), uncompiled_batches=(), no_overlap_batches=(), gemm_ablation_batches=(),
        ref_graph_batches=(), compile_reference_batches=())
    rep = _Report(out, say)
    model, bw, wbytes = _setup(rep, spec, s)
    max_context = max([s.context + s.decode_steps + c.eager_steps + 8, *s.prefill_lengths])
    gemm_configs = load_configs(c.gemm_configs) if c.gemm_configs else None
    runtime = _runtime(model, max_context, s.decode_batches or (1,), gemm_configs=gemm_configs)
    rep.data["decode_gemms"] = {"mode": runtime.decode_gemms,
                                "configs": {k: v.as_dict() for k, v in runtime.gemm_configs.items()},
                                "gemv_max_rows": runtime.config.gemv_max_rows,
                                "gemv_configs": {k: v.as_dict() for k, v in runtime.gemv_configs.items()}}
    cuda = rep.data["cuda"] = {"decode": [], "prefill": [], "prefill_model_forward": []}
    _prefill_section(rep, model, runtime, max_context, s, c)
    for b in s.decode_batches:
        row = _halved(b, lambda bb: serving.decode(runtime, bb, s.context, s.decode_steps, c.eager_steps, bw, wbytes))
        rep.add(cuda["decode"], "cuda decode", row)
    for key, graphs in (("profile_eager", False), ("profile_graphs", True)):
        cuda[key] = []
        for b in c.profile_batches:
            rep.add(cuda[key], f"cuda {key}",
                    _or_error(b, lambda: serving.profile_decode(runtime, b, s.context, graphs=graphs)))
    del runtime
    _ablations(rep, model, max_context, s, c, gemm_configs, bw, wbytes)
    if c.reference:
        _reference_section(rep, model, max_context, s, c, bw, wbytes)
    rep.data["complete"] = True
    rep.write()
    return rep.data


def _setup(rep: _Report, spec: str, s: BenchSettings) -> tuple:
    """The report's header; the kernels built (timed), the copy bandwidth measured, the model on the GPU
    -> (model, bandwidth in bytes/s, weight bytes)."""
    from ..checkpoint import parse_dtype
    res = rep.data
    res.update(_header(spec, s))
    t0 = time.perf_counter()
    cuda.load_extension()
    res["extension_build_s"] = time.perf_counter() - t0
    bw = copy_bandwidth()
    res["copy_bandwidth_GBps"] = bw / 1e9
    model = serving.cuda_model(spec, parse_dtype(s.dtype), s.seed)
    res["meta_tokens"] = model.config.num_memory_tokens
    wbytes = res["weight_bytes"] = serving.weight_bytes(model)
    rep.say(f"bw {bw / 1e9:.0f} GB/s, weights {wbytes / 1e9:.2f} GB")
    return model, bw, wbytes


def _prefill_section(rep: _Report, model, runtime, max_context: int, s: BenchSettings, c: CudaSections) -> None:
    """Prefill ms of the runtime's prefill body and of the model's forward; then their kernel profiles."""
    cuda = rep.data["cuda"]
    model_forward = _runtime(model, max_context, (1,), packed=runtime.packed, prefill_impl="model")
    for n in s.prefill_lengths:
        for key, rt in (("prefill", runtime), ("prefill_model_forward", model_forward)):
            rep.add(cuda[key], f"cuda {key}", serving.prefill(rt, n, s.iters))
    cuda["profile_prefill"] = []
    longest = (max(s.prefill_lengths),) if s.prefill_lengths else ()
    lengths = c.prefill_profile if c.prefill_profile is not None else longest
    for n in lengths:
        for rt in (runtime, model_forward):
            rep.add(cuda["profile_prefill"], "cuda profile_prefill",
                    _or_error(1, lambda: serving.profile_prefill(rt, n)))


def _ablations(rep: _Report, model, max_context: int, s: BenchSettings, c: CudaSections, gemm_configs, bw, wbytes):
    """Graph decode with one runtime option changed, at that ablation's batches."""
    for key, options, field in ABLATIONS:
        rep.data["cuda"][key] = []
        batches = _ablation_batches(options, getattr(c, field))
        if not batches:
            continue
        ablated = _runtime(model, max_context, s.decode_batches or (1,), **{"gemm_configs": gemm_configs, **options})
        for b in batches:
            rep.add(rep.data["cuda"][key], f"cuda {key}",
                    _halved(b, lambda bb: serving.decode(ablated, bb, s.context, s.decode_steps, 0, bw, wbytes)))
        del ablated


def _ablation_batches(options: dict, batches: tuple[int, ...]) -> tuple[int, ...]:
    """The batches an ablation changes anything at: all of them, but gemv_max_rows = 0 only those the default
    runtime runs through the gemv kernel."""
    from ..serving import ServingConfig
    if options.get("gemv_max_rows") == 0 or options.get("conv_in_gemv") is False:
        return tuple(b for b in batches if b <= ServingConfig.gemv_max_rows)
    return batches


def _reference_section(rep: _Report, model, max_context: int, s: BenchSettings, c: CudaSections, bw, wbytes):
    """The reference kernels: the model's forward (prefill through a serving cache, eager decode over the
    dynamic cache), the serving runtime's graphs over them, and the model under torch.compile."""
    cuda_kernels = model.kernels
    model.use_kernels(REFERENCE)
    ref = rep.data["reference"] = {"decode_eager": [], "decode_engine_graphs": [], "prefill": []}
    runtime = _runtime(model, max_context, s.decode_batches or (1,), ssm_state_dtype=model.dtype,
                       decode_gemms="cublas", prefill_impl="model")
    for n in s.prefill_lengths:
        try:
            r = serving.prefill(runtime, n, 1)
        except Exception as e:                                              # noqa: BLE001 - filtered by is_oom
            if not is_oom(e):
                raise
            r = {"tokens": n, "error": "out of memory"}
            free_cached_memory()
        rep.add(ref["prefill"], "reference prefill", r)
    for b in s.decode_batches:
        rep.add(ref["decode_eager"], "reference decode eager",
                _halved(b, lambda bb: serving.decode_reference_eager(model, bb, s.context, c.ref_steps)))
    for b in c.ref_graph_batches:
        rep.add(ref["decode_engine_graphs"], "reference engine+graphs",
                _or_error(b, lambda: serving.decode(runtime, b, s.context, s.decode_steps, 0, bw, wbytes)))
    ref["decode_engine_graphs_note"] = (
        "the serving engine (preallocated cache, CUDA graphs, torch.compile'd elementwise glue) over the "
        "reference PyTorch ops, SSM state in the model dtype")
    ref["torch_compile_whole_model"] = []
    for b in c.compile_reference_batches:
        rep.say(f"reference torch.compile decode, batch {b}: compiling")
        rep.add(ref["torch_compile_whole_model"], "reference torch.compile decode",
                _or_error(b, lambda: serving.decode_reference_compiled(model, b, s.context, c.ref_steps)))
    model.use_kernels(cuda_kernels)
