"""Where `build` gets what it compiles with (issue #12, points 1-2), without compiling anything:

- the TensorRT headers, in order: TensorRT_ROOT / TENSORRT_DIR, an installed SDK, the download of the pinned
  open-source headers into the per-user cache (tested against a local archive through the URL override);
  none of them: one message naming the three ways, also from the CLI (exit 1, no traceback);
- the per-user library cache: its key (sources + headers version + archs), reuse, rebuild on a changed
  source, the atomic rename, and the build's progress lines.

The real compile from a wheel's shipped sources is tests/test_wheel.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from hymba_deploy.engine import plugins
from hymba_deploy.engine import tensorrt_headers as th
from hymba_deploy.errors import HymbaDeployError

# The TensorRT headers this machine was given (.ci/run sets TensorRT_ROOT), read before any test clears it.
GIVEN_ROOT = os.environ.get("TensorRT_ROOT") or os.environ.get("TENSORRT_DIR")


def fake_tensorrt(root: Path, version=(11, 1, 0)) -> Path:
    """A folder shaped like a TensorRT install: include/NvInferRuntime.h and an NvInferVersion.h of `version`."""
    include = root / "include"
    include.mkdir(parents=True)
    (include / "NvInferRuntime.h").write_text("// stand-in for the search tests\n")
    (include / "NvInferVersion.h").write_text("".join(
        f"#define TRT_{field}_ENTERPRISE {v}\n" for field, v in zip(("MAJOR", "MINOR", "PATCH", "BUILD"),
                                                                   (*version, 7))))
    return root


@pytest.fixture()
def nowhere(tmp_path, monkeypatch):
    """No TensorRT anywhere: no variables, no system folders, an empty per-user cache in tmp_path."""
    for var in (*th.ROOT_VARS, th.URL_VAR, th.SHA256_VAR, "HYMBA_PLUGIN_LIB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(th, "SYSTEM_INCLUDE_DIRS", (tmp_path / "no-system" / "include",))
    return tmp_path


def headers_archive(dest: Path) -> tuple[Path, str]:
    """A tar.gz laid out like GitHub's source archive of a TensorRT release (TensorRT-11.1/include/...,
    beside other files), from the headers this machine was given, else from stand-in headers."""
    source = Path(GIVEN_ROOT) if GIVEN_ROOT else fake_tensorrt(dest.parent / "fake-trt")
    include = th._include_under(source)
    assert include is not None, f"{source} has no include/NvInferRuntime.h"
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(include, arcname="TensorRT-11.1/include")
        readme = b"not a header\n"
        info = tarfile.TarInfo("TensorRT-11.1/README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
    return dest, hashlib.sha256(dest.read_bytes()).hexdigest()


# ---- the search order ----------------------------------------------------------------------------------

def test_tensorrt_root_comes_first_then_tensorrt_dir(nowhere, monkeypatch):
    a = fake_tensorrt(nowhere / "a", (11, 1, 0))
    b = fake_tensorrt(nowhere / "b", (11, 0, 2))
    fake_tensorrt(nowhere / "sys", (10, 9, 0))
    monkeypatch.setattr(th, "SYSTEM_INCLUDE_DIRS", (nowhere / "sys" / "include",))
    monkeypatch.setenv("TensorRT_ROOT", str(a))
    monkeypatch.setenv("TENSORRT_DIR", str(b))
    found = th.find_headers()
    assert (found.include_dir, found.version) == ((a / "include").resolve(), "11.1.0")
    monkeypatch.delenv("TensorRT_ROOT")
    found = th.find_headers()
    assert (found.include_dir, found.version) == ((b / "include").resolve(), "11.0.2")
    assert "TENSORRT_DIR" in found.source


def test_tensorrt_root_without_headers_is_named(nowhere, monkeypatch):
    fake_tensorrt(nowhere / "sys")
    monkeypatch.setattr(th, "SYSTEM_INCLUDE_DIRS", (nowhere / "sys" / "include",))
    empty = nowhere / "empty"
    empty.mkdir()
    monkeypatch.setenv("TensorRT_ROOT", str(empty))
    with pytest.raises(HymbaDeployError, match=f"TensorRT_ROOT={empty}: no include/NvInferRuntime.h"):
        th.find_headers()


def test_installed_sdk_then_a_tar_beside_libnvinfer(nowhere, monkeypatch):
    sdk = fake_tensorrt(nowhere / "usr-include-parent", (11, 1, 0))
    monkeypatch.setattr(th, "SYSTEM_INCLUDE_DIRS", (nowhere / "missing", sdk / "include"))
    found = th.find_headers()
    assert found.include_dir == (sdk / "include").resolve() and "installed TensorRT" in found.source

    monkeypatch.setattr(th, "SYSTEM_INCLUDE_DIRS", (nowhere / "missing",))
    tar_install = fake_tensorrt(nowhere / "TensorRT-11.1.0.106", (11, 1, 0))
    (tar_install / "lib").mkdir()
    (tar_install / "lib" / "libnvinfer.so.11").write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{nowhere / 'elsewhere'}:{tar_install / 'lib'}")
    assert th.find_headers().include_dir == (tar_install / "include").resolve()


def test_headers_without_a_version_are_refused(nowhere, monkeypatch):
    root = fake_tensorrt(nowhere / "t")
    (root / "include" / "NvInferVersion.h").unlink()
    monkeypatch.setenv("TensorRT_ROOT", str(root))
    with pytest.raises(HymbaDeployError, match="no readable NvInferVersion.h"):
        th.find_headers()


# ---- the download ----------------------------------------------------------------------------------------

def test_download_from_a_local_archive_once(nowhere, monkeypatch):
    archive, sha256 = headers_archive(nowhere / "TensorRT-11.1.tar.gz")
    monkeypatch.setenv(th.URL_VAR, archive.as_uri())
    monkeypatch.setenv(th.SHA256_VAR, sha256)
    said: list[str] = []
    found = th.find_headers(progress=said.append)
    cache = nowhere / "cache" / "hymba-deploy" / "tensorrt-headers"
    assert found.include_dir == (cache / sha256[:16] / "include").resolve()
    assert (found.include_dir / "NvInferRuntime.h").is_file()
    expected = th.header_version(th._include_under(Path(GIVEN_ROOT))) if GIVEN_ROOT else "11.1.0"
    assert found.version == expected
    assert found.source == f"downloaded from {archive.as_uri()}"
    assert any("downloading" in m and "MB" in m for m in said), said
    assert sorted(p.name for p in cache.iterdir()) == [sha256[:16]]       # no temporary folder left
    assert not (cache / sha256[:16] / "README.md").exists()               # only include/ is unpacked
    assert sorted(p.name for p in (cache / sha256[:16]).iterdir()) == ["include"]

    archive.unlink()                                                      # offline now: the cache serves
    said.clear()
    assert th.find_headers(progress=said.append).include_dir == found.include_dir
    assert not any("downloading" in m for m in said)


def test_download_with_a_wrong_sha256_keeps_nothing(nowhere, monkeypatch):
    archive, sha256 = headers_archive(nowhere / "TensorRT-11.1.tar.gz")
    monkeypatch.setenv(th.URL_VAR, archive.as_uri())
    monkeypatch.setenv(th.SHA256_VAR, "0" * 64)
    with pytest.raises(HymbaDeployError) as e:
        th.find_headers()
    assert f"the archive's sha256 is {sha256}, not the expected {'0' * 64}" in str(e.value)
    assert "1. set TensorRT_ROOT" in str(e.value)
    cache = nowhere / "cache" / "hymba-deploy" / "tensorrt-headers"
    assert list(cache.iterdir()) == []


def test_archive_without_headers_is_refused(nowhere, monkeypatch):
    archive = nowhere / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("project/include/other.h")
        tar.addfile(info, io.BytesIO(b""))
    monkeypatch.setenv(th.URL_VAR, archive.as_uri())
    monkeypatch.setenv(th.SHA256_VAR, hashlib.sha256(archive.read_bytes()).hexdigest())
    with pytest.raises(HymbaDeployError, match="the archive has no include/NvInferRuntime.h"):
        th.find_headers()


def test_nothing_found_offline_names_the_three_ways(nowhere, monkeypatch):
    monkeypatch.setenv(th.URL_VAR, (nowhere / "unreachable.tar.gz").as_uri())
    monkeypatch.setenv(th.SHA256_VAR, "a" * 64)
    with pytest.raises(HymbaDeployError) as e:
        th.find_headers()
    message = str(e.value)
    assert "needs the TensorRT C++ headers (NvInferRuntime.h), and none were found" in message
    assert "1. set TensorRT_ROOT" in message and "2. install TensorRT's development headers" in message
    assert "libnvinfer-dev" in message and "/usr/local/tensorrt" in message
    assert "3. let hymba-deploy download the open-source TensorRT 11.1 headers once" in message
    assert "could not be downloaded" in message
    assert "cmake" not in message.lower() and "-D" not in message


def test_the_pin_without_a_recorded_sha256_does_not_download(nowhere, monkeypatch):
    monkeypatch.setattr(th, "PINNED_SHA256", None)
    monkeypatch.setattr(th, "_fetch", lambda *a: pytest.fail("downloaded without a sha256 to check"))
    with pytest.raises(HymbaDeployError) as e:
        th.find_headers()
    assert th.PINNED_URL in str(e.value)
    assert "records no sha256 for that archive" in str(e.value) and th.SHA256_VAR in str(e.value)


def test_the_pin_names_the_release_whose_headers_the_plugins_use():
    assert th.PINNED_URL == f"https://github.com/NVIDIA/TensorRT/archive/refs/tags/v{th.PINNED_VERSION}.tar.gz"
    assert th.PINNED_SHA256 is None or len(th.PINNED_SHA256) == 64
    if GIVEN_ROOT:
        assert th.header_version(th._include_under(Path(GIVEN_ROOT))).startswith(th.PINNED_VERSION + ".")


def test_cli_build_without_headers_exits_1_with_the_message(nowhere, monkeypatch, tmp_path_factory):
    from click.testing import CliRunner

    from deploy_helpers import exported_tiny, rtx_available
    from hymba_deploy.cli import main
    if rtx_available():
        pytest.skip(rtx_available())
    monkeypatch.setattr(plugins.shutil, "which", lambda tool: f"/usr/bin/{tool}")   # the headers are what lacks
    monkeypatch.setenv(th.URL_VAR, (nowhere / "offline.tar.gz").as_uri())
    monkeypatch.setenv(th.SHA256_VAR, "b" * 64)
    out = nowhere / "engines"
    result = CliRunner().invoke(main, ["build", str(exported_tiny(tmp_path_factory)), "--out", str(out),
                                       "--backend", "tensorrt-rtx", "--target", "sm80"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)                     # no traceback: the CLI's error line
    assert "error: building libhymba_plugins.so needs the TensorRT C++ headers" in result.output
    assert "1. set TensorRT_ROOT" in result.output and "could not be downloaded" in result.output
    assert "Traceback" not in result.output and not out.exists()


# ---- the per-user library cache --------------------------------------------------------------------------

def copy_sources(dest: Path) -> Path:
    """The files the library's build reads, copied as a wheel ships them."""
    for f in plugins.plugin_source_files():
        target = dest / f.relative_to(plugins.PLUGIN_SOURCES)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    return dest


