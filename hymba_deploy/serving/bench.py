"""`hymba-deploy bench --backend cuda`: prefill latency and decode throughput at the paper's setup.

    PYTHONPATH=. python3 -m hymba_deploy.serving.bench --out bench.json
        [--model hymba-1.5b] [--dtype bfloat16] [--context 8192] [--batches 1,8,32,128]
        [--prefill 1024,4096,8192] [--prefill-profile N,...] [--prefill-only] [--steps 32] [--no-reference]
        [--ref-steps 3]

Decode: `context` text tokens already in the cache (plus the 128 meta tokens), then `steps` decode steps
of the serving engine with CUDA graphs (and a few eager steps for comparison). The cache is filled with
random values of the right shapes instead of a real batch-128 × 8k prefill (`cache_contents` in the
JSON says so). A batch that runs out of memory is halved until it fits (the paper's rule).
Prefill: batch 1 into the serving cache, at each length in `--prefill`: the engine's prefill body, and the
model's own forward (eager glue, `prefill_impl="model"`) as the baseline; kernel time by category under the
torch profiler for both at the longest length (or `--prefill-profile`). `--prefill-only`: nothing else.
Floor: (weight bytes + cache bytes read per step) / measured copy bandwidth (read + write bytes / time).
Reference backend (same run, same process): the model's own forward with the dynamic reference cache and
the PyTorch ops, eager; plus the serving engine with CUDA graphs over the reference ops.
Timing: CUDA events around many steps after warm-up; medians for prefill.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ..errors import HymbaDeployError


def _events_ms(fn, reps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device copy bandwidth in bytes/s, counting read + write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = _events_ms(lambda: dst.copy_(src), reps)
    del src, dst
    return 2 * nbytes / (ms / 1e3)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _or_error(batch: int, fn) -> dict:
    """fn(), or {"batch", "error"} when it raises: one failed measurement is reported, not fatal."""
    try:
        return fn()
    except Exception as e:
        torch.cuda.empty_cache()
        return {"batch": batch, "error": f"{type(e).__name__}: {e}"[:400]}


def _oom_halving(batch: int, fn):
    """Run fn(b) from b = batch, halving on CUDA out-of-memory; returns (b, result, oom_batches)."""
    ooms = []
    b = batch
    while b >= 1:
        try:
            return b, fn(b), ooms
        except torch.OutOfMemoryError:
            ooms.append(b)
            torch.cuda.empty_cache()
            b //= 2
    return 0, None, ooms


def decode_cuda(engine, batch: int, context: int, steps: int, eager_steps: int, floor_bw: float, wbytes: int):
    from ..cache import HybridMambaAttentionDynamicCache

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    cache = engine.cache(batch)
    try:
        engine.capture(batch)
        cache.fill_random(context, torch.Generator(device="cuda").manual_seed(batch))
        token = torch.randint(3, engine.config.vocab_size, (batch, 1), device="cuda")
        for _ in range(3):
            engine.decode(cache, token)
        cache.set_length(context)
        ms = _events_ms(lambda: engine.decode(cache, token), steps)
        cache.set_length(context)
        ms_eager = _events_ms(lambda: engine.decode_eager(cache, token), eager_steps) if eager_steps else None
        peak = torch.cuda.max_memory_allocated()
        nominal_cache = HybridMambaAttentionDynamicCache.size_bytes(engine.config, context, engine.dtype, batch)
        read = cache.nbytes_read_per_step(context)
        floor_ms = (wbytes + read) / floor_bw * 1e3
        return {
            "batch": batch, "ms_per_step": ms, "tokens_per_s": batch / (ms / 1e3),
            "eager_ms_per_step": ms_eager,
            "eager_tokens_per_s": None if ms_eager is None else batch / (ms_eager / 1e3),
            "graph_segments": len(engine.graphs[batch].graphs),
            "peak_memory_bytes": peak,
            "cache_bytes_allocated": cache.nbytes(), "cache_bytes_read_per_step": read,
            "cache_bytes_nominal": nominal_cache,
            "decode_floor_ms": floor_ms, "fraction_of_floor": floor_ms / ms,
            "decode_floor_nominal_cache_ms": (wbytes + nominal_cache) / floor_bw * 1e3,
            "fraction_of_floor_nominal_cache": (wbytes + nominal_cache) / floor_bw * 1e3 / ms,
        }
    finally:
        engine.release(batch)
        torch.cuda.empty_cache()


# Kernel name fragments by category (first match wins: the plugin kernels by name or by their namespace in
# plugins/<op>/*.cuh); kernels matching none are "other elementwise" (eager PyTorch: copies, casts, norms).
# Glue = the two elementwise categories.
_CATEGORIES = (("attention (plugin kernel)", ("windowedAttention", "wak::", "wad::", "wam::", "wap::")),
               ("scan (plugin kernel)", ("selectiveScan", "ssk::", "ssst::")),
               ("conv (plugin kernel)", ("causalConv1d", "cck::")),
               ("matmul", ("gemm", "gemv", "cutlass", "xmma", "cublas", "splitK", "Kernel2", "nvjet",
                           "_splitk_kernel", "_ssm_inputs_kernel")),
               ("fused elementwise (triton)", ("triton",)))
_GLUE = ("fused elementwise (triton)", "other elementwise")


def _by_category(prof, reps: int, per: str) -> dict:
    """A torch.profiler run of `reps` repetitions of a `per` ("step", "prefill") -> device kernel time per
    repetition by category (`_CATEGORIES`), the glue's sum, and the top kernels."""
    us_key, n_key = f"us_per_{per}", f"kernels_per_{per}"
    cats: dict = {}
    kernels = []
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if not us:
            continue
        name = evt.key
        cat = next((c for c, keys in _CATEGORIES if any(k in name for k in keys)), "other elementwise")
        entry = cats.setdefault(cat, {us_key: 0.0, n_key: 0.0})
        entry[us_key] += us / reps
        entry[n_key] += evt.count / reps
        kernels.append((us / reps, evt.count / reps, name[:120]))
    kernels.sort(reverse=True)
    return {"by_category": cats, f"glue_{us_key}": sum(cats[c][us_key] for c in _GLUE if c in cats),
            f"total_kernel_{us_key}": sum(c[us_key] for c in cats.values()),
            "top_kernels": [{us_key: a, f"calls_per_{per}": b, "name": c} for a, b, c in kernels[:24]]}


