"""HymbaServingCache: preallocated, fixed-capacity decode state for a batch of equal-length sequences.

Same content and names as `HybridMambaAttentionDynamicCache` (hymba_deploy/cache.py), laid out for
serving: nothing is reallocated or copied per step, so a decode step can be captured in a CUDA graph.
`named_states` / `load_named_states` convert to and from the reference cache's (and the ONNX graphs') named
tensors.

Per producer layer i (B = batch rows, M = meta tokens, Hkv = kv heads):
    key_cache[i]    (B, S_i, Hkv, d_qk)   post-RoPE keys
    value_cache[i]  (B, S_i, Hkv, d_v)
  stored head-major by default (`kv_layout="head_major"`: (B, Hkv, S_i, d) storage seen through a
  (B, S_i, Hkv, d) view), so the keys one attention block streams for a (row, kv head) are contiguous
  rather than one 128-byte row every Hkv·d elements; "time_major" stores the view's own order.
  global layer:  S_i = M + max_context; text token t lives in slot M + t.
  SWA layer:     S_i = M + ring, ring = keep + 1 (keep = window − 1 under "upstream" eviction, window
                 under "exact"); text token t lives in slot M + t % ring. The ring holds the newest
                 `ring` tokens, i.e. exactly the keys a decode query sees (kept + itself). Keys are stored
                 post-RoPE and a single query's softmax is permutation invariant, so the slot order does
                 not matter: attention reads slots [0, M + min(n, ring)).
Per layer (all 32):
    conv_states[i]  (B, I, K)   model dtype, last K pre-conv inputs, updated in place
    ssm_states[i]   (B, I, N)   `ssm_state_dtype` (fp32 lets the scan kernel update it in place)
  both stored channel-fastest (strides (K·I, 1, I) and (N·I, 1, I)) for coalesced kernel access.
Host counters: `text_len` (text tokens stored), `seen_tokens` (positions consumed, meta included, as the
reference cache counts them: 0 when empty, else M + text_len). Device counter `pos` (1,) int64 = M + text_len,
the position of the next token, advanced inside a captured decode step.
"""

from __future__ import annotations

import torch

from ..cache import EVICTION_RULES, HybridMambaAttentionDynamicCache
from ..config import HymbaConfig
from ..errors import HymbaDeployError


KV_LAYOUTS = ("head_major", "time_major")


