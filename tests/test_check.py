"""`hymba-deploy check`: torch vs ONNX Runtime over prefill and decode steps on the tiny export; the
engine reported "not run: <reason>" (never passed); a deliberately perturbed model caught and localised."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hymba_deploy.cli import main
from deploy_helpers import built_rtx_engines, exported_tiny, rtx_available
from hymba_deploy import load_model
from hymba_deploy.parity.check import check, format_report
from hymba_deploy.parity.compare import TOLERANCES, compare_outputs, metrics
from hymba_deploy.parity.localize import first_divergent_layer, layer_of
from hymba_deploy.runtime import Runner

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return exported_tiny(tmp_path_factory)


def test_torch_and_onnxruntime_agree_engine_not_run(onnx_dir, tmp_path, tmp_path_factory):
    engine_args = ["--engine", str(built_rtx_engines(tmp_path_factory))] if rtx_available() is None else []
    report_path = tmp_path / "check.json"
    result = CliRunner().invoke(main, ["check", "tiny", "--onnx", str(onnx_dir), *engine_args,
                                       "--prompts", "2", "--steps", "3", "--json-out", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    ort = report["runtimes"]["onnxruntime"]
    # (2 prompts + the ragged batch's 4 rows) x (prefill + 3 decode steps) x (logits + 26 cache tensors of tiny)
    assert ort["status"] == "passed" and ort["compared"] == (2 + 4) * 4 * 27 and ort["failed"] == 0
    # The ragged batch: rows at window + meta (16 + 8), 1 token, the longest allowed, below; each row against
    # its prompt alone.
    assert report["prompts"][-1] == {"batch": 4, "tokens": [24, 1, 48, 12], "ragged": True}
    assert ort["ragged"] == "compared: rows of 24, 1, 48, 12 tokens"
    ragged = [r for r in report["results"] if "row" in r]
    assert {(r["row"], r["tokens"]) for r in ragged} == {(0, 24), (1, 1), (2, 48), (3, 12)}
    assert len(ragged) == 4 * 4 * 27 and all(r["ok"] for r in ragged)
    assert "ragged 24/1/48/12 tokens" in result.output and "\n" + "onnxruntime     3.2 decode 3" in result.output
    steps = {r["step"] for r in report["results"]}
    assert steps == {"prefill", "decode 1", "decode 2", "decode 3"}
    outputs = {r["output"] for r in report["results"]}
    assert {"logits", "present.0.key", "present.1.value", "present.conv_state.7", "present.ssm_state.7"} <= outputs
    trt = report["runtimes"]["tensorrt"]
    if rtx_available() is None:                                     # valid engines that cannot run here
        assert trt["status"] == "not run" and "GPU" in trt["reason"]  # a reason, never "passed"
        assert f"tensorrt     not run: {trt['reason']}" in result.output
        assert report["not_run"] == ["tensorrt"]
        assert result.output.rstrip().endswith("PASS (1 of 2 runtimes ran; 1 not run: tensorrt)")
    else:
        assert trt["status"] == "not requested" and report["not_run"] == []
        assert "tensorrt     not requested: no --engine DIR given" in result.output
    assert report["tolerances"][""] == TOLERANCES["float32"]


@pytest.mark.skipif(rtx_available() is not None, reason=str(rtx_available()))
def test_strict_makes_not_run_exit_1(onnx_dir, tmp_path_factory):
    engines = built_rtx_engines(tmp_path_factory)         # valid engines that cannot execute here (no GPU)
    args = ["check", "tiny", "--onnx", str(onnx_dir), "--engine", str(engines), "--prompts", "1", "--steps", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "tensorrt     not run: no CUDA GPU" in result.output, result.output
    result = CliRunner().invoke(main, [*args, "--strict"])
    assert result.exit_code == 1 and "1 not run: tensorrt" in result.output, result.output


def test_summary_line_counts_runtimes_not_run():
    from hymba_deploy.parity.check import summary_line
    two = {"onnxruntime": {"status": "passed"}, "tensorrt": {"status": "not run"}}
    assert summary_line({"ok": True, "runtimes": two, "not_run": ["tensorrt"]}) == \
        "PASS (1 of 2 runtimes ran; 1 not run: tensorrt)"
    unasked = {"onnxruntime": {"status": "passed"}, "tensorrt": {"status": "not requested"}}
    assert summary_line({"ok": True, "runtimes": unasked, "not_run": []}) == "PASS (1 of 1 runtimes ran)"
    assert summary_line({"ok": False, "runtimes": two, "not_run": ["onnxruntime", "tensorrt"]}) == \
        "FAIL: no runtime ran (2 not run: onnxruntime, tensorrt)"


@pytest.mark.parametrize("make, needle", [
    (lambda d, engines: d / "missing", "no such build folder"),
    (lambda d, engines: d, "no .engine files in it"),
    (lambda d, engines: _only(d, engines, "prefill"), "decode.engine not found"),
    (lambda d, engines: _truncated(d, engines), "bytes, but its sidecar records"),
    (lambda d, engines: _sidecar_text(d, engines, "{oops"), "not a readable engine sidecar"),
])
def test_bad_engine_folder_is_an_error_not_pass(onnx_dir, tmp_path, tmp_path_factory, make, needle):
    engines = built_rtx_engines(tmp_path_factory) if rtx_available() is None else None
    if engines is None and "folder" not in needle and "no .engine" not in needle:
        pytest.skip(rtx_available())
    bad = make(tmp_path, engines)
    result = CliRunner().invoke(main, ["check", "tiny", "--onnx", str(onnx_dir), "--engine", str(bad)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "error: " in result.output and needle in result.output and "PASS" not in result.output


def _only(d, engines, graph):
    for name in (f"{graph}.engine", f"{graph}.engine.json"):
        shutil.copy(engines / name, d / name)
    return d


def _truncated(d, engines):
    _only(_only(d, engines, "prefill"), engines, "decode")
    data = (d / "decode.engine").read_bytes()
    (d / "decode.engine").write_bytes(data[:-100])
    return d


def _sidecar_text(d, engines, text):
    _only(_only(d, engines, "prefill"), engines, "decode")
    (d / "prefill.engine.json").write_text(text)
    return d


def test_perturbed_layer_is_caught_and_localised(onnx_dir):
    model = load_model("tiny", seed=0)
    with torch.no_grad():                                        # layer 3's output projection only
        w = model.model.layers[3].mamba.out_proj.weight
        w.add_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
    report = check(model, onnx_dir, prompts=1, steps=1)
    assert not report["ok"]
    ort = report["runtimes"]["onnxruntime"]
    assert ort["status"] == "failed" and ort["first_failure"]["step"] == "prefill"
    found = ort["localization"]["first_divergent"]
    # Layer 3's caches come before out_proj and still match; its output hidden state does not.
    assert found["layer"] == 3 and found["evidence"] == "layer.3.hidden", found
    hidden = {h["layer"]: h["ok"] for h in ort["localization"]["per_layer_hidden"]}
    assert hidden[0] and hidden[1] and hidden[2] and not hidden[3]
    assert "first divergent layer: model.layers.3" in format_report(report)


def test_cli_exit_code_1_on_mismatch(onnx_dir):
    result = CliRunner().invoke(main, ["check", "tiny", "--onnx", str(onnx_dir), "--seed", "5",
                                       "--prompts", "1", "--steps", "0"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "first divergent layer: model.layers.0" in result.output


def test_wrong_config_is_a_user_error(onnx_dir):
    result = CliRunner().invoke(main, ["check", "hymba-1.5b", "--onnx", str(onnx_dir)])
    assert result.exit_code == 1 and "config differs" in result.output


def test_missing_onnx_is_a_user_error(tmp_path):
    result = CliRunner().invoke(main, ["check", "tiny", "--onnx", str(tmp_path)])
    assert result.exit_code == 1 and "hymba-deploy export" in result.output


def test_metrics_report_nonfinite_separately():
    ref = np.ones((2, 3), np.float32)
    out = ref.copy()
    out[0, 1] = np.nan
    m = metrics(out, ref)
    assert m["nonfinite"] == [1, 0] and m["rel_l2"] == float("inf")
    rows = compare_outputs({"a": out, "b": ref * 0}, {"a": ref, "b": ref * 0}, {"": TOLERANCES["float32"]})
    assert [r["ok"] for r in rows] == [False, True]             # NaN fails; zeros equal zeros
    assert metrics(-ref, ref)["cosine"] == pytest.approx(-1.0)


def test_layer_names_and_first_divergence():
    assert [layer_of(n) for n in ("present.3.key", "present.conv_state.12", "past.4.value", "layer.7.hidden",
                                  "logits")] == [3, 12, 4, 7, None]
    rows = [{"output": "present.2.key", "ok": True}, {"output": "present.ssm_state.5", "ok": False, "rel_l2": 1.0},
            {"output": "layer.4.hidden", "ok": False, "rel_l2": 0.5}]
    assert first_divergent_layer(rows)["layer"] == 4


@pytest.mark.skipif(rtx_available() is not None, reason=str(rtx_available()))
def test_engine_profile_must_be_readable(tmp_path, tmp_path_factory):
    from hymba_deploy.errors import HymbaDeployError
    from hymba_deploy.parity.check import _profile_axes
    engines = _only(tmp_path, built_rtx_engines(tmp_path_factory), "prefill")
    assert _profile_axes(engines / "prefill.engine") == {"batch": [1, 2, 4], "seq": [1, 32, 128]}
    sidecar = json.loads((engines / "prefill.engine.json").read_text())
    sidecar["profiles"] = [{"axes": {"batch": [1, 2]}}]                  # not (min, opt, max)
    (engines / "prefill.engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(HymbaDeployError, match=r"prefill\.engine\.json: not an engine sidecar .*profiles"):
        _profile_axes(engines / "prefill.engine")
    sidecar["profiles"] = [{"axes": {"batch": [1, 2, 4]}}]               # well formed, but no seq axis
    (engines / "prefill.engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(HymbaDeployError, match=r"prefill\.engine\.json: no optimisation profile"):
        _profile_axes(engines / "prefill.engine")


# ---- the serving runtime as a runner (`--runtime cuda` on a GPU; its reference-kernel form here) ---------
def _serving_runners(model, config, keep=0):
    from hymba_deploy.runtime import ServingRunner
    from hymba_deploy.serving import ServingRuntime
    runtime = ServingRuntime(model, config)
    return {g: ServingRunner(runtime, g, logits_to_keep=keep) for g in ("prefill", "decode")}


@pytest.mark.parametrize("eviction", ["upstream", "exact"])
@pytest.mark.parametrize("n_prompt,keep", [(3, 0), (30, 1)])
def test_serving_runner_is_the_exported_graphs_contract(eviction, n_prompt, keep):
    """`ServingRunner` (reference kernels, CPU) against `TorchRunner` through prefill and 11 decode steps,
    each feeding its own present.* back: every output within the fp32 bound, past the SWA ring's wrap (30 >
    tiny's window), with all prompt logits or the last one's."""
    from hymba_deploy.cache import HybridMambaAttentionDynamicCache as Cache
    from hymba_deploy.runtime import TorchRunner
    from hymba_deploy.serving import ServingConfig

    ref_model = load_model("tiny", seed=0)
    cfg = ref_model.config
    reference = {g: TorchRunner(ref_model, g, eviction, logits_to_keep=keep) for g in ("prefill", "decode")}
    served = _serving_runners(load_model("tiny", seed=0), ServingConfig(max_context=48, buckets=(2,),
                                                                        eviction=eviction), keep)
    cache_io = [(p, q) for (p, _, _), (q, _, _) in zip(Cache.state_names(cfg, present=True), Cache.state_names(cfg))]
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, n_prompt)).astype(np.int64)
    lengths = np.full(2, n_prompt, dtype=np.int64)
    feeds = [{"input_ids": ids, "lengths": lengths}, {"input_ids": ids, "lengths": lengths}]
    for r in [*reference.values(), *served.values()]:
        r.activate()
    for step in range(12):
        graph = "prefill" if step == 0 else "decode"
        ref, out = reference[graph].infer(feeds[0]), served[graph].infer(feeds[1])
        rows = compare_outputs(out, ref, {"": TOLERANCES["float32"]}, names=list(ref))
        assert all(r["ok"] for r in rows), (step, [r for r in rows if not r["ok"]][:2])
        token = ref["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        positions = cfg.num_memory_tokens + lengths + step
        feeds = [{"input_ids": token, "positions": positions, **{q: o[p] for p, q in cache_io}} for o in (ref, out)]


def test_check_runtime_cuda_without_gpu_is_not_run_never_pass(onnx_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(main, ["check", "tiny", "--onnx", str(onnx_dir), "--prompts", "1", "--steps", "1",
                                       "--runtime", "cuda"])
    assert result.exit_code == 0, result.output
    assert "cuda         not run: no CUDA GPU on this machine" in result.output
    assert result.output.rstrip().endswith("1 not run: cuda)") and "PASS (1 of" in result.output
    result = CliRunner().invoke(main, ["check", "tiny", "--onnx", str(onnx_dir), "--prompts", "1", "--steps", "1",
                                       "--runtime", "cuda", "--strict"])
    assert result.exit_code == 1


def test_check_compares_the_serving_runtime_and_localises_its_failure(onnx_dir, monkeypatch):
    """The `cuda` candidate goes through the same run -> compare -> localise steps as the others: here the
    serving runtime on the reference kernels (CPU) stands in for the cuda kernels, once exact (passes) and
    once with layer 2's out_proj perturbed (fails, localised to layer 2 by its cache tensors)."""
    from hymba_deploy.parity import check as check_mod
    from hymba_deploy.runtime import ServingRunner
    from hymba_deploy.serving import ServingConfig, ServingRuntime

    def stand_in(perturb):
        def candidate(plan, model, seed, batch_size, steps):
            served = load_model("tiny", seed=seed)
            if perturb:
                with torch.no_grad():
                    served.model.layers[2].mamba.out_proj.weight.mul_(1.5)
            runtime = ServingRuntime(served, ServingConfig(max_context=plan.max_prompt_len + steps,
                                                           buckets=(batch_size,), eviction=plan.eviction))
            return check_mod._Candidate({"status": "pending", "detail": "reference kernels on CPU"},
                                        {g: (lambda cap, g=g: ServingRunner(runtime, g, plan.logits_to_keep))
                                         for g in plan.needed})
        return candidate

    monkeypatch.setattr(check_mod, "_serving_cuda", stand_in(False))
    report = check("tiny", onnx_dir, prompts=1, steps=2, runtimes=("cuda",))
    cuda = report["runtimes"]["cuda"]
    assert report["ok"] and cuda["status"] == "passed" and cuda["compared"] == 3 * 27 and cuda["failed"] == 0
    # The serving runner takes no per-row lengths: its ragged case is "not run", with the reason.
    assert cuda["ragged"] == "not run: its prefill and decode graph takes no per-row lengths"
    monkeypatch.setattr(check_mod, "_serving_cuda", stand_in(True))
    report = check("tiny", onnx_dir, prompts=1, steps=2, runtimes=("cuda",))
    cuda = report["runtimes"]["cuda"]
    assert not report["ok"] and cuda["status"] == "failed" and cuda["first_failure"]["step"] == "prefill"
    assert cuda["localization"]["first_divergent"]["layer"] == 3         # layer 2's output feeds layer 3's caches
    assert cuda["localization"]["method"] == "cache tensors (no layer outputs)"


