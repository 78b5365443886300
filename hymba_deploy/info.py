"""`hymba-deploy info`: what a model is made of, computed without allocating its weights."""

from __future__ import annotations

from pathlib import Path

import torch

from .cache import HybridMambaAttentionDynamicCache
from .checkpoint import check_weights, config_of, expected_shapes, has_weights, parse_dtype, weight_headers
from .config import PRESETS, HymbaConfig
from .errors import HymbaDeployError


def check_checkpoint_headers(root: Path, config: HymbaConfig) -> dict | None:
    """When `root` holds weights, check their names, shapes and dtypes (and a sharded index against its
    shards) against `config` from the safetensors headers alone; no tensor data is read."""
    if not has_weights(root):
        return None
    headers = weight_headers(root)
    check_weights(expected_shapes(config), headers)
    return {"files": sorted({f.name for _, _, f in headers.values()}), "tensors": len(headers),
            "checked": "names, shapes and dtypes against config.json (safetensors headers)"}


def model_info(spec: str, context: int = 8192, dtype: str = "float16", batch_size: int = 1) -> dict:
    from .model import HymbaForCausalLM

    if context < 0 or batch_size < 1:
        raise HymbaDeployError(f"context must be ≥ 0 and batch ≥ 1 (got {context}, {batch_size})")
    config = config_of(spec)
    torch_dtype = parse_dtype(dtype)
    weights = check_checkpoint_headers(Path(spec), config) if spec not in PRESETS else None
    with torch.device("meta"):
        n_params = HymbaForCausalLM(config).num_parameters()
    layers = []
    for i in range(config.num_hidden_layers):
        producer = config.kv_producer[i]
        layers.append({
            "layer": i,
            "attention": "global" if config.is_global(i) else f"swa({config.sliding_window})",
            "kv": "producer" if producer == i else f"consumer of {producer}",
        })
    cache_bytes = HybridMambaAttentionDynamicCache.size_bytes(config, context, torch_dtype, batch_size)
    return {
        "model": spec,
        "parameters": n_params,
        "hidden_size": config.hidden_size,
        "meta_tokens": config.num_memory_tokens,
        "layers": layers,
        "weights": weights,
        "cache": {"context": context, "dtype": str(torch_dtype).replace("torch.", ""),
                  "batch_size": batch_size, "bytes": cache_bytes, "mib": cache_bytes / 2**20},
    }


def format_info(info: dict) -> str:
    lines = [f"model       {info['model']}",
             f"parameters  {info['parameters']:,}",
             f"hidden      {info['hidden_size']}, meta tokens {info['meta_tokens']}",
             "layers:"]
    for layer in info["layers"]:
        lines.append(f"  {layer['layer']:>3}  {layer['attention']:<10} {layer['kv']}")
    if info.get("weights"):
        w = info["weights"]
        lines.append(f"weights     {w['tensors']} tensors in {', '.join(w['files'])}: {w['checked']}")
    c = info["cache"]
    lines.append(f"cache       {c['mib']:.1f} MiB at {c['context']} tokens, {c['dtype']}, batch {c['batch_size']}")
    return "\n".join(lines)