def profile_decode(engine, batch: int, context: int, steps: int = 3, graphs: bool = False) -> dict:
    """Kernel time per decode step by category under torch.profiler: eager steps, or (graphs=True) the
    captured graph replays that the benchmark times."""
    from torch.profiler import ProfilerActivity, profile

    cache = engine.cache(batch)
    try:
        if graphs:
            engine.capture(batch)
        cache.fill_random(context, torch.Generator(device="cuda").manual_seed(1))
        token = torch.randint(3, engine.config.vocab_size, (batch, 1), device="cuda")
        step = engine.decode if graphs else engine.decode_eager
        step(cache, token)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step(cache, token)
            torch.cuda.synchronize()
        return {"batch": batch, "context": context, "graphs": graphs, **_by_category(prof, steps, "step")}
    finally:
        engine.release(batch)
        torch.cuda.empty_cache()


def profile_prefill(engine, n: int, reps: int = 2) -> dict:
    """Kernel time per batch-1 prefill of n tokens by category under torch.profiler (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    cache = engine.cache(1)
    ids = torch.randint(3, engine.config.vocab_size, (1, n), device="cuda")
    try:
        engine.prefill(ids, cache)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                engine.prefill(ids, cache)
            torch.cuda.synchronize()
        return {"tokens": n, "prefill_impl": engine.prefill_impl, **_by_category(prof, reps, "prefill")}
    finally:
        engine.release(1)
        torch.cuda.empty_cache()


def random_dynamic_cache(model, batch: int, context: int, generator):
    """The reference runtime's cache after `context` tokens, filled with random values."""
    cfg = model.config
    cache = model.new_cache(batch)
    meta = cfg.num_memory_tokens
    Hkv, dqk, dv = cfg.num_key_value_heads, cfg.qk_head_dim, cfg.v_dim
    kw = dict(dtype=model.dtype, device=model.device)
    for i in range(cfg.num_hidden_layers):
        if cfg.is_producer(i):
            keep = cache.keep(i)
            S = meta + (context if keep is None else min(context, keep))
            cache.key_cache[i] = torch.randn(batch, S, Hkv, dqk, generator=generator, **kw)
            cache.value_cache[i] = torch.randn(batch, S, Hkv, dv, generator=generator, **kw)
        cache.conv_states[i] = torch.randn(batch, cfg.d_inner, cfg.mamba_d_conv, generator=generator, **kw)
        cache.ssm_states[i] = 0.1 * torch.randn(batch, cfg.d_inner, cfg.mamba_d_state, generator=generator, **kw)
    cache.seen_tokens = meta + context
    return cache


