"""Shared, cached artefacts for test_build / test_check / test_bench: one `tiny` export, one plugin
library and one TensorRT-RTX build per test session (each costs tens of seconds to minutes on 2 cores)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_CACHE: dict = {}


def exported_tiny(tmp_path_factory) -> Path:
    """`hymba-deploy export tiny` (seed 0, prefill + decode) into a session folder."""
    if "export" not in _CACHE:
        from hymba_deploy.exporters.onnx_export import export
        out = tmp_path_factory.mktemp("tiny-onnx")
        export("tiny", out, max_seq_len=128, seed=0)
        _CACHE["export"] = out
    return _CACHE["export"]


def tiny_with_tokenizer(path: Path) -> Path:
    """`tiny` (seed 0) saved as a checkpoint in `path` with a word-level tokenizer.json: "w0".."w256" are ids
    0..256, unknown words "[UNK]" = 0. Skips the test where the tokenizers package is not installed."""
    tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers package is not installed")
    from hymba_deploy import load_model
    from hymba_deploy.checkpoint import save_pretrained

    save_pretrained(load_model("tiny"), path)
    vocab = {f"w{i}": i for i in range(257)}
    vocab["[UNK]"] = 0
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    return path


def plugin_library() -> Path:
    """The project's libhymba_plugins.so: $HYMBA_PLUGIN_LIB, else the checkout's build/plugins/ (.ci/run compiles
    it there with -Werror), compiled there for sm80 when missing (as tests/test_plugins_cpu.py does)."""
    if "lib" not in _CACHE:
        import os
        import shutil
        from hymba_deploy.engine import plugins
        if os.environ.get("HYMBA_PLUGIN_LIB"):
            _CACHE["lib"] = plugins.ensure_library()
            return _CACHE["lib"]
        sys.path.insert(0, str(REPO / "plugins" / "tests"))
        import harness
        try:
            _CACHE["lib"] = harness.find_libraries(build_if_missing=False)[0]
        except FileNotFoundError:
            if shutil.which("nvcc") is None or shutil.which("cmake") is None:
                pytest.skip("libhymba_plugins.so is not built and nvcc/cmake are missing (run plugins/build.sh)")
            _CACHE["lib"] = harness.find_libraries(build_if_missing=True)[0]
    return _CACHE["lib"]


def rtx_available() -> str | None:
    if importlib.util.find_spec("tensorrt_rtx") is None:
        return "tensorrt_rtx is not installed (pip install tensorrt-rtx-cu13==1.7.1.116)"
    return None


def built_rtx_engines(tmp_path_factory) -> Path:
    """`hymba-deploy build --backend tensorrt-rtx --target sm80` of the tiny export, through the CLI."""
    if "engines" not in _CACHE:
        from click.testing import CliRunner

        from hymba_deploy.cli import main
        src = exported_tiny(tmp_path_factory)
        lib = plugin_library()
        out = tmp_path_factory.mktemp("tiny-engines")
        result = CliRunner().invoke(main, ["build", str(src), "--out", str(out), "--backend", "tensorrt-rtx",
                                           "--target", "sm80", "--plugins", str(lib),
                                           "--profile", "batch=1:2:4,seq=1:32:MAX"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        _CACHE["engines"] = (out, result.output)
    return _CACHE["engines"][0]
