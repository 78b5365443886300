"""Artifacts from elsewhere (engines, sidecars, exports, checkpoints) never run code or read outside their
folder, and an unreadable one is an error naming the file: `fileio.resolve_inside` for files an artifact
names, `engine.artifact` for engines and sidecars, the plugin library only by sha256 and never from the
path a sidecar names (issue #12, points 3 and 6)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hymba_deploy.cli import main
from deploy_helpers import built_rtx_engines, plugin_library, rtx_available
from hymba_deploy.engine import artifact, inspect as inspect_mod, plugins
from hymba_deploy.errors import HymbaDeployError
from hymba_deploy.fileio import resolve_inside, sha256_file


# ---- a name inside its folder --------------------------------------------------------------------------

def test_resolve_inside_refuses_names_leading_out(tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "outside.bin").write_bytes(b"x")
    assert resolve_inside(folder, "a.safetensors", "index") == (folder / "a.safetensors").resolve()
    assert resolve_inside(folder, "sub/b.bin", "index") == (folder / "sub" / "b.bin").resolve()
    os.symlink(folder / "sub", folder / "inner")                       # a link that stays inside is fine
    assert resolve_inside(folder, "inner/b.bin", "index") == (folder / "sub" / "b.bin").resolve()
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    os.symlink(tmp_path, folder / "up")
    for name, needle in [(str(tmp_path / "outside.bin"), "absolute or '..'"), ("../outside.bin", "absolute or '..'"),
                         ("sub/../../outside.bin", "absolute or '..'"), ("link.bin", "symlink leading outside"),
                         ("up/outside.bin", "symlink leading outside"), ("", "not a file name"),
                         (None, "not a file name"), (7, "not a file name")]:
        with pytest.raises(HymbaDeployError, match=needle) as e:
            resolve_inside(folder, name, f"{folder}/model.safetensors.index.json")
        assert "model.safetensors.index.json" in str(e.value)


def _checkpoint_with_index(tmp_path, weight_map) -> Path:
    import torch
    from safetensors.torch import save_file

    from hymba_deploy.checkpoint import INDEX_FILE
    root = tmp_path / "ckpt"
    root.mkdir()
    save_file({"model.embed_tokens.weight": torch.ones(2, 2)}, str(root / "model-00001-of-00001.safetensors"))
    (root / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


def test_sharded_index_naming_a_file_outside_is_refused(tmp_path):
    from hymba_deploy.checkpoint import weight_headers
    root = _checkpoint_with_index(tmp_path, {"model.embed_tokens.weight": "model-00001-of-00001.safetensors"})
    assert "model.embed_tokens.weight" in weight_headers(root)          # the honest index reads
    shutil.copy(root / "model-00001-of-00001.safetensors", tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", root / "link.safetensors")
    for shard in ["../elsewhere.safetensors", str(tmp_path / "elsewhere.safetensors"), "link.safetensors"]:
        (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
        with pytest.raises(HymbaDeployError, match=r"model\.safetensors\.index\.json: names .*outside its folder"):
            weight_headers(root)


def test_onnx_external_weights_outside_the_folder_are_refused(tmp_path):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from hymba_deploy.engine.onnx_inputs import load_graph
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 4])], [w])
    (tmp_path / "export").mkdir()
    path = tmp_path / "export" / "prefill.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, location="prefill.onnx.data",
              size_threshold=0)
    assert load_graph(path).graph.initializer[0].name == "w"           # weights beside the graph: fine
    proto = onnx.load(str(path), load_external_data=False)
    for e in proto.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../../etc/passwd"
    onnx.save(proto, str(path))
    with pytest.raises(HymbaDeployError, match=r"prefill\.onnx \(external weights of w\): names '\.\./\.\./etc/passwd'"):
        load_graph(path)
    pytest.importorskip("onnxruntime")
    from hymba_deploy.runtime import OnnxRuntimeRunner
    with pytest.raises(HymbaDeployError, match="external weights of w"):
        OnnxRuntimeRunner(path).activate()


# ---- engines and sidecars: checked before use ------------------------------------------------------------

needs_rtx = pytest.mark.skipif(rtx_available() is not None, reason=str(rtx_available()))


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    if rtx_available():
        pytest.skip(rtx_available())
    return built_rtx_engines(tmp_path_factory)


@pytest.fixture
def copy(engines, tmp_path):
    """A private copy of the build folder, to damage."""
    dst = tmp_path / "engines"
    shutil.copytree(engines, dst)
    return dst


def _inspect(*args):
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def test_inspect_without_engines_or_on_another_file_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _inspect(empty)
    assert result.exit_code == 1 and f"error: {empty}: no .engine files" in result.output
    onnx_file = tmp_path / "prefill.onnx"
    onnx_file.write_bytes(b"\x08\x0a")
    result = _inspect(onnx_file)
    assert result.exit_code == 1 and f"{onnx_file}: not an engine" in result.output
    result = _inspect(tmp_path / "gone.engine")
    assert result.exit_code == 1 and f"error: {tmp_path / 'gone.engine'}: no such engine file" in result.output


@needs_rtx
def test_inspect_truncated_or_corrupt_engine_is_an_error(copy):
    engine = copy / "decode.engine"
    data = engine.read_bytes()
    assert json.loads((copy / "decode.engine.json").read_text())["engine_sha256"] == __import__("hashlib").sha256(
        data).hexdigest()
    engine.write_bytes(data[: len(data) // 2])
    result = _inspect(engine)
    assert result.exit_code == 1 and f"error: {engine}: {len(data) // 2} bytes, but its sidecar records" in result.output
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF                                    # same size, one byte changed
    engine.write_bytes(bytes(flipped))
    result = _inspect(engine)
    assert result.exit_code == 1 and f"error: {engine}: corrupt" in result.output
    result = _inspect(copy)                                           # the folder: the bad engine is named
    assert result.exit_code == 1 and str(engine) in result.output


@needs_rtx
@pytest.mark.parametrize("text, needle", [
    ("{not json", "not a readable engine sidecar"),
    ("[1, 2]", "a JSON object expected, got list"),
    ('{"backend": "tensorrt-rtx"}', "missing or wrong backend_version (str expected)"),
])
def test_inspect_corrupt_sidecar_is_an_error(copy, text, needle):
    (copy / "prefill.engine.json").write_text(text)
    result = _inspect(copy / "prefill.engine")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output   # no traceback
    assert f"error: {copy / 'prefill.engine.json'}: " in result.output and needle in result.output
    (copy / "prefill.engine.json").unlink()
    result = _inspect(copy / "prefill.engine")
    assert result.exit_code == 1 and "its sidecar prefill.engine.json is missing" in result.output


@needs_rtx
def test_sidecar_with_a_wrong_io_list_is_an_error(copy):
    sidecar = json.loads((copy / "decode.engine.json").read_text())
    sidecar["io"]["inputs"] = ["input_ids"]
    (copy / "decode.engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(HymbaDeployError, match=r"decode\.engine\.json: .*io \(inputs and outputs"):
        artifact.read_engine(copy / "decode.engine")


# ---- the plugin library: by sha256, never from the sidecar's path ------------------------------------------

def _evil_library(tmp_path) -> Path:
    """A shared object the sidecar will name: loading it would run its code."""
    evil = tmp_path / "evil" / "libhymba_plugins.so"
    evil.parent.mkdir()
    evil.write_bytes(b"\x7fELF not our library")
    return evil


@needs_rtx
def test_sidecar_pointing_at_another_library_is_never_loaded(copy, tmp_path, monkeypatch):
    evil = _evil_library(tmp_path)
    path = copy / "decode.engine.json"
    sidecar = json.loads(path.read_text())
    sidecar["plugin_library"].update(path=str(evil), sha256=sha256_file(evil))
    path.write_text(json.dumps(sidecar))
    loaded = []
    monkeypatch.setattr(plugins, "load_library", lambda trt, lib: loaded.append(lib))
    # As on a GPU that runs the engine: the engine inspector would load the library.
    monkeypatch.setattr(inspect_mod, "backend_available", lambda name: None)
    monkeypatch.setattr(inspect_mod, "current_compute_capability", lambda: (8, 0))
    result = _inspect(copy / "decode.engine", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["plugin_library"]["recorded"]["path"] == str(evil)     # reported, not loaded
    assert info["plugin_library"]["verified"] is None
    assert "holds no library with that sha256" in info["layers_source"]
    assert not loaded
    # The library is loaded only when the user names it (and its sha256 is the recorded one) ...
    lib, why = artifact.plugin_library(sidecar, evil)
    assert lib == evil.resolve() and why is None
    # ... and a library the user names that is not the engine's is refused.
    with pytest.raises(HymbaDeployError, match=r"--plugins .*is not the plugin library the engine was built with"):
        artifact.plugin_library(sidecar, plugin_library())


@needs_rtx
def test_the_projects_library_is_used_when_its_sha256_matches(engines, tmp_path, monkeypatch):
    from hymba_deploy.runtime.tensorrt_runner import engine_unavailable
    sidecar = artifact.read_engine(engines / "decode.engine")
    project = tmp_path / "project" / plugins.LIBRARY_NAME
    project.parent.mkdir()
    shutil.copy(plugin_library(), project)
    monkeypatch.setattr(plugins, "cached_libraries", lambda: [project] if project.is_file() else [])
    sidecar["plugin_library"]["path"] = str(_evil_library(tmp_path))   # whatever path it names
    assert artifact.plugin_library(sidecar) == (project, None)
    project.write_bytes(project.read_bytes() + b"\0")                  # another build of the library
    lib, why = artifact.plugin_library(sidecar)
    assert lib is None and "holds no library with that sha256" in why and "--plugins" in why
    project.unlink()
    assert "holds no library with that sha256: pass --plugins PATH" in artifact.plugin_library(sidecar)[1]
    # A GPU that runs the engine, without its library: not run, with the reason (never a foreign load).
    from hymba_deploy.engine import backends
    monkeypatch.setattr(backends, "current_compute_capability", lambda: (8, 0))
    assert "holds no library with that sha256: pass --plugins PATH" in engine_unavailable(engines / "decode.engine")
    assert engine_unavailable(engines / "decode.engine", plugin_library()) is None


# ---- op versions: an engine built from version-1 graphs is refused --------------------------------------

def _synthetic_engine(folder: Path, **sidecar) -> Path:
    """An engine file and a structurally valid sidecar recording its size and sha256 (no TensorRT needed)."""
    engine = folder / "decode.engine"
    engine.write_bytes(b"not a real engine, only its bytes are checked here")
    data = {"graph": "decode", "backend": "tensorrt-rtx", "backend_version": "1.7", "target": "sm80",
            "engine_bytes": engine.stat().st_size, "engine_sha256": sha256_file(engine),
            "io": {"inputs": [], "outputs": []}, "profiles": [{"axes": {"batch": [1, 1, 4]}}], "layers": [],
            "plugin_layers": [], **sidecar}
    (folder / "decode.engine.json").write_text(json.dumps(data))
    return engine


def test_engine_of_another_op_version_is_refused_with_rebuild(tmp_path):
    from hymba_deploy.contract import OP_VERSION
    engine = _synthetic_engine(tmp_path, op_version=OP_VERSION)
    assert artifact.read_engine(engine)["op_version"] == OP_VERSION
    for sidecar in ({}, {"op_version": 1}):                       # before version 2 sidecars did not record it
        engine = _synthetic_engine(tmp_path, **sidecar)
        with pytest.raises(HymbaDeployError, match=rf"{engine}: built from graphs of hymba op version 1 .*"
                                                   r"re-export .*rebuild the engine"):
            artifact.read_engine(engine)
        result = _inspect(engine)
        assert result.exit_code == 1 and "op version 1" in result.output and "rebuild" in result.output
