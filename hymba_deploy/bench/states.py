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
    meta, hkv = config.num_memory_tokens, config.num_key_value_heads
    states = {}
    for name, kind, layer in Cache.state_names(config):
        keep = probe.keep(layer)
        if kind in ("key", "value"):
            length = meta + (context if keep is None else min(context, keep))
            shape = (batch, length, hkv, config.qk_head_dim if kind == "key" else config.v_dim)
        elif kind == "conv_state":
            shape = (batch, config.d_inner, config.mamba_d_conv)
        else:
            shape = (batch, config.d_inner, config.mamba_d_state)
        states[name] = (torch.randn(shape, generator=g, device=device) * 0.5).to(dtype)
    return states


def synthetic_cache(model, batch: int, context: int, seed: int = 0):
    """The reference runtime's cache (`HybridMambaAttentionDynamicCache`) on the model's device and dtype
    after `context` text tokens, holding `synthetic_states`."""
    from ..cache import HybridMambaAttentionDynamicCache as Cache
    cfg = model.config
    states = synthetic_states(cfg, batch, context, model.dtype, device=model.device, seed=seed)
    return Cache.from_named_states(cfg, states, cfg.num_memory_tokens + context)