def decode_reference_eager(model, batch: int, context: int, steps: int):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    cache = random_dynamic_cache(model, batch, context, torch.Generator(device="cuda").manual_seed(batch))
    token = torch.randint(3, model.config.vocab_size, (batch, 1), device="cuda")
    try:
        with torch.no_grad():
            model(token, cache)                                             # warm-up
            ms = _events_ms(lambda: model(token, cache), steps)
        return {"batch": batch, "ms_per_step": ms, "tokens_per_s": batch / (ms / 1e3),
                "peak_memory_bytes": torch.cuda.max_memory_allocated()}
    finally:
        del cache
        torch.cuda.empty_cache()


def decode_reference_compiled(model, batch: int, context: int, steps: int, warmup: int = 3) -> dict:
    """The reference model under `torch.compile` (default mode), decode over the dynamic cache: compile and
    recompile time (the cache grows a key per step, so the first steps trace again) and ms per step after."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()
    compiled = torch.compile(model)
    cache = random_dynamic_cache(model, batch, context, torch.Generator(device="cuda").manual_seed(batch))
    token = torch.randint(3, model.config.vocab_size, (batch, 1), device="cuda")
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(warmup):
                compiled(token, cache)
            torch.cuda.synchronize()
            warm_s = time.perf_counter() - t0
            ms = _events_ms(lambda: compiled(token, cache), steps)
        return {"batch": batch, "ms_per_step": ms, "tokens_per_s": batch / (ms / 1e3),
                "compile_and_warmup_s": warm_s, "warmup_steps": warmup,
                "peak_memory_bytes": torch.cuda.max_memory_allocated()}
    finally:
        del cache, compiled
        torch._dynamo.reset()
        torch.cuda.empty_cache()


def prefill_ms(engine, n: int, reps: int) -> dict:
    """Median of `reps` timed batch-1 prefills of n random tokens, after one warm-up."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    cache = engine.cache(1)
    ids = torch.randint(3, engine.config.vocab_size, (1, n), device="cuda")
    try:
        engine.prefill(ids, cache)                                          # warm-up
        times = sorted(_events_ms(lambda: engine.prefill(ids, cache), 1) for _ in range(reps))
        return {"tokens": n, "prefill_impl": engine.prefill_impl, "ms": times[len(times) // 2], "all_ms": times,
                "peak_memory_bytes": torch.cuda.max_memory_allocated()}
    finally:
        engine.release(1)
        torch.cuda.empty_cache()


def run(model_spec: str = "hymba-1.5b", dtype: str = "bfloat16", context: int = 8192,
        batches=(1, 8, 32, 128), prefill=(1024, 4096, 8192), steps: int = 32, eager_steps: int = 4,
        reference: bool = True, ref_steps: int = 3, ref_graph_batches=(1, 8), seed: int = 0,
        log=print, out: str | None = None, uncompiled_batches=(1, 128), profile_batches=(1, 128),
        no_overlap_batches=(1, 128), compile_reference_batches=(), gemm_ablation_batches=(1, 8, 32, 128),
        gemm_configs: dict | None = None, prefill_profile=None, prefill_only: bool = False) -> dict:
    if not torch.cuda.is_available():
        raise HymbaDeployError("bench --backend cuda needs a CUDA GPU")
    from .. import cuda as backend
    from ..checkpoint import parse_dtype
    from .engine import HymbaServingEngine
    from ..checkpoint import random_model

    torch_dtype = parse_dtype(dtype)

    def dump():                                                             # partial results survive a timeout
        if out:
            with open(out + ".tmp", "w") as f:
                json.dump(res, f, indent=2)
            os.replace(out + ".tmp", out)

    res: dict = {
        "gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__, "cuda_version": torch.version.cuda,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model_spec, "weights": f"random (seed {seed}), upstream init", "dtype": dtype,
        "context_tokens": context, "meta_tokens": None,
        "cache_contents": "random values of the right shapes (no real prefill) for decode",
        "ssm_state_dtype_cuda": "float32 (updated in place by the scan kernel)",
        "cuda_engine": "serving cache + one CUDA graph per step and batch bucket (global-layer attention reads "
                       "its key count on the device; attention on a side stream beside the SSM branch) + "
                       "torch.compile'd elementwise glue; plugin kernels for scan/conv/attention; Triton kernels "
                       "(serving/gemm.py) for x_proj + dt/B/C norms + dt_proj and split-K out_proj/down_proj",
        "cuda_prefill": "prefill: the engine's prefill body (packed weights, torch.compile'd glue, plugin kernels over "
                        "the whole prompt, attention on a side stream beside the SSM branch); prefill_model_forward: "
                        "the model's own forward (eager glue) on the same kernels",
        "timing": "CUDA events; decode: mean over steps after warm-up; prefill: median",
    }
    import hashlib

    res["plugin_kernel_sources_sha256"] = hashlib.sha256(
        b"".join(f.read_bytes() for f in sorted(backend.PLUGINS_DIR.glob("*/*_kernel*"))
                 + sorted(backend.PLUGINS_DIR.glob("common/*.cuh")))).hexdigest()[:16]
    t0 = time.perf_counter()
    backend.set_backend("cuda")
    res["extension_build_s"] = time.perf_counter() - t0
    bw = copy_bandwidth()
    res["copy_bandwidth_GBps"] = bw / 1e9
    model = random_model(model_spec, torch_dtype, "cuda", seed)
    model.backend = "cuda"
    res["meta_tokens"] = model.config.num_memory_tokens
    wbytes = weight_bytes(model)
    res["weight_bytes"] = wbytes
    log(f"bw {bw / 1e9:.0f} GB/s, weights {wbytes / 1e9:.2f} GB", flush=True)

    max_context = max([context + steps + eager_steps + 8, *prefill])
    engine = HymbaServingEngine(model, max_context=max_context, buckets=batches, gemm_configs=gemm_configs)
    res["decode_gemms"] = {"mode": engine.decode_gemms,
                           "configs": {k: c.as_dict() for k, c in engine.gemm_configs.items()}}
    res["cuda"] = {"decode": [], "prefill": [], "prefill_model_forward": []}
    model_prefill = HymbaServingEngine(model, max_context=max_context, buckets=(1,), prefill_impl="model")
    for n in prefill:
        for key, eng in (("prefill", engine), ("prefill_model_forward", model_prefill)):
            r = prefill_ms(eng, n, 3)
            res["cuda"][key].append(r)
            log(f"cuda {key}", json.dumps(r), flush=True)
            dump()
    res["cuda"]["profile_prefill"] = []
    for n in (prefill_profile if prefill_profile is not None else [max(prefill)] if prefill else []):
        for eng in (engine, model_prefill):
            r = _or_error(1, lambda: profile_prefill(eng, n))
            res["cuda"]["profile_prefill"].append(r)
            log("cuda profile_prefill", json.dumps(r), flush=True)
            dump()
    del model_prefill
    if prefill_only:
        batches = uncompiled_batches = profile_batches = no_overlap_batches = gemm_ablation_batches = ()
        ref_graph_batches = compile_reference_batches = ()
    for b in batches:
        got, r, ooms = _oom_halving(b, lambda bb: decode_cuda(engine, bb, context, steps, eager_steps, bw, wbytes))
        entry = {"requested_batch": b, "oom_batches": ooms, **(r or {})}
        res["cuda"]["decode"].append(entry)
        log("cuda decode", json.dumps(entry), flush=True)
        dump()
    for key, graphs in (("profile_eager", False), ("profile_graphs", True)):
        res["cuda"][key] = []
        for b in profile_batches:
            r = _or_error(b, lambda: profile_decode(engine, b, context, graphs=graphs))
            res["cuda"][key].append(r)
            log(f"cuda {key}", json.dumps(r), flush=True)
            dump()
    # Ablations, same run: graphs without the compiled elementwise glue; SWA attention not overlapped;
    # K/V cache stored time-major; SSM-branch stream priority forced off / on (default: by batch); the decode
    # GEMMs on cuBLAS + compiled glue / on the gemm.py kernels (the default where triton runs).
    for key, kw, ablation_batches in (
            ("decode_graphs_cublas_gemms", dict(decode_gemms="cublas"), gemm_ablation_batches),
            ("decode_graphs_uncompiled_elementwise", dict(compile_elementwise=False), uncompiled_batches),
            ("decode_graphs_no_attention_overlap", dict(overlap_attention=False), no_overlap_batches),
            ("decode_graphs_time_major_kv", dict(kv_layout="time_major"), no_overlap_batches),
            ("decode_graphs_no_ssm_stream_priority", dict(prioritize_ssm=False), no_overlap_batches),
            ("decode_graphs_ssm_stream_priority", dict(prioritize_ssm=True), no_overlap_batches)):
        res["cuda"][key] = []
        if not ablation_batches:
            continue
        ablated = HymbaServingEngine(model, max_context=max_context, buckets=batches,
                                     **{"gemm_configs": gemm_configs, **kw})
        for b in ablation_batches:
            got, r, ooms = _oom_halving(b, lambda bb: decode_cuda(ablated, bb, context, steps, 0, bw, wbytes))
            entry = {"requested_batch": b, "oom_batches": ooms, **(r or {})}
            res["cuda"][key].append(entry)
            log(f"cuda {key}", json.dumps(entry), flush=True)
            dump()
        del ablated

    if reference:
        backend.set_backend("reference")
        model.backend = "reference"
        res["reference"] = {"decode_eager": [], "decode_engine_graphs": [], "prefill": []}
        ref_engine = HymbaServingEngine(model, max_context=max_context, buckets=batches, backend="reference",
                                        ssm_state_dtype=torch_dtype, decode_gemms="cublas", prefill_impl="model")
        for n in prefill:
            try:
                r = prefill_ms(ref_engine, n, 1)
            except torch.OutOfMemoryError:
                r = {"tokens": n, "error": "out of memory"}
                torch.cuda.empty_cache()
            res["reference"]["prefill"].append(r)
            log("reference prefill", json.dumps(r), flush=True)
            dump()
        for b in batches:
            got, r, ooms = _oom_halving(b, lambda bb: decode_reference_eager(model, bb, context, ref_steps))
            entry = {"requested_batch": b, "oom_batches": ooms, **(r or {})}
            res["reference"]["decode_eager"].append(entry)
            log("reference decode eager", json.dumps(entry), flush=True)
            dump()
        for b in ref_graph_batches:
            r = _or_error(b, lambda: decode_cuda(ref_engine, b, context, steps, 0, bw, wbytes))
            res["reference"]["decode_engine_graphs"].append(r)
            log("reference engine+graphs", json.dumps(r), flush=True)
            dump()
        res["reference"]["decode_engine_graphs_note"] = (
            "the serving engine (preallocated cache, CUDA graphs, torch.compile'd elementwise glue) over the "
            "reference PyTorch ops, SSM state in the model dtype")
        res["reference"]["torch_compile_whole_model"] = []
        for b in compile_reference_batches:
            log(f"reference torch.compile decode, batch {b}: compiling", flush=True)
            r = _or_error(b, lambda: decode_reference_compiled(model, b, context, ref_steps))
            res["reference"]["torch_compile_whole_model"].append(r)
            log("reference torch.compile decode", json.dumps(r), flush=True)
            dump()
        backend.set_backend("cuda")
    res["complete"] = True
    dump()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Hymba serving benchmark (cuda backend vs reference)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--model", default="hymba-1.5b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--prefill", default="1024,4096,8192")
    ap.add_argument("--prefill-profile", default=None,
                    help="profile the prefill (engine and model forward) by kernel category at these lengths "
                         "(default: the longest --prefill length; empty: none)")
    ap.add_argument("--prefill-only", action="store_true", help="measure the prefill only (no decode, no ablations)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--eager-steps", type=int, default=4)
    ap.add_argument("--ref-steps", type=int, default=3)
    ap.add_argument("--ref-graph-batches", default="1,8")
    ap.add_argument("--uncompiled-batches", default="1,128")
    ap.add_argument("--profile-batches", default="1,128")
    ap.add_argument("--no-overlap-batches", default="1,128",
                    help="also time these batches with SWA attention on the main stream and with a time-major "
                         "K/V cache (ablations)")
    ap.add_argument("--gemm-ablation-batches", default="1,8,32,128",
                    help="also time these batches with the decode GEMMs on cuBLAS instead of the Triton kernels")
    ap.add_argument("--gemm-configs", default=None,
                    help="JSON file of Triton GEMM tilings by name (gemm_bench --best-out), instead of the defaults")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--compile-reference-batches", default="",
                    help="also time the reference model under torch.compile at these batches (compiles for minutes)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from .gemm import load_configs

    ints = lambda s: tuple(int(x) for x in s.split(",") if x)  # noqa: E731
    try:
        res = run(args.model, args.dtype, args.context, ints(args.batches), ints(args.prefill), args.steps,
                  args.eager_steps, not args.no_reference, args.ref_steps, ints(args.ref_graph_batches), args.seed,
                  out=args.out, uncompiled_batches=ints(args.uncompiled_batches),
                  profile_batches=ints(args.profile_batches), no_overlap_batches=ints(args.no_overlap_batches),
                  compile_reference_batches=ints(args.compile_reference_batches),
                  gemm_ablation_batches=ints(args.gemm_ablation_batches),
                  gemm_configs=load_configs(args.gemm_configs) if args.gemm_configs else None,
                  prefill_profile=None if args.prefill_profile is None else ints(args.prefill_profile),
                  prefill_only=args.prefill_only)
    except HymbaDeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
