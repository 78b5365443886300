"""`hymba-deploy bench`: prefill latency and decode throughput per backend, with memory figures.

For each model and each available backend (torch eager; ONNX Runtime; a TensorRT engine where this GPU
runs it):
  * prefill latency: one prompt of each length, p50/p90/p99 ms over the timed iterations after warm-up;
  * decode throughput: B sequences holding a cache of `context` tokens, one token each per step,
    tokens/s = B / median step time;
  * peak GPU memory (torch: `max_memory_allocated`), cache MiB (`HybridMambaAttentionDynamicCache`), and
    the process's peak host memory for CPU backends.
Timing uses CUDA events on GPU tensors (torch), the runner's wall clock elsewhere (ONNX Runtime on CPU;
TensorRT through Polygraphy, host copies included). The decode cache is filled with random values of the
right shapes rather than by a prefill: a decode step's cost depends on shapes, not values.

`paper=True` adds the Hymba paper's setup: decode throughput at 8k context with batch 128, halving the
batch on out-of-memory until it fits. A time budget keeps the whole run bounded: a section that would
start after it is recorded as skipped; results are written after every section.

Every requested backend appears in the report: "ran" with the settings it really ran with (warm-up,
timed iterations and decode steps, threads), or "not run"/"skipped" with the reason. The default
output folder is `DEFAULT_OUT` (git-ignored), not the committed `bench/results/`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import HymbaDeployError
from ..fileio import atomic_write_json

BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEFAULT_OUT = "bench/out"
PAPER = {"context": 8192, "batch": 128}


def percentiles(times_s: list[float]) -> dict:
    ms = np.asarray(times_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "iters": int(ms.size)}


class _Clock:
    """CUDA events on a GPU device, perf_counter elsewhere; `measure(fn)` returns seconds."""

    def __init__(self, device):
        import torch
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.torch = torch

    def measure(self, fn) -> float:
        if self.cuda:
            start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def _is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


def _host_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_states(config, batch: int, context: int, dtype, eviction: str = "upstream", device="cpu",
                     seed: int = 0) -> dict:
    """name -> random cache tensor of the shape a cache holds after `context` text tokens."""
    import torch

    from ..cache import HybridMambaAttentionDynamicCache as Cache
    g = torch.Generator(device=device).manual_seed(seed)     # on the device: GiBs of randn in milliseconds
    probe = Cache(config, 1, dtype, eviction=eviction)
    meta, hkv = config.num_memory_tokens, config.num_key_value_heads
    states = {}
    for name, kind, layer in Cache.state_names(config):
        keep = probe.keep(layer)
        if kind in ("key", "value"):
            length = meta + (context if keep is None else min(context, keep))
            shape = (batch, length, hkv, config.qk_head_dim if kind == "key" else config.v_dim)
        elif kind == "conv_state":
            shape = (batch, config.d_inner, config.mamba_d_conv)
        else:
            shape = (batch, config.d_inner, config.mamba_d_state)
        states[name] = (torch.randn(shape, generator=g, device=device) * 0.5).to(dtype)
    return states


# ---- torch --------------------------------------------------------------------------------------

def _bench_torch(model, cfg, prefill_lengths, decode_batches, context, warmup, iters, decode_steps,
                 deadline, say, paper) -> dict:
    import torch

    from ..cache import HybridMambaAttentionDynamicCache as Cache
    device, dtype = model.device, model.dtype
    clock = _Clock(device)
    cuda = device.type == "cuda"
    out = {"prefill": [], "decode": [], "device": str(device), "dtype": str(dtype).replace("torch.", "")}

    def reset():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None

    with torch.no_grad():
        for L in prefill_lengths:
            if time.monotonic() > deadline:
                out["prefill"].append({"tokens": L, "skipped": "time budget"})
                continue
            reset()
            ids = torch.randint(0, cfg.vocab_size, (1, L), device=device)
            row = {"tokens": L, "batch": 1}
            try:
                times = []
                for i in range(warmup + iters):
                    t = clock.measure(lambda: model(ids, model.new_cache(1)))
                    if i >= warmup:
                        times.append(t)
                    if time.monotonic() > deadline and len(times) >= 1:
                        row["truncated"] = "time budget"
                        break
                row.update(percentiles(times))
                row["peak_gpu_mib"] = peak()
            except Exception as e:
                if not _is_oom(e):
                    raise
                row["oom"] = True
            say(f"    torch prefill {L:>5} tokens: {row.get('p50_ms', float('nan')):.2f} ms p50")
            out["prefill"].append(row)

        def decode_at(B, C):
            reset()
            states = synthetic_states(cfg, B, C, dtype, device=device)
            cache = Cache.from_named_states(cfg, states, cfg.num_memory_tokens + C)
            del states
            cache_mib = round(cache.nbytes() / 2**20, 1)
            tok = torch.randint(0, cfg.vocab_size, (B, 1), device=device)
            times = []
            for i in range(warmup + decode_steps):
                t = clock.measure(lambda: model(tok, cache))
                if i >= warmup:
                    times.append(t)
                if time.monotonic() > deadline and times:
                    break
            p = percentiles(times)
            return {"batch": B, "context": C, "cache_mib": cache_mib, "step_ms": p,
                    "tokens_per_s": B / (p["p50_ms"] / 1e3), "peak_gpu_mib": peak()}

        for B in decode_batches:
            if time.monotonic() > deadline:
                out["decode"].append({"batch": B, "context": context, "skipped": "time budget"})
                continue
            try:
                row = decode_at(B, context)
            except Exception as e:
                if not _is_oom(e):
                    raise
                row = {"batch": B, "context": context, "oom": True}
            say(f"    torch decode batch {B:>4} @ {context}: {row.get('tokens_per_s', float('nan')):.1f} tokens/s")
            out["decode"].append(row)

        if paper:
            B, tried = PAPER["batch"], []
            while B >= 1:
                if time.monotonic() > deadline:
                    tried.append({"batch": B, "skipped": "time budget"})
                    break
                try:
                    row = decode_at(B, PAPER["context"])
                    tried.append(row)
                    break
                except Exception as e:
                    if not _is_oom(e):
                        raise
                    tried.append({"batch": B, "context": PAPER["context"], "oom": True})
                    B //= 2
            out["paper"] = {"setup": "decode at 8k context, batch 128, halving on OOM", "tries": tried,
                            "result": tried[-1] if tried and "tokens_per_s" in tried[-1] else None}
            if out["paper"]["result"]:
                r = out["paper"]["result"]
                say(f"    torch paper setup: batch {r['batch']} @ 8192: {r['tokens_per_s']:.1f} tokens/s")
    return out


# ---- runners over exported graphs / engines (ONNX Runtime, TensorRT) ----------------------------------

def _bench_runner(make_runner, cfg, np_dtype, prefill_lengths, decode_batches, context, warmup, iters,
                  decode_steps, deadline, say, label, eviction="upstream") -> dict:
    import torch

    from ..cache import HybridMambaAttentionDynamicCache as Cache
    out = {"prefill": [], "decode": []}
    cache_io = [(p, q) for (p, _, _), (q, _, _) in zip(Cache.state_names(cfg, present=True), Cache.state_names(cfg))]
    runner = make_runner("prefill")
    with runner:
        for L in prefill_lengths:
            if time.monotonic() > deadline:
                out["prefill"].append({"tokens": L, "skipped": "time budget"})
                continue
            ids = np.random.default_rng(L).integers(0, cfg.vocab_size, (1, L)).astype(np.int64)
            times = []
            for i in range(warmup + iters):
                runner.infer({"input_ids": ids})
                if i >= warmup:
                    times.append(runner.last_inference_time())
                if time.monotonic() > deadline and times:
                    break
            row = {"tokens": L, "batch": 1, **percentiles(times), "host_peak_mib": round(_host_peak_mib(), 1)}
            say(f"    {label} prefill {L:>5} tokens: {row['p50_ms']:.2f} ms p50")
            out["prefill"].append(row)
    runner = make_runner("decode")
    with runner:
        for B in decode_batches:
            if time.monotonic() > deadline:
                out["decode"].append({"batch": B, "context": context, "skipped": "time budget"})
                continue
            states = synthetic_states(cfg, B, context, torch.float32, eviction)
            cache_mib = round(sum(t.numel() for t in states.values()) * np.dtype(np_dtype).itemsize / 2**20, 1)
            feed = {k: v.numpy().astype(np_dtype) for k, v in states.items()}
            feed["input_ids"] = np.random.default_rng(B).integers(0, cfg.vocab_size, (B, 1)).astype(np.int64)
            times = []
            for i in range(warmup + decode_steps):
                res = runner.infer(feed)
                if i >= warmup:
                    times.append(runner.last_inference_time())
                feed = {"input_ids": feed["input_ids"], **{past: res[present] for present, past in cache_io}}
                if time.monotonic() > deadline and times:
                    break
            p = percentiles(times)
            row = {"batch": B, "context": context, "cache_mib": cache_mib, "step_ms": p,
                   "tokens_per_s": B / (p["p50_ms"] / 1e3), "host_peak_mib": round(_host_peak_mib(), 1)}
            say(f"    {label} decode batch {B:>4} @ {context}: {row['tokens_per_s']:.1f} tokens/s")
            out["decode"].append(row)
    return out


# ---- the command ----------------------------------------------------------------------------------

def _environment(device: str) -> dict:
    import torch
    env = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
           "cpu_count": os.cpu_count(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update({"gpu": p.name, "gpu_memory_mib": round(p.total_memory / 2**20), "compute_capability":
                    f"{p.major}.{p.minor}", "cuda": torch.version.cuda})
    try:
        import onnxruntime
        env["onnxruntime"] = onnxruntime.__version__
        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return env


def _parse_ints(value, name) -> list[int]:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    try:
        out = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise HymbaDeployError(f"--{name} {value!r}: expected comma-separated integers") from None
    if not out or min(out) < 1:
        raise HymbaDeployError(f"--{name} {value!r}: expected positive integers")
    return out


def parse_pairs(value, name) -> dict | None:
    """'tiny=DIR,hymba-1.5b=DIR2' (or a dict) -> {model: dir}."""
    if not value:
        return None
    if isinstance(value, dict):
        return value
    out = {}
    for item in str(value).split(","):
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise HymbaDeployError(f"--{name} {value!r}: expected MODEL=DIR[,MODEL=DIR...]")
        out[key] = path
    return out


def write_json(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(out_dir / "bench.json", report)


def bench(models=("tiny",), backends=("torch", "onnxruntime"), out_dir=DEFAULT_OUT, device=None,
          dtype=None, prefill_lengths="128,512,2048", decode_batches="1,8,32", context=1024, warmup=2, iters=10,
          decode_steps=16, paper=False, onnx_dirs: dict | None = None, engine_dirs: dict | None = None,
          onnx_dtype="float32", time_budget_s: float = 600.0, seed=0, ort_threads: int | None = None,
          ort_prefill_lengths=None, ort_decode_batches=None, ort_iters: int | None = None, plugin_library=None,
          progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark; write bench.json, bench.md and (when there is something to plot) bench.png into
    `out_dir`; return the report. `plugin_library`: `--plugins` for the engines (default: the project's)."""
    import torch

    from ..checkpoint import load_model
    from .report import write_markdown, write_plot

    say = progress or (lambda msg: None)
    models = [m for m in (models.split(",") if isinstance(models, str) else models) if m]
    backends = [b for b in (backends.split(",") if isinstance(backends, str) else backends) if b]
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise HymbaDeployError(f"--backends {','.join(bad)}: choose from {', '.join(BACKENDS)}")
    lengths, batches = _parse_ints(prefill_lengths, "prefill-lengths"), _parse_ints(decode_batches, "decode-batches")
    # ONNX Runtime runs on the CPU here: it may get shorter prompts, fewer batches and iterations.
    ort_lengths = _parse_ints(ort_prefill_lengths, "ort-prefill-lengths") if ort_prefill_lengths else lengths
    ort_batches = _parse_ints(ort_decode_batches, "ort-decode-batches") if ort_decode_batches else batches
    ort_iters = ort_iters or iters
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HymbaDeployError("--device cuda: no CUDA GPU here (use --device cpu)")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    onnx_dirs, engine_dirs = parse_pairs(onnx_dirs, "onnx"), parse_pairs(engine_dirs, "engine")
    deadline = time.monotonic() + time_budget_s
    out = Path(out_dir)
    report = {"environment": _environment(device), "settings": {
        "models": models, "backends": backends, "dtype": dtype, "onnx_dtype": onnx_dtype, "prefill_lengths": lengths,
        "decode_batches": batches, "context": context, "warmup": warmup, "iters": iters, "decode_steps": decode_steps,
        "paper": paper, "seed": seed, "onnxruntime": {"prefill_lengths": ort_lengths, "decode_batches": ort_batches,
                                                      "iters": ort_iters, "decode_steps": min(decode_steps, ort_iters)},
        "timing": "torch: CUDA events (GPU) / perf_counter (CPU); ONNX Runtime: "
        "wall clock of session.run; TensorRT: Polygraphy TrtRunner inference_time"}, "results": {}}
    ran_with = {  # what each backend really runs: (warm-up, timed prefill iterations, timed decode steps, threads)
        "torch": (warmup, iters, decode_steps, torch.get_num_threads() if not device.startswith("cuda") else None,
                  lengths, batches),
        "onnxruntime": (min(warmup, 1), ort_iters, min(decode_steps, ort_iters),
                        ort_threads or "onnxruntime default (one per physical core)", ort_lengths, ort_batches),
        "tensorrt": (warmup, iters, decode_steps, None, lengths, batches)}
    for spec in models:
        res = report["results"].setdefault(spec, {})
        cfg = None
        for backend in backends:
            if time.monotonic() > deadline:
                res[backend] = {"status": "skipped", "reason": "time budget"}
                continue
            say(f"{spec} / {backend}")
            t0 = time.monotonic()
            try:
                if backend == "torch":
                    model = load_model(spec, dtype=dtype, seed=seed).to(device).eval()
                    cfg = model.config
                    res[backend] = {"status": "ran", **_bench_torch(
                        model, cfg, [L for L in lengths if L <= cfg.seq_length], batches, context, warmup, iters,
                        decode_steps, deadline, say, paper)}
                    del model
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
                elif backend == "onnxruntime":
                    res[backend] = _bench_onnxruntime(spec, onnx_dirs, onnx_dtype, ort_lengths, ort_batches, context,
                                                      min(warmup, 1), ort_iters, min(decode_steps, ort_iters),
                                                      deadline, say, seed, ort_threads)
                else:
                    res[backend] = _bench_tensorrt(spec, engine_dirs, lengths, batches, context, warmup, iters,
                                                   decode_steps, deadline, say, plugin_library)
            except HymbaDeployError as e:
                res[backend] = {"status": "not run", "reason": str(e)}
            if res[backend]["status"] == "ran":
                res[backend]["settings"] = dict(zip(("warmup", "iters", "decode_steps", "threads", "prefill_lengths",
                                                     "decode_batches"), ran_with[backend]))
            res[backend]["seconds"] = round(time.monotonic() - t0, 1)
            write_json(report, out)
    not_plotted = write_plot(report, out / "bench.png")
    report["plot"] = {"file": None, "not_written": not_plotted} if not_plotted else {"file": "bench.png"}
    write_json(report, out)
    write_markdown(report, out / "bench.md")
    if not_plotted:
        say(f"bench.png not written: {not_plotted}")
    say(f"wrote bench.json, bench.md{'' if not_plotted else ' and bench.png'} to {out}")
    return report


