"""HybridMambaAttentionDynamicCache: everything a Hymba decode step needs from the past (house rule 11).

Per layer i (B = batch, d_qk/d_v = head dims, Hkv = kv heads, I = d_inner, N = d_state, K = d_conv):
    key_cache[i]    (B, S_i, Hkv, d_qk)  post-RoPE keys, producer layers only (None for consumers)
    value_cache[i]  (B, S_i, Hkv, d_v)   values, producer layers only
    conv_states[i]  (B, I, K)            last K pre-conv SSM inputs, oldest first
    ssm_states[i]   (B, I, N)            SSM state after the last token
    seen_tokens                          positions consumed so far, the meta tokens included

K/V entries are in position order: the meta tokens first (never evicted), then the latest tokens.
Global layers keep every position. Sliding-window layers keep the meta tokens plus the last `keep`
tokens, where `keep` depends on the eviction rule:

    "upstream" (default)  keep = window − 1. The public remote code rebuilds an SWA cache at decode
                          as meta + last (window − 1) entries before appending the new token, so a
                          generated token sees itself and window − 1 previous tokens, while the
                          prefill mask lets a prompt token see window previous tokens (an off-by-one
                          of upstream, reproduced so outputs match HF `generate` token for token).
    "exact"               keep = window. Decode sees exactly the prefill window.

Trimming happens when a step is stored, after the attention of that step has read the untrimmed
keys, so an SWA layer stores at most meta + window entries and attends over at most meta + window + 1.
Chunked prefill (several tokens on top of a cache) is exact under "exact"; under "upstream" its first
queries miss the one key upstream would also have evicted.

Conv and SSM states are stored in `state_dtype` (default: the model dtype, as upstream, which rounds
the fp32 scan state to bf16 between steps in a bf16 model).
"""

from __future__ import annotations

import math

import torch

from .config import HymbaConfig
from .errors import HymbaDeployError

EVICTION_RULES = ("upstream", "exact")


