"""Serving runtime: a preallocated cache, batched greedy/sampled generation and CUDA-graph decode.

`ServingRuntime(model, ServingConfig(max_context=...))` runs the model's kernel backend (`model.kernels`:
the reference ops, or the plugin kernels of `hymba_deploy.cuda`). As a parity runner:
`hymba_deploy.runtime.ServingRunner`.
Its GPU parity checks: tests/gpu/test_serving_gpu.py (`pytest -m gpu tests/gpu`); its benchmark:
`hymba-deploy bench --runtimes cuda`.
"""

from .cache import DynamicCacheView, HymbaServingCache
from .runtime import DEFAULT_BUCKETS, PackedWeights, ServingConfig, ServingRuntime, select_bucket
from .sampling import SamplingParams, filter_logits, sample

__all__ = ["DEFAULT_BUCKETS", "DynamicCacheView", "HymbaServingCache", "PackedWeights", "SamplingParams",
           "ServingConfig", "ServingRuntime", "filter_logits", "sample", "select_bucket"]
