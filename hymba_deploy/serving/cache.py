"""HymbaServingCache: preallocated, fixed-capacity decode state for a batch of equal-length sequences.

Same content as `HybridMambaAttentionDynamicCache` (hymba_deploy/cache.py), laid out for serving: nothing
is reallocated or copied per step, so a decode step can be captured in a CUDA graph.

Per producer layer i (B = batch rows, M = meta tokens, Hkv = kv heads):
    key[i]    (B, S_i, Hkv, d_qk)   post-RoPE keys
    value[i]  (B, S_i, Hkv, d_v)
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
    conv[i]   (B, I, K)   model dtype, last K pre-conv inputs, updated in place
    ssm[i]    (B, I, N)   `ssm_state_dtype` (fp32 lets the scan kernel update it in place)
  both stored channel-fastest (strides (K·I, 1, I) and (N·I, 1, I)) for coalesced kernel access.
Host counters: `text_len` (text tokens stored). Device counter `pos` (1,) int64 = M + text_len, the
position of the next token, advanced inside a captured decode step.
"""

from __future__ import annotations

import torch

from ..cache import EVICTION_RULES
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
        self.key: list[torch.Tensor | None] = [None] * n
        self.value: list[torch.Tensor | None] = [None] * n
        for i in range(n):
            if config.is_producer(i):
                slots = self.slots(i)
                if kv_layout == "head_major":
                    self.key[i] = torch.zeros(batch_size, Hkv, slots, dqk, **kw).transpose(1, 2)
                    self.value[i] = torch.zeros(batch_size, Hkv, slots, dv, **kw).transpose(1, 2)
                else:
                    self.key[i] = torch.zeros(batch_size, slots, Hkv, dqk, **kw)    # (B, S_i, Hkv, d_qk)
                    self.value[i] = torch.zeros(batch_size, slots, Hkv, dv, **kw)   # (B, S_i, Hkv, d_v)
        self.kv_layout = kv_layout
        # States are (B, I, ·) views over channel-fastest storage (B, ·, I): a kernel thread owns a
        # channel, so neighbouring threads read neighbouring addresses (the kernels take any strides).
        self.conv = [torch.zeros(batch_size, K, I, **kw).transpose(1, 2) for _ in range(n)]   # (B, I, K)
        self.ssm = [torch.zeros(batch_size, N, I, dtype=self.ssm_state_dtype, device=self.device).transpose(1, 2)
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
        kb, vb = self.key[layer], self.value[layer]
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
        engine writes the same way, fused with RoPE: `engine.rope_store`)."""
        self.key[layer][:, index] = k
        self.value[layer][:, index] = v

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
        for t in self.key + self.value + self.conv:
            if t is not None:
                t.normal_(0.0, scale, generator=generator)
        for t in self.ssm:
            t.normal_(0.0, 0.1 * scale, generator=generator)
        self.set_length(n)

    def nbytes(self) -> int:
        tensors = [t for t in self.key + self.value + self.conv + self.ssm if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def nbytes_read_per_step(self, n: int | None = None) -> int:
        """Bytes a decode step reads after n text tokens: valid K/V slots plus all states."""
        n = self.text_len if n is None else n
        total = sum(t.numel() * t.element_size() for t in self.conv + self.ssm)
        for i, kb in enumerate(self.key):
            if kb is not None:
                per_slot = (kb[0, 0].numel() + self.value[i][0, 0].numel()) * kb.element_size() * self.batch_size
                total += self.kv_len(i, n + 1) * per_slot
        return total


class DynamicCacheView:
    """Duck-typed `HybridMambaAttentionDynamicCache` over a serving cache, for the model's own forward (the
    engine's `prefill_impl="model"`, the baseline of its prefill body): the model code runs unchanged.

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
        return 0 if self.cache.text_len == 0 else self.cache.meta + self.cache.text_len

    @seen_tokens.setter
    def seen_tokens(self, value: int) -> None:
        self.cache.set_length(value - self.cache.meta)

    @property
    def conv_states(self):
        c = self.cache
        return [None if c.text_len == 0 else s[:self.rows] for s in c.conv]

    @property
    def ssm_states(self):
        c = self.cache
        return [None if c.text_len == 0 else s[:self.rows] for s in c.ssm]

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
            c.key[layer][:self.rows, s] = key[:, j]
            c.value[layer][:self.rows, s] = value[:, j]
        L = c.kv_len(layer, c.text_len + T)
        return c.key[layer][:self.rows, :L], c.value[layer][:self.rows, :L]

    def update_ssm(self, layer: int, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> None:
        self.cache.conv[layer][:self.rows].copy_(conv_state)
        self.cache.ssm[layer][:self.rows].copy_(ssm_state)
