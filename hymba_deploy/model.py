"""Hymba in plain PyTorch, readable top to bottom, with the public checkpoint's parameter names.

References: hymba-architecture.md (the spec; section numbers below point into it), the HF remote code
`modeling_hymba.py` of nvidia/Hymba-1.5B-Base, and mamba-ssm's reference ops.

Order: RMSNorm, rotary embedding, the hybrid mixer (`HymbaBlock`: attention heads and SSM heads side by
side), MLP, decoder layer, model, causal-LM head. Shapes use B = batch, T = positions in this step
(meta tokens included at prefill), H = hidden, I = d_inner, N = d_state, R = dt_rank.

The three heavy operators (selective scan, causal conv, windowed attention) are called through the
model's kernel backend (`kernels`, given at construction; `hymba_deploy.kernels`): by default the PyTorch
custom ops `torch.ops.hymba.*` registered in `hymba_deploy.ops` (one node each when exported; on CPU
they run the fast implementations there), whose docstrings are the contract shared with the ONNX
export and CUDA kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops  # noqa: F401  (registers torch.ops.hymba.*)
from .cache import HybridMambaAttentionDynamicCache
from .config import HymbaConfig
from .errors import HymbaDeployError
from .kernels import REFERENCE, ReferenceKernels


class HymbaRMSNorm(nn.Module):
    """Llama-style: normalise in fp32, cast back to the input dtype, then scale (§2.2)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class HymbaRotaryEmbedding(nn.Module):
    """NeoX-style RoPE over the whole q/k head with the static NTK base (§4.1).

    The frequencies are recomputed in fp32 on every call rather than kept as a buffer, so casting the
    model to bf16 cannot round them (a buffer would be cast by `model.to(torch.bfloat16)`).
    """

    def __init__(self, config: HymbaConfig):
        super().__init__()
        self.dim, self.base = config.qk_head_dim, config.rope_base

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        """positions (T,) or (B, T) int -> cos, sin (T, d_qk) or (B, T, d_qk), computed in fp32 and cast to
        `dtype` as upstream."""
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=positions.device).float() / self.dim
        inv_freq = 1.0 / (self.base ** exponents)                        # (d_qk/2,)
        freqs = positions.float()[..., None] * inv_freq                  # (…, T, d_qk/2)
        emb = torch.cat([freqs, freqs], dim=-1)                          # (…, T, d_qk)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x, cos, sin):
    """x (B, T, heads, d); cos/sin (T, d) shared by every row, or (B, T, d) per row."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)                               # rotate_half
    return x * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)


class HymbaBlock(nn.Module):
    """The hybrid mixer `layers.i.mamba`: attention and SSM heads read one fused projection (§2.3)."""

    def __init__(self, config: HymbaConfig, layer_idx: int, kernels: ReferenceKernels = REFERENCE):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.kernels = kernels                                 # runs the three heavy operators
        self.producer = config.kv_producer[layer_idx]          # whose K/V this layer attends over
        self.window = config.layer_window(layer_idx)           # 0 = global
        H, I, N, R, K = (config.hidden_size, config.d_inner, config.mamba_d_state,
                         config.mamba_dt_rank, config.mamba_d_conv)
        Hkv = config.num_key_value_heads
        self.q_dim = config.attn_dim                           # Hq·d_qk
        self.kv_dims = (Hkv * config.qk_head_dim, Hkv * config.v_dim) if self.producer == layer_idx else (0, 0)
        # in_proj rows: Q | K | V | x | z for producers, Q | x | z for consumers.
        self.in_proj = nn.Linear(H, self.q_dim + sum(self.kv_dims) + 2 * I, bias=False)
        self.conv1d = nn.Conv1d(I, I, K, groups=I, padding=K - 1, bias=config.mamba_conv_bias)
        self.x_proj = nn.ModuleList([nn.Linear(I, R + 2 * N, bias=False)])
        self.dt_proj = nn.ModuleList([nn.Linear(R, I, bias=True)])
        self.A_log = nn.ParameterList([nn.Parameter(torch.empty(I, N))])
        self.D = nn.ParameterList([nn.Parameter(torch.empty(I))])
        self.dt_layernorm = HymbaRMSNorm(R, config.rms_norm_eps)
        self.B_layernorm = HymbaRMSNorm(N, config.rms_norm_eps)
        self.C_layernorm = HymbaRMSNorm(N, config.rms_norm_eps)
        self.pre_avg_layernorm1 = HymbaRMSNorm(I, config.rms_norm_eps)   # β of the attention heads
        self.pre_avg_layernorm2 = HymbaRMSNorm(I, config.rms_norm_eps)   # β of the SSM heads
        self.out_proj = nn.Linear(I, H, bias=False)

    def forward(self, u, cos, sin, cache, shared_kv, ends=None):
        """u (B, T, H) -> (B, T, H). `shared_kv` maps producer layer -> its (K, V, kv_lengths) of this step.

        `ends` (B,) int64 (a ragged prefill; None: all T): row b's positions ≥ ends[b] are right padding.
        Valid positions need nothing (everything is causal); what the row carries out of the step must not
        see the padding: dt = -inf there (the scan passes the state through unchanged), the conv state
        ends at the row's last real input, and the cache keeps only the row's own K/V entries.
        """
        cfg = self.config
        B_, T, _ = u.shape
        Hq, Hkv, d_qk, d_v = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.qk_head_dim, cfg.v_dim
        I = cfg.d_inner

        # 1. Fused input projection, split in checkpoint row order.
        q, k, v, x, z = self.in_proj(u).split([self.q_dim, *self.kv_dims, I, I], dim=-1)

        # 2. Attention heads: RoPE on Q (and on K where this layer owns it), shared K/V, no o_proj.
        q = apply_rotary(q.view(B_, T, Hq, d_qk), cos, sin)                 # (B, T, Hq, d_qk)
        if self.producer == self.layer_idx:
            k = apply_rotary(k.view(B_, T, Hkv, d_qk), cos, sin)            # (B, T, Hkv, d_qk)
            v = v.view(B_, T, Hkv, d_v)                                     # (B, T, Hkv, d_v)
            kv_lengths = None                                               # every row attends over all T
            if cache is not None:
                k, v, kv_lengths = cache.update_kv(self.layer_idx, k, v, ends)  # (B, S+T, Hkv, ·), (B,)
            shared_kv[self.layer_idx] = (k, v, kv_lengths)
        k, v, kv_lengths = shared_kv[self.producer]
        attn = self.kernels.windowed_attention(q, k, v, self.window, cfg.num_memory_tokens, d_qk ** -0.5,
                                               kv_lengths=kv_lengths)
        attn = attn.reshape(B_, T, Hq * d_v)                                # (B, T, I)

        # 3. SSM heads. 3a: causal depthwise conv + SiLU, carrying the conv state.
        conv_state = cache.conv_states[self.layer_idx] if cache is not None else None
        xc, conv_state = self.kernels.causal_conv1d(x, self.conv1d.weight.view(I, -1), self.conv1d.bias,
                                                    conv_state, activation="silu")  # (B, T, I)
        if ends is not None and cache is not None:
            conv_state = conv_state_at(x, ends, cfg.mamba_d_conv)           # (B, I, K)
        # 3b: x_proj -> (dt, B, C), each RMS-normalised over its own width.
        dt, Bm, Cm = self.x_proj[0](xc).split([cfg.mamba_dt_rank, cfg.mamba_d_state, cfg.mamba_d_state], dim=-1)
        dt, Bm, Cm = self.dt_layernorm(dt), self.B_layernorm(Bm), self.C_layernorm(Cm)
        # 3c: dt_proj WITHOUT its bias; the bias joins in fp32 inside the scan (§3.5).
        dt = F.linear(dt, self.dt_proj[0].weight)                           # (B, T, I)
        if ends is not None:                                                # padded steps: dt' = 0
            padded = torch.arange(T, device=dt.device) >= ends[:, None]     # (B, T)
            dt = dt.masked_fill(padded[..., None], float("-inf"))
        A = -torch.exp(self.A_log[0].float())                               # (I, N)
        ssm_state = cache.ssm_states[self.layer_idx] if cache is not None else None
        y, ssm_state = self.kernels.selective_scan(xc, dt, A, Bm, Cm, self.D[0].float(), z,
                                                   self.dt_proj[0].bias.float(), ssm_state)  # (B, T, I)
        if cache is not None:
            cache.update_ssm(self.layer_idx, conv_state, ssm_state)

        # 4. Fusion: mean of the two normalised branches, then out_proj.
        return self.out_proj((self.pre_avg_layernorm1(attn) + self.pre_avg_layernorm2(y)) / 2)


def conv_state_at(x, ends, K: int):
    """The conv state of a prefill from zeros that ends at row b's position ends[b] - 1: the last K pre-conv
    inputs x (B, T, I) before ends[b], zeros where ends[b] < K -> (B, I, K) in x.dtype."""
    hist = F.pad(x.transpose(1, 2), (K, 0))                                 # (B, I, K + T); x_t at K + t
    index = ends[:, None] + torch.arange(K, device=x.device)                # (B, K): hist ends[b]..ends[b]+K-1
    return torch.gather(hist, 2, index[:, None, :].expand(-1, hist.shape[1], -1))


class HymbaMLP(nn.Module):
    def __init__(self, config: HymbaConfig):
        super().__init__()
        H, F_ = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(H, F_, bias=False)
        self.up_proj = nn.Linear(H, F_, bias=False)
        self.down_proj = nn.Linear(F_, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class HymbaMoE(nn.Module):
    """Upstream's "MoE" with one expert and no router: a dense MLP named `moe.experts.0.*`."""

    def __init__(self, config: HymbaConfig):
        super().__init__()
        self.experts = nn.ModuleList([HymbaMLP(config)])

    def forward(self, x):
        return self.experts[0](x)


