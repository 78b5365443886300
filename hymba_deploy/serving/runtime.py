"""ServingRuntime: batched generation over a `HymbaServingCache`, decode steps replayed as CUDA graphs.

Configured by one `ServingConfig`; runs its model's kernel backend (`model.kernels`: `hymba_deploy.kernels`,
`hymba_deploy.cuda`); owns the decode weight layouts (`PackedWeights`). As a parity runner:
`hymba_deploy.runtime.ServingRunner`.

Prefill runs `_prefill_body` and decode `_decode_body`: the layer math of `HymbaModel.forward` and
`HymbaBlock.forward` (§2.3; each step numbered alike) over the whole prompt (meta tokens prepended) and at
T = 1, with the packed weights, the compiled elementwise glue (`self.fn`) and the model's kernels. Prefill stores each producer's K/V (`HymbaServingCache.store_prefill`) and the final conv and SSM
states; decode updates the cache in place: K/V written into their slot, conv state and (fp32) SSM state
updated by the kernels themselves. `prefill_impl="model"` runs the model's own forward through
`DynamicCacheView` instead (eager glue; kept as the A/B baseline of the benchmark).

Rows at their own positions (issue 14): the cache's device `pos` (B,) gives each row its RoPE position, its
K/V slot and its key counts (`HymbaServingCache.decode_slots` / `decode_counts`), so one decode step serves
rows of different lengths, and `prefill(ids, cache, rows=...)` re-starts chosen rows (a finished row replaced
by a new prompt) between steps while the others keep their states; `generate` takes right-padded prompts
with per-row `lengths` (the contract's convention) and prefills each run of equal-length rows on its own.

CUDA graphs: the decode step of each batch bucket is captured once and replayed; nothing in it depends on
host-side lengths. With the cuda kernels every attention (global and SWA) reads its per-row key counts from
a device tensor, so the whole step is one graph, usable from any positions, also after a row is replaced.
Otherwise (reference ops) the step body, a generator, yields at every attention over a global producer's
K/V: those few launches (3 of 32 layers for hymba-1.5b) run eagerly between graph segments with the
current per-row counts, while everything else replays, SWA attention over full rings; steps where some
row's rings are not full yet run eagerly (SWA attention then yields too).

Streams: attention (at decode: SWA layers', and global layers' inside graphs) runs on a side stream, in
parallel with the layer's SSM branch (conv, x_proj, dt_proj, scan), and joins before the fusion; in
captured graphs of large batches the SSM branch's stream has the higher priority (`ssm_priority`).

Decode GEMMs (`ServingConfig.decode_gemms`, resolved once by `gemm.resolve_decode_gemms`): with 'triton'
the SSM branch between the conv and the scan is two Triton launches (x_proj split over K, then
`gemm.ssm_inputs`: its sum, the dt/B/C RMSNorms and dt_proj) where cuBLAS + inductor took seven, and
out_proj / down_proj are split over K with their partial sums added inside the next RMSNorm kernel; in
buckets of up to `gemv_max_rows` rows (`TRITON_GEMVS`) in_proj and gate_up run on Triton too, all through the
weight-streaming `gemv` kernel, gate_up with silu · up in its epilogue; with 'cublas' F.linear and the
compiled glue. Timings: bench/results/.

Batch buckets: a batch of b sequences runs in the smallest bucket ≥ b (rows beyond b are padding whose
results are dropped; every kernel is row-independent).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..cache import EVICTION_RULES
from ..errors import HymbaDeployError
from ..kernels import ReferenceKernels
from ..model import apply_rotary
from . import gemm
from .cache import KV_LAYOUTS, DynamicCacheView, HymbaServingCache
from .gemm import DECODE_GEMMS, GemmConfig, SsmInputsConfig
from .sampling import SamplingParams, make_generator, sample

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
PREFILL_IMPLS = ("runtime", "model")    # _prefill_body, or the model's own forward (eager glue; A/B baseline)


# Elementwise pieces of a decode step, written as pure functions with the model's exact op order
# (HymbaRMSNorm, apply_rotary, HymbaMLP, the fusion of §2.3 step 5) so that `torch.compile` can fuse
# each into one or two kernels; at batch 1 the ~80 small eager kernels per layer dominate a step.
def rms_norm(x, weight, eps: float):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm(h, delta, weight, eps: float):
    """Residual add, then the next RMSNorm: (h + delta, norm(h + delta))."""
    h = h + delta
    return h, rms_norm(h, weight, eps)


def rope(x, cos, sin):
    return apply_rotary(x, cos, sin)


def rope_store(q, k, v, cos, sin, key, value, rows, slot):
    """A producer layer's attention inputs in one compiled function: RoPE on q and k (cos, sin (B, 1, d): each
    row's position), and row b's k, v written into slot `slot[b]` of the cache buffers `key`, `value`
    (B, S, Hkv, ·) in place (rows = arange(B)). Returns the rotated q."""
    key[rows, slot] = apply_rotary(k, cos, sin)[:, 0]
    value[rows, slot] = v[:, 0]
    return apply_rotary(q, cos, sin)


def dbc_norms(xp, w_dt, w_B, w_C, dt_rank: int, d_state: int, eps: float, dt_width: int | None = None):
    """x_proj output (B, T, ≥ R + 2N; extra columns ignored) -> RMSNorm'd dt, B, C; dt zero-padded to
    `dt_width` columns when given (the input of a column-padded dt_proj weight)."""
    dt, Bm, Cm = xp[..., :dt_rank + 2 * d_state].split([dt_rank, d_state, d_state], dim=-1)
    dt = rms_norm(dt, w_dt, eps)
    if dt_width is not None and dt_width > dt_rank:
        dt = F.pad(dt, (0, dt_width - dt_rank))
    return dt, rms_norm(Bm, w_B, eps), rms_norm(Cm, w_C, eps)


def fuse_branches(attn, w1, y, w2, eps: float):
    """(RMSNorm1(attn) + RMSNorm2(ssm)) / 2, the input of out_proj."""
    return (rms_norm(attn, w1, eps) + rms_norm(y, w2, eps)) / 2


def silu_mul(g, u):
    return F.silu(g) * u


def add_partials_rms_norm(h, partials, weight, eps: float):
    """add_rms_norm where delta arrives as split-K partial sums (S, B, H) of a GEMM (`gemm.linear_splitk`):
    summed in fp32 and rounded to h's dtype, as a GEMM's own output would be."""
    return add_rms_norm(h, partials.sum(0).to(h.dtype).reshape(h.shape), weight, eps)


def add_partials_rms_norm_gemv(h, partials, weight, eps: float):
    """add_partials_rms_norm of the small-batch (`gemv`) tilings' partials, compiled on its own with static shapes
    (`_STATIC_SHAPES`): one compiled function for both tilings' split counts went dynamic in the split dimension,
    and inductor then summed the partials in a kernel of their own at every batch (64 more launches a step)."""
    return add_partials_rms_norm(h, partials, weight, eps)


_ELEMENTWISE = {"rms_norm": rms_norm, "add_rms_norm": add_rms_norm, "rope": rope, "rope_store": rope_store,
                "dbc_norms": dbc_norms, "fuse_branches": fuse_branches, "silu_mul": silu_mul,
                "add_partials_rms_norm": add_partials_rms_norm,
                "add_partials_rms_norm_gemv": add_partials_rms_norm_gemv}
_STATIC_SHAPES = ("add_partials_rms_norm_gemv",)    # compiled per bucket (≤ gemv_max_rows: a few), never dynamic

# Triton kernels of the decode step (`gemm.py`), by the GEMM they replace: x_proj split over K, then its sum,
# the dt/B/C norms and dt_proj in one kernel ("ssm_inputs": that kernel's launch); out_proj and down_proj
# split over K with their partials summed in add_partials_rms_norm. Tilings chosen on an H200 at batch 128 by
# whole decode steps (the fastest tilings of the kernels alone lost inside the step; bench/results/); used in
# buckets of more than `ServingConfig.gemv_max_rows` rows. A name mapped to None in
# `ServingConfig.gemm_configs` keeps that GEMM on cuBLAS.
TRITON_GEMMS = {"x_proj": GemmConfig(block_n=32, block_k=64, splits=5, num_warps=4, num_stages=3),
                "ssm_inputs": SsmInputsConfig(block_m=16, block_i=64, programs_i=20),
                "out_proj": GemmConfig(block_n=64, block_k=64, splits=4, num_warps=8, num_stages=5),
                "down_proj": GemmConfig(block_n=64, block_k=128, splits=4, num_warps=8, num_stages=4)}
# Buckets of up to `gemv_max_rows` rows: the `gemv` kernel (weight-streaming tiles) for every decode GEMM but
# lm_head, in_proj in one K range (its product feeds the glue directly), gate_up as `gemm.linear_glu` (silu · up
# in its epilogue: no silu_mul launch), x_proj with the decode conv in its prologue (`conv_in_gemv`). Tilings
# chosen on an H200 at batch 1 and 8 (tools/gemm_bench.py --gemv; x_proj with the conv by whole decode steps,
# tools/gemm_step_ab.py; bench/results/). `ServingConfig.gemv_configs` overrides them by name (None: cuBLAS).
TRITON_GEMVS = {"in_proj": GemmConfig(block_n=64, block_k=128, splits=1, num_warps=4, num_stages=4, kernel="gemv"),
                "x_proj": GemmConfig(block_n=16, block_k=128, splits=13, num_warps=4, num_stages=3, kernel="gemv"),
                "ssm_inputs": SsmInputsConfig(block_m=16, block_i=32, programs_i=100),
                "out_proj": GemmConfig(block_n=64, block_k=128, splits=6, num_warps=4, num_stages=4, kernel="gemv"),
                "gate_up": GemmConfig(block_n=64, block_k=128, splits=1, num_warps=4, num_stages=4, kernel="gemv"),
                "down_proj": GemmConfig(block_n=64, block_k=128, splits=6, num_warps=4, num_stages=4, kernel="gemv")}
ONE_K_RANGE = ("in_proj", "gate_up")    # their products feed the glue (no partial sums): splits must be 1


def select_bucket(batch: int, buckets: Iterable[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket that holds `batch` sequences."""
    fits = [b for b in sorted(buckets) if b >= batch]
    if batch < 1 or not fits:
        raise HymbaDeployError(f"batch {batch} fits no bucket of {sorted(buckets)}; raise the largest bucket")
    return fits[0]


