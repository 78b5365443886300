"""`hymba-deploy bench`: every requested runtime on every model, into one report (bench.json, bench.md,
bench.png in the output folder; the cuda runtime adds its own serving_cuda_<model>.json and .md).

Each (model, runtime) pair runs in turn (`BenchSettings.plan`) and appears in the report: "ran" with the
settings it really ran with, or "not run" / "skipped" with the reason (a missing GPU, engine or package,
the time budget). A time budget keeps the run bounded: a pair that would start after it is skipped, and a
measurement stops after its first timed iteration. The report is written after every pair.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable

from ..errors import HymbaDeployError
from ..fileio import atomic_write_json
from .settings import BenchSettings
from .timing import Deadline

TIMING = ("torch: CUDA events (GPU) / perf_counter (CPU); ONNX Runtime: wall clock of session.run; TensorRT: "
          "Polygraphy TrtRunner inference_time; cuda: CUDA events (decode: mean over graph replays, prefill: median)")


def bench(settings: BenchSettings, progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark; write bench.json, bench.md and (when there is something to plot) bench.png into
    `settings.out_dir`; return the report."""
    from .report import write_markdown, write_plot

    say = progress or (lambda msg: None)
    s = _resolve_device(settings)
    deadline = Deadline(s.time_budget_s)
    out = Path(s.out_dir)
    report = {"environment": environment(s.device), "settings": _settings_record(s), "results": {}}
    for spec, runtime in s.plan():
        res = report["results"].setdefault(spec, {})
        if deadline.reason():
            res[runtime] = {"status": "skipped", "reason": deadline.reason()}
            continue
        say(f"{spec} / {runtime}")
        t0 = time.monotonic()
        res[runtime] = _run_one(spec, runtime, s, deadline, out, say)
        res[runtime]["seconds"] = round(time.monotonic() - t0, 1)
        write_json(report, out)
    not_plotted = write_plot(report, out / "bench.png")
    report["plot"] = {"file": None, "not_written": not_plotted} if not_plotted else {"file": "bench.png"}
    write_json(report, out)
    write_markdown(report, out / "bench.md")
    if not_plotted:
        say(f"bench.png not written: {not_plotted}")
    say(f"wrote bench.json, bench.md{'' if not_plotted else ' and bench.png'} to {out}")
    return report


def _resolve_device(s: BenchSettings) -> BenchSettings:
    """torch's device: cuda when available unless `s.device` says otherwise."""
    from dataclasses import replace

    import torch
    device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HymbaDeployError("--device cuda: no CUDA GPU here (use --device cpu)")
    return replace(s, device=device)


def _run_one(spec: str, runtime: str, s: BenchSettings, deadline: Deadline, out: Path, say) -> dict:
    """One runtime on one model -> its result: "ran" (with the settings it ran with) or "not run"."""
    rs = s.for_runtime(runtime)
    try:
        if runtime == "torch":
            result = {"status": "ran", **_bench_torch(spec, rs, deadline, say)}
        elif runtime == "onnxruntime":
            from .graphs import bench_onnxruntime
            result = bench_onnxruntime(spec, rs, deadline, say)
        elif runtime == "tensorrt":
            from .graphs import bench_tensorrt
            result = bench_tensorrt(spec, rs, deadline, say)
        else:
            result = _bench_cuda(spec, rs, out, say)
    except HymbaDeployError as e:
        return {"status": "not run", "reason": str(e)}
    result["settings"] = ran_with(runtime, rs)
    return result


def ran_with(runtime: str, rs: BenchSettings) -> dict:
    """What a runtime really ran with (`rs`: its settings): warm-up, timed iterations and decode steps,
    threads, prompt lengths, decode batches."""
    import torch

    from .serving import DECODE_WARMUP, PREFILL_WARMUP
    threads = {"torch": None if rs.device.startswith("cuda") else torch.get_num_threads(),
               "onnxruntime": rs.ort_threads or "onnxruntime default (one per physical core)"}.get(runtime)
    warmup = f"{PREFILL_WARMUP} prefill, {DECODE_WARMUP} decode" if runtime == "cuda" else rs.warmup
    return {"warmup": warmup, "iters": rs.iters, "decode_steps": rs.decode_steps, "threads": threads,
            "prefill_lengths": list(rs.prefill_lengths), "decode_batches": list(rs.decode_batches)}


def _bench_torch(spec: str, rs: BenchSettings, deadline: Deadline, say) -> dict:
    import torch

    from ..checkpoint import load_model
    from .reference import bench_torch
    model = load_model(spec, dtype=rs.dtype, seed=rs.seed).to(rs.device).eval()
    try:
        return bench_torch(model, rs, deadline, say)
    finally:
        del model
        if rs.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _bench_cuda(spec: str, rs: BenchSettings, out: Path, say) -> dict:
    """The cuda runtime's own report (serving_cuda_<model>.json and .md in `out`) -> a pointer to it."""
    from .report import write_serving_markdown
    from .serving_run import cuda_unavailable, report_name, run_cuda
    reason = cuda_unavailable()
    if reason:
        raise HymbaDeployError(reason)
    name = report_name(spec)
    out.mkdir(parents=True, exist_ok=True)
    res = run_cuda(spec, rs, out / f"{name}.json", say=lambda msg: say(f"    {msg}"))
    write_serving_markdown(res, out / f"{name}.md")
    return {"status": "ran", "device": "cuda", "dtype": rs.dtype, "report": f"{name}.json",
            "markdown": f"{name}.md", "prefill": [], "decode": []}


def _settings_record(s: BenchSettings) -> dict:
    return {"models": list(dict.fromkeys(m for m, _ in s.plan())), "runtimes": list(s.runtimes),
            "dtype": {r: s.for_runtime(r).dtype for r in s.runtimes if r in ("torch", "cuda")},
            "onnx_dtype": s.onnx_dtype, "warmup": s.warmup, "paper": s.paper, "prefill_only": s.prefill_only,
            "seed": s.seed, "time_budget_s": s.time_budget_s, "timing": TIMING,
            "per_runtime": {r: {k: v for k, v in ran_with(r, s.for_runtime(r)).items() if k != "threads"}
                            for r in s.runtimes}}


def environment(device: str) -> dict:
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


def write_json(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(out_dir / "bench.json", report)
