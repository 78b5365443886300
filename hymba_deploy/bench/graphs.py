"""The onnxruntime and tensorrt runtimes: prefill latency and decode throughput of the exported graphs
(`OnnxRuntimeRunner`, on the CPU) and of built engines (`TensorRTRunner`, Polygraphy), timed by the
runner's own clock (`last_inference_time`: session.run's wall clock, host copies included).

Decode feeds `synthetic_states` as the past cache of the first step and each step's present cache as the
next step's past. ONNX Runtime exports the model on the fly unless `--onnx MODEL=DIR` names an export.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..checkpoint import config_of
from ..contract import GRAPH_INPUTS, GRAPHS, LENGTHS_INPUT, POSITIONS_INPUT, graph_file
from ..errors import HymbaDeployError
from .settings import BenchSettings
from .states import synthetic_states
from .timing import Deadline, host_peak_mib, percentiles, timed

NP_DTYPES = {"float32": np.float32, "float16": np.float16}


def bench_runner(make_runner, cfg, np_dtype, s: BenchSettings, deadline: Deadline, say, label: str,
                 eviction: str = "upstream") -> dict:
    """make_runner("prefill" | "decode") -> a runner context (`hymba_deploy.runtime`); `s`: this runtime's
    settings (prefill lengths and decode batches already within the graphs' limits)."""
    out = {"prefill": [], "decode": []}
    with make_runner("prefill") as runner:
        for L in s.prefill_lengths:
            if deadline.reason():
                out["prefill"].append({"tokens": L, "skipped": deadline.reason()})
                continue
            ids = np.random.default_rng(L).integers(0, cfg.vocab_size, (1, L)).astype(np.int64)
            feed = {"input_ids": ids, LENGTHS_INPUT: np.array([L], dtype=np.int64)}
            times = timed(lambda: _infer(runner, feed), s.warmup, s.iters, deadline)
            row = {"tokens": L, "batch": 1, **percentiles(times), "host_peak_mib": round(host_peak_mib(), 1)}
            say(f"    {label} prefill {L:>5} tokens: {row['p50_ms']:.2f} ms p50")
            out["prefill"].append(row)
    with make_runner("decode") as runner:
        for B in s.decode_batches:
            if deadline.reason():
                out["decode"].append({"batch": B, "context": s.context, "skipped": deadline.reason()})
                continue
            row = _decode(runner, cfg, np_dtype, B, s, deadline, eviction)
            say(f"    {label} decode batch {B:>4} @ {s.context}: {row['tokens_per_s']:.1f} tokens/s")
            out["decode"].append(row)
    return out


def _infer(runner, feed: dict) -> float:
    """One inference -> the runner's own time for it, in seconds."""
    runner.infer(feed)
    return runner.last_inference_time()


def _decode(runner, cfg, np_dtype, B: int, s: BenchSettings, deadline: Deadline, eviction: str) -> dict:
    import torch

    from ..cache import HybridMambaAttentionDynamicCache as Cache
    present_to_past = Cache.io_pairs(cfg)
    states = synthetic_states(cfg, B, s.context, torch.float32, eviction, seed=s.seed)
    cache_mib = round(sum(t.numel() for t in states.values()) * np.dtype(np_dtype).itemsize / 2**20, 1)
    feed = {k: v.numpy().astype(np_dtype) for k, v in states.items()}
    feed["input_ids"] = np.random.default_rng(B).integers(0, cfg.vocab_size, (B, 1)).astype(np.int64)
    # Every row at `context` text tokens, as the synthetic states; the cache shapes stay those of `context`
    # (SWA layers at meta + keep, global layers one longer per step), as in a generation.
    feed[POSITIONS_INPUT] = np.full(B, cfg.num_memory_tokens + s.context, dtype=np.int64)

    def step() -> float:
        nonlocal feed
        result = runner.infer(feed)
        feed = {"input_ids": feed["input_ids"], POSITIONS_INPUT: feed[POSITIONS_INPUT] + 1,
                **{past: result[present] for present, past in present_to_past}}
        return runner.last_inference_time()

    p = percentiles(timed(step, s.warmup, s.decode_steps, deadline))
    return {"batch": B, "context": s.context, "cache_mib": cache_mib, "step_ms": p,
            "tokens_per_s": B / (p["p50_ms"] / 1e3), "host_peak_mib": round(host_peak_mib(), 1)}


def bench_onnxruntime(spec: str, s: BenchSettings, deadline: Deadline, say) -> dict:
    """`s`: the onnxruntime runtime's settings. Exports MODEL into a temporary folder unless
    `s.onnx_dirs` names an export of it."""
    try:
        import onnxruntime
    except ImportError:
        raise HymbaDeployError("onnxruntime is not installed (pip install onnxruntime)") from None
    import time

    _ort_provider(s.ort_device)                       # no onnxruntime-gpu for cuda: "not run" before exporting
    src = (s.onnx_dirs or {}).get(spec)
    tmp = None
    t0 = time.monotonic()
    try:
        if src is None:
            src = tmp = tempfile.mkdtemp(prefix=f"hymba-bench-{spec.replace('/', '_')}-")
            _export(spec, tmp, s, say)
        export_s = round(time.monotonic() - t0, 1)
        meta, result = _run_onnx(Path(src), s, deadline, say)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    device, provider = _ort_provider(s.ort_device)
    return {"status": "ran", "device": device, "provider": provider, "dtype": meta.get("dtype"),
            "onnxruntime": onnxruntime.__version__, "export_seconds": export_s, **result}


def _ort_provider(device: str) -> tuple[str, str]:
    """(device, provider as reported) of ONNX Runtime on `device`; the CUDA provider runs with TF32 off."""
    from ..runtime.onnxruntime_runner import provider_name, providers_for
    name = provider_name(providers_for(device)[0])
    return ("cpu", name) if name == "CPUExecutionProvider" else (device, f"{name} (TF32 off)")


def _export(spec: str, folder: str, s: BenchSettings, say) -> None:
    from ..exporters.onnx_export import export

    max_seq = min(max(max(s.prefill_lengths), s.context + 64), config_of(spec).seq_length)
    say(f"    exporting {spec} ({s.onnx_dtype}, up to {max_seq} tokens) for ONNX Runtime")
    export(spec, folder, dtype=s.onnx_dtype, max_seq_len=max_seq, seed=s.seed)


def _run_onnx(src: Path, s: BenchSettings, deadline: Deadline, say) -> tuple[dict, dict]:
    from dataclasses import replace

    from ..config import HymbaConfig
    from ..engine.onnx_inputs import load_graph, metadata
    from ..runtime import OnnxRuntimeRunner
    from ..runtime.onnxruntime_runner import providers_for
    meta = metadata(load_graph(src / graph_file("prefill")))
    cfg = HymbaConfig.from_dict(json.loads(meta["config"]))
    np_dtype = NP_DTYPES.get(meta.get("dtype", "float32"))
    if np_dtype is None:
        raise HymbaDeployError(f"ONNX Runtime bench needs a float32 or float16 export, got {meta.get('dtype')}")
    max_seq = int(meta.get("max_seq_len", cfg.seq_length))
    fit = replace(s, prefill_lengths=tuple(L for L in s.prefill_lengths if L <= max_seq),
                  context=min(s.context, max_seq - 1))
    providers = providers_for(s.ort_device)
    result = bench_runner(lambda g: OnnxRuntimeRunner(src / graph_file(g), providers, threads=s.ort_threads), cfg, np_dtype,
                          fit, deadline, say, "onnxruntime", meta.get("eviction", "upstream"))
    return meta, result


def bench_tensorrt(spec: str, s: BenchSettings, deadline: Deadline, say) -> dict:
    """`s`: the tensorrt runtime's settings; the engines of `s.engine_dirs[spec]` (built for MODEL: their
    decode inputs must be MODEL's cache), loaded with `s.plugin_library`."""
    from dataclasses import replace

    from ..runtime import TensorRTRunner
    src = _engine_dir(spec, s)
    sidecar, cfg = _checked_engines(spec, Path(src), s.plugin_library)
    np_dtype = NP_DTYPES.get(sidecar.get("model_dtype"), np.float32)
    axes = sidecar["profiles"][0]["axes"]
    seq_max, b_max = axes["seq"][2], axes["batch"][2]
    fit = replace(s, prefill_lengths=tuple(L for L in s.prefill_lengths if L <= seq_max),
                  decode_batches=tuple(B for B in s.decode_batches if B <= b_max), context=min(s.context, seq_max - 1))
    result = bench_runner(lambda g: TensorRTRunner(Path(src) / f"{g}.engine", user_library=s.plugin_library),
                          cfg, np_dtype, fit, deadline, say, "tensorrt", sidecar.get("eviction") or "upstream")
    return {"status": "ran", "device": "cuda", "backend": sidecar["backend"], **result}


def _engine_dir(spec: str, s: BenchSettings) -> str:
    from ..engine.backends import backend_available
    src = (s.engine_dirs or {}).get(spec)
    if src is None:
        missing = [r for r in (backend_available("tensorrt"), backend_available("tensorrt-rtx")) if r]
        why = "; ".join(missing) if len(missing) == 2 else f"build one with `hymba-deploy build` (--engine {spec}=DIR)"
        raise HymbaDeployError(f"no engine given for {spec}: {why}")
    return src


def _checked_engines(spec: str, src: Path, plugin_library) -> tuple[dict, object]:
    """The prefill sidecar and MODEL's config, once both engines load here and the decode engine's inputs
    are MODEL's cache; else HymbaDeployError with the reason."""
    from ..cache import HybridMambaAttentionDynamicCache as Cache
    from ..engine import artifact
    from ..runtime import tensorrt_runner
    artifact.engine_files(src)
    for g in GRAPHS:
        reason = tensorrt_runner.engine_unavailable(src / f"{g}.engine", plugin_library)
        if reason:
            raise HymbaDeployError(reason)
    cfg = config_of(spec)                # MODEL's, not a file the sidecar names: it must match the engine's I/O
    want = set(GRAPH_INPUTS["decode"]) | {name for name, _, _ in Cache.state_names(cfg)}
    got = {t["name"] for t in artifact.read_sidecar(src / "decode.engine")["io"]["inputs"]}
    if got != want:
        raise HymbaDeployError(f"--engine {spec}={src}: the decode engine's inputs are not those of {spec} "
                               f"(differ in {', '.join(sorted(got ^ want)[:4])})")
    return artifact.read_sidecar(src / "prefill.engine"), cfg