def _spec_config(spec):
    from ..config import PRESETS, HymbaConfig, preset
    if spec in PRESETS:
        return preset(spec)
    return HymbaConfig.from_json_file(Path(spec) / "config.json")


def _bench_onnxruntime(spec, onnx_dirs, onnx_dtype, lengths, batches, context, warmup, iters, decode_steps,
                       deadline, say, seed, threads):
    from ..engine.onnx_inputs import load_graph, metadata
    from ..runtime import OnnxRuntimeRunner
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise HymbaDeployError("onnxruntime is not installed (pip install onnxruntime)") from None
    src = (onnx_dirs or {}).get(spec)
    tmp = None
    t0 = time.monotonic()
    try:
        if src is None:
            from hymba_deploy.exporters.onnx_export import export
            tmp = tempfile.mkdtemp(prefix=f"hymba-bench-{spec}-")
            cfg = _spec_config(spec)
            max_seq = min(max(max(lengths), context + 64), cfg.seq_length)
            say(f"    exporting {spec} ({onnx_dtype}, up to {max_seq} tokens) for ONNX Runtime")
            export(spec, tmp, dtype=onnx_dtype, max_seq_len=max_seq, seed=seed)
            src = tmp
        export_s = round(time.monotonic() - t0, 1)
        meta = metadata(load_graph(Path(src) / "prefill.onnx"))
        from ..config import HymbaConfig
        cfg = HymbaConfig.from_dict(json.loads(meta["config"]))
        np_dtype = {"float32": np.float32, "float16": np.float16}.get(meta.get("dtype", "float32"))
        if np_dtype is None:
            raise HymbaDeployError(f"ONNX Runtime bench needs a float32 or float16 export, got {meta.get('dtype')}")
        max_seq = int(meta.get("max_seq_len", cfg.seq_length))
        result = _bench_runner(
            lambda g: OnnxRuntimeRunner(Path(src) / f"{g}.onnx", threads=threads), cfg, np_dtype,
            [L for L in lengths if L <= max_seq], batches, min(context, max_seq - 1), warmup, iters, decode_steps,
            deadline, say, "onnxruntime", meta.get("eviction", "upstream"))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    import onnxruntime
    return {"status": "ran", "device": "cpu", "provider": "CPUExecutionProvider", "dtype": meta.get("dtype"),
            "onnxruntime": onnxruntime.__version__, "export_seconds": export_s, **result}


