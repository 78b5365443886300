"""HymbaServingCache: preallocated, fixed-capacity decode state for a batch of sequences, each row at its own
position.

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
  global layer:  S_i = M + max_context; text token t of a row lives in its slot M + t.
  SWA layer:     S_i = M + ring, ring = keep + 1 (keep = window − 1 under "upstream" eviction, window
                 under "exact"); text token t lives in slot M + t % ring. The ring holds the newest
                 `ring` tokens, i.e. exactly the keys a decode query sees (kept + itself). Keys are stored
                 post-RoPE and a single query's softmax is permutation invariant, so the slot order does
                 not matter: attention reads slots [0, M + min(n, ring)).
Per layer (all 32):
    conv_states[i]  (B, I, K)   model dtype, last K pre-conv inputs, updated in place
    ssm_states[i]   (B, I, N)   `ssm_state_dtype` (fp32 lets the scan kernel update it in place)
  both stored channel-fastest (strides (K·I, 1, I) and (N·I, 1, I)) for coalesced kernel access.

Rows are independent (issue 14's contract: each row gives what its prompt gives alone). Per row b:
host `lengths[b]` = n_b, the text tokens it holds (0: empty), and device `pos[b]` ((B,) int64) = M + n_b, the
position of its next token, advanced inside a captured decode step. A decode step writes row b's token at
its own slot (`decode_slots`) and attends over its own key count (`decode_counts`: M + n_b + 1 global,
M + min(n_b + 1, ring) SWA; the reference cache's c_b + 1). A prefill into chosen rows
(`ServingRuntime.prefill(..., rows=...)`, `set_rows`) re-starts them (a finished row replaced by a new prompt)
while the others keep decoding.
"""

from __future__ import annotations

