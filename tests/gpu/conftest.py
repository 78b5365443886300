"""Fixtures of the GPU tests (`pytest -m gpu tests/gpu`, on a machine with a CUDA GPU, nvcc and cmake).

Without CUDA every test here skips, saying why. Environment:
    HYMBA_GPU_ARCHS     architectures to build and test the plugin library for, comma-separated (default 90;
                        e.g. 90,80-virtual); each is built once per session into build/plugins-gpu-<arch>
    HYMBA_PLUGIN_LIB    test this prebuilt library instead (HYMBA_PLUGIN_HARNESS: its harness)
    TensorRT_ROOT       TensorRT headers for the build (default: the repository's .trt/)
    HYMBA_GPU_RESULTS   write every check's numbers (errors, PyTorch's own errors, bounds) and the run's GPU,
                        versions and date to this JSON file at the end of the session
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hymba_deploy.fileio import atomic_write_json
from hymba_deploy.parity.tolerances import KERNEL_TOLERANCES

from .common import ARCHS, REPO

import harness as H  # noqa: E402  (plugins/tests, on sys.path through .common)
import kernels as KN  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False): run `pytest -m gpu tests/gpu` on the "
                    "GPU machine")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda")


def _build_all(archs: list[str]) -> dict:
    """plugins/build.sh once per architecture, side by side; {arch: (library, harness)}, or the failure (with the
    end of its log) that then fails the tests of that architecture."""
    env = dict(os.environ, HYMBA_WERROR="OFF", JOBS=str(max(1, (os.cpu_count() or 2) // len(archs))))
    env.setdefault("TensorRT_ROOT", str(REPO / ".trt"))
    builds = {}
    for arch in archs:
        build = REPO / "build" / f"plugins-gpu-{arch.replace('-', '_')}"
        log = build.with_suffix(".log")
        with open(log, "w") as f:
            proc = subprocess.Popen(["bash", str(REPO / "plugins" / "build.sh"), str(build)],
                                    env=dict(env, CUDA_ARCHS=arch), stdout=f, stderr=subprocess.STDOUT)
        builds[arch] = (build, log, proc)
    out = {}
    for arch, (build, log, proc) in builds.items():
        if proc.wait() == 0:
            out[arch] = (build / "libhymba_plugins.so", build / "libhymba_plugin_harness.so")
        else:
            out[arch] = RuntimeError(f"plugins/build.sh failed for {arch}:\n{log.read_text()[-3000:]}")
    return out


_built: dict = {}   # what plugin_libraries built this session (for the results file)


@pytest.fixture(scope="session")
def plugin_libraries(cuda):
    """{arch: (libhymba_plugins.so, libhymba_plugin_harness.so)}, built once per session."""
    if ARCHS == ["prebuilt"]:
        _built["prebuilt"] = H.find_libraries(build_if_missing=False)
        return dict(_built)
    (REPO / "build").mkdir(exist_ok=True)
    t0 = time.time()
    libs = _build_all(ARCHS)
    _built.update(libs)
    print(f"\nbuilt the plugin library for {', '.join(ARCHS)} in {time.time() - t0:.0f} s")
    return libs


@pytest.fixture(scope="session")
def plugins(plugin_libraries):
    """plugins(arch) -> namespace(K: kernels on torch tensors, h: the plugin harness, shim: the C shim)."""
    loaded = {}

    def get(arch):
        if arch not in loaded:
            libs = plugin_libraries[arch]
            if isinstance(libs, Exception):
                raise libs
            shim = H.KernelShim(libs[0])
            loaded[arch] = SimpleNamespace(K=KN.Kernels(shim), h=H.Harness(*libs), shim=shim, lib=libs[0])
        return loaded[arch]
    return get


@pytest.fixture(scope="session")
def results(cuda):
    """Every check's record; written to $HYMBA_GPU_RESULTS at the end of the session."""
    records = []
    yield records
    out = os.environ.get("HYMBA_GPU_RESULTS")
    if not out or not records:
        return
    lib = next((v[0] for v in _built.values() if not isinstance(v, Exception)), None)
    n_passed = sum(r["passed"] for r in records)
    doc = dict(KN.run_info(lib, ",".join(ARCHS)), n_checks=len(records), n_passed=n_passed,
               all_passed=n_passed == len(records),
               tolerances={"rule": "rel_err(kernel, float64 ref) <= factor * rel_err(PyTorch in dtype, float64 ref) "
                                   "+ floor, by output dtype; rel_err = ||out - ref|| / ||ref||",
                           **{k: vars(v) for k, v in KERNEL_TOLERANCES.items()}},
               correctness=records)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out), doc)


@pytest.fixture
def record(results, request):
    """record(dict): keeps one check's numbers (under the test's id) for $HYMBA_GPU_RESULTS."""
    return lambda rec: results.append(dict(rec, test=request.node.name))