def _bench_tensorrt(spec, engine_dirs, lengths, batches, context, warmup, iters, decode_steps, deadline, say,
                    plugin_library=None):
    from ..runtime import TensorRTRunner
    from ..runtime.tensorrt_runner import engine_unavailable
    from ..engine.backends import backend_available
    src = (engine_dirs or {}).get(spec)
    if src is None:
        missing = [r for r in (backend_available("tensorrt"), backend_available("tensorrt-rtx")) if r]
        why = "; ".join(missing) if len(missing) == 2 else f"build one with `hymba-deploy build` (--engine {spec}=DIR)"
        raise HymbaDeployError(f"no engine given for {spec}: {why}")
    from ..engine import artifact
    artifact.engine_files(src)
    for g in ("prefill", "decode"):
        reason = engine_unavailable(Path(src) / f"{g}.engine", plugin_library)
        if reason:
            raise HymbaDeployError(reason)
    sidecar = artifact.read_sidecar(Path(src) / "prefill.engine")
    cfg = _spec_config(spec)              # MODEL's, not a file the sidecar names: it must match the engine's I/O
    from ..cache import HybridMambaAttentionDynamicCache as Cache
    want = {"input_ids"} | {name for name, _, _ in Cache.state_names(cfg)}
    got = {t["name"] for t in artifact.read_sidecar(Path(src) / "decode.engine")["io"]["inputs"]}
    if got != want:
        raise HymbaDeployError(f"--engine {spec}={src}: the decode engine's inputs are not those of {spec} "
                               f"(differ in {', '.join(sorted(got ^ want)[:4])})")
    np_dtype = {"float32": np.float32, "float16": np.float16}.get(sidecar.get("model_dtype"), np.float32)
    seq_max = sidecar["profiles"][0]["axes"]["seq"][2]
    b_max = sidecar["profiles"][0]["axes"]["batch"][2]
    result = _bench_runner(lambda g: TensorRTRunner(Path(src) / f"{g}.engine", user_library=plugin_library),
                           cfg, np_dtype,
                           [L for L in lengths if L <= seq_max], [B for B in batches if B <= b_max],
                           min(context, seq_max - 1), warmup, iters, decode_steps, deadline, say, "tensorrt",
                           sidecar.get("eviction") or "upstream")
    return {"status": "ran", "device": "cuda", "backend": sidecar["backend"], **result}