from typing import Sequence

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
        self.lengths = [0] * batch_size                                     # host: text tokens per row
        self.pos = torch.full((batch_size,), self.meta, dtype=torch.int64, device=self.device)   # M + lengths
        self.rows = torch.arange(batch_size, device=self.device)           # row index of each row (scatters)

    # ---- geometry (pure functions of the config; tested on CPU against the reference cache) ----------
    def slots(self, layer: int) -> int:
        return self.meta + (self.max_context if self.config.is_global(layer) else self.ring)

    def slot(self, layer: int, t: int) -> int:
        """Buffer slot of text token t in producer `layer`."""
        return self.meta + (t if self.config.is_global(layer) else t % self.ring)

    def kv_len(self, layer: int, n: int) -> int:
        """Slots holding keys after n text tokens are stored: what a decode query of token n − 1 reads."""
        return self.meta + (n if self.config.is_global(layer) else min(n, self.ring))

    def decode_slots(self, layer: int, pos: torch.Tensor) -> torch.Tensor:
        """Slot of each row's token at position `pos` (B,) (meta included) in producer `layer` -> (B,) int64;
        graph-safe arithmetic on the device."""
        return pos if self.config.is_global(layer) else self.meta + torch.remainder(pos - self.meta, self.ring)

    def decode_counts(self, layer: int, pos: torch.Tensor) -> torch.Tensor:
        """Keys each row's decode query at position `pos` (B,) reads in producer `layer` once its own key is
        stored (the reference cache's c_b + 1) -> (B,) int32, graph-safe: M + t + 1 global, M + min(t + 1,
        ring) SWA, t = pos − M."""
        if self.config.is_global(layer):
            return (pos + 1).to(torch.int32)
        return (self.meta + torch.clamp(pos - self.meta + 1, max=self.ring)).to(torch.int32)

    @property
    def text_len(self) -> int:
        """Text tokens of the longest row (every row's, in a uniform batch)."""
        return max(self.lengths)

    def uniform_length(self) -> int:
        """The one text length of all rows; an error when the rows are at different positions."""
        if len(set(self.lengths)) != 1:
            raise HymbaDeployError(f"the cache's rows hold different lengths {self.lengths}; this call needs "
                                   "rows at one position")
        return self.lengths[0]

    @property
    def seen_tokens(self) -> int:
        """Positions consumed, meta included, as the reference cache counts them (0 when empty), of a batch whose
        rows are at one position."""
        n = self.uniform_length()
        return 0 if n == 0 else self.meta + n

    def positions(self) -> list[int]:
        """Per row: positions consumed, meta included (0 for an empty row): the contract's p_b."""
        return [0 if n == 0 else self.meta + n for n in self.lengths]

    def rings_full(self, ahead: int = 0) -> bool:
        """True once every row's SWA rings are full after `ahead` more tokens: their key counts no longer
        change."""
        return min(self.lengths) + ahead >= self.ring

    # ---- writes -------------------------------------------------------------------------------------
    def store_prefill(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int = 0) -> None:
        """k (b, M + n, Hkv, d_qk), v (b, M + n, Hkv, d_v) of a prefill from empty into rows [start, start + b)."""
        b, T = k.shape[:2]
        n = T - self.meta
        if n > self.max_context:
            raise HymbaDeployError(f"prompt of {n} tokens exceeds the cache's max_context {self.max_context}")
        if not 0 <= start <= start + b <= self.batch_size:
            raise HymbaDeployError(f"rows [{start}, {start + b}) are outside the cache's {self.batch_size} rows")
        rows = slice(start, start + b)
        kb, vb = self.key_cache[layer], self.value_cache[layer]
        if self.config.is_global(layer):
            kb[rows, :T] = k
            vb[rows, :T] = v
            return
        M = self.meta
        m = min(n, self.ring)                                               # newest m tokens go to the ring
        first = (n - m) % self.ring                                         # ring slot of the oldest of them
        head = min(m, self.ring - first)                                    # up to the ring's end; rest wraps
        for buf, src in ((kb, k), (vb, v)):
            buf[rows, :M] = src[:, :M]
            buf[rows, M + first:M + first + head] = src[:, T - m:T - m + head]
            buf[rows, M:M + m - head] = src[:, T - m + head:]

    def slot_index(self, layer: int, pos: torch.Tensor) -> torch.Tensor:
        """`decode_slots` (kept name)."""
        return self.decode_slots(layer, pos)

    def store_decode(self, layer: int, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> None:
        """k (B, 1, Hkv, d_qk), v (B, 1, Hkv, d_v): row b's into slot `index[b]` ((B,) device tensor; (1,):
        one slot for all rows). The decode runtime writes the same way, fused with RoPE: `runtime.rope_store`."""
        index = index.expand(self.batch_size)
        self.key_cache[layer][self.rows, index] = k[:, 0]
        self.value_cache[layer][self.rows, index] = v[:, 0]

    # ---- the reference cache's named tensors --------------------------------------------------------
    def _text_slots(self, layer: int, n: int) -> list[int]:
        """Slots of the K/V entries the reference cache holds for producer `layer` after n text tokens, in
        its (position) order: the meta slots, then the kept text tokens oldest first."""
        keep = n if self.config.is_global(layer) else min(n, self.ring - 1)
        return list(range(self.meta)) + [self.slot(layer, t) for t in range(n - keep, n)]

    def kv_counts(self, layer: int, rows: int | None = None) -> list[int]:
        """Per row (first `rows`): the K/V entries the reference cache holds for producer `layer` (the
        contract's c_b: p_b global, M + min(p_b − M, keep) SWA; 0 for an empty row)."""
        return [len(self._text_slots(layer, n)) if n else 0 for n in self.lengths[:rows]]

    def named_states(self, rows: int | None = None, present: bool = False) -> dict[str, torch.Tensor]:
        """`HybridMambaAttentionDynamicCache.named_states` of this cache's first `rows` rows (default all): K/V
        unrolled from the ring into position order (SWA layers keep ring − 1 text tokens, as the reference's
        eviction does), row b's c_b entries first, then zeros up to the longest row's (the contract's
        layout); states as stored (their dtype)."""
        rows = self.batch_size if rows is None else rows
        lengths, out = self.lengths[:rows], {}
        store = {"key": self.key_cache, "value": self.value_cache, "conv_state": self.conv_states,
                 "ssm_state": self.ssm_states}
        for name, kind, layer in HybridMambaAttentionDynamicCache.state_names(self.config, present):
            t = store[kind][layer][:rows]
            if kind not in ("key", "value"):
                out[name] = t
            elif len(set(lengths)) == 1:
                out[name] = t[:, self._text_slots(layer, lengths[0])]
            else:
                slots = [self._text_slots(layer, n) for n in lengths]
                width = max(map(len, slots))
                entries = torch.zeros(rows, width, *t.shape[2:], dtype=t.dtype, device=t.device)
                for b, s in enumerate(slots):
                    entries[b, :len(s)] = t[b, s]
                out[name] = entries
        return out

    def load_named_states(self, states: dict[str, torch.Tensor], seen_tokens: int | Sequence[int]) -> int:
        """Rows [0, b) set from the reference cache's named tensors (past names) after `seen_tokens` positions
        (meta included; one per row, or one for all), row b's K/V entries first (the contract's layout);
        returns b. The inverse of `named_states`."""
        store = {"key": self.key_cache, "value": self.value_cache, "conv_state": self.conv_states,
                 "ssm_state": self.ssm_states}
        names = HybridMambaAttentionDynamicCache.state_names(self.config)
        rows = states[names[0][0]].shape[0]
        if rows > self.batch_size:
            raise HymbaDeployError(f"{names[0][0]}: {rows} rows exceed the cache's {self.batch_size}")
        seen = [seen_tokens] * rows if isinstance(seen_tokens, int) else [int(p) for p in seen_tokens]
        if len(seen) != rows:
            raise HymbaDeployError(f"{len(seen)} positions for {rows} rows of cached states")
        lengths = [p - self.meta for p in seen]
        for n in lengths:
            if not 1 <= n <= self.max_context:
                raise HymbaDeployError(f"{n} cached text tokens: this cache holds 1 to max_context {self.max_context}")
        for name, kind, layer in names:
            src = states[name]
            if src.shape[0] != rows:
                raise HymbaDeployError(f"{name}: {src.shape[0]} rows, expected {rows}")
            if kind not in ("key", "value"):
                store[kind][layer][:rows] = src
                continue
            for b, n in enumerate(lengths):
                slots = self._text_slots(layer, n)
                if src.shape[1] < len(slots) or (len(set(lengths)) == 1 and src.shape[1] != len(slots)):
                    raise HymbaDeployError(f"{name}: {src.shape[1]} entries, expected {len(slots)} after "
                                           f"{seen[b]} positions")
                store[kind][layer][b, slots] = src[b, :len(slots)].to(self.dtype)
        for b, n in enumerate(lengths):
            self._set_row(b, n)
        return rows

    # ---- lengths ------------------------------------------------------------------------------------
    def _set_row(self, row: int, n: int) -> None:
        self.lengths[row] = n
        self.pos[row] = self.meta + n

    def set_rows(self, rows: Sequence[int] | range, n: int) -> None:
        """Declare n text tokens stored in each of `rows` (after their prefill); the other rows unchanged."""
        if n > self.max_context:
            raise HymbaDeployError(f"{n} tokens exceed max_context {self.max_context}")
        rows = list(rows)
        if not rows:
            return
        for b in rows:
            self.lengths[b] = n
        if rows == list(range(rows[0], rows[-1] + 1)):
            self.pos[rows[0]:rows[-1] + 1] = self.meta + n
        else:
            self.pos[torch.tensor(rows, device=self.device)] = self.meta + n

    def reset(self) -> None:
        """Every row empty."""
        self.lengths = [0] * self.batch_size
        self.pos.fill_(self.meta)

    def set_length(self, n: int) -> None:
        """Declare n text tokens stored in every row (after a prefill or a synthetic fill)."""
        if n > self.max_context:
            raise HymbaDeployError(f"{n} tokens exceed max_context {self.max_context}")
        self.lengths = [n] * self.batch_size
        self.pos.fill_(self.meta + n)

    def advance(self) -> None:
        """After a decode step (whose graph or body advanced `pos` on the device): one more token per row."""
        self.lengths = [n + 1 for n in self.lengths]

    def check_room(self) -> None:
        """Refuse a decode step that would write past a row's capacity (its global slot M + n_b)."""
        if self.text_len >= self.max_context:
            full = [b for b, n in enumerate(self.lengths) if n >= self.max_context]
            raise HymbaDeployError(f"cache full: row(s) {full} hold max_context {self.max_context} tokens; "
                                   "replace them (prefill rows=...) or raise max_context")

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
        """Bytes a decode step reads after n text tokens (default: the longest row's): valid K/V slots plus all
        states."""
        n = self.text_len if n is None else n
        total = sum(t.numel() * t.element_size() for t in self.conv_states + self.ssm_states)
        for i, kb in enumerate(self.key_cache):
            if kb is not None:
                per_slot = (kb[0, 0].numel() + self.value_cache[i][0, 0].numel()) * kb.element_size() * self.batch_size
                total += self.kv_len(i, n + 1) * per_slot
        return total


_PAIR = object()      # update_kv called without `added`: the caller takes (k, v) (the pre-issue-14 model)


class DynamicCacheView:
    """Duck-typed `HybridMambaAttentionDynamicCache` over rows [start, start + rows) of a serving cache, for a
    prefill by the model's own forward (the runtime's `prefill_impl="model"`, the baseline of its prefill body):
    the model code runs unchanged. The rows are emptied first; the view serves that one prefill (decode steps
    run the runtime's own body).

    `update_kv` stores into the preallocated buffers and returns the keys the prefill attends over (its own);
    `update_ssm` copies the new states in place; `positions` (or `seen_tokens`) set the rows' lengths.
    """

    def __init__(self, cache: HymbaServingCache, rows: int, start: int = 0):
        if not 0 <= start < start + rows <= cache.batch_size:
            raise HymbaDeployError(f"rows [{start}, {start + rows}) are outside the cache's {cache.batch_size} rows")
        self.cache, self.rows, self.start = cache, rows, start
        self.batch_size = rows
        self.config = cache.config
        self._rows = slice(start, start + rows)
        cache.set_rows(range(start, start + rows), 0)

    def is_empty(self) -> bool:
        return not any(self.cache.lengths[self._rows])

    @property
    def positions(self) -> torch.Tensor:
        """(rows,) int64 positions consumed per row, meta included (0 when empty)."""
        return torch.tensor([0 if n == 0 else self.cache.meta + n for n in self.cache.lengths[self._rows]],
                            dtype=torch.int64, device=self.cache.device)

    @positions.setter
    def positions(self, value: torch.Tensor) -> None:
        for b, p in enumerate(value.tolist()):
            self.cache.set_rows([self.start + b], int(p) - self.cache.meta)

    @property
    def seen_tokens(self) -> int:
        return int(self.positions.max())

    @seen_tokens.setter
    def seen_tokens(self, value: int) -> None:
        self.cache.set_rows(range(self.start, self.start + self.rows), value - self.cache.meta)

    @property
    def conv_states(self):
        return [None if self.is_empty() else s[self._rows] for s in self.cache.conv_states]

    @property
    def ssm_states(self):
        return [None if self.is_empty() else s[self._rows] for s in self.cache.ssm_states]

    def update_kv(self, layer: int, key: torch.Tensor, value: torch.Tensor, added=_PAIR):
        """A prefill's K/V (rows, M + n, Hkv, d) stored -> (key, value[, kv_lengths = None: its own keys])."""
        if not self.is_empty():
            raise HymbaDeployError("DynamicCacheView serves one prefill from empty rows; decode with the runtime")
        if added is not _PAIR and added is not None:
            raise HymbaDeployError("a ragged prefill through the model's forward: prefill each run of "
                                   "equal-length prompts on its own (ServingRuntime.prefill rows=...)")
        self.cache.store_prefill(layer, key, value, self.start)
        return (key, value) if added is _PAIR else (key, value, None)

    def update_ssm(self, layer: int, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> None:
        self.cache.conv_states[layer][self._rows].copy_(conv_state)
        self.cache.ssm_states[layer][self._rows].copy_(ssm_state)
