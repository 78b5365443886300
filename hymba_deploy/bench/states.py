"""Cache contents for decode measurements: random values of the shapes a cache holds after `context` text
tokens. A decode step's cost depends on shapes, not values, so the bench skips the (batch × context)
prefill that real contents would take."""

from __future__ import annotations


def synthetic_states(config, batch: int, context: int, dtype, eviction: str = "upstream", device="cpu",
                     seed: int = 0) -> dict:
    """name -> random cache tensor of the shape a cache holds after `context` text tokens."""
    import torch

    from ..cache import HybridMambaAttentionDynamicCache as Cache
    g = torch.Generator(device=device).manual_seed(seed)     # on the device: GiBs of randn in milliseconds
    probe = Cache(config, 1, dtype, eviction=eviction)
    states = {}
    for name, kind, layer in Cache.state_names(config):
        shape = Cache.state_shape(config, kind, batch, probe.stored_length(layer, context))
        states[name] = (torch.randn(shape, generator=g, device=device) * 0.5).to(dtype)
    return states


def synthetic_cache(model, batch: int, context: int, seed: int = 0):
    """The reference runtime's cache (`HybridMambaAttentionDynamicCache`) on the model's device and dtype
    after `context` text tokens, holding `synthetic_states`."""
    from ..cache import HybridMambaAttentionDynamicCache as Cache
    cfg = model.config
    states = synthetic_states(cfg, batch, context, model.dtype, device=model.device, seed=seed)
    return Cache.from_named_states(cfg, states, cfg.num_memory_tokens + context)
