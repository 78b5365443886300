"""The cuda runtime's measurements: one serving runtime (`ServingRuntime`) at a time, on the GPU.

- `decode`: `steps` decode steps replayed as CUDA graphs over `context` tokens of random cache contents
  (`HymbaServingCache.fill_random`), plus a few eager steps; ms per step and the storage floor:
  (weight bytes + cache bytes read per step) / measured copy bandwidth (`timing.floor_ms`).
- `prefill`: the median of timed batch-1 prefills of n random tokens.
- `profile_decode`, `profile_prefill`: device kernel time by category (`profile.by_category`).
- `decode_reference_eager`, `decode_reference_compiled`: the reference model's own forward over the
  dynamic reference cache (eager, or under torch.compile), the baselines of the serving runtime.

Timing: CUDA events around many steps after warm-up (decode: mean; prefill: median). Every function
releases the cache bucket it used and the allocator's free blocks before it returns.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

from .profile import profiled
from .states import synthetic_cache
from .timing import events_ms, floor_ms, free_cached_memory

DECODE_WARMUP = 3       # decode steps before the timed ones
PREFILL_WARMUP = 1


def cuda_model(spec: str, dtype, seed: int = 0):
    """Preset `spec` with random weights (`seed`, upstream's init) built on the GPU in `dtype` (a
    torch.dtype), running the plugin kernels (`cuda.kernel_backend("cuda")`, built on first use)."""
    from .. import cuda
    from ..checkpoint import random_model
    return random_model(spec, dtype, "cuda", seed).use_kernels(cuda.kernel_backend("cuda"))


def weight_bytes(model) -> int:
    """Bytes of the model's parameters (each read once per decode step)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _fresh_peak() -> None:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()


@contextmanager
def _bucket(runtime, batch: int, graphs: bool = False):
    """The runtime's cache of `batch` rows (its decode step captured first when `graphs`), released after."""
    cache = runtime.cache(batch)
    try:
        graph = runtime.capture(batch) if graphs else None
        yield cache, graph
    finally:
        runtime.release(batch)
        free_cached_memory()


def _decode_inputs(runtime, cache, batch: int, context: int, seed: int):
    """Fill `cache` with `context` tokens of random contents -> a random token per row (batch, 1)."""
    import torch

    cache.fill_random(context, torch.Generator(device=runtime.device).manual_seed(seed))
    return torch.randint(3, runtime.model_config.vocab_size, (batch, 1), device=runtime.device)


def decode(runtime, batch: int, context: int, steps: int, eager_steps: int, bandwidth: float, wbytes: int) -> dict:
    """ms per decode step (CUDA graphs; `eager_steps` > 0: eager too) at `batch` over `context` tokens, with
    memory figures and the storage floor at `bandwidth` bytes/s for `wbytes` weight bytes."""
    import torch

    from ..cache import HybridMambaAttentionDynamicCache

    _fresh_peak()
    with _bucket(runtime, batch, graphs=True) as (cache, graph):
        token = _decode_inputs(runtime, cache, batch, context, seed=batch)
        for _ in range(DECODE_WARMUP):
            runtime.decode(cache, token)
        cache.set_length(context)
        ms = events_ms(lambda: runtime.decode(cache, token), steps)
        cache.set_length(context)
        ms_eager = events_ms(lambda: runtime.decode_eager(cache, token), eager_steps) if eager_steps else None
        peak = _peak()
        nominal = HybridMambaAttentionDynamicCache.size_bytes(runtime.model_config, context, runtime.dtype, batch)
        read = cache.nbytes_read_per_step(context)
        floor = floor_ms(wbytes + read, bandwidth)
        item = torch.empty((), dtype=runtime.dtype).element_size()
        layer_floor = floor_ms(wbytes + per_layer_bytes(runtime.model_config, batch, context, item), bandwidth)
        return {
            "batch": batch, "ms_per_step": ms, "tokens_per_s": batch / (ms / 1e3),
            "eager_ms_per_step": ms_eager,
            "eager_tokens_per_s": None if ms_eager is None else batch / (ms_eager / 1e3),
            "graph_segments": len(graph.graphs),
            "peak_memory_bytes": peak,
            "cache_bytes_allocated": cache.nbytes(), "cache_bytes_read_per_step": read,
            "cache_bytes_nominal": nominal,
            "decode_floor_ms": floor, "fraction_of_floor": floor / ms,
            "per_layer_floor_ms": layer_floor, "fraction_of_per_layer_floor": layer_floor / ms,
            "decode_floor_nominal_cache_ms": floor_ms(wbytes + nominal, bandwidth),
            "fraction_of_floor_nominal_cache": floor_ms(wbytes + nominal, bandwidth) / ms,
        }