class HymbaDecoderLayer(nn.Module):
    def __init__(self, config: HymbaConfig, layer_idx: int, kernels: ReferenceKernels = REFERENCE):
        super().__init__()
        self.input_layernorm = HymbaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mamba = HymbaBlock(config, layer_idx, kernels)
        self.pre_moe_layernorm = HymbaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.moe = HymbaMoE(config)

    def forward(self, h, cos, sin, cache, shared_kv, ends=None):
        h = h + self.mamba(self.input_layernorm(h), cos, sin, cache, shared_kv, ends)
        return h + self.moe(self.pre_moe_layernorm(h))


class HymbaModel(nn.Module):
    def __init__(self, config: HymbaConfig, kernels: ReferenceKernels = REFERENCE):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.memory_tokens = nn.Parameter(torch.empty(config.num_memory_tokens, config.hidden_size))
        self.layers = nn.ModuleList([HymbaDecoderLayer(config, i, kernels) for i in range(config.num_hidden_layers)])
        self.final_layernorm = HymbaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = HymbaRotaryEmbedding(config)

    def forward(self, input_ids, cache: HybridMambaAttentionDynamicCache | None = None,
                lengths: torch.Tensor | None = None):
        """input_ids (B, n) -> hidden states of the n text tokens (B, n, H).

        `lengths` (B,) int64 (a prefill only: the cache, if any, is empty): row b's text tokens are the
        first lengths[b], right padding after them (ISSUE14_CONTRACT); None: all n. Hidden states at padded
        positions are unspecified (finite). A given cache is updated in place, `cache.positions` advanced
        by each row's real positions.
        """
        h = self.embed_tokens(input_ids)                                    # (B, n, H)
        B_, n, _ = h.shape
        # Meta tokens are prepended once, when no past exists (§2.1 step 2, §5).
        prepend = cache is None or cache.is_empty()
        if prepend:
            meta = self.memory_tokens.to(h.dtype)[None].expand(B_, -1, -1)  # (B, M, H)
            h = torch.cat([meta, h], dim=1)                                 # (B, M + n, H)
        T = h.shape[1]
        steps = torch.arange(T, device=h.device)
        if prepend:
            positions = steps                                               # (T,): shared by every row
        else:
            positions = cache.positions[:, None] + steps                    # (B, T): each row's own
        cos, sin = self.rotary_emb(positions, h.dtype)
        ends = None if lengths is None else lengths + (T - n)               # (B,) real positions per row

        shared_kv: dict[int, tuple] = {}
        for layer in self.layers:
            h = layer(h, cos, sin, cache, shared_kv, ends)
        if cache is not None:
            cache.positions = cache.positions + (T if ends is None else ends)
        h = self.final_layernorm(h)
        return h[:, T - n:]                                                 # drop the meta tokens