def test_library_key_follows_sources_headers_and_archs(tmp_path):
    copy = copy_sources(tmp_path / "shipped")
    key = plugins.library_key("11.1.0", "80")
    assert plugins.library_key("11.1.0", "80", copy) == key                  # where they lie does not matter
    assert plugins.library_key("11.1.1", "80", copy) != key
    assert plugins.library_key("11.1.0", "86", copy) != key
    (copy / "tests").mkdir()
    (copy / "tests" / "plugin_harness.cpp").write_text("// not part of the library\n")
    (copy / "README.md").write_text("docs\n")
    assert plugins.library_key("11.1.0", "80", copy) == key
    kernel = copy / "selective_scan" / "selective_scan_kernel.cu"
    kernel.write_text(kernel.read_text() + "\n// changed\n")
    assert plugins.library_key("11.1.0", "80", copy) != key


def test_missing_sources_are_a_user_error(tmp_path):
    with pytest.raises(HymbaDeployError, match="the plugin sources are not in .*reinstall hymba-deploy"):
        plugins.plugin_source_files(tmp_path)


@pytest.fixture()
def counted_builds(nowhere, monkeypatch):
    """ensure_library over a copy of the sources, fake headers and a build that writes a marked file."""
    monkeypatch.setenv("TensorRT_ROOT", str(fake_tensorrt(nowhere / "trt")))
    monkeypatch.setattr(plugins, "PLUGIN_SOURCES", copy_sources(nowhere / "shipped"))
    builds = []

    def build_library(build_dir, headers, cuda_archs=None, sources=None, progress=None):
        builds.append((cuda_archs, headers.version))
        Path(build_dir).mkdir(parents=True)
        lib = Path(build_dir) / plugins.LIBRARY_NAME
        lib.write_bytes(f"hymba-plugins tensorrt={headers.version}; build {len(builds)}".encode())
        return lib

    monkeypatch.setattr(plugins, "build_library", build_library)
    return builds


