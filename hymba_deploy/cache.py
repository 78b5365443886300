"""HybridMambaAttentionDynamicCache: everything a Hymba decode step needs from the past (house rule 11).

Per layer i (B = batch, d_qk/d_v = head dims, Hkv = kv heads, I = d_inner, N = d_state, K = d_conv):
    key_cache[i]    (B, S_i, Hkv, d_qk)  post-RoPE keys, producer layers only (None for consumers)
    value_cache[i]  (B, S_i, Hkv, d_v)   values, producer layers only
    conv_states[i]  (B, I, K)            last K pre-conv SSM inputs of each row, oldest first
    ssm_states[i]   (B, I, N)            SSM state after each row's last token
    positions       (B,) int64           positions consumed by each row, its meta tokens included (0 when empty)

Rows may hold different numbers of tokens (a ragged batch, ISSUE14_CONTRACT): `positions` is the one
fact, and row b's VALID K/V entries of layer i are the first `kv_counts(config, i, positions)[b]` =
c_b; entries after them are padding (unspecified values). In a uniform batch every c_b equals S_i.

Valid entries are in position order: the meta tokens first (never evicted), then the row's latest tokens.
Global layers keep every position. Sliding-window layers keep the meta tokens plus the last `keep`
tokens, where `keep` depends on the eviction rule:

    "upstream" (default)  keep = window − 1. The public remote code rebuilds an SWA cache at decode
                          as meta + last (window − 1) entries before appending the new token, so a
                          generated token sees itself and window − 1 previous tokens, while the
                          prefill mask lets a prompt token see window previous tokens (an off-by-one
                          of upstream, reproduced so outputs match HF `generate` token for token).
    "exact"               keep = window. Decode sees exactly the prefill window.

A step of T tokens writes row b's new entries at c_b..c_b+T-1 of a tensor T longer (a scatter), its
attention reads c_b + T keys (`kv_lengths`), then an SWA layer trims each row to its meta tokens plus its
last `keep` tokens (a gather), stored length min(S_i + T, meta + keep). Trimming happens after the
attention of that step has read the untrimmed keys, so an SWA layer stores at most meta + window entries
and attends over at most meta + window + 1. A ragged prefill stores, per row, the entries of its own
tokens only (`update_kv`'s `added`). Every step is plain tensor arithmetic on `positions` (no branch on
their values), so the exported decode graph runs the same code with positions as an input.
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
        self.positions = torch.zeros(batch_size, dtype=torch.int64, device=device)

    # ---- sizes ------------------------------------------------------------------------------
    def keep(self, layer: int) -> int | None:
        """How many non-meta K/V entries layer `layer` stores (None: all of them)."""
        return self.layer_keep(self.config, layer, self.eviction)

    def is_empty(self) -> bool:
        """True before the first step (nothing stored; the next step prepends the meta tokens)."""
        return self.conv_states[0] is None

    @staticmethod
    def layer_keep(config: HymbaConfig, layer: int, eviction: str) -> int | None:
        """`keep` of layer `layer` under `eviction` (see `keep`)."""
        window = config.layer_window(layer)
        if window <= 0:
            return None
        return window - 1 if eviction == "upstream" else window

    @staticmethod
    def kv_counts(config: HymbaConfig, layer: int, positions: torch.Tensor, eviction: str = "upstream") -> torch.Tensor:
        """(B,) valid K/V entries of producer `layer` per row after `positions` (B,) int64 (meta included):
        p_b on a global layer, meta + min(p_b − meta, keep) on an SWA layer (0 when p_b = 0)."""
        keep = HybridMambaAttentionDynamicCache.layer_keep(config, layer, eviction)
        if keep is None:
            return positions
        meta = config.num_memory_tokens
        return torch.clamp(positions - meta, max=keep) + meta

    # ---- updates ----------------------------------------------------------------------------
    def update_kv(self, layer: int, key: torch.Tensor, value: torch.Tensor, added: torch.Tensor | None = None):
        """Append this step's K/V (B, T, Hkv, d) to producer `layer`; `added` (B,) int64: how many of the T
        are real in each row (a ragged prefill: meta + its text tokens; None: all T).

        Row b's entries go to indices c_b..c_b+T-1 (c_b = its valid entries before the step, `kv_counts`).
        Returns the untrimmed (B, S + T, Hkv, d) tensors that this step's attention (and the layer's
        consumers) read, and `kv_lengths`, the keys each row attends over: (B,) int32 c_b + T, or None
        (the step's own T keys, every row) when the cache held nothing. Stores them trimmed per row by
        the eviction rule. Does not advance `positions` (the model does, once per step).
        """
        past_k, past_v = self.key_cache[layer], self.value_cache[layer]
        T = key.shape[1]
        if past_k is None:
            counts, kv_lengths = torch.zeros_like(self.positions), None
        else:
            counts = self.kv_counts(self.config, layer, self.positions, self.eviction)      # (B,) c_b
            index = counts[:, None] + torch.arange(T, device=counts.device)                # (B, T)
            key, value = self._append(past_k, key, index), self._append(past_v, value, index)
            kv_lengths = (counts + T).to(torch.int32)
        valid = counts + (T if added is None else added)                                     # (B,) before trim
        self.key_cache[layer], self.value_cache[layer] = self._evict(layer, key, valid), self._evict(layer, value, valid)
        return key, value, kv_lengths

    @staticmethod
    def _append(past: torch.Tensor, new: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """past (B, S, ·) + new (B, T, ·) -> (B, S + T, ·) with new[b, t] at index[b, t] (B, T)."""
        out = torch.cat([past, torch.zeros_like(new)], dim=1)
        index = index.view(*index.shape, *([1] * (new.dim() - 2))).expand_as(new)
        return out.scatter(1, index, new)

    def _evict(self, layer: int, kv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """kv (B, L, ·) with `valid` (B,) leading real entries per row -> each row's meta entries then its
        last `keep` valid entries: (B, min(L, meta + keep), ·)."""
        keep, meta = self.keep(layer), self.config.num_memory_tokens
        if keep is None:
            return kv
        length = kv.shape[1]
        if isinstance(length, int) and length <= meta + keep:
            return kv                                                    # eager: nothing to evict
        # Branch-free for export (length symbolic): row b keeps text entries from start_b on.
        stored = torch.sym_min(length, meta + keep)
        slot = torch.arange(stored, device=kv.device)                                  # (S',)
        start = meta + torch.clamp(valid - meta - keep, min=0)                         # (B,)
        src = torch.where(slot < meta, slot, start[:, None] + (slot - meta))           # (B, S')
        src = torch.clamp(src, max=length - 1)                                         # padding rows
        src = src.view(*src.shape, *([1] * (kv.dim() - 2))).expand(-1, -1, *kv.shape[2:])
        return torch.gather(kv, 1, src)                                                # (B, S', Hkv, d)

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
    def from_named_states(cls, config: HymbaConfig, states: dict[str, torch.Tensor], positions,
                          eviction: str = "upstream", state_dtype: torch.dtype | None = None,
                          ) -> "HybridMambaAttentionDynamicCache":
        """Rebuild a cache from `named_states()` tensors (past names) and the positions each row has
        consumed, meta included: a (B,) int64 tensor, or one int for every row."""
        names = cls.state_names(config)
        ssm = states[next(n for n, kind, _ in names if kind == "ssm_state")]
        key = next((states[n] for n, kind, _ in names if kind == "key"), ssm)
        cache = cls(config, ssm.shape[0], key.dtype, state_dtype or ssm.dtype, eviction, ssm.device)
        store = {"key": cache.key_cache, "value": cache.value_cache,
                 "conv_state": cache.conv_states, "ssm_state": cache.ssm_states}
        for name, kind, layer in names:
            store[kind][layer] = states[name]
        if isinstance(positions, torch.Tensor):
            cache.positions = positions.to(device=ssm.device, dtype=torch.int64)
        else:
            cache.positions = torch.full((ssm.shape[0],), positions, dtype=torch.int64, device=ssm.device)
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