def _pad_rows_(w: torch.Tensor, multiple: int) -> torch.Tensor:
    """Move parameter w (n, k) into a zero buffer of n rounded up to `multiple` rows; w becomes a view."""
    n, k = w.shape
    buf = torch.zeros(-(-n // multiple) * multiple, k, dtype=w.dtype, device=w.device)
    buf[:n] = w
    w.data = buf[:n]
    return buf


def _pad_cols_(w: torch.Tensor, multiple: int) -> torch.Tensor:
    """Move parameter w (n, k) into a zero buffer of k rounded up to `multiple` columns; w becomes a
    (row-strided) view."""
    n, k = w.shape
    buf = torch.zeros(n, -(-k // multiple) * multiple, dtype=w.dtype, device=w.device)
    buf[:, :k] = w
    w.data = buf[:, :k]
    return buf


class PackedWeights:
    """Decode-friendly layouts of some of one model's weights, made once and owned by the runtime(s) that
    use them (pass one to several `ServingRuntime`s of the same model to share it). No second copy is kept:
    the model's parameters become views of the packed buffers (same values, so its own forward is unchanged).

    - `gate_up[i]` (2F, H): each MLP's gate_proj and up_proj rows in one buffer: one GEMM instead of two.
    - `lm_head` (V rounded up to 8, H): the tied embedding / lm_head with zero rows appended, so the logits
      GEMM writes 16-byte aligned rows (V = 32001 otherwise drops cuBLAS to an align-1 kernel); the padded
      logits are sliced back to `vocab`.
    - `x_proj[i]` (R + 2N rounded up to 8, I) and `dt_proj[i]` (I, R rounded up to 8; dt zero-padded to
      match): tiny GEMMs that cuBLAS otherwise runs with 2-element alignment.
    Zeros add exactly nothing, so results are unchanged.

    Per-layer constants the reference recomputes each call (same values): `A[i]` (I, N) fp32 stored
    channel-fastest (strides (1, I): the scan kernel's thread per channel reads A[:, n] as one coalesced row),
    `D[i]` (I,) and `dt_bias[i]` (I,) fp32, `conv_w[i]` (I, K).
    """

    @torch.no_grad()
    def __init__(self, model):
        self.model = model
        I = model.config.d_inner
        self.x_proj, self.dt_proj, self.gate_up = [], [], []
        for layer in model.model.layers:
            blk = layer.mamba
            self.x_proj.append(_pad_rows_(blk.x_proj[0].weight, 8))                 # (136, I)
            self.dt_proj.append(_pad_cols_(blk.dt_proj[0].weight, 8))               # (I, 104)
            mlp = layer.moe.experts[0]
            F_ = mlp.gate_proj.weight.shape[0]
            buf = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])             # (2F, H)
            mlp.gate_proj.weight.data = buf[:F_]
            mlp.up_proj.weight.data = buf[F_:]
            self.gate_up.append(buf)
        emb = model.model.embed_tokens.weight
        self.lm_head = _pad_rows_(emb, 8)                   # lm_head.weight is the same Parameter when tied
        if model.lm_head.weight is not emb:                 # untied checkpoints: pad lm_head on its own
            self.lm_head = _pad_rows_(model.lm_head.weight, 8)
        self.vocab = model.lm_head.weight.shape[0]
        blocks = [layer.mamba for layer in model.model.layers]
        self.A = [(-torch.exp(b.A_log[0].float())).t().contiguous().t() for b in blocks]   # (I, N)
        self.D = [b.D[0].float() for b in blocks]                                      # (I,)
        self.dt_bias = [b.dt_proj[0].bias.float() for b in blocks]                     # (I,)
        self.conv_w = [b.conv1d.weight.view(I, -1) for b in blocks]                   # (I, K)


@dataclass(frozen=True)
class ServingConfig:
    """How a `ServingRuntime` serves a model (everything but the model and its kernels).

    max_context          text tokens a cache row holds (per-bucket caches of this size)
    buckets              batch buckets: a batch of b runs in the smallest bucket ≥ b
    eviction             SWA eviction rule, as `HybridMambaAttentionDynamicCache` ("upstream" | "exact")
    ssm_state_dtype      dtype of the cached SSM state; None: fp32 where the kernels update it in place
                         (cuda kernels), else the model dtype
    use_graphs           capture decode steps as CUDA graphs (CUDA models only)
    compile_elementwise  torch.compile the elementwise glue; None: on CUDA models
    overlap_attention    attention on a side stream beside the SSM branch (CUDA models only)
    kv_layout            "head_major" | "time_major" (`HymbaServingCache`)
    prioritize_ssm       SSM branch at high stream priority in captured steps; None: `ServingRuntime.ssm_priority`
    decode_gemms         "auto" | "cublas" | "triton" (`gemm.resolve_decode_gemms`)
    gemm_configs         tilings overriding `TRITON_GEMMS` by name (None for a name: that GEMM on cuBLAS)
    gemv_max_rows        buckets of up to this many rows take `TRITON_GEMVS` instead (0: TRITON_GEMMS at all)
    gemv_configs         tilings overriding `TRITON_GEMVS` by name (None for a name: that GEMM on cuBLAS)
    conv_in_gemv         where x_proj runs on the gemv kernel, the decode conv runs in its prologue and the conv
                         state's shift in `ssm_inputs` (`gemm.linear_conv`): no conv launch; False: the conv kernel
    prefill_impl         "runtime" (`_prefill_body`) | "model" (the model's own forward; the A/B baseline)
    """

    max_context: int
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    eviction: str = "upstream"
    ssm_state_dtype: torch.dtype | None = None
    use_graphs: bool = True
    compile_elementwise: bool | None = None
    overlap_attention: bool = True
    kv_layout: str = "head_major"
    prioritize_ssm: bool | None = None
    decode_gemms: str = "auto"
    gemm_configs: Mapping[str, GemmConfig | SsmInputsConfig | None] | None = field(default_factory=dict)
    gemv_max_rows: int = 8
    gemv_configs: Mapping[str, GemmConfig | SsmInputsConfig | None] | None = field(default_factory=dict)
    conv_in_gemv: bool = True
    prefill_impl: str = "runtime"

    def __post_init__(self):
        object.__setattr__(self, "buckets", tuple(sorted(self.buckets)))
        object.__setattr__(self, "gemm_configs", dict(self.gemm_configs or {}))    # None: no overrides
        object.__setattr__(self, "gemv_configs", dict(self.gemv_configs or {}))
        if self.max_context < 1:
            raise HymbaDeployError(f"max_context must be ≥ 1, got {self.max_context}")
        if not self.buckets or self.buckets[0] < 1:
            raise HymbaDeployError(f"buckets must be batch sizes ≥ 1, got {self.buckets}")
        for name, value, allowed in (("prefill_impl", self.prefill_impl, PREFILL_IMPLS),
                                     ("decode_gemms", self.decode_gemms, DECODE_GEMMS),
                                     ("kv_layout", self.kv_layout, KV_LAYOUTS),
                                     ("eviction", self.eviction, EVICTION_RULES)):
            if value not in allowed:
                raise HymbaDeployError(f"{name} {value!r}: choose one of {', '.join(allowed)}")
        for name, given, known in (("gemm_configs", self.gemm_configs, TRITON_GEMMS),
                                   ("gemv_configs", self.gemv_configs, TRITON_GEMVS)):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise HymbaDeployError(f"{name}: no GEMM named {', '.join(unknown)} (known: {', '.join(known)})")
        for name in ONE_K_RANGE:
            c = self.gemv_configs.get(name)
            if c is not None and (c.splits != 1 or c.kernel != "gemv"):
                raise HymbaDeployError(f"gemv_configs: {name} takes a gemv tiling of one K range (splits 1), not {c}")
        if self.gemv_max_rows < 0:
            raise HymbaDeployError(f"gemv_max_rows must be ≥ 0, got {self.gemv_max_rows}")

    def with_(self, **changes) -> "ServingConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


class _SegmentedGraph:
    """One decode step of one bucket as CUDA graph segments separated by eager attention holes (none with the
    cuda kernels; global layers' with the reference ops, captured with every row's rings full)."""

    def __init__(self, runtime: "ServingRuntime", cache: HymbaServingCache):
        cfg = runtime.model_config
        B = cache.batch_size
        self.tokens = torch.zeros(B, 1, dtype=torch.int64, device=cache.device)
        self.replays = 0                                                    # steps served so far
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.holes = []                                                     # (layer, producer, q, out)
        pool = torch.cuda.graph_pool_handle()
        # Capture stream = the SSM branch's stream, at a higher priority than the attention's side stream
        # where `runtime.ssm_priority(B)` says so (the priority is kept in the graph's kernel nodes).
        stream = torch.cuda.Stream(device=cache.device, priority=-1 if runtime.ssm_priority(B) else 0)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            body = runtime._decode_body(cache, self.tokens)
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(pool=pool)
            try:
                request = next(body)
                while True:
                    graph.capture_end()
                    self.graphs.append(graph)
                    layer, producer, q = request
                    out = torch.empty(B, 1, cfg.num_attention_heads, cfg.v_dim, dtype=q.dtype, device=q.device)
                    self.holes.append((layer, producer, q, out))
                    graph = torch.cuda.CUDAGraph()
                    graph.capture_begin(pool=pool)
                    request = body.send(out)
            except StopIteration as stop:
                self.logits = stop.value                                    # (B, V) fp32, static
                graph.capture_end()
                self.graphs.append(graph)
        torch.cuda.current_stream().wait_stream(stream)

    def replay(self, runtime: "ServingRuntime", cache: HymbaServingCache, tokens: torch.Tensor):
        self.tokens.copy_(tokens)
        self.replays += 1
        for j, graph in enumerate(self.graphs):
            graph.replay()
            if j < len(self.holes):
                layer, producer, q, out = self.holes[j]
                runtime._eager_attention(cache, layer, producer, q, out)
        cache.advance()
        return self.logits


class ServingRuntime:
    """Generation for one model: per-bucket caches of `config.max_context` text tokens and captured decode
    steps, on the model's kernels (`model.kernels`). `packed`: the model's `PackedWeights` when another
    runtime of the same model already made them (default: packed here)."""

    def __init__(self, model, config: ServingConfig, packed: PackedWeights | None = None):
        if packed is not None and packed.model is not model:
            raise HymbaDeployError("packed weights belong to another model: pass the PackedWeights of this model")
        self.model, self.config = model, config
        self.model_config = model.config
        self.kernels: ReferenceKernels = model.kernels
        self.device, self.dtype = model.device, model.dtype
        self.ssm_state_dtype = config.ssm_state_dtype or (
            torch.float32 if self.kernels.writes_state_in_place else model.dtype)   # fp32: the scan updates it in place
        self.use_graphs = config.use_graphs and self.device.type == "cuda"
        compile_elementwise = (self.device.type == "cuda" if config.compile_elementwise is None
                               else config.compile_elementwise)
        self.fn = {name: torch.compile(f, fullgraph=True, dynamic=False if name in _STATIC_SHAPES else None)
                   if compile_elementwise else f for name, f in _ELEMENTWISE.items()}
        self.decode_gemms = gemm.resolve_decode_gemms(config.decode_gemms, self.device, self.dtype)
        self.gemm_configs = {k: c for k, c in {**TRITON_GEMMS, **config.gemm_configs}.items() if c is not None}
        self.gemv_configs = {k: c for k, c in {**TRITON_GEMVS, **config.gemv_configs}.items() if c is not None}
        self.packed = packed or PackedWeights(model)
        # Side stream for attention (`_attention`); None: everything on the current stream.
        self._side_stream = (torch.cuda.Stream(device=self.device)
                             if config.overlap_attention and self.device.type == "cuda" else None)
        self.caches: dict[int, HymbaServingCache] = {}
        self.graphs: dict[int, _SegmentedGraph] = {}
        self.captures = 0                                                   # decode graphs captured so far

    def _logits(self, u: torch.Tensor) -> torch.Tensor:
        """u (..., H) final-normed hidden -> logits (..., V) fp32, through the padded lm_head buffer."""
        return F.linear(u, self.packed.lm_head)[..., :self.packed.vocab].float()

    # ---- resources ----------------------------------------------------------------------------------
    def cache(self, bucket: int) -> HymbaServingCache:
        if bucket not in self.caches:
            c = self.config
            self.caches[bucket] = HymbaServingCache(self.model_config, bucket, c.max_context, self.dtype, self.device,
                                                    c.eviction, self.ssm_state_dtype, c.kv_layout)
        return self.caches[bucket]

    def release(self, bucket: int | None = None) -> None:
        for b in ([bucket] if bucket is not None else list(self.caches)):
            self.graphs.pop(b, None)
            self.caches.pop(b, None)

    def ssm_priority(self, batch: int) -> bool:
        """Whether a captured step runs the SSM branch at high stream priority (`prioritize_ssm`; None: where
        attention takes the tensor-core kernel, batch × kv heads ≥ SM count). There its short, latency-bound
        kernels get SM slots first while both streams have blocks waiting; at small batches (split-KV
        attention, the long pole) it does not pay (measurements: bench/results/)."""
        if self.config.prioritize_ssm is not None:
            return self.config.prioritize_ssm
        if self.device.type != "cuda":
            return False
        sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        return batch * self.model_config.num_key_value_heads >= sms

    def device_counts(self) -> bool:
        """True when the kernels read per-row key counts on the device: all attention inside the decode graph."""
        return self.kernels.device_kv_len(self.device)

    def graphs_possible(self, cache: HymbaServingCache) -> bool:
        if not self.use_graphs or cache.max_context < 2:
            return False
        return self.device_counts() or cache.ring <= cache.max_context   # reference ops: captured at full rings

    def _graph_usable(self, cache: HymbaServingCache) -> bool:
        """Whether this step of `cache` can replay its bucket's graph (reference ops: every row's rings full)."""
        return (self.graphs.get(cache.batch_size) is not None and self.caches.get(cache.batch_size) is cache
                and (self.device_counts() or cache.rings_full(1)))

    @torch.no_grad()
    def capture(self, bucket: int) -> _SegmentedGraph:
        """Capture the decode step of `bucket` (clobbers that cache's contents: call before a prefill)."""
        if bucket in self.graphs:
            return self.graphs[bucket]
        cache = self.cache(bucket)
        if not self.graphs_possible(cache):
            raise HymbaDeployError("CUDA graphs need a CUDA model and max_context ≥ 2 (with the reference ops: "
                                   "≥ the SWA ring size)")
        n = 1 if self.device_counts() else cache.ring - 1                  # reference ops: rings full next step
        cache.set_length(n)
        tokens = torch.zeros(bucket, 1, dtype=torch.int64, device=self.device)
        self.decode_eager(cache, tokens)                                   # warm-up: lazy inits, workspaces
        cache.set_length(n)
        torch.cuda.synchronize(self.device)
        self.graphs[bucket] = _SegmentedGraph(self, cache)
        self.captures += 1
        cache.reset()
        return self.graphs[bucket]

    # ---- prefill --------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache: HymbaServingCache, all_logits: bool = False,
                rows: Sequence[int] | None = None) -> torch.Tensor:
        """Prompts input_ids (b, n) of n tokens each -> last-token logits (b, V) fp32 (`all_logits`: every prompt
        token's, (b, n, V)).

        rows None: a new batch: prompt j in row j, every row at n tokens (rows ≥ b: padding, results unspecified).
        rows (b distinct cache rows): prompt j re-starts row rows[j] (its K/V, conv and SSM states and position
        replaced); every other row keeps its state and position. Between decode steps this replaces a
        finished row by a new prompt, with no new graph capture: the row then decodes as that prompt alone."""
        b, n = input_ids.shape
        if b > cache.batch_size:
            raise HymbaDeployError(f"{b} prompts exceed the cache's {cache.batch_size} rows")
        if not 1 <= n <= cache.max_context:
            raise HymbaDeployError(f"prompt of {n} tokens: the cache takes 1 to max_context {cache.max_context}")
        fresh = rows is None
        if fresh:
            cache.reset()
            rows = range(b)
        rows = [int(r) for r in rows]
        if len(rows) != b or len(set(rows)) != b or not all(0 <= r < cache.batch_size for r in rows):
            raise HymbaDeployError(f"rows {rows}: give {b} distinct rows of the cache's {cache.batch_size} for "
                                   f"{b} prompts")
        logits, j = [], 0
        while j < b:                                                        # runs of consecutive rows
            k = j + 1
            while k < b and rows[k] == rows[k - 1] + 1:
                k += 1
            logits.append(self._prefill_rows(input_ids[j:k], cache, rows[j], all_logits))
            j = k
        if fresh and b < cache.batch_size:
            cache.set_rows(range(b, cache.batch_size), n)                   # padding rows: results dropped
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    def _prefill_rows(self, input_ids: torch.Tensor, cache: HymbaServingCache, start: int, all_logits: bool):
        """Prompts (b, n) from empty into cache rows [start, start + b) -> logits, as `prefill`."""
        b, n = input_ids.shape
        rows = range(start, start + b)
        cache.set_rows(rows, 0)
        if self.config.prefill_impl == "model":
            h = self.model.model(input_ids, DynamicCacheView(cache, b, start))   # (b, n, H), model code unchanged
            return self._logits(h if all_logits else h[:, -1])
        logits = self._prefill_body(input_ids, cache, all_logits, start)
        cache.set_rows(rows, n)
        return logits

    def _prefill_body(self, input_ids: torch.Tensor, cache: HymbaServingCache, all_logits: bool = False,
                      start: int = 0):
        """`HymbaModel.forward` from an empty cache for prompts (b, n) -> last-token logits (b, V) fp32 (or
        all text tokens' (b, n, V)), with rows [start, start + b) of the cache holding each producer's K/V and every
        layer's final conv and SSM states. For the last token only, the last layer runs past its states for
        that token only: the logits need nothing else."""
        cfg, m, kern, fn, pw = self.model_config, self.model.model, self.kernels, self.fn, self.packed
        b, n = input_ids.shape
        rows = slice(start, start + b)                                      # the cache rows filled
        Hq, Hkv, d_qk, d_v, I = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.qk_head_dim, cfg.v_dim,
                                 cfg.d_inner)
        R, N, eps = cfg.mamba_dt_rank, cfg.mamba_d_state, cfg.rms_norm_eps
        layers = m.layers
        h = m.embed_tokens(input_ids)                                       # (b, n, H)
        meta = m.memory_tokens.to(h.dtype)[None].expand(b, -1, -1)          # (b, M, H), prepended (§2.1)
        h = torch.cat([meta, h], dim=1)                                     # (b, T, H), T = M + n
        T = h.shape[1]
        cos, sin = m.rotary_emb(torch.arange(T, device=h.device), h.dtype)  # (T, d_qk)
        u = fn["rms_norm"](h, layers[0].input_layernorm.weight, eps)        # (b, T, H)
        kv = {}                                                             # producer -> its (K, V), all T
        for i, layer in enumerate(layers):
            blk = layer.mamba
            final = i == len(layers) - 1
            last = final and not all_logits                                 # the last token only from here
            # 1. Fused input projection, split in checkpoint row order.
            q, k, v, x, z = blk.in_proj(u).split([blk.q_dim, *blk.kv_dims, I, I], dim=-1)
            # 2. Attention heads: RoPE; a producer's K/V stored in the cache; attention over the prompt's K/V.
            q = fn["rope"](q.view(b, T, Hq, d_qk), cos, sin)                # (b, T, Hq, d_qk)
            if blk.producer == i:
                kv[i] = (fn["rope"](k.view(b, T, Hkv, d_qk), cos, sin), v.view(b, T, Hkv, d_v))
                cache.store_prefill(i, *kv[i], start)
            attn, side = self._attention(q[:, -1:] if last else q, *kv[blk.producer], blk.window)
            # 3. SSM heads over the whole prompt (beside the attention when it runs on a side stream); the
            # final conv and SSM states go into the cache.
            xc = kern.conv_(x, pw.conv_w[i], blk.conv1d.bias, cache.conv_states[i][rows], fresh=True)  # (b, T, I)
            dt, Bm, Cm = fn["dbc_norms"](F.linear(xc, pw.x_proj[i]), blk.dt_layernorm.weight,
                                         blk.B_layernorm.weight, blk.C_layernorm.weight, R, N, eps,
                                         pw.dt_proj[i].shape[1])         # x_proj, dt_proj: padded copies
            dt = F.linear(dt, pw.dt_proj[i])                             # (b, T, I), bias joins in the scan
            y = kern.scan_(xc, dt, pw.A[i], Bm, Cm, pw.D[i], z, pw.dt_bias[i], cache.ssm_states[i][rows],
                           fresh=True)                                      # (b, T, I)
            if side is not None:
                torch.cuda.current_stream().wait_stream(side)
            if last:
                y, h = y[:, -1:], h[:, -1:]
            attn = attn.reshape(b, -1, Hq * d_v)                            # (b, T or 1, I)
            # 4. Fusion, out_proj, residual; then the MLP and the next layer's input norm.
            fused = fn["fuse_branches"](attn, blk.pre_avg_layernorm1.weight, y, blk.pre_avg_layernorm2.weight, eps)
            mlp = layer.moe.experts[0]
            next_w = m.final_layernorm.weight if final else layers[i + 1].input_layernorm.weight
            h, v_ = fn["add_rms_norm"](h, F.linear(fused, blk.out_proj.weight), layer.pre_moe_layernorm.weight, eps)
            gate, up = F.linear(v_, pw.gate_up[i]).chunk(2, dim=-1)      # packed gate/up rows
            # u: the next layer's input norm (or the final norm) of the new residual stream.
            h, u = fn["add_rms_norm"](h, F.linear(fn["silu_mul"](gate, up), mlp.down_proj.weight), next_w, eps)
        return self._logits(u[:, T - n:] if all_logits else u[:, -1])      # (b, n, V) or (b, V)

    def _attention(self, q, k, v, window: int, kv_len=None):
        """Windowed attention of q over k, v (the kernels' `attn`) -> (out, side): with a side stream, out is
        written there after the work queued so far, overlapping what follows on the current stream, and `side`
        must be joined before out is read (the inputs stay referenced until then); else side is None."""
        cfg = self.model_config
        args = (q, k, v, window, cfg.num_memory_tokens, cfg.qk_head_dim ** -0.5)
        side = self._side_stream
        if side is None:
            return self.kernels.attn(*args, kv_len=kv_len), None
        out = torch.empty(*q.shape[:3], cfg.v_dim, dtype=q.dtype, device=q.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.kernels.attn(*args, out, kv_len)
        return out, side

    # ---- decode ---------------------------------------------------------------------------------------
    def _eager_attention(self, cache, layer, producer, q, out=None):
        """Attention of layer `layer` (q (B, 1, Hq, d_qk)) over producer `producer`'s keys, the new token's
        included, each row over its own count (host lengths): one call per distinct count, one in all when the
        rows are at one position."""
        k, v = cache.key_cache[producer], cache.value_cache[producer]
        window = self.model.model.layers[layer].mamba.window
        args = (window, cache.meta, self.model_config.qk_head_dim ** -0.5)
        counts = [cache.kv_len(producer, n + 1) for n in cache.lengths]
        if len(set(counts)) == 1:
            L = counts[0]
            return self.kernels.attn(q, k[:, :L], v[:, :L], *args, out)
        if out is None:
            out = torch.empty(*q.shape[:3], self.model_config.v_dim, dtype=q.dtype, device=q.device)
        for L in sorted(set(counts)):
            idx = torch.tensor([b for b, c in enumerate(counts) if c == L], device=q.device)
            out[idx] = self.kernels.attn(q[idx], k[idx, :L], v[idx, :L], *args)
        return out

    def triton_tilings(self, batch: int) -> dict:
        """The Triton tilings by GEMM name that a decode step of `batch` rows runs ({}: cuBLAS everywhere)."""
        if self.decode_gemms != "triton":
            return {}
        return self.gemv_configs if batch <= self.config.gemv_max_rows else self.gemm_configs

    @staticmethod
    def _linear(tri: dict, name: str, x, w):
        """x (..., K) @ w.T: through the Triton tiling `tri[name]` (one K range) when there is one, else F.linear."""
        if name not in tri:
            return F.linear(x, w)
        return gemm.linear_splitk(x.reshape(-1, x.shape[-1]), w, tri[name])[0].view(*x.shape[:-1], w.shape[0])

    def _gemm_add_norm(self, tri: dict, name: str, x, w, h, norm_w, eps: float):
        """Residual step: (h + x @ w.T, RMSNorm of that); through split-K partials summed inside the norm's
        kernel when `tri` has a tiling for GEMM `name`, else F.linear."""
        if name in tri:
            part = gemm.linear_splitk(x.reshape(-1, x.shape[-1]), w, tri[name])
            add_norm = "add_partials_rms_norm_gemv" if tri[name].kernel == "gemv" else "add_partials_rms_norm"
            return self.fn[add_norm](h, part, norm_w, eps)
        return self.fn["add_rms_norm"](h, F.linear(x, w), norm_w, eps)

    def _decode_body(self, cache: HymbaServingCache, tokens: torch.Tensor):
        """One decode step for all cache rows, each at its own position (generator): yields (layer, producer, q)
        where attention must run outside the body (reference ops: global producers; SWA ones too until every
        row's rings are full) and receives its output; returns logits (B, V) fp32."""
        cfg, m, kern, fn, pw = self.model_config, self.model.model, self.kernels, self.fn, self.packed
        B = tokens.shape[0]
        Hq, Hkv, d_qk, d_v, I = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.qk_head_dim, cfg.v_dim,
                                 cfg.d_inner)
        R, N, eps = cfg.mamba_dt_rank, cfg.mamba_d_state, cfg.rms_norm_eps
        meta = cfg.num_memory_tokens
        layers = m.layers
        h = m.embed_tokens(tokens)                                          # (B, 1, H)
        pos = cache.pos                                                     # (B,) position of each row's token
        cos, sin = (t.unsqueeze(1) for t in m.rotary_emb(pos, h.dtype))     # (B, 1, d_qk)
        first_global = next((i for i in range(cfg.num_hidden_layers) if cfg.is_global(i)), None)
        first_swa = next((i for i in range(cfg.num_hidden_layers) if not cfg.is_global(i)), None)
        # Per kind of producer (global, SWA): each row's slot and, where the kernels read them on the device,
        # each row's key count after this token: attention then joins the graph; otherwise it runs between
        # graph segments (global layers; SWA layers too until every row's rings are full: then in the body
        # over the full rings).
        kinds = {True: first_global, False: first_swa}
        slots = {g: cache.decode_slots(i, pos) for g, i in kinds.items() if i is not None}
        counts = ({g: cache.decode_counts(i, pos) for g, i in kinds.items() if i is not None}
                  if kern.device_kv_len(pos.device) else None)
        swa_in_body = counts is not None or cache.rings_full(1)
        tri = self.triton_tilings(B)                                        # Triton GEMMs (gemm.py) by name
        u = fn["rms_norm"](h, layers[0].input_layernorm.weight, eps)        # (B, 1, H)
        for i, layer in enumerate(layers):
            blk = layer.mamba
            # 1. Fused input projection, split in checkpoint row order.
            q, k, v, x, z = self._linear(tri, "in_proj", u, blk.in_proj.weight).split(
                [blk.q_dim, *blk.kv_dims, I, I], dim=-1)
            # 2. Attention heads: RoPE, K/V written into this token's slot, attention over held keys.
            if blk.producer == i:                                           # RoPE'd q (B, 1, Hq, d_qk)
                q = fn["rope_store"](q.view(B, 1, Hq, d_qk), k.view(B, 1, Hkv, d_qk), v.view(B, 1, Hkv, d_v),
                                     cos, sin, cache.key_cache[i], cache.value_cache[i], cache.rows,
                                     slots[cfg.is_global(i)])
            else:
                q = fn["rope"](q.view(B, 1, Hq, d_qk), cos, sin)
            # Attention (bandwidth-bound) on the side stream where there is one, overlapping the SSM branch
            # below (latency-bound small kernels); joined before the fusion. Graph capture keeps the fork.
            p = blk.producer
            if counts is not None:                                          # whole buffer, device key counts
                attn, side = self._attention(q, cache.key_cache[p], cache.value_cache[p], blk.window,
                                             counts[cfg.is_global(p)])
            elif cfg.is_global(p) or not swa_in_body:
                attn, side = (yield (i, p, q)), None                        # counts change: outside graphs
            else:                                                           # full rings: a fixed count
                L = cache.slots(p)
                attn, side = self._attention(q, cache.key_cache[p][:, :L], cache.value_cache[p][:, :L], blk.window)
            # 3. SSM heads: conv and scan at T = 1, states updated in place.
            norms = (blk.dt_layernorm.weight, blk.B_layernorm.weight, blk.C_layernorm.weight)
            conv_in_gemv = self.config.conv_in_gemv and "x_proj" in tri and tri["x_proj"].kernel == "gemv"
            if conv_in_gemv:                                                # the conv inside x_proj's launch
                part, xc = gemm.linear_conv(x.reshape(B, I), pw.conv_w[i], blk.conv1d.bias, cache.conv_states[i],
                                            pw.x_proj[i], tri["x_proj"])
                xc = xc.view(B, 1, I)
            else:
                xc = kern.conv_(x, pw.conv_w[i], blk.conv1d.bias, cache.conv_states[i])        # (B, 1, I)
            if "x_proj" in tri:                                             # 2 launches: x_proj, then the rest
                if not conv_in_gemv:
                    part = gemm.linear_splitk(xc.reshape(B, I), pw.x_proj[i], tri["x_proj"])
                dt, Bm, Cm = (t.unsqueeze(1) for t in gemm.ssm_inputs(
                    part, *norms, pw.dt_proj[i], eps, tri.get("ssm_inputs", TRITON_GEMMS["ssm_inputs"]),
                    conv=(x.reshape(B, I), cache.conv_states[i]) if conv_in_gemv else None))
            else:
                dt, Bm, Cm = fn["dbc_norms"](F.linear(xc, pw.x_proj[i]), *norms, R, N, eps,
                                             pw.dt_proj[i].shape[1])     # x_proj, dt_proj: padded copies
                dt = F.linear(dt, pw.dt_proj[i])                         # (B, 1, I), bias joins in the scan
            y = kern.scan_(xc, dt, pw.A[i], Bm, Cm, pw.D[i], z, pw.dt_bias[i], cache.ssm_states[i])
            if side is not None:
                torch.cuda.current_stream().wait_stream(side)
            attn = attn.reshape(B, 1, Hq * d_v)                             # (B, 1, I)
            # 4. Fusion, out_proj, residual; then the MLP and the next layer's input norm.
            fused = fn["fuse_branches"](attn, blk.pre_avg_layernorm1.weight, y, blk.pre_avg_layernorm2.weight, eps)
            mlp = layer.moe.experts[0]
            next_w = layers[i + 1].input_layernorm.weight if i + 1 < len(layers) else m.final_layernorm.weight
            h, v_ = self._gemm_add_norm(tri, "out_proj", fused, blk.out_proj.weight, h,
                                        layer.pre_moe_layernorm.weight, eps)
            if "gate_up" in tri:                                            # silu(gate) · up in the epilogue
                act = gemm.linear_glu(v_.reshape(B, -1), pw.gate_up[i], tri["gate_up"]).view(B, 1, -1)
            else:
                gate, up = F.linear(v_, pw.gate_up[i]).chunk(2, dim=-1)  # packed gate/up rows
                act = fn["silu_mul"](gate, up)
            # u: the next layer's input norm (or the final norm) of the new residual stream.
            h, u = self._gemm_add_norm(tri, "down_proj", act, mlp.down_proj.weight, h, next_w, eps)
        logits = self._logits(u[:, -1])                                     # (B, V)
        cache.pos += 1
        return logits

    @torch.no_grad()
    def decode_eager(self, cache: HymbaServingCache, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, 1) for all cache rows, each row at its own position -> logits (B, V); no graphs."""
        if cache.text_len == 0:
            raise HymbaDeployError("decode before prefill: the cache is empty")
        cache.check_room()
        body = self._decode_body(cache, tokens)
        try:
            request = next(body)
            while True:
                layer, producer, q = request
                request = body.send(self._eager_attention(cache, layer, producer, q))
        except StopIteration as stop:
            logits = stop.value
        cache.advance()
        return logits

    @torch.no_grad()
    def decode(self, cache: HymbaServingCache, tokens: torch.Tensor) -> torch.Tensor:
        """One step: the captured graph of this cache's bucket when possible, else eager."""
        if self._graph_usable(cache):
            cache.check_room()
            return self.graphs[cache.batch_size].replay(self, cache, tokens)
        return self.decode_eager(cache, tokens)

    @staticmethod
    def _lengths(input_ids: torch.Tensor, lengths) -> list[int]:
        """The contract's per-row text lengths of right-padded prompts (b, T) (None: T for every row)."""
        b, T = input_ids.shape
        if lengths is None:
            return [T] * b
        lengths = [int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
        if len(lengths) != b:
            raise HymbaDeployError(f"lengths: {len(lengths)} values for {b} prompts")
        bad = [n for n in lengths if not 1 <= n <= T]
        if bad:
            raise HymbaDeployError(f"lengths: {bad} outside 1..{T} (the padded prompt length)")
        return lengths

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, sampling: SamplingParams = SamplingParams(),
                 lengths: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Right-padded prompts (b, T) with `lengths` (b,) text tokens per row (None: all T; the contract's
        convention) -> (b, T + max_new_tokens): the padded prompts, then each row's new tokens, greedy or
        sampled. Each row generates what its prompt generates alone: rows of equal length are prefilled
        together, each other run of rows on its own, and decode steps run every row at its own position."""
        sampling.validate()
        b, T = input_ids.shape
        lengths = self._lengths(input_ids, lengths)
        if max_new_tokens < 0:
            raise HymbaDeployError(f"max_new_tokens must be ≥ 0, got {max_new_tokens}")
        if max(lengths) + max_new_tokens - 1 > self.config.max_context:
            raise HymbaDeployError(f"{max(lengths)} + {max_new_tokens} tokens exceed max_context "
                                   f"{self.config.max_context}")
        if max_new_tokens == 0:
            return input_ids
        bucket = select_bucket(b, self.config.buckets)
        cache = self.cache(bucket)
        steps = max_new_tokens - 1
        if self.graphs_possible(cache) and steps and (self.device_counts() or min(lengths) + steps >= cache.ring):
            self.capture(bucket)
        input_ids = input_ids.to(self.device)
        generator = None if sampling.greedy else make_generator(sampling, self.device)
        cache.reset()
        logits, j = [], 0
        while j < b:                                                        # runs of rows of one length
            k = j + 1
            while k < b and lengths[k] == lengths[j]:
                k += 1
            logits.append(self.prefill(input_ids[j:k, :lengths[j]], cache, rows=range(j, k)))
            j = k
        if bucket > b:
            cache.set_rows(range(b, bucket), max(lengths))                  # padding rows: results dropped
        token = sample(torch.cat(logits), sampling, generator)              # (b, 1)
        out = [input_ids, token]
        pad = torch.zeros(bucket - b, 1, dtype=torch.int64, device=self.device)
        for _ in range(steps):
            logits = self.decode(cache, torch.cat([token, pad]) if bucket > b else token)
            token = sample(logits[:b], sampling, generator)
            out.append(token)
        return torch.cat(out, dim=1)
