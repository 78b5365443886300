"""`hymba-deploy bench` on CPU at toy sizes: every runtime in every table (ran / not run with a reason),
each runtime's real settings, JSON + Markdown + PNG written (no plot without data), a git-ignored default
output folder, one option per setting (no second parser), the cuda runtime "not run" without a GPU, the
timing helpers (percentiles, OOM halving, deadlines, bandwidth arithmetic), the cuda report's Markdown
from committed results, and the GEMM tuning scripts in tools/."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from deploy_helpers import exported_tiny
from hymba_deploy.bench import graphs, reference, settings, states, timing
from hymba_deploy.bench.run import ran_with
from hymba_deploy.bench.settings import BenchSettings, CudaSections
from hymba_deploy.cli import main
from hymba_deploy.config import preset

ROOT = Path(__file__).resolve().parents[1]
NO_DEADLINE = timing.Deadline(float("inf"))


@pytest.fixture(scope="module")
def tiny_model():
    return __import__("hymba_deploy").load_model("tiny", seed=0)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return exported_tiny(tmp_path_factory)


def test_bench_tiny_cpu(onnx_dir, tmp_path):
    result = CliRunner().invoke(main, [
        "bench", "--models", "tiny", "--runtimes", "torch,onnxruntime,tensorrt", "--out", str(tmp_path),
        "--device", "cpu", "--prefill-lengths", "8,32", "--decode-batches", "1,2", "--context", "24",
        "--warmup", "1", "--iters", "2", "--decode-steps", "2", "--onnx", f"tiny={onnx_dir}"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    res = report["results"]["tiny"]
    for runtime in ("torch", "onnxruntime"):
        r = res[runtime]
        assert r["status"] == "ran"
        assert [row["tokens"] for row in r["prefill"]] == [8, 32]
        assert all(row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] for row in r["prefill"])
        assert [row["batch"] for row in r["decode"]] == [1, 2]
        assert all(row["tokens_per_s"] > 0 and row["context"] == 24 for row in r["decode"])
    # Cache MiB agrees between runtimes and with the cache's own accounting.
    assert res["torch"]["decode"][1]["cache_mib"] == res["onnxruntime"]["decode"][1]["cache_mib"]
    assert res["tensorrt"]["status"] == "not run" and res["tensorrt"]["reason"]
    md = (tmp_path / "bench.md").read_text()
    assert "Prefill latency" in md and "Decode throughput" in md
    # Every table has a row for every requested runtime, "not run: reason" included.
    for table in md.split("### ")[1:]:
        for runtime in ("torch", "onnxruntime", "tensorrt"):
            assert f"| {runtime} " in table, (runtime, table)
        assert "| tensorrt | not run: no engine given for tiny" in table
    # Each runtime's real settings: ONNX Runtime warms up once whatever --warmup says.
    assert res["torch"]["settings"]["warmup"] == 1 and res["onnxruntime"]["settings"]["warmup"] == 1
    assert res["torch"]["settings"]["threads"] == torch.get_num_threads()
    assert f"| torch | 1 | 2 | 2 | {torch.get_num_threads()} | 8, 32 | 1, 2 |" in md
    assert "| onnxruntime | 1 | 2 | 2 | onnxruntime default (one per physical core) | 8, 32 | 1, 2 |" in md
    assert report["settings"]["runtimes"] == ["torch", "onnxruntime", "tensorrt"]
    if importlib.util.find_spec("matplotlib") is not None:          # the plot is optional, the tables are not
        assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
        assert report["plot"] == {"file": "bench.png"} and "- plot: bench.png" in md


def test_bench_with_nothing_run_writes_no_plot(tmp_path):
    (tmp_path / "bench.png").write_bytes(b"\x89PNG stale")                 # from an earlier run
    result = CliRunner().invoke(main, ["bench", "--models", "tiny", "--runtimes", "tensorrt", "--out", str(tmp_path),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "bench.png").exists()
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["plot"]["file"] is None and "no runtime produced a measurement" in report["plot"]["not_written"]
    md = (tmp_path / "bench.md").read_text()
    assert "- no plot: no runtime produced a measurement" in md
    assert md.count("| tensorrt | not run: no engine given for tiny") == 3        # settings, prefill, decode


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU reports")
@pytest.mark.parametrize("args", [["--runtimes", "cuda"], ["--backend", "cuda"], ["--backends", "tensorrt,cuda"]])
def test_cuda_runtime_without_a_gpu_is_not_run(args, tmp_path):
    """--runtimes cuda (and the old spellings --backend cuda, --backends) on a CPU machine: a "not run"
    row with the reason in every table, exit 0, no traceback; no model is built for it."""
    result = CliRunner().invoke(main, ["bench", *args, "--models", "tiny", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    res = json.loads((tmp_path / "bench.json").read_text())["results"]["tiny"]
    assert res["cuda"]["status"] == "not run" and res["cuda"]["reason"] == "the cuda runtime needs a CUDA GPU"
    assert result.output.count("| cuda | not run: the cuda runtime needs a CUDA GPU") == 3
    assert not list(tmp_path.glob("serving_cuda*"))


def test_each_setting_has_one_option_and_one_parser():
    """Every option of `bench` is spelled once (the old spellings --backends / --backend are hidden
    aliases), every setting has its option, and no second (argparse) bench CLI is left."""
    cmd = main.commands["bench"]
    spellings = [o for p in cmd.params for o in (*p.opts, *p.secondary_opts)]
    assert len(spellings) == len(set(spellings))
    visible = {p.name for p in cmd.params if not getattr(p, "hidden", False)}
    fields = (set(BenchSettings.__dataclass_fields__) - {"cuda", "onnx_dirs", "engine_dirs"}
              | {"onnx", "engine"} | set(CudaSections.__dataclass_fields__))
    assert fields == visible
    assert {p.name for p in cmd.params if getattr(p, "hidden", False)} == {"backends_alias", "backend_alias"}
    for module in ("hymba_deploy.bench.__main__", "hymba_deploy.serving.bench", "hymba_deploy.bench.skeleton"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(module)


def test_options_reach_the_settings(monkeypatch):
    """Option values as the command line gives them become BenchSettings fields (per-runtime defaults
    filled by `for_runtime`); a bad list is a one-line error."""
    seen = {}
    monkeypatch.setattr("hymba_deploy.bench.run.bench", lambda s, progress=None: seen.setdefault("s", s))
    monkeypatch.setattr("hymba_deploy.bench.report.to_markdown", lambda report: "")
    result = CliRunner().invoke(main, ["bench", "--backends", "torch,cuda", "--ort-threads", "3", "--seed", "7",
                                       "--prefill-only", "--profile-batches", "", "--no-reference",
                                       "--prefill-profile", "64,128", "--context", "512"])
    assert result.exit_code == 0, result.output
    s = seen["s"]
    assert s.runtimes == ("torch", "cuda") and s.ort_threads == 3 and s.seed == 7
    assert s.cuda.profile_batches == () and s.cuda.reference is False and s.cuda.prefill_profile == (64, 128)
    assert s.cuda.uncompiled_batches == CudaSections.uncompiled_batches             # left out: the default
    cuda, torch_ = s.for_runtime("cuda"), s.for_runtime("torch")
    assert cuda.models == ("hymba-1.5b",) and torch_.models == ("tiny",)
    assert cuda.context == torch_.context == 512 and cuda.decode_batches == () and cuda.iters == 3
    assert s.plan() == [("tiny", "torch"), ("hymba-1.5b", "cuda")]
    assert ran_with("onnxruntime", replace(s, device="cpu").for_runtime("onnxruntime"))["threads"] == 3
    result = CliRunner().invoke(main, ["bench", "--decode-batches", "1,x"])
    assert result.exit_code == 1 and "error: --decode-batches '1,x': expected comma-separated integers" in result.output
    result = CliRunner().invoke(main, ["bench", "--runtimes", "torch,vllm"])
    assert result.exit_code == 1 and "error: --runtimes vllm: choose from torch, onnxruntime, tensorrt, cuda" in result.output


def test_default_out_is_not_the_committed_results():
    import subprocess

    assert settings.DEFAULT_OUT == "bench/out"
    cli_default = next(p.default for p in main.commands["bench"].params if p.name == "out_dir")
    assert cli_default == settings.DEFAULT_OUT
    probe = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", f"{settings.DEFAULT_OUT}/bench.json"])
    if probe.returncode == 128:
        pytest.skip("not a git checkout")
    assert probe.returncode == 0, f"{settings.DEFAULT_OUT}/ is not in .gitignore"


def test_synthetic_cache_matches_the_cache_size():
    from hymba_deploy.cache import HybridMambaAttentionDynamicCache as Cache
    cfg = preset("tiny")
    named = states.synthetic_states(cfg, 3, 40, torch.float16)
    cache = Cache.from_named_states(cfg, named, cfg.num_memory_tokens + 40)
    # size_bytes counts SWA layers at meta + window (what decode attends over); the stored cache keeps
    # window - 1 under the upstream rule: one token per SWA producer layer less.
    swa_producers = sum(1 for i in range(cfg.num_hidden_layers) if cfg.is_producer(i) and not cfg.is_global(i))
    per_token = cfg.num_key_value_heads * (cfg.qk_head_dim + cfg.v_dim) * 2 * 3
    assert cache.nbytes() == Cache.size_bytes(cfg, 40, torch.float16, 3) - swa_producers * per_token


def test_paper_setup_halves_the_batch_on_oom(monkeypatch, tiny_model):
    model = tiny_model
    monkeypatch.setitem(settings.PAPER, "context", 16)
    real = states.synthetic_states

    def fake(config, batch, context, *a, **k):
        if batch > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(config, batch, context, *a, **k)
    monkeypatch.setattr(states, "synthetic_states", fake)
    s = BenchSettings(runtimes=("torch",), prefill_lengths=(), decode_batches=(), context=16, warmup=0, iters=1,
                      decode_steps=1, paper=True, device="cpu").for_runtime("torch")
    out = reference.bench_torch(model, s, NO_DEADLINE, lambda m: None)
    tries = out["paper"]["tries"]
    assert [t["batch"] for t in tries] == [128, 64, 32]
    assert tries[0]["oom"] and tries[1]["oom"] and out["paper"]["result"]["batch"] == 32


def test_halve_on_oom_stops_at_the_first_batch_that_fits():
    calls = []

    def fn(b):
        calls.append(b)
        if b > 20:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"batch": b}
    got = timing.halve_on_oom(100, fn)
    assert (got.batch, got.result, got.oom_batches, got.stopped) == (12, {"batch": 12}, [100, 50, 25], None)
    assert calls == [100, 50, 25, 12]
    never = timing.halve_on_oom(4, lambda b: (_ for _ in ()).throw(RuntimeError("CUDA error: out of memory")))
    assert (never.batch, never.result, never.oom_batches) == (0, None, [4, 2, 1])
    stopped = timing.halve_on_oom(8, fn, stop=lambda: "time budget")
    assert (stopped.batch, stopped.result, stopped.stopped) == (8, None, "time budget")
    with pytest.raises(ValueError, match="not memory"):                     # any other error propagates
        timing.halve_on_oom(8, lambda b: (_ for _ in ()).throw(ValueError("not memory")))


def test_timed_and_the_deadline():
    ticks = iter(range(1, 100))
    assert timing.timed(lambda: next(ticks), warmup=2, iters=3) == [3, 4, 5]
    assert timing.timed(lambda: 1.0, warmup=1, iters=5, deadline=timing.Deadline(-1)) == [1.0]   # past: one timed
    assert timing.Deadline(-1).reason() == "time budget" and NO_DEADLINE.reason() is None


def test_percentiles():
    p = timing.percentiles([0.001 * i for i in range(1, 101)])
    assert p["p50_ms"] == pytest.approx(50.5) and p["p99_ms"] == pytest.approx(99.01) and p["iters"] == 100


def test_bandwidth_and_floor_arithmetic():
    """A 1 GiB copy reads and writes 2 GiB: at 1 ms that is 2^31 * 1000 bytes/s; the floor of a step is
    the time to stream its bytes once at that bandwidth."""
    bw = timing.bytes_per_s(2 * 2**30, 1.0)
    assert bw == 2**31 * 1e3
    assert timing.floor_ms(2**30, bw) == pytest.approx(0.5)
    assert timing.floor_ms(3_050_000_000 + 1_200_000_000, 4.245e12) == pytest.approx(1.0012, rel=1e-4)


def test_cuda_report_markdown_from_committed_results():
    """The cuda runtime's Markdown from its committed JSON: decode against the storage floor, prefill of
    the runtime and of the model forward, kernel time by category."""
    from hymba_deploy.bench.report import serving_markdown

    decode = serving_markdown(json.loads((ROOT / "bench/results/serving_cuda_h200_triton_gemms_2026-11-27.json")
                                         .read_text()))
    assert "| 128 | 6.51 | 19663 | 31.30 | 3.30 | 50.7 | - | - | 13.41 | - |" in decode   # no per-layer floor then
    assert "| decode_graphs_cublas_gemms | 128 | 6.75 | 18969 |" in decode
    prefill = serving_markdown(json.loads((ROOT / "bench/results/serving_prefill_h200_2026-11-30.json").read_text()))
    assert "| 8192 | 81.25 | 129.15 | 2072.04 |" in prefill
    assert "| glue (elementwise) | 32702 | 73862 |" in prefill and "| conv (plugin kernel) | 3258 | 3117 |" in prefill


def test_profile_categories_cover_the_plugin_kernels():
    """The cuda runtime's profile sorts kernels by category: the plugin kernels by name or namespace (prefill
    and decode variants), cuBLAS and Triton GEMMs, inductor's fused glue; anything else is eager elementwise."""
    from types import SimpleNamespace

    from hymba_deploy.bench.profile import by_category

    names = {"void hymba::wap::prefillKernel<128, 128>(hymba::WindowedAttentionParams)": "attention (plugin kernel)",
             "void hymba::wad::decodeKernel<float>(hymba::WindowedAttentionParams, int)": "attention (plugin kernel)",
             "void hymba::ssst::stateParallelKernel<__nv_bfloat16, 1>(hymba::SelectiveScanParams)": "scan (plugin kernel)",
             "void hymba::sscc::chunkedKernel<__nv_bfloat16, 16, true>(hymba::SelectiveScanParams, int)": "scan (plugin kernel)",
             "void hymba::ssk::selectiveScanKernel<__nv_bfloat16, 16, true>(hymba::SelectiveScanParams)":
                 "scan (plugin kernel)",
             "void hymba::cck::causalConv1dKernel<float>(hymba::CausalConv1dParams, int)": "conv (plugin kernel)",
             "nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT": "matmul",
             "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0": "fused elementwise (triton)",
             "void at::native::elementwise_kernel<128, 2>(int, at::native::gpu_kernel_impl)": "other elementwise"}
    events = [SimpleNamespace(key=k, self_device_time_total=10.0 * (j + 1), count=2) for j, k in enumerate(names)]
    out = by_category(SimpleNamespace(key_averages=lambda: events), 2, "prefill")
    want: dict = {}
    for j, cat in enumerate(names.values()):
        want[cat] = want.get(cat, 0.0) + 5.0 * (j + 1)
    assert {c: e["us_per_prefill"] for c, e in out["by_category"].items()} == want
    assert out["glue_us_per_prefill"] == want["fused elementwise (triton)"] + want["other elementwise"]
    assert out["total_kernel_us_per_prefill"] == sum(want.values())