class HymbaForCausalLM(nn.Module):
    """Hymba with its tied LM head. `forward` returns fp32 logits of every text token. `kernels`: the
    backend running the heavy operators (`hymba_deploy.kernels`; default the reference ops)."""

    def __init__(self, config: HymbaConfig, kernels: ReferenceKernels = REFERENCE):
        super().__init__()
        self.config = config.validate()
        self.model = HymbaModel(config, kernels)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight                # tie_word_embeddings
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None):
        """Random weights with upstream's init: N(0, 0.02) matrices, A_log = log(1..N), D = 1,
        dt bias = softplus⁻¹ of dt ~ logU(1e-3, 1e-1), unit norms."""
        std = 0.02
        cfg = self.config
        for name, p in self.named_parameters():
            if name.endswith("A_log.0"):
                p.copy_(torch.log(torch.arange(1, cfg.mamba_d_state + 1, dtype=torch.float32)).expand_as(p))
            elif name.endswith("D.0") or "layernorm" in name:
                p.fill_(1.0)
            elif name.endswith("dt_proj.0.bias"):
                dt = torch.exp(torch.rand(p.shape, generator=generator) * (math.log(0.1) - math.log(1e-3))
                               + math.log(1e-3))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith("conv1d.bias"):
                p.zero_()
            elif name.endswith("dt_proj.0.weight"):
                bound = cfg.mamba_dt_rank ** -0.5
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * std)

    @property
    def kernels(self) -> ReferenceKernels:
        """The kernel backend every layer runs (one per model; `use_kernels` replaces it)."""
        return self.model.layers[0].mamba.kernels

    def use_kernels(self, kernels: ReferenceKernels) -> "HymbaForCausalLM":
        """Run `kernels` in every layer of this model (weights unchanged); returns the model."""
        for layer in self.model.layers:
            layer.mamba.kernels = kernels
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def num_parameters(self) -> int:
        """Unique parameters (the tied head counted once); works on the meta device."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, eviction: str = "upstream",
                  state_dtype: torch.dtype | None = None) -> HybridMambaAttentionDynamicCache:
        return HybridMambaAttentionDynamicCache(self.config, batch_size, self.dtype, state_dtype,
                                                eviction, self.device)

    def forward(self, input_ids, cache: HybridMambaAttentionDynamicCache | None = None,
                attention_mask: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                logits_to_keep: int = 0):
        """input_ids (B, n) -> logits (B, n, vocab) fp32. A given cache is read and updated in place.

        Prompts of different lengths (a prefill: no cache or an empty one) are right-padded to n, with
        `lengths` (B,) int64 text tokens per row (1 ≤ lengths[b] ≤ n), or an equivalent `attention_mask`
        (B, n) of ones then zeros per row; each row then gives exactly what its prompt gives alone
        (ISSUE14_CONTRACT). Logits at padded positions are unspecified (finite). Decode steps (a cache
        holding a past) advance each row from its own position, `cache.positions`.

        `logits_to_keep` > 0 projects only the last that many positions of each row (its last real ones
        under `lengths`, unspecified where a row has fewer; upstream's generate path projects only the last
        one: `calc_logits_for_entire_prompt=False`); 0 keeps all n.
        """
        if input_ids.dim() != 2:
            raise HymbaDeployError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
        if cache is not None and cache.batch_size != input_ids.shape[0]:
            raise HymbaDeployError(
                f"cache holds {cache.batch_size} sequences but input_ids has {input_ids.shape[0]}"
            )
        lengths = self._prompt_lengths(input_ids, cache, attention_mask, lengths)
        h = self.model(input_ids, cache, lengths)
        if logits_to_keep > 0:
            if lengths is not None:
                # Shift each row right so that its last real token is the last position (a full row stays as
                # it is: the slice below, and so the head's arithmetic, is then that of a uniform batch).
                n = h.shape[1]
                index = torch.clamp(torch.arange(n, device=h.device) - (n - lengths)[:, None], min=0)  # (B, n)
                h = torch.gather(h, 1, index[..., None].expand(-1, -1, h.shape[2]))
            h = h[:, -logits_to_keep:]
        return self.lm_head(h).float()

    @staticmethod
    def _prompt_lengths(input_ids, cache, attention_mask, lengths) -> torch.Tensor | None:
        """The checked (B,) int64 `lengths` of a ragged prefill from `lengths` or `attention_mask`, or None
        (every row full). Value checks are skipped while tracing (export, compile): the graph trusts them."""
        B_, n = input_ids.shape
        eager = not torch.compiler.is_compiling()
        if attention_mask is not None:
            if lengths is not None:
                raise HymbaDeployError("give lengths or attention_mask, not both")
            if tuple(attention_mask.shape) != (B_, n):
                raise HymbaDeployError(f"attention_mask must have the shape of input_ids {(B_, n)}, "
                                       f"got {tuple(attention_mask.shape)}")
            mask = attention_mask.to(torch.int64)
            lengths = mask.sum(dim=1)
            if eager:
                right_padded = torch.arange(n, device=mask.device) < lengths[:, None]
                if not bool(torch.equal(mask, right_padded.to(torch.int64))):
                    raise HymbaDeployError(
                        "attention_mask must be right padding: per row ones (its tokens) then zeros; left "
                        "padding or holes are not supported (give the prompts right-padded, or lengths)")
        if lengths is None:
            return None
        if not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (B_,) \
                or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise HymbaDeployError(f"lengths must be a ({B_},) integer tensor (text tokens per row), got "
                                   f"{tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__}")
        lengths = lengths.to(device=input_ids.device, dtype=torch.int64)
        if eager:
            if cache is not None and not cache.is_empty():
                if bool((lengths != n).any()):
                    raise HymbaDeployError("lengths / attention_mask with padding apply to a prefill (an empty "
                                           "cache); decode steps take every row's tokens")
                return None
            bad = ((lengths < 1) | (lengths > n)).nonzero().flatten().tolist()
            if bad:
                source = "attention_mask row" if attention_mask is not None else "lengths"
                raise HymbaDeployError(f"{source}[{bad[0]}] gives {int(lengths[bad[0]])} tokens, out of range: "
                                       f"each row holds 1 to {n} text tokens (the padded width of input_ids)")
        return lengths

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, eviction: str = "upstream",
                 state_dtype: torch.dtype | None = None, attention_mask: torch.Tensor | None = None,
                 lengths: torch.Tensor | None = None):
        """Greedy decoding: (B, n) -> (B, n + max_new_tokens), the (right-padded) prompts then the new tokens.
        Prompts of different lengths: `lengths` or `attention_mask` as in `forward`."""
        if max_new_tokens < 0:
            raise HymbaDeployError(f"max_new_tokens must be ≥ 0, got {max_new_tokens}")
        cache = self.new_cache(input_ids.shape[0], eviction, state_dtype)
        out = input_ids
        step_input = input_ids
        for _ in range(max_new_tokens):
            prefill = step_input is input_ids
            logits = self(step_input, cache, attention_mask if prefill else None, lengths if prefill else None,
                          logits_to_keep=1)
            step_input = logits[:, -1].argmax(-1, keepdim=True)             # (B, 1)
            out = torch.cat([out, step_input], dim=1)
        return out
