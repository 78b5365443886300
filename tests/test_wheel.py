"""A wheel install works end to end (issue #12, point 2): `pip wheel` of the repository, installed without
its dependencies into a fresh venv, then README's main job from an unrelated folder.

The fresh venv sees the test venv's site-packages through a .pth path line (torch, onnx, tensorrt_rtx...:
no second download), which does not run that folder's own .pth files, so the editable install of this
checkout stays out: `hymba_deploy` comes from the wheel alone. Its `build` compiles libhymba_plugins.so
(sm80 only) from the wheel's shipped sources into a per-user cache in tmp_path: the one compile this
test costs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deploy_helpers import rtx_available
from hymba_deploy.engine import plugins
from hymba_deploy.engine.tensorrt_headers import find_headers
from hymba_deploy.errors import HymbaDeployError

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "out")


def _skip_reason() -> str | None:
    if shutil.which("nvcc") is None or shutil.which("cmake") is None:
        return "building the plugin library needs nvcc and cmake on PATH"
    if rtx_available():
        return rtx_available()
    try:
        find_headers()
    except HymbaDeployError as e:
        return f"no TensorRT headers to compile the plugins against (set TensorRT_ROOT): {e}"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` of a copy of the checkout (so no build/ output lands in the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=NOT_SOURCES)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"),
                           str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = (tmp / "dist").glob("hymba_deploy-*.whl")
    return whl


def test_wheel_holds_only_the_package_with_cli_exporters_and_plugin_sources(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"hymba_deploy", next(t for t in tops if t.endswith(".dist-info"))}
    with zipfile.ZipFile(wheel) as z:
        assert z.read("hymba_deploy/cli.py") == (REPO / "cli.py").read_bytes()       # the link's target
        assert z.read("hymba_deploy/exporters/onnx_export.py") == (REPO / "exporters" / "onnx_export.py").read_bytes()
        shipped = sorted(n[len("hymba_deploy/_plugins/"):] for n in names if n.startswith("hymba_deploy/_plugins/"))
    wanted = sorted(f.relative_to(plugins.PLUGIN_SOURCES).as_posix() for f in plugins.plugin_source_files())
    assert shipped == wanted
    assert "hymba_deploy/cuda/csrc/hymba_torch.cpp" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "hymba-deploy = hymba_deploy.cli:main" in entry_points


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel (no dependencies), the test venv's packages reachable by a path line."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]   # this venv's and any it links
    (Path(site) / "test_venv_packages.pth").write_text("\n".join(ours) + "\n")
    return root


def run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`args` in the wheel's venv from `cwd`, with a per-user cache of its own and no checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYMBA_PLUGIN_LIB", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", XDG_CACHE_HOME=str(cwd / "cache"))
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)


def test_no_generic_top_level_modules_and_the_command_runs(venv, tmp_path):
    proc = run(venv, tmp_path, "python", "-c", "import hymba_deploy, hymba_deploy.cli, hymba_deploy.exporters; "
                                               "print(hymba_deploy.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(venv)
    for name in ("cli", "exporters", "plugins"):
        proc = run(venv, tmp_path, "python", "-c", f"import {name}")
        assert proc.returncode == 1 and f"No module named '{name}'" in proc.stderr, (name, proc.stderr)
    proc = run(venv, tmp_path, "hymba-deploy", "--help")
    assert proc.returncode == 0 and "export" in proc.stdout and "build" in proc.stdout, proc.stderr


def test_main_job_from_the_wheel_builds_the_plugins_once(venv, tmp_path):
    proc = run(venv, tmp_path, "hymba-deploy", "export", "tiny", "--out", "out/tiny")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run(venv, tmp_path, "hymba-deploy", "build", "out/tiny", "--out", "out/tiny-engines",
               "--backend", "tensorrt-rtx", "--target", "sm80")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "building libhymba_plugins.so for CUDA archs 80" in proc.stderr
    assert "Building CUDA object" in proc.stderr                               # the compiler's steps, as progress
    assert {p.name for p in (tmp_path / "out" / "tiny-engines").glob("*.engine")} == {"prefill.engine",
                                                                                  "decode.engine"}
    headers = find_headers()
    entry = tmp_path / "cache" / "hymba-deploy" / "plugins" / plugins.library_key(headers.version, "80")
    assert (entry / plugins.LIBRARY_NAME).is_file()                           # same key as this checkout's sources
    record = (entry / f"{plugins.LIBRARY_NAME}.json").read_text()
    assert str(venv) in record                                                # compiled from the wheel's copy

    # A second run finds it (build's own lookup, without building engines again).
    proc = run(venv, tmp_path, "python", "-c", "from hymba_deploy.engine import plugins; "
                                               "print(plugins.ensure_library(cuda_archs='80', progress=print))")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "built before" in proc.stdout and "Building CUDA object" not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == str(entry / plugins.LIBRARY_NAME)