class HymbaServingCache:
    def __init__(self, config: HymbaConfig, batch_size: int, max_context: int, dtype: torch.dtype,
                 device=None, eviction: str = "upstream", ssm_state_dtype: torch.dtype | None = None,
                 kv_layout: str = "head_major"):
        if kv_layout not in KV_LAYOUTS:
            raise HymbaDeployError(f"kv_layout {kv_layout!r}: choose one of {', '.join(KV_LAYOUTS)}")
        if eviction not in EVICTION_RULES:
            raise HymbaDeployError(f"eviction rule {eviction!r}: choose one of {', '.join(EVICTION_RULES)}")
        if batch_size < 1 or max_context < 1:
            raise HymbaDeployError(f"batch_size and max_context must be ≥ 1, got {batch_size}, {max_context}")
        self.config, self.batch_size, self.max_context = config, batch_size, max_context
        self.dtype, self.device, self.eviction = dtype, torch.device(device or "cpu"), eviction
        self.ssm_state_dtype = ssm_state_dtype or dtype
        self.meta = config.num_memory_tokens
        window = config.sliding_window
        self.ring = (window - 1 if eviction == "upstream" else window) + 1
        Hkv, dqk, dv = config.num_key_value_heads, config.qk_head_dim, config.v_dim
        I, K, N = config.d_inner, config.mamba_d_conv, config.mamba_d_state
        n = config.num_hidden_layers
        kw = dict(dtype=dtype, device=self.device)
        self.key_cache: list[torch.Tensor | None] = [None] * n
        self.value_cache: list[torch.Tensor | None] = [None] * n
        for i in range(n):
            if config.is_producer(i):
                slots = self.slots(i)
                if kv_layout == "head_major":
                    self.key_cache[i] = torch.zeros(batch_size, Hkv, slots, dqk, **kw).transpose(1, 2)
                    self.value_cache[i] = torch.zeros(batch_size, Hkv, slots, dv, **kw).transpose(1, 2)
                else:
                    self.key_cache[i] = torch.zeros(batch_size, slots, Hkv, dqk, **kw)    # (B, S_i, Hkv, d_qk)
                    self.value_cache[i] = torch.zeros(batch_size, slots, Hkv, dv, **kw)   # (B, S_i, Hkv, d_v)
        self.kv_layout = kv_layout
        # States are (B, I, ·) views over channel-fastest storage (B, ·, I): a kernel thread owns a
        # channel, so neighbouring threads read neighbouring addresses (the kernels take any strides).
        self.conv_states = [torch.zeros(batch_size, K, I, **kw).transpose(1, 2) for _ in range(n)]   # (B, I, K)
        self.ssm_states = [torch.zeros(batch_size, N, I, dtype=self.ssm_state_dtype, device=self.device).transpose(1, 2)
                    for _ in range(n)]                                                       # (B, I, N)
        self.text_len = 0
        self.pos = torch.full((1,), self.meta, dtype=torch.int64, device=self.device)

    # ---- geometry (pure functions of the config; tested on CPU against the reference cache) ----------
    def slots(self, layer: int) -> int:
        return self.meta + (self.max_context if self.config.is_global(layer) else self.ring)

    def slot(self, layer: int, t: int) -> int:
        """Buffer slot of text token t in producer `layer`."""
        return self.meta + (t if self.config.is_global(layer) else t % self.ring)

    def kv_len(self, layer: int, n: int) -> int:
        """Slots holding keys after n text tokens are stored: what a decode query of token n − 1 reads."""
        return self.meta + (n if self.config.is_global(layer) else min(n, self.ring))

    @property
    def seen_tokens(self) -> int:
        return 0 if self.text_len == 0 else self.meta + self.text_len

    def ring_full(self, n: int | None = None) -> bool:
        """True once every SWA ring is full (their kv_len no longer changes: decode can be a graph)."""
        return (self.text_len if n is None else n) >= self.ring

    # ---- writes -------------------------------------------------------------------------------------
    def store_prefill(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k (b, M + n, Hkv, d_qk), v (b, M + n, Hkv, d_v) of a prefill from empty into rows [0, b)."""
        b, T = k.shape[:2]
        n = T - self.meta
        if n > self.max_context:
            raise HymbaDeployError(f"prompt of {n} tokens exceeds the cache's max_context {self.max_context}")
        kb, vb = self.key_cache[layer], self.value_cache[layer]
        if self.config.is_global(layer):
            kb[:b, :T] = k
            vb[:b, :T] = v
            return
        M = self.meta
        m = min(n, self.ring)                                               # newest m tokens go to the ring
        start = (n - m) % self.ring                                         # ring slot of the oldest of them
        head = min(m, self.ring - start)                                    # up to the ring's end; rest wraps
        for buf, src in ((kb, k), (vb, v)):
            buf[:b, :M] = src[:, :M]
            buf[:b, M + start:M + start + head] = src[:, T - m:T - m + head]
            buf[:b, M:M + m - head] = src[:, T - m + head:]

    def slot_index(self, layer: int, pos: torch.Tensor) -> torch.Tensor:
        """Device slot index (1,) of the token at absolute position `pos` (1,) (graph-safe arithmetic)."""
        t = pos - self.meta
        return pos if self.config.is_global(layer) else self.meta + torch.remainder(t, self.ring)

    def store_decode(self, layer: int, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> None:
        """k (B, 1, Hkv, d_qk), v (B, 1, Hkv, d_v) into slot `index` (1,) device tensor (the decode
        runtime writes the same way, fused with RoPE: `runtime.rope_store`)."""
        self.key_cache[layer][:, index] = k
        self.value_cache[layer][:, index] = v

    # ---- the reference cache's named tensors (rows [0, rows)) ------------------------------------------
    def _text_slots(self, layer: int, n: int) -> list[int]:
        """Slots of the K/V entries the reference cache holds for producer `layer` after n text tokens, in
        its (position) order: the meta slots, then the kept text tokens oldest first."""
        keep = n if self.config.is_global(layer) else min(n, self.ring - 1)
        return list(range(self.meta)) + [self.slot(layer, t) for t in range(n - keep, n)]

    def named_states(self, rows: int | None = None, present: bool = False) -> dict[str, torch.Tensor]:
        """`HybridMambaAttentionDynamicCache.named_states` of this cache's first `rows` rows (default all) after
        its `text_len` tokens: K/V unrolled from the ring into position order (SWA layers keep ring − 1 text
        tokens, as the reference's eviction does), states as stored (their dtype)."""
        rows = self.batch_size if rows is None else rows
        n, out = self.text_len, {}
        store = {"key": self.key_cache, "value": self.value_cache, "conv_state": self.conv_states,
                 "ssm_state": self.ssm_states}
        for name, kind, layer in HybridMambaAttentionDynamicCache.state_names(self.config, present):
            t = store[kind][layer][:rows]
            out[name] = t[:, self._text_slots(layer, n)] if kind in ("key", "value") else t
        return out

    def load_named_states(self, states: dict[str, torch.Tensor], seen_tokens: int) -> int:
        """Rows [0, b) set from the reference cache's named tensors (past names) after `seen_tokens` positions
        (meta included); returns b. The inverse of `named_states`."""
        n = seen_tokens - self.meta
        if not 1 <= n <= self.max_context:
            raise HymbaDeployError(f"{n} cached text tokens: this cache holds 1 to max_context {self.max_context}")
        store = {"key": self.key_cache, "value": self.value_cache, "conv_state": self.conv_states,
                 "ssm_state": self.ssm_states}
        rows = None
        for name, kind, layer in HybridMambaAttentionDynamicCache.state_names(self.config):
            src = states[name]
            rows = src.shape[0]
            if rows > self.batch_size:
                raise HymbaDeployError(f"{name}: {rows} rows exceed the cache's {self.batch_size}")
            if kind in ("key", "value"):
                slots = self._text_slots(layer, n)
                if src.shape[1] != len(slots):
                    raise HymbaDeployError(f"{name}: {src.shape[1]} entries, expected {len(slots)} after "
                                           f"{seen_tokens} positions")
                store[kind][layer][:rows, slots] = src.to(self.dtype)
            else:
                store[kind][layer][:rows] = src
        self.set_length(n)
        return rows

    def reset(self) -> None:
        self.text_len = 0
        self.pos.fill_(self.meta)

    def set_length(self, n: int) -> None:
        """Declare n text tokens stored (after a prefill or a synthetic fill)."""
        if n > self.max_context:
            raise HymbaDeployError(f"{n} tokens exceed max_context {self.max_context}")
        self.text_len = n
        self.pos.fill_(self.meta + n)

    @torch.no_grad()
    def fill_random(self, n: int, generator: torch.Generator | None = None, scale: float = 1.0) -> None:
        """Synthetic state as if n text tokens had been prefilled (benchmarks: no 1M-token prefill)."""
        for t in self.key_cache + self.value_cache + self.conv_states:
            if t is not None:
                t.normal_(0.0, scale, generator=generator)
        for t in self.ssm_states:
            t.normal_(0.0, 0.1 * scale, generator=generator)
        self.set_length(n)

    def nbytes(self) -> int:
        tensors = [t for t in self.key_cache + self.value_cache + self.conv_states + self.ssm_states if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def nbytes_read_per_step(self, n: int | None = None) -> int:
        """Bytes a decode step reads after n text tokens: valid K/V slots plus all states."""
        n = self.text_len if n is None else n
        total = sum(t.numel() * t.element_size() for t in self.conv_states + self.ssm_states)
        for i, kb in enumerate(self.key_cache):
            if kb is not None:
                per_slot = (kb[0, 0].numel() + self.value_cache[i][0, 0].numel()) * kb.element_size() * self.batch_size
                total += self.kv_len(i, n + 1) * per_slot
        return total


class DynamicCacheView:
    """Duck-typed `HybridMambaAttentionDynamicCache` over a serving cache, for the model's own forward (the
    runtime's `prefill_impl="model"`, the baseline of its prefill body): the model code runs unchanged.

    `update_kv` stores into the preallocated buffers and returns the keys this step attends over;
    `update_ssm` copies the new states in place. Rows [0, rows) of the serving cache are used.
    """

    def __init__(self, cache: HymbaServingCache, rows: int):
        self.cache, self.rows = cache, rows
        self.batch_size = rows
        self.config = cache.config

    def is_empty(self) -> bool:
        return self.cache.text_len == 0

    @property
    def seen_tokens(self) -> int:
        return self.cache.seen_tokens

    @seen_tokens.setter
    def seen_tokens(self, value: int) -> None:
        self.cache.set_length(value - self.cache.meta)

    @property
    def conv_states(self):
        c = self.cache
        return [None if c.text_len == 0 else s[:self.rows] for s in c.conv_states]

    @property
    def ssm_states(self):
        c = self.cache
        return [None if c.text_len == 0 else s[:self.rows] for s in c.ssm_states]

    def update_kv(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        c = self.cache
        if c.text_len == 0:
            c.store_prefill(layer, key, value)
            return key, value                                               # prefill attends over itself
        T = key.shape[1]
        if T > 1 and not c.config.is_global(layer):
            raise HymbaDeployError("chunked prefill on a serving cache is not supported; prefill once, then decode")
        for j in range(T):                                                  # decode steps, eager
            s = c.slot(layer, c.text_len + j)
            c.key_cache[layer][:self.rows, s] = key[:, j]
            c.value_cache[layer][:self.rows, s] = value[:, j]
        L = c.kv_len(layer, c.text_len + T)
        return c.key_cache[layer][:self.rows, :L], c.value_cache[layer][:self.rows, :L]

    def update_ssm(self, layer: int, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> None:
        self.cache.conv_states[layer][:self.rows].copy_(conv_state)
        self.cache.ssm_states[layer][:self.rows].copy_(ssm_state)
