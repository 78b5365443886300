"""`hymba-deploy build` / `inspect` on a CPU-only machine: TensorRT-RTX engines of the tiny export for
sm80 with our plugin layers, a complete sidecar, and every error case the issue names. Full-TensorRT
tests run where `tensorrt` imports (and a GPU is present) and skip with the reason otherwise."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hymba_deploy.cli import main
from deploy_helpers import built_rtx_engines, exported_tiny, plugin_library, rtx_available
from hymba_deploy.engine import backends, plugins
from hymba_deploy.engine.build import build
from hymba_deploy.engine.onnx_inputs import input_shapes, load_graph, parse_profile
from hymba_deploy.errors import HymbaDeployError

OURS = {"SelectiveScan", "CausalConv1d", "WindowedAttention"}
needs_rtx = pytest.mark.skipif(rtx_available() is not None, reason=str(rtx_available()))


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return exported_tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    if rtx_available():
        pytest.skip(rtx_available())
    return built_rtx_engines(tmp_path_factory)


# ---- the happy path ----------------------------------------------------------------------------------

@needs_rtx
def test_rtx_engines_have_our_plugin_layers(engines):
    for graph in ("prefill", "decode"):
        assert (engines / f"{graph}.engine").stat().st_size > 0
        result = CliRunner().invoke(main, ["inspect", str(engines / f"{graph}.engine"), "--json"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.output)
        assert info["plugin_counts"] == {op: 8 for op in OURS}, info["plugin_counts"]   # 8 layers x 3 ops
        assert "engine inspector not run" in info["layers_source"]                       # no GPU here: says why
        names = {t["name"] for t in info["io"]}
        assert "logits" in names and "present.ssm_state.7" in names
    text = CliRunner().invoke(main, ["inspect", str(engines)]).output
    assert "our plugin layers (24)" in text and "SelectiveScan" in text


@needs_rtx
def test_sidecar_is_complete(engines, onnx_dir):
    lib = plugin_library()
    for graph in ("prefill", "decode"):
        s = json.loads((engines / f"{graph}.engine.json").read_text())
        assert s["backend"] == "tensorrt-rtx" and s["backend_version"].startswith("1.")
        assert s["target"] == "sm80" and s["compute_capability"] == "8.0" and s["strongly_typed"]
        assert s["engine_bytes"] == (engines / f"{graph}.engine").stat().st_size
        prof = s["profiles"][0]
        assert prof["axes"]["batch"] == [1, 2, 4] and prof["axes"]["seq"] == [1, 32, 128]
        assert prof["inputs"]["input_ids"]["max"] == ([4, 128] if graph == "prefill" else [4, 1])
        io_in = {t["name"]: t for t in s["io"]["inputs"]}
        assert io_in["input_ids"]["dtype"] == "int64"
        per_row = "lengths" if graph == "prefill" else "positions"           # op version 2: per-row inputs
        assert io_in[per_row]["dtype"] == "int64" and prof["inputs"][per_row]["max"] == [4]
        assert s["op_version"] == 2
        assert {t["name"] for t in s["io"]["outputs"]} >= {"logits", "present.0.key", "present.conv_state.7"}
        assert Path(s["plugin_library"]["path"]) == Path(lib).resolve()
        assert s["plugin_library"]["sha256"] == plugins.sha256(lib)
        assert s["plugin_library"]["tensorrt_headers"].startswith("11.")
        assert s["source_onnx"]["sha256"] == plugins.sha256(onnx_dir / f"{graph}.onnx")
        assert s["build_seconds"] > 0 and s["built_at"]
        assert {p["plugin"]["name"] for p in s["plugin_layers"]} == OURS
        assert s["hymba_nodes"] == {op: 8 for op in OURS}
    leftovers = [p.name for p in engines.iterdir() if p.name.startswith(".")]
    assert not leftovers                                          # atomic writes leave no temporaries
    assert not list(onnx_dir.glob(".*trt.onnx"))                 # nor does the function-stripped copy


def test_decode_profile_shapes_follow_the_cache(onnx_dir):
    proto = load_graph(onnx_dir / "decode.onnx")
    shapes = input_shapes(proto, parse_profile("batch=1:2:4,seq=1:32:100", 128))
    assert shapes["positions"] == [(1,), (2,), (4,)] and shapes["input_ids"] == [(1, 1), (2, 1), (4, 1)]
    prefill = input_shapes(load_graph(onnx_dir / "prefill.onnx"), parse_profile("batch=1:2:4,seq=1:32:100", 128))
    assert prefill["lengths"] == [(1,), (2,), (4,)] and prefill["input_ids"] == [(1, 1), (2, 32), (4, 100)]
    # tiny: 8 meta tokens; global layers hold meta + seq, SWA layers meta + min(seq, window - 1 = 15).
    assert shapes["past.0.key"] == [(1, 9, 2, 16), (2, 40, 2, 16), (4, 108, 2, 16)]
    assert shapes["past.1.key"] == [(1, 9, 2, 16), (2, 23, 2, 16), (4, 23, 2, 16)]
    assert shapes["ssm_state.3"] == [(1, 128, 8), (2, 128, 8), (4, 128, 8)]


# ---- errors ---------------------------------------------------------------------------------------

@needs_rtx
def test_sm90_is_refused_for_tensorrt_rtx(onnx_dir, tmp_path):
    with pytest.raises(HymbaDeployError, match=r"compute capability 9\.0 \(H100/H200\).*--backend tensorrt"):
        build(onnx_dir, tmp_path, backend="tensorrt-rtx", target="sm90", plugin_library=plugin_library())
    assert not list(tmp_path.iterdir())


@needs_rtx
def test_target_current_needs_a_gpu(onnx_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "current_compute_capability", lambda: None)
    with pytest.raises(HymbaDeployError, match="needs a CUDA GPU"):
        build(onnx_dir, tmp_path, backend="tensorrt-rtx", target="current")


def test_bad_names_fail_before_any_work(onnx_dir, tmp_path):
    with pytest.raises(HymbaDeployError, match="--target 'sm75'"):
        build(onnx_dir, tmp_path, target="sm75")
    with pytest.raises(HymbaDeployError, match="--backend 'trt'"):
        build(onnx_dir, tmp_path, backend="trt")
    with pytest.raises(HymbaDeployError, match="exceeds the 128 tokens"):
        build(onnx_dir, tmp_path, profile="seq=1:64:4096")
    with pytest.raises(HymbaDeployError, match="MIN <= OPT <= MAX"):
        build(onnx_dir, tmp_path, profile="batch=8:2:4")
    with pytest.raises(HymbaDeployError, match="neither prefill.onnx nor decode.onnx"):
        build(tmp_path, tmp_path / "out")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_missing_backend_names_the_install(onnx_dir, tmp_path):
    with pytest.raises(HymbaDeployError, match="tensorrt is not installed.*tensorrt-cu13"):
        build(onnx_dir, tmp_path, backend="tensorrt", target="current")


@needs_rtx
def test_node_without_plugin_is_named(onnx_dir, tmp_path):
    import onnx
    bad = tmp_path / "onnx"
    bad.mkdir()
    proto = onnx.load(str(onnx_dir / "decode.onnx"))
    node = next(n for n in proto.graph.node if n.op_type == "CausalConv1d")
    for a in node.attribute:
        if a.name == "plugin_version":
            a.s = b"7"
    onnx.save(proto, str(bad / "decode.onnx"))
    with pytest.raises(HymbaDeployError, match=rf"no plugin in .* for 1 hymba node\(s\): {node.name} "
                                               r"\(CausalConv1d version 7"):
        build(bad / "decode.onnx", tmp_path / "out", backend="tensorrt-rtx", target="sm80",
              plugin_library=plugin_library())
    assert not (tmp_path / "out" / "decode.engine").exists()


def _as_version_1(src: Path, dst: Path) -> Path:
    """`src` as an export of op version 1 wrote it: `hymba` opset 1, plugin_version "1" on every node."""
    import onnx
    proto = onnx.load(str(src))
    for o in proto.opset_import:
        if o.domain == "hymba":
            o.version = 1
    for node in proto.graph.node:
        for a in node.attribute:
            if a.name == "plugin_version":
                a.s = b"1"
    onnx.save(proto, str(dst))
    return dst


def test_version_1_export_is_refused(onnx_dir, tmp_path):
    """An ONNX of op version 1 (no lengths/positions, 3-input WindowedAttention) is refused before any
    work, naming the file and saying re-export; the build writes nothing."""
    old = _as_version_1(onnx_dir / "decode.onnx", tmp_path / "decode.onnx")
    with pytest.raises(HymbaDeployError, match=rf"{old}: exported with hymba op version 1, plugin_version 1; "
                                               r"this hymba-deploy reads op version 2 .*re-export"):
        build(old, tmp_path / "out", backend="tensorrt-rtx", target="sm80")
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(main, ["build", str(old), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "error: " in result.output and "re-export" in result.output


def _with_build_info(src: Path, dst: Path, info: bytes | None) -> Path:
    """A copy of plugin library `src` whose embedded build info says `info` (same length), or has none."""
    data = src.read_bytes()
    m = plugins.BUILD_INFO.search(data)
    assert m, "the plugin library embeds the TensorRT version it was compiled against"
    new = info if info is not None else b"x" * len(m.group(0))
    assert len(new) == len(m.group(0))
    dst.write_bytes(data[:m.start()] + new + data[m.end():])
    return dst


def test_plugin_library_embeds_its_tensorrt_headers_version(tmp_path):
    """The version string compiled into the library equals the headers its CMake build used."""
    lib = Path(plugin_library())
    version, source = plugins.library_tensorrt_version(lib)
    assert "embedded" in source and version is not None
    if (lib.parent / "CMakeCache.txt").is_file():
        stripped = _with_build_info(lib, tmp_path / lib.name, None)
        shutil.copy(lib.parent / "CMakeCache.txt", tmp_path / "CMakeCache.txt")
        from_cache, source = plugins.library_tensorrt_version(stripped)
        assert from_cache == version and "CMakeCache" in source


@needs_rtx
def test_library_for_another_tensorrt_major_is_refused(onnx_dir, tmp_path):
    libdir = tmp_path / "lib"
    libdir.mkdir()
    real = Path(plugin_library())
    ours = plugins.library_tensorrt_version(real)[0].encode()
    other = b"10" + b".9" * ((len(ours) - 2) // 2) + b"0" * ((len(ours) - 2) % 2)   # same length as ours
    lib = _with_build_info(real, libdir / "libhymba_plugins.so", b"hymba-plugins tensorrt=" + other + b";")
    with pytest.raises(HymbaDeployError, match=rf"compiled against TensorRT {other.decode()} headers.*TensorRT 11\.x"):
        build(onnx_dir, tmp_path / "out", backend="tensorrt-rtx", target="sm80", plugin_library=lib)
    # Without the embedded string: the CMake cache beside the library, then a JSON sidecar, say it.
    fake = tmp_path / "trt10" / "include"
    fake.mkdir(parents=True)
    (fake / "NvInferVersion.h").write_text("#define NV_TENSORRT_MAJOR 10\n#define NV_TENSORRT_MINOR 9\n"
                                          "#define NV_TENSORRT_PATCH 0\n")
    _with_build_info(real, lib, None)
    assert plugins.library_tensorrt_version(lib)[0] is None
    (libdir / "CMakeCache.txt").write_text(f"TensorRT_INCLUDE_DIR:PATH={fake}\n")
    with pytest.raises(HymbaDeployError, match=r"compiled against TensorRT 10\.9\.0 headers.*TensorRT 11\.x"):
        build(onnx_dir, tmp_path / "out", backend="tensorrt-rtx", target="sm80", plugin_library=lib)
    (libdir / "CMakeCache.txt").unlink()
    (libdir / "libhymba_plugins.so.json").write_text('{"tensorrt_version": "10.13.2"}')
    assert plugins.library_tensorrt_version(lib)[0] == "10.13.2"


def test_missing_plugin_file_is_a_user_error(tmp_path):
    with pytest.raises(HymbaDeployError, match="no such file"):
        plugins.ensure_library(tmp_path / "nope.so")


def test_cli_build_error_exit_code(onnx_dir, tmp_path):
    result = CliRunner().invoke(main, ["build", str(onnx_dir), "--out", str(tmp_path), "--target", "sm90"])
    assert result.exit_code == 1
    assert "error:" in result.output


# ---- the libtensorrt_rtx.so symlink ------------------------------------------------------------------

def _fake_rtx_libs(tmp_path, monkeypatch):
    libs = tmp_path / "tensorrt_rtx_libs"
    libs.mkdir()
    (libs / "libtensorrt_rtx.so.1").write_bytes(b"\x7fELF")
    spec = type("Spec", (), {"submodule_search_locations": [str(libs)]})()
    real = importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec",
                        lambda name, *a: spec if name == "tensorrt_rtx_libs" else real(name, *a))
    return libs


def test_rtx_symlink_made_next_to_the_library(tmp_path, monkeypatch):
    libs = _fake_rtx_libs(tmp_path, monkeypatch)
    assert backends.fix_rtx_library() is None
    link = libs / "libtensorrt_rtx.so"
    assert link.is_symlink() and os.readlink(link) == "libtensorrt_rtx.so.1"
    assert backends.fix_rtx_library() is None                   # idempotent


def test_rtx_symlink_in_a_private_folder_when_read_only(tmp_path, monkeypatch):
    libs = _fake_rtx_libs(tmp_path, monkeypatch)
    real_symlink = os.symlink

    def symlink(src, dst, *a, **k):                             # root ignores chmod: refuse like a read-only dir
        if Path(dst).parent == libs:
            raise PermissionError(13, "Permission denied")
        return real_symlink(src, dst, *a, **k)
    monkeypatch.setattr(backends.os, "symlink", symlink)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    with pytest.raises(backends.LibraryPathNeeded) as e:
        backends.fix_rtx_library()
    private = e.value.directory
    assert (private / "libtensorrt_rtx.so").resolve() == (libs / "libtensorrt_rtx.so.1").resolve()
    assert "LD_LIBRARY_PATH" in str(e.value)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(private))        # what the CLI's re-exec sets
    assert backends.fix_rtx_library() == private


# ---- full TensorRT (data-centre GPUs) ----------------------------------------------------------------

def _trt_skip_reason():
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install tensorrt-cu13 from NVIDIA's index)"
    if backends.current_compute_capability() is None:
        return "full TensorRT builds for the GPU it runs on and there is none here"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_trt_skip_reason() is not None, reason=str(_trt_skip_reason()))
def test_full_tensorrt_build_and_inspect(onnx_dir, tmp_path):
    # Full TensorRT and TensorRT-RTX cannot share a process through Polygraphy: run in a fresh one.
    import subprocess
    import sys
    out = tmp_path / "trt"
    proc = subprocess.run([sys.executable, "-m", "hymba_deploy.cli", "build", str(onnx_dir), "--out", str(out),
                           "--backend", "tensorrt", "--target", "current", "--profile", "batch=1:1:2,seq=1:16:64"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "hymba_deploy.cli", "inspect", str(out / "decode.engine"), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["layers_source"] == "engine inspector"
    assert set(info["plugin_counts"]) == OURS


@pytest.mark.gpu
@pytest.mark.skipif(_trt_skip_reason() is not None, reason=str(_trt_skip_reason()))
def test_full_tensorrt_target_must_be_this_gpu(onnx_dir, tmp_path):
    import subprocess
    import sys
    cc = backends.current_compute_capability()
    other = "sm86" if cc != (8, 6) else "sm80"
    proc = subprocess.run([sys.executable, "-m", "hymba_deploy.cli", "build", str(onnx_dir), "--out", str(tmp_path),
                           "--backend", "tensorrt", "--target", other], capture_output=True, text=True)
    assert proc.returncode == 1 and "builds for the GPU it runs on" in proc.stderr


@needs_rtx
def test_graph_with_external_weights_builds(onnx_dir, tmp_path):
    # hymba-1.5b's graphs keep their weights in `<graph>.onnx.data`: the function-stripped copy must resolve it.
    import onnx
    src = tmp_path / "onnx"
    src.mkdir()
    proto = onnx.load(str(onnx_dir / "decode.onnx"))
    onnx.save(proto, str(src / "decode.onnx"), save_as_external_data=True, location="decode.onnx.data",
              size_threshold=1024)
    assert (src / "decode.onnx.data").stat().st_size > 1_000_000
    results = build(src / "decode.onnx", tmp_path / "out", backend="tensorrt-rtx", target="sm86",
                    plugin_library=plugin_library(), profile="batch=1:1:2,seq=1:8:32")
    assert results["decode"]["compute_capability"] == "8.6" and len(results["decode"]["plugin_layers"]) == 24
    assert sorted(p.name for p in src.iterdir()) == ["decode.onnx", "decode.onnx.data"]


@needs_rtx
def test_engine_runnable_only_on_its_target(engines, monkeypatch):
    from hymba_deploy.runtime.tensorrt_runner import engine_unavailable
    engine = engines / "decode.engine"
    for cc, needle in [(None, "no CUDA GPU"), ((9, 0), "compute capability 9.0"), ((8, 6), "targets compute capability 8.0")]:
        monkeypatch.setattr(backends, "current_compute_capability", lambda cc=cc: cc)
        assert needle in engine_unavailable(engine)
    monkeypatch.setattr(backends, "current_compute_capability", lambda: (8, 0))
    assert "pass --plugins PATH" in engine_unavailable(engine)    # an A100, but no library of that sha256 cached
    assert engine_unavailable(engine, plugin_library()) is None   # an A100 with the engine's library runs it
    with pytest.raises(HymbaDeployError, match="no such engine file"):   # missing: an error, not a reason
        engine_unavailable(engines / "missing.engine")