# ---- the ragged case: each row against its prompt alone ------------------------------------------------
class _IgnoresLengths(Runner):
    """A candidate that gets uniform batches right but runs a ragged prefill as if every row were full
    (`lengths` = seq): padding then reaches the rows' carried states."""

    def __init__(self, inner):
        super().__init__("ignores-lengths")
        self.inner = inner

    def input_names(self):
        return self.inner.input_names()

    def activate_impl(self):
        self.inner.activate()

    def deactivate_impl(self):
        self.inner.deactivate()

    def infer_impl(self, feed):
        if "lengths" in feed:
            feed = dict(feed, lengths=np.full_like(feed["lengths"], feed["input_ids"].shape[1]))
        return self.inner.infer(feed)


def test_ragged_rows_are_compared_against_each_prompt_alone(onnx_dir, monkeypatch):
    """A runtime that ignores `lengths` passes every uniform batch and fails the ragged case, at the prefill
    of a padded row (the longest row has no padding and passes); the failure names the row, and is not
    localised (the reference of a ragged row is its prompt alone, not the batch)."""
    from hymba_deploy.parity import check as check_mod
    from hymba_deploy.runtime import TorchRunner

    def candidate(plan, model, seed, batch_size, steps):
        return check_mod._Candidate({"status": "pending", "detail": "torch ignoring lengths"},
                                    {g: (lambda cap, g=g: _IgnoresLengths(TorchRunner(plan.reference_model, g,
                                                                                      plan.eviction)))
                                     for g in plan.needed})

    monkeypatch.setattr(check_mod, "_serving_cuda", candidate)
    report = check("tiny", onnx_dir, prompts=1, steps=1, runtimes=("cuda",))
    cuda = report["runtimes"]["cuda"]
    assert not report["ok"] and cuda["status"] == "failed"
    uniform = [r for r in report["results"] if r["runtime"] == "cuda" and "row" not in r]
    assert uniform and all(r["ok"] for r in uniform)
    failed_rows = {r["row"] for r in report["results"] if r["runtime"] == "cuda" and not r["ok"]}
    assert failed_rows == {0, 1, 3}                                      # rows 24, 1, 12 of 48: padded
    assert cuda["first_failure"] == {"prompt": 1, "row": 0, "step": "prefill", "graph": "prefill",
                                     "outputs": cuda["first_failure"]["outputs"]}
    assert "localization" not in cuda
    assert "first failure at prompt 2 row 1, prefill" in format_report(report)
    assert report["runtimes"]["onnxruntime"]["status"] == "passed"


def test_version_1_export_is_refused_by_check(onnx_dir, tmp_path):
    """An export of op version 1 (its manifest intact) is refused, naming the file: re-export."""
    import hashlib

    import onnx
    old = tmp_path / "old"
    shutil.copytree(onnx_dir, old)
    proto = onnx.load(str(old / "prefill.onnx"))
    for o in proto.opset_import:
        if o.domain == "hymba":
            o.version = 1
    onnx.save(proto, str(old / "prefill.onnx"))
    manifest = json.loads((old / "manifest.json").read_text())
    data = (old / "prefill.onnx").read_bytes()
    manifest["graphs"]["prefill"]["files"]["prefill.onnx"] = {"bytes": len(data),
                                                              "sha256": hashlib.sha256(data).hexdigest()}
    (old / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["check", "tiny", "--onnx", str(old), "--steps", "0"])
    assert result.exit_code == 1 and "PASS" not in result.output
    assert f"error: {old / 'prefill.onnx'}: exported with hymba op version 1" in result.output
    assert "re-export" in result.output
