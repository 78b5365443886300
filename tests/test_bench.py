"""`hymba-deploy bench` on CPU at toy sizes: every backend in every table (ran / not run with a reason),
each backend's real settings, JSON + Markdown + PNG written (no plot without data), a git-ignored default
output folder, and the paper setup's batch halving on out-of-memory."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner

from hymba_deploy.cli import main
from deploy_helpers import exported_tiny
from hymba_deploy.bench import bench as bench_mod
from hymba_deploy.bench.bench import percentiles, synthetic_states
from hymba_deploy.config import preset


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return exported_tiny(tmp_path_factory)


def test_bench_tiny_cpu(onnx_dir, tmp_path):
    result = CliRunner().invoke(main, [
        "bench", "--models", "tiny", "--backends", "torch,onnxruntime,tensorrt", "--out", str(tmp_path),
        "--device", "cpu", "--prefill-lengths", "8,32", "--decode-batches", "1,2", "--context", "24",
        "--warmup", "1", "--iters", "2", "--decode-steps", "2", "--onnx", f"tiny={onnx_dir}"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    res = report["results"]["tiny"]
    for backend in ("torch", "onnxruntime"):
        r = res[backend]
        assert r["status"] == "ran"
        assert [row["tokens"] for row in r["prefill"]] == [8, 32]
        assert all(row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] for row in r["prefill"])
        assert [row["batch"] for row in r["decode"]] == [1, 2]
        assert all(row["tokens_per_s"] > 0 and row["context"] == 24 for row in r["decode"])
    # Cache MiB agrees between backends and with the cache's own accounting.
    assert res["torch"]["decode"][1]["cache_mib"] == res["onnxruntime"]["decode"][1]["cache_mib"]
    assert res["tensorrt"]["status"] == "not run" and res["tensorrt"]["reason"]
    md = (tmp_path / "bench.md").read_text()
    assert "Prefill latency" in md and "Decode throughput" in md
    # Every table has a row for every requested backend, "not run: reason" included.
    for table in md.split("### ")[1:]:
        for backend in ("torch", "onnxruntime", "tensorrt"):
            assert f"| {backend} " in table, (backend, table)
        assert "| tensorrt | not run: no engine given for tiny" in table
    # Each backend's real settings: ONNX Runtime warms up once whatever --warmup says.
    assert res["torch"]["settings"]["warmup"] == 1 and res["onnxruntime"]["settings"]["warmup"] == 1
    assert res["torch"]["settings"]["threads"] == torch.get_num_threads()
    assert f"| torch | 1 | 2 | 2 | {torch.get_num_threads()} | 8, 32 | 1, 2 |" in md
    assert "| onnxruntime | 1 | 2 | 2 | onnxruntime default (one per physical core) | 8, 32 | 1, 2 |" in md
    if importlib.util.find_spec("matplotlib") is not None:          # the plot is optional, the tables are not
        assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
        assert report["plot"] == {"file": "bench.png"} and "- plot: bench.png" in md


def test_bench_with_nothing_run_writes_no_plot(tmp_path):
    (tmp_path / "bench.png").write_bytes(b"\x89PNG stale")                 # from an earlier run
    result = CliRunner().invoke(main, ["bench", "--models", "tiny", "--backends", "tensorrt", "--out", str(tmp_path),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "bench.png").exists()
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["plot"]["file"] is None and "no backend produced a measurement" in report["plot"]["not_written"]
    md = (tmp_path / "bench.md").read_text()
    assert "- no plot: no backend produced a measurement" in md
    assert md.count("| tensorrt | not run: no engine given for tiny") == 3        # settings, prefill, decode


def test_default_out_is_not_the_committed_results():
    import subprocess
    from pathlib import Path

    assert bench_mod.DEFAULT_OUT == "bench/out"
    cli_default = next(p.default for p in main.commands["bench"].params if p.name == "out_dir")
    assert cli_default == bench_mod.DEFAULT_OUT
    root = Path(__file__).resolve().parents[1]
    probe = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", f"{bench_mod.DEFAULT_OUT}/bench.json"])
    if probe.returncode == 128:
        pytest.skip("not a git checkout")
    assert probe.returncode == 0, f"{bench_mod.DEFAULT_OUT}/ is not in .gitignore"


def test_synthetic_cache_matches_the_cache_size():
    from hymba_deploy.cache import HybridMambaAttentionDynamicCache as Cache
    cfg = preset("tiny")
    states = synthetic_states(cfg, 3, 40, torch.float16)
    cache = Cache.from_named_states(cfg, states, cfg.num_memory_tokens + 40)
    # size_bytes counts SWA layers at meta + window (what decode attends over); the stored cache keeps
    # window - 1 under the upstream rule: one token per SWA producer layer less.
    swa_producers = sum(1 for i in range(cfg.num_hidden_layers) if cfg.is_producer(i) and not cfg.is_global(i))
    per_token = cfg.num_key_value_heads * (cfg.qk_head_dim + cfg.v_dim) * 2 * 3
    assert cache.nbytes() == Cache.size_bytes(cfg, 40, torch.float16, 3) - swa_producers * per_token


def test_paper_setup_halves_the_batch_on_oom(monkeypatch):
    model = __import__("hymba_deploy").load_model("tiny", seed=0)
    monkeypatch.setitem(bench_mod.PAPER, "context", 16)
    real = bench_mod.synthetic_states

    def fake(config, batch, context, *a, **k):
        if batch > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(config, batch, context, *a, **k)
    monkeypatch.setattr(bench_mod, "synthetic_states", fake)
    out = bench_mod._bench_torch(model, model.config, [], [], 16, 0, 1, 1, float("inf"), lambda m: None, True)
    tries = out["paper"]["tries"]
    assert [t["batch"] for t in tries] == [128, 64, 32]
    assert tries[0]["oom"] and tries[1]["oom"] and out["paper"]["result"]["batch"] == 32


def test_percentiles():
    p = percentiles([0.001 * i for i in range(1, 101)])
    assert p["p50_ms"] == pytest.approx(50.5) and p["p99_ms"] == pytest.approx(99.01) and p["iters"] == 100


def test_engine_of_another_model_is_refused(tmp_path_factory, monkeypatch):
    from deploy_helpers import built_rtx_engines, rtx_available
    if rtx_available():
        pytest.skip(rtx_available())
    from hymba_deploy.errors import HymbaDeployError
    from hymba_deploy.runtime import tensorrt_runner
    engines = built_rtx_engines(tmp_path_factory)                   # tiny's
    monkeypatch.setattr(tensorrt_runner, "engine_unavailable", lambda engine, lib=None: None)   # as on an A100
    with pytest.raises(HymbaDeployError, match="the decode engine's inputs are not those of hymba-1.5b"):
        bench_mod._bench_tensorrt("hymba-1.5b", {"hymba-1.5b": str(engines)}, [8], [1], 16, 0, 1, 1,
                                  float("inf"), lambda m: None)