def test_library_built_once_reused_then_rebuilt_for_a_changed_source(counted_builds, nowhere):
    said: list[str] = []
    lib = plugins.ensure_library(cuda_archs="80", progress=said.append)
    cache = nowhere / "cache" / "hymba-deploy" / "plugins"
    assert lib == cache / plugins.library_key("11.1.0", "80") / plugins.LIBRARY_NAME
    assert counted_builds == [("80", "11.1.0")] and any("a few minutes, once" in m for m in said)
    assert plugins.library_tensorrt_version(lib)[0] == "11.1.0"
    sidecar = (lib.parent / f"{plugins.LIBRARY_NAME}.json").read_text()
    assert '"cuda_archs": "80"' in sidecar and '"tensorrt_version": "11.1.0"' in sidecar

    said.clear()
    assert plugins.ensure_library(cuda_archs="80", progress=said.append) == lib
    assert len(counted_builds) == 1 and any("built before" in m for m in said)

    kernel = plugins.PLUGIN_SOURCES / "causal_conv1d" / "causal_conv1d_kernel.cu"
    kernel.write_text(kernel.read_text() + "\n// changed\n")
    again = plugins.ensure_library(cuda_archs="80")
    assert again != lib and again.is_file() and lib.is_file() and len(counted_builds) == 2
    assert sorted(p.name for p in cache.iterdir()) == sorted([lib.parent.name, again.parent.name])  # no temp


