"""Transitional names for modules not yet moved to `ServingRuntime` (serving/bench.py, gpu_check.py,
gemm_bench.py, gemm_step_ab.py); delete once they use `hymba_deploy.serving.runtime` directly."""

from __future__ import annotations

from ..errors import HymbaDeployError
from .runtime import TRITON_GEMMS, ServingConfig, ServingRuntime, _pad_cols_, _pad_rows_, dbc_norms  # noqa: F401


def HymbaServingEngine(model, max_context: int, backend: str | None = None, **config) -> ServingRuntime:  # noqa: N802
    """`ServingRuntime(model, ServingConfig(max_context, **config))`; `backend` must name the model's kernels."""
    if backend is not None and backend != model.kernels.name:
        raise HymbaDeployError(f"backend {backend!r}: this model runs the {model.kernels.name!r} kernels "
                               "(choose them when loading it: hymba_deploy.cuda.load_model(..., kernels=...))")
    if config.get("prefill_impl") == "engine":
        config["prefill_impl"] = "runtime"
    if config.get("decode_gemms") is None:
        config["decode_gemms"] = "auto"
    return ServingRuntime(model, ServingConfig(max_context=max_context, **config))
