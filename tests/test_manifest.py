"""Export folders are consistent (#12 point 5): the manifest records seed, eviction and each file's
sha256; re-exporting a subset leaves no graph the manifest does not describe; `build` and `check`
verify the folder against its manifest and name a stale or foreign file; an ONNX that is not ours is
refused naming the file and what it lacks. None of these needs TensorRT: the checks run before it."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

from deploy_helpers import exported_tiny
from hymba_deploy.cli import main
from hymba_deploy.engine.build import build
from hymba_deploy.errors import HymbaDeployError
from hymba_deploy.exporters import onnx_export
from hymba_deploy.exporters.manifest import verify_export
from hymba_deploy.fileio import sha256_file


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return exported_tiny(tmp_path_factory)


@pytest.fixture
def copy(onnx_dir, tmp_path):
    """A private copy of the tiny export (prefill + decode, seed 0)."""
    return shutil.copytree(onnx_dir, tmp_path / "export")


def test_manifest_records_seed_eviction_and_checksums(onnx_dir):
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert (manifest["seed"], manifest["eviction"]) == (0, "upstream")
    for graph, entry in manifest["graphs"].items():
        for name, info in entry["files"].items():
            assert info["sha256"] == sha256_file(onnx_dir / name), name
    assert verify_export(onnx_dir) == {g: onnx_dir / f"{g}.onnx" for g in ("prefill", "decode")}


def test_reexporting_a_subset_removes_the_other_graph(copy):
    progress = []
    manifest = onnx_export.export("tiny", copy, graphs="prefill", seed=1, max_seq_len=128, progress=progress.append)
    assert list(manifest["graphs"]) == ["prefill"] and manifest["seed"] == 1
    assert sorted(p.name for p in copy.iterdir()) == ["manifest.json", "prefill.onnx"]
    assert any("removed" in m and "decode.onnx of an earlier export" in m for m in progress)
    assert verify_export(copy) == {"prefill": copy / "prefill.onnx"}


def _describe_only_prefill(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["graphs"]["decode"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _list_absent_weights(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"]["decode"]["files"]["decode.onnx.data"] = {"bytes": 1, "sha256": "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _same_size_other_bytes(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "decode.onnx").write_bytes((d / "decode.onnx").read_bytes() + b"x"),
     "decode.onnx: not the file {m} describes ({n} bytes, the manifest says"),
    (lambda d: _same_size_other_bytes(d / "prefill.onnx"),
     "prefill.onnx: not the file {m} describes (its sha256 differs from the manifest's): stale or modified"),
    (_describe_only_prefill, "decode.onnx: not described by {m} (a file from another export)"),
    (_list_absent_weights, "decode.onnx.data: listed in {m} but missing"),
    (lambda d: (d / "manifest.json").unlink(), "manifest.json not found"),
    (lambda d: (d / "manifest.json").write_text("{half"), "manifest.json: not a readable JSON file"),
    (lambda d: (d / "manifest.json").write_text('{"graphs": {"decode": {"files": {"../x.onnx": {}}}}}'),
     "manifest.json: graph 'decode' does not list its files"),
])
def test_build_and_check_name_the_stale_or_foreign_file(copy, tmp_path, damage, message):
    damage(copy)
    m = str(copy / "manifest.json")
    want = message.format(m=m, n=(copy / "decode.onnx").stat().st_size if (copy / "decode.onnx").exists() else 0)
    for run in (lambda: build(copy, tmp_path / "engines", target="sm80"),
                lambda: __import__("hymba_deploy.parity.check", fromlist=["check"]).check("tiny", copy, steps=1)):
        with pytest.raises(HymbaDeployError) as info:
            run()
        assert want in str(info.value)
    assert not (tmp_path / "engines").exists()
    result = CliRunner().invoke(main, ["build", str(copy), "--out", str(tmp_path / "engines"), "--target", "sm80"])
    assert result.exit_code == 1 and want in result.output


def test_a_single_graph_is_verified_against_the_manifest_beside_it(copy, tmp_path):
    _same_size_other_bytes(copy / "decode.onnx")
    with pytest.raises(HymbaDeployError, match="decode.onnx: not the file .* describes"):
        build(copy / "decode.onnx", tmp_path / "engines", target="sm80")


def test_an_onnx_that_is_not_ours_is_refused_naming_what_it_lacks(onnx_dir, tmp_path):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    foreign = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    onnx.save(foreign, str(tmp_path / "model.onnx"))
    with pytest.raises(HymbaDeployError) as info:
        build(tmp_path / "model.onnx", tmp_path / "engines", target="sm80")
    assert str(info.value) == (f"{tmp_path / 'model.onnx'}: not an ONNX exported by hymba-deploy (metadata "
                               f"hymba.config, hymba.graph, hymba.dtype, hymba.eviction, hymba.max_seq_len missing); "
                               f"export the model with `hymba-deploy export`")
    proto = onnx.load(str(onnx_dir / "decode.onnx"))
    onnx.save(proto, str(tmp_path / "prefill.onnx"))                  # a decode graph under the prefill name
    with pytest.raises(HymbaDeployError, match=r"prefill.onnx: metadata hymba.graph = 'decode' does not match"):
        build(tmp_path / "prefill.onnx", tmp_path / "engines", target="sm80")
    assert not (tmp_path / "engines").exists()