def test_a_concurrent_build_that_finished_first_wins(counted_builds, nowhere, monkeypatch):
    inner = plugins.build_library
    entry = nowhere / "cache" / "hymba-deploy" / "plugins" / plugins.library_key("11.1.0", "80")

    def racing(build_dir, headers, *a, **k):                 # another process renames its build in meanwhile
        entry.mkdir(parents=True)
        (entry / plugins.LIBRARY_NAME).write_bytes(b"the other process's library")
        return inner(build_dir, headers, *a, **k)

    monkeypatch.setattr(plugins, "build_library", racing)
    lib = plugins.ensure_library(cuda_archs="80")
    assert lib == entry / plugins.LIBRARY_NAME and lib.read_bytes() == b"the other process's library"
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]


def test_build_reports_compiler_steps_and_failures(tmp_path, monkeypatch):
    sources = copy_sources(tmp_path / "shipped")
    headers = th.TensorRTHeaders(tmp_path, "11.1.0", "test")
    monkeypatch.setattr(plugins.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    (sources / "build.sh").write_text(
        'echo "-- TensorRT headers: $2" >&2\n'
        'echo "[1/2] Building CUDA object selective_scan_kernel.cu.o" >&2\n'
        'echo "[2/2] Linking CUDA shared library libhymba_plugins.so" >&2\n'
        'mkdir -p "$1" && touch "$1/libhymba_plugins.so"\n')
    said: list[str] = []
    lib = plugins.build_library(tmp_path / "b", headers, "80", sources=sources, progress=said.append)
    assert lib == tmp_path / "b" / plugins.LIBRARY_NAME
    assert said == ["  [1/2] Building CUDA object selective_scan_kernel.cu.o",
                    "  [2/2] Linking CUDA shared library libhymba_plugins.so"]

    (sources / "build.sh").write_text('echo "nvcc fatal: something broke" >&2\nexit 2\n')
    with pytest.raises(HymbaDeployError, match="building libhymba_plugins.so failed .*\n.*nvcc fatal: something"):
        plugins.build_library(tmp_path / "c", headers, "80", sources=sources)