def per_layer_bytes(config, batch: int, context: int, item: int) -> int:
    """Bytes beyond the weights that a decode step at `batch` rows over `context` text tokens must move, layer by
    layer (issue 15's per-layer floor): every layer reads the K/V it attends over (meta + context keys on a global
    layer, meta + window on an SWA layer; a consumer of a KV-sharing group reads its producer's cache again), and
    reads and writes its SSM state in fp32 and its conv state in the model dtype (`item` bytes per element)."""
    from ..cache import HybridMambaAttentionDynamicCache as Cache
    total = 0
    for layer in range(config.num_hidden_layers):
        keys = Cache.attended_keys(config, layer, context)
        total += sum(math.prod(Cache.state_shape(config, kind, batch, keys)) for kind in ("key", "value")) * item
        total += 2 * math.prod(Cache.state_shape(config, "ssm_state", batch)) * 4
        total += 2 * math.prod(Cache.state_shape(config, "conv_state", batch)) * item
    return total


def _peak() -> int:
    import torch

    return torch.cuda.max_memory_allocated()


def prefill(runtime, n: int, reps: int) -> dict:
    """Median of `reps` timed batch-1 prefills of n random tokens, after `PREFILL_WARMUP`."""
    import torch

    _fresh_peak()
    with _bucket(runtime, 1) as (cache, _):
        ids = torch.randint(3, runtime.model_config.vocab_size, (1, n), device=runtime.device)
        for _ in range(PREFILL_WARMUP):
            runtime.prefill(ids, cache)
        times = sorted(events_ms(lambda: runtime.prefill(ids, cache), 1) for _ in range(reps))
        return {"tokens": n, "prefill_impl": runtime.config.prefill_impl, "ms": times[len(times) // 2], "all_ms": times,
                "peak_memory_bytes": _peak()}


def profile_decode(runtime, batch: int, context: int, steps: int = 3, graphs: bool = False) -> dict:
    """Kernel time per decode step by category under torch.profiler: eager steps, or (graphs=True) the
    captured graph replays that `decode` times."""
    with _bucket(runtime, batch, graphs=graphs) as (cache, _):
        token = _decode_inputs(runtime, cache, batch, context, seed=1)
        step = runtime.decode if graphs else runtime.decode_eager
        return {"batch": batch, "context": context, "graphs": graphs,
                **profiled(lambda: step(cache, token), steps, "step")}


def profile_prefill(runtime, n: int, reps: int = 2) -> dict:
    """Kernel time per batch-1 prefill of n tokens by category under torch.profiler (after a warm-up)."""
    import torch

    with _bucket(runtime, 1) as (cache, _):
        ids = torch.randint(3, runtime.model_config.vocab_size, (1, n), device=runtime.device)
        return {"tokens": n, "prefill_impl": runtime.config.prefill_impl,
                **profiled(lambda: runtime.prefill(ids, cache), reps, "prefill")}


@contextmanager
def _reference_decode(model, batch: int, context: int):
    """(step, batch) over a random reference cache of `context` tokens; memory freed after."""
    import torch

    _fresh_peak()
    cache = synthetic_cache(model, batch, context, seed=batch)
    token = torch.randint(3, model.config.vocab_size, (batch, 1), device=model.device)
    try:
        with torch.no_grad():
            yield lambda fn: fn(token, cache)
    finally:
        del cache
        free_cached_memory()


def decode_reference_eager(model, batch: int, context: int, steps: int) -> dict:
    """The reference model's own forward, eager, one decode step per call over the dynamic cache."""
    with _reference_decode(model, batch, context) as step:
        step(model)                                                         # warm-up
        ms = events_ms(lambda: step(model), steps)
        return {"batch": batch, "ms_per_step": ms, "tokens_per_s": batch / (ms / 1e3),
                "peak_memory_bytes": _peak()}


def decode_reference_compiled(model, batch: int, context: int, steps: int, warmup: int = 3) -> dict:
    """The reference model under `torch.compile` (default mode), decode over the dynamic cache: compile and
    recompile time (the cache grows a key per step, so the first steps trace again) and ms per step after."""
    import torch

    torch._dynamo.reset()
    compiled = torch.compile(model)
    try:
        with _reference_decode(model, batch, context) as step:
            t0 = time.perf_counter()
            for _ in range(warmup):
                step(compiled)
            torch.cuda.synchronize()
            warm_s = time.perf_counter() - t0
            ms = events_ms(lambda: step(compiled), steps)
            return {"batch": batch, "ms_per_step": ms, "tokens_per_s": batch / (ms / 1e3),
                    "compile_and_warmup_s": warm_s, "warmup_steps": warmup, "peak_memory_bytes": _peak()}
    finally:
        del compiled
        torch._dynamo.reset()
        free_cached_memory()
