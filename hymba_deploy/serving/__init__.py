"""Serving runtime: a preallocated cache, batched greedy/sampled generation and CUDA-graph decode.

Runs on either kernel backend (`hymba_deploy.cuda`): `reference` (PyTorch ops) or `cuda` (the plugin
kernels). `python3 -m hymba_deploy.serving.bench` is the GPU benchmark; its GPU parity checks are
tests/gpu/test_serving_gpu.py (`pytest -m gpu tests/gpu`).
"""

from .cache import DynamicCacheView, HymbaServingCache
from .engine import DEFAULT_BUCKETS, HymbaServingEngine, select_bucket
from .sampling import SamplingParams, filter_logits, sample

__all__ = ["DEFAULT_BUCKETS", "DynamicCacheView", "HymbaServingCache", "HymbaServingEngine", "SamplingParams",
           "filter_logits", "sample", "select_bucket"]