class HybridMambaAttentionDynamicCache:
    def __init__(self, config: HymbaConfig, batch_size: int, dtype: torch.dtype,
                 state_dtype: torch.dtype | None = None, eviction: str = "upstream", device=None):
        if eviction not in EVICTION_RULES:
            raise HymbaDeployError(f"eviction rule {eviction!r}: choose one of {', '.join(EVICTION_RULES)}")
        self.config = config
        self.batch_size = batch_size
        self.dtype = dtype
        self.state_dtype = state_dtype or dtype
        self.eviction = eviction
        self.device = device
        n = config.num_hidden_layers
        self.key_cache: list[torch.Tensor | None] = [None] * n
        self.value_cache: list[torch.Tensor | None] = [None] * n
        self.conv_states: list[torch.Tensor | None] = [None] * n
        self.ssm_states: list[torch.Tensor | None] = [None] * n
        self.seen_tokens = 0

    # ---- sizes ------------------------------------------------------------------------------
    def keep(self, layer: int) -> int | None:
        """How many non-meta K/V entries layer `layer` stores (None: all of them)."""
        window = self.config.layer_window(layer)
        if window <= 0:
            return None
        return window - 1 if self.eviction == "upstream" else window

    def is_empty(self) -> bool:
        return self.seen_tokens == 0

    # ---- updates ----------------------------------------------------------------------------
    def update_kv(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        """Append this step's K/V (B, T, Hkv, d) to producer `layer`.

        Returns the untrimmed (B, S + T, Hkv, d) tensors that this step's attention (and the
        layer's consumers) read; stores them trimmed by the eviction rule.
        """
        past_k, past_v = self.key_cache[layer], self.value_cache[layer]
        if past_k is not None:
            key = torch.cat([past_k, key], dim=1)
            value = torch.cat([past_v, value], dim=1)
        self.key_cache[layer], self.value_cache[layer] = self._evict(layer, key), self._evict(layer, value)
        return key, value

    def _evict(self, layer: int, kv: torch.Tensor) -> torch.Tensor:
        keep, meta = self.keep(layer), self.config.num_memory_tokens
        if keep is None:
            return kv
        length = kv.shape[1]
        if isinstance(length, int) and length <= meta + keep:
            return kv                                                    # eager: nothing to evict
        # Branch-free for export (length symbolic): start = meta keeps everything when it fits.
        start = torch.sym_max(meta, length - keep)
        return torch.cat([kv[:, :meta], kv[:, start:]], dim=1)         # (B, ≤ meta + keep, Hkv, d)

    def update_ssm(self, layer: int, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> None:
        self.conv_states[layer] = conv_state.to(self.state_dtype)
        self.ssm_states[layer] = ssm_state.to(self.state_dtype)

    # ---- named state tensors (the ONNX graphs' I/O names are generated here, nowhere else) --------
    @staticmethod
    def state_names(config: HymbaConfig, present: bool = False) -> list[tuple[str, str, int]]:
        """(name, kind, layer) of every cache tensor in graph order; kind is key/value/conv_state/ssm_state.

        Per layer: `past.{i}.key`, `past.{i}.value` (producer layers only; consumers read their
        producer's), `conv_state.{i}`, `ssm_state.{i}`. `present=True` gives the names of the updated
        tensors a graph returns: the same names prefixed `present.` (`present.{i}.key`, ...,
        `present.ssm_state.{i}`), so the decode loop feeds output `present.X` back as input `X`.
        """
        names = []
        for i in range(config.num_hidden_layers):
            kv = [(f"past.{i}.key", "key"), (f"past.{i}.value", "value")] if config.is_producer(i) else []
            for name, kind in kv + [(f"conv_state.{i}", "conv_state"), (f"ssm_state.{i}", "ssm_state")]:
                if present:
                    name = "present." + name.removeprefix("past.")
                names.append((name, kind, i))
        return names

    @classmethod
    def io_pairs(cls, config: HymbaConfig) -> list[tuple[str, str]]:
        """(output name, input name) of every cache tensor: what a decode loop feeds back, `present.X` -> `X`."""
        return [(p, q) for (p, _, _), (q, _, _) in zip(cls.state_names(config, present=True), cls.state_names(config))]

    @staticmethod
    def state_shape(config: HymbaConfig, kind: str, batch: int, kv_length: int | None = None) -> tuple[int, ...]:
        """Shape of one cache tensor of `kind` (key/value/conv_state/ssm_state, the table at the top of this
        module); K/V need their stored length `kv_length` (meta tokens included)."""
        if kind in ("key", "value"):
            if kv_length is None:
                raise ValueError(f"the shape of a {kind} cache tensor needs its length")
            return (batch, kv_length, config.num_key_value_heads, config.qk_head_dim if kind == "key" else config.v_dim)
        if kind == "conv_state":
            return (batch, config.d_inner, config.mamba_d_conv)
        if kind == "ssm_state":
            return (batch, config.d_inner, config.mamba_d_state)
        raise ValueError(f"unknown cache tensor kind {kind!r}")

    def stored_length(self, layer: int, context: int) -> int:
        """K/V entries producer `layer` holds after `context` text tokens under this cache's eviction rule."""
        keep = self.keep(layer)
        return self.config.num_memory_tokens + (context if keep is None else min(context, keep))

    def named_states(self, present: bool = False) -> dict[str, torch.Tensor]:
        """name -> tensor for every entry of `state_names` (all must be filled, i.e. after a prefill)."""
        store = {"key": self.key_cache, "value": self.value_cache,
                 "conv_state": self.conv_states, "ssm_state": self.ssm_states}
        out = {}
        for name, kind, layer in self.state_names(self.config, present):
            if store[kind][layer] is None:
                raise HymbaDeployError(f"cache entry {name} is empty: run a prefill first")
            out[name] = store[kind][layer]
        return out

    @classmethod
    def from_named_states(cls, config: HymbaConfig, states: dict[str, torch.Tensor], seen_tokens,
                          eviction: str = "upstream", state_dtype: torch.dtype | None = None,
                          ) -> "HybridMambaAttentionDynamicCache":
        """Rebuild a cache from `named_states()` tensors (past names) and the positions seen so far."""
        names = cls.state_names(config)
        ssm = states[next(n for n, kind, _ in names if kind == "ssm_state")]
        key = next((states[n] for n, kind, _ in names if kind == "key"), ssm)
        cache = cls(config, ssm.shape[0], key.dtype, state_dtype or ssm.dtype, eviction, ssm.device)
        store = {"key": cache.key_cache, "value": cache.value_cache,
                 "conv_state": cache.conv_states, "ssm_state": cache.ssm_states}
        for name, kind, layer in names:
            store[kind][layer] = states[name]
        cache.seen_tokens = seen_tokens
        return cache

    # ---- batch-level helpers ----------------------------------------------------------------------
    def nbytes(self) -> int:
        tensors = self.key_cache + self.value_cache + self.conv_states + self.ssm_states
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    @staticmethod
    def attended_keys(config: HymbaConfig, layer: int, context: int) -> int:
        """Keys layer `layer` attends over at decode after `context` text tokens, the meta tokens included:
        meta + context on a global layer, meta + window on an SWA layer (the spec's and paper's convention)."""
        window = config.layer_window(layer)
        return config.num_memory_tokens + (context if window <= 0 else min(context, window))

    @staticmethod
    def size_bytes(config: HymbaConfig, context: int, dtype: torch.dtype, batch_size: int = 1) -> int:
        """Bytes held by a full cache after `context` text tokens, computed without allocating.

        SWA layers are sized for what a decode step attends over (meta + window), the paper's
        and the spec's convention (79 MiB for hymba-1.5b at 8192 tokens in fp16).
        """
        item = torch.empty((), dtype=dtype).element_size()
        total = 0
        cls = HybridMambaAttentionDynamicCache
        for _, kind, layer in cls.state_names(config):
            total += math.prod(cls.state_shape(config, kind, batch_size, cls.attended_keys(config, layer, context)))
        return total * item