def test_engine_of_another_model_is_refused(tmp_path_factory, monkeypatch):
    from deploy_helpers import built_rtx_engines, rtx_available
    if rtx_available():
        pytest.skip(rtx_available())
    from hymba_deploy.errors import HymbaDeployError
    from hymba_deploy.runtime import tensorrt_runner
    engines = built_rtx_engines(tmp_path_factory)                   # tiny's
    monkeypatch.setattr(tensorrt_runner, "engine_unavailable", lambda engine, lib=None: None)   # as on an A100
    s = BenchSettings(runtimes=("tensorrt",), engine_dirs={"hymba-1.5b": str(engines)}, prefill_lengths=(8,),
                      decode_batches=(1,), context=16, warmup=0, iters=1, decode_steps=1).for_runtime("tensorrt")
    with pytest.raises(HymbaDeployError, match="the decode engine's inputs are not those of hymba-1.5b"):
        graphs.bench_tensorrt("hymba-1.5b", s, NO_DEADLINE, lambda m: None)


# ---- tools/: the GEMM tuning scripts (not installed) ------------------------------------------------

def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["gemm_bench", "gemm_step_ab"])
def test_gemm_tuning_scripts_refuse_without_a_gpu(name, monkeypatch, capsys):
    mod = _tool(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_gemm_bench_decode_shapes_are_the_runtimes_packed_weights(tiny):
    """The shapes gemm_bench times are those the serving runtime multiplies by (padded x_proj, packed
    gate/up, padded lm_head), and its padded weights are what the runtime packs."""
    from hymba_deploy.serving import ServingConfig, ServingRuntime

    gemm_bench = _tool("gemm_bench")
    packed = ServingRuntime(tiny, ServingConfig(max_context=8)).packed
    blk, mlp = tiny.model.layers[0].mamba, tiny.model.layers[0].moe.experts[0]
    shapes = gemm_bench.decode_shapes(tiny.config)
    assert shapes["x_proj"] == tuple(packed.x_proj[0].shape)
    assert shapes["gate_up"] == tuple(packed.gate_up[0].shape)
    assert shapes["in_proj"] == tuple(blk.in_proj.weight.shape)
    assert shapes["out_proj"] == tuple(blk.out_proj.weight.shape)
    assert shapes["down_proj"] == tuple(mlp.down_proj.weight.shape)
    assert shapes["lm_head"] == tuple(packed.lm_head.shape)
    assert gemm_bench.padded(blk.x_proj[0].weight, rows=8).equal(packed.x_proj[0])
    assert gemm_bench.padded(blk.dt_proj[0].weight, cols=8).equal(packed.dt_proj[0])


@pytest.mark.parametrize("committed,prefill_only", [("serving_cuda_h200_triton_gemms_2026-11-27.json", False),
                                                     ("serving_prefill_h200_2026-11-30.json", True)])
def test_cuda_report_keeps_the_committed_layout(committed, prefill_only, monkeypatch, tmp_path):
    """The cuda runtime's sections, run on the CPU with each GPU measurement faked: the JSON has the keys
    of a committed report (and the prefill-only one those of a committed prefill-only report), batches that
    run out of memory are halved, a failed profile is a row with its error, and the file is the report."""
    from types import SimpleNamespace

    from hymba_deploy.bench import serving, serving_run

    def decode(runtime, b, *a):
        if b > 64:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"batch": b, "ms_per_step": 1.0}

    def profile(*a, **k):
        raise RuntimeError("CUPTI unavailable (simulated)")
    fake = SimpleNamespace(decode_gemms="triton", gemm_configs={}, gemv_configs={}, packed=None,
                           config=SimpleNamespace(gemv_max_rows=8))
    for name, value in {"cuda_unavailable": lambda: None, "copy_bandwidth": lambda: 4e12,
                        "_runtime": lambda *a, **k: fake}.items():
        monkeypatch.setattr(serving_run, name, value)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "simulated GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (9, 0))
    model = SimpleNamespace(config=preset("tiny"), dtype=torch.bfloat16, parameters=lambda: [torch.zeros(4, 4)],
                            kernels="cuda kernels", use_kernels=lambda k: model)
    monkeypatch.setattr(serving_run.cuda, "load_extension", lambda: None)
    for name, value in {"cuda_model": lambda *a: model,
                        "decode": decode, "prefill": lambda rt, n, reps: {"tokens": n, "ms": 1.0},
                        "profile_decode": profile, "profile_prefill": lambda rt, n: {"tokens": n},
                        "decode_reference_eager": decode, "decode_reference_compiled": decode}.items():
        monkeypatch.setattr(serving, name, value)
    s = BenchSettings(runtimes=("cuda",), prefill_only=prefill_only).for_runtime("cuda")
    res = serving_run.run_cuda("hymba-1.5b", s, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == res and res["complete"]
    want = json.loads((ROOT / "bench/results" / committed).read_text())
    assert set(want) <= set(res) and set(want["cuda"]) <= set(res["cuda"])
    assert set(want["reference"]) == set(res["reference"])
    assert [res[k] for k in ("model", "dtype", "context_tokens")] == ["hymba-1.5b", "bfloat16", 8192]
    assert (res["meta_tokens"], res["weight_bytes"]) == (preset("tiny").num_memory_tokens, 64)   # the fake model's
    if prefill_only:
        assert all(v == [] for k, v in res["cuda"].items() if k.startswith(("decode", "profile_eager", "profile_g")))
        assert [r["tokens"] for r in res["cuda"]["profile_prefill"]] == [8192, 8192]
    else:
        assert res["cuda"]["decode"][-1] == {"requested_batch": 128, "oom_batches": [128], "batch": 64,
                                             "ms_per_step": 1.0}
        assert res["cuda"]["profile_graphs"][0]["error"] == "RuntimeError: CUPTI unavailable (simulated)"
        # the split-K ablation only where the gemv kernel runs (batches <= gemv_max_rows); its settings reported
        assert [r["batch"] for r in res["cuda"]["decode_graphs_splitk_gemms"]] == [1, 8]
        assert [r["batch"] for r in res["cuda"]["decode_graphs_conv_kernel"]] == [1, 8]
        assert [r["batch"] for r in res["cuda"]["decode_graphs_cublas_gemms"]] == [1, 8, 32, 64]
        assert res["decode_gemms"]["gemv_max_rows"] == 8 and res["decode_gemms"]["gemv_configs"] == {}


def test_cuda_measurements_drive_a_real_runtime_on_the_cpu(monkeypatch, tiny_model):
    """The cuda runtime's measurement functions against a real serving runtime (tiny, reference kernels, on
    the CPU): CUDA events, peak memory and graph capture faked (graphs need a GPU), everything else as on
    the GPU: the runtime's public calls, the cache's accounting and the storage floor's arithmetic."""
    from types import SimpleNamespace

    from hymba_deploy.bench import serving
    from hymba_deploy.serving import ServingConfig, ServingRuntime

    calls = []
    monkeypatch.setattr(serving, "events_ms", lambda fn, reps: [fn() for _ in range(reps)] and 2.0)
    monkeypatch.setattr(serving, "_fresh_peak", lambda: None)
    monkeypatch.setattr(serving, "_peak", lambda: 123)
    monkeypatch.setattr(serving, "DECODE_WARMUP", 0)                       # fewer CPU steps: CI time
    monkeypatch.setattr(serving, "PREFILL_WARMUP", 0)
    model = tiny_model
    runtime = ServingRuntime(model, ServingConfig(max_context=64, buckets=(1, 2)))
    monkeypatch.setattr(runtime, "capture", lambda b: calls.append(b) or SimpleNamespace(graphs=[0, 1, 2]))
    row = serving.decode(runtime, 2, 40, steps=1, eager_steps=1, bandwidth=1e9, wbytes=serving.weight_bytes(model))
    assert calls == [2] and runtime.caches == {}                               # captured, then released
    read = row["cache_bytes_read_per_step"]
    assert row["decode_floor_ms"] == pytest.approx((serving.weight_bytes(model) + read) / 1e9 * 1e3)
    assert row["fraction_of_floor"] == pytest.approx(row["decode_floor_ms"] / 2.0)
    assert (row["tokens_per_s"], row["eager_tokens_per_s"], row["graph_segments"]) == (1e3, 1e3, 3)
    assert 0 < read <= row["cache_bytes_allocated"]
    p = serving.prefill(runtime, 24, reps=1)
    assert (p["tokens"], p["ms"], p["all_ms"], p["prefill_impl"]) == (24, 2.0, [2.0], "runtime")
    r = serving.decode_reference_eager(model, 2, 40, steps=1)
    assert (r["batch"], r["tokens_per_s"], r["peak_memory_bytes"]) == (2, 1e3, 123)


def test_per_layer_floor_counts_every_attending_layers_keys_and_the_fp32_state():
    """Issue 15's per-layer floor for hymba-1.5b at 8k context, bf16, by hand: 29 SWA layers read 128 + 1,024 keys
    and 3 global layers 128 + 8,192 (KV-sharing consumers re-read their producer's cache), 5 KV heads × (64 + 128)
    values of 2 bytes per key: (29 · 1,152 + 3 · 8,320) · 1,920 B = 112,066,560 B; each of 32 layers reads and
    writes its SSM state, 3,200 × 16 fp32 (409,600 B), and its conv state, 3,200 × 4 bf16 (51,200 B)."""
    from hymba_deploy.bench.serving import per_layer_bytes

    per_row = (29 * 1152 + 3 * 8320) * 1920 + 32 * (409_600 + 51_200)
    assert per_layer_bytes(preset("hymba-1.5b"), 1, 8192, 2) == per_row == 126_812_160
    assert per_layer_bytes(preset("hymba-1.5b"), 128, 8192, 2) == 128 * per_row
    # the figures at 4.24 TB/s with 3.05 GB of weights: ~0.75 ms at batch 1, ~4.5 ms at 128
    assert (3.05e9 + per_row) / 4.24e12 * 1e3 == pytest.approx(0.75, abs=0.01)
    assert (3.05e9 + 128 * per_row) / 4.24e12 * 1e3 == pytest.approx(4.55, abs=0.05)
