"""The reference model: checkpoint layout, cached decoding against full recomputes, batch rules."""

from __future__ import annotations

import importlib

import pytest
import torch

from hymba_deploy.parity.tolerances import rel_err
from hymba_deploy import HymbaDeployError, HymbaForCausalLM, load_model, ops, preset
from hymba_deploy.cache import HybridMambaAttentionDynamicCache

N_NEW = 24


def cached_decode(model, prompt, n_new, eviction):
    """Greedy decoding through the cache; returns the generated ids and each step's logits (B, V)."""
    cache = model.new_cache(prompt.shape[0], eviction=eviction)
    logits = model(prompt, cache)[:, -1]
    steps, tokens = [logits], []
    for _ in range(n_new - 1):
        tokens.append(logits.argmax(-1, keepdim=True))
        logits = model(tokens[-1], cache)[:, -1]
        steps.append(logits)
    return torch.cat(tokens, 1), torch.stack(steps, 1)           # (B, n_new-1), (B, n_new, V)


def recompute(model, prompt, generated):
    """Logits of the same positions from one forward pass over prompt + generated tokens, no cache."""
    full = model(torch.cat([prompt, generated], 1))
    return full[:, prompt.shape[1] - 1:]                          # (B, n_new, V)


def upstream_attention(prompt_len):
    """windowed_attention whose SWA mask lets queries at generated positions (key index ≥ prompt_len)
    see window − 1 previous tokens, as upstream's decode-time eviction does (hymba-architecture §4.3)."""
    def attention(q, k, v, window, num_meta, scale, kv_lengths=None):
        assert kv_lengths is None                                 # a recompute: no cache
        if window <= 0:
            return ops.windowed_attention_ref(q, k, v, window, num_meta, scale)
        Tq, Tk = q.shape[1], k.shape[1]
        q_idx = torch.arange(Tk - Tq, Tk)[:, None]
        kv_idx = torch.arange(Tk)[None, :]
        per_query_window = torch.where(q_idx >= prompt_len, window - 1, window)
        mask = (kv_idx <= q_idx) & ((q_idx - kv_idx <= per_query_window) | (kv_idx < num_meta))
        return ops.masked_attention(q, k, v, mask, scale)
    return attention


# Prompts shorter than the window (16) and longer than window + meta (16 + 8); batch 1 and 2.
PROMPTS = [(1, 7), (2, 10), (2, 40), (1, 57)]


@pytest.mark.parametrize("batch,n", PROMPTS)
def test_exact_eviction_decode_equals_full_recompute(tiny, batch, n):
    prompt = torch.randint(0, tiny.config.vocab_size, (batch, n))
    generated, steps = cached_decode(tiny, prompt, N_NEW, "exact")
    ref = recompute(tiny, prompt, generated)
    for s in range(N_NEW):
        assert rel_err(steps[:, s], ref[:, s]) <= 1e-5, f"step {s}: {rel_err(steps[:, s], ref[:, s])}"


@pytest.mark.parametrize("batch,n", PROMPTS)
def test_upstream_eviction_decode_equals_recompute_with_window_minus_one(tiny, batch, n, monkeypatch):
    prompt = torch.randint(0, tiny.config.vocab_size, (batch, n))
    generated, steps = cached_decode(tiny, prompt, N_NEW, "upstream")
    plain = recompute(tiny, prompt, generated)
    # The CPU kernel of torch.ops.hymba.windowed_attention looks this function up at call time.
    attention_module = importlib.import_module("hymba_deploy.ops.windowed_attention")
    monkeypatch.setattr(attention_module, "windowed_attention", upstream_attention(tiny.config.num_memory_tokens + n))
    ref = recompute(tiny, prompt, generated)
    for s in range(N_NEW):
        assert rel_err(steps[:, s], ref[:, s]) <= 1e-5, f"step {s}: {rel_err(steps[:, s], ref[:, s])}"
    # Once generation passes the window, the off-by-one is visible: the test can tell the rules apart.
    assert rel_err(steps[:, -1], plain[:, -1]) > 1e-3


def test_generate_is_greedy_cached_decoding(tiny):
    prompt = torch.randint(0, tiny.config.vocab_size, (2, 12))
    out = tiny.generate(prompt, 6)
    generated, _ = cached_decode(tiny, prompt, 7, "upstream")
    assert torch.equal(out[:, :12], prompt) and torch.equal(out[:, 12:], generated)


def test_batch_rows_are_independent(tiny):
    prompt = torch.randint(0, tiny.config.vocab_size, (3, 30))
    batched = tiny.generate(prompt, 8)
    for b in range(3):
        assert torch.equal(batched[b:b + 1], tiny.generate(prompt[b:b + 1], 8))


def test_left_padded_batch_is_rejected(tiny):
    prompt = torch.randint(0, tiny.config.vocab_size, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, :2] = 0
    with pytest.raises(HymbaDeployError, match="attention_mask must be right padding"):
        tiny(prompt, attention_mask=mask)
    with pytest.raises(HymbaDeployError, match="attention_mask must be right padding"):
        tiny.generate(prompt, 3, attention_mask=mask)


def test_cache_shapes_and_swa_trimming(tiny):
    cfg = tiny.config
    meta, window = cfg.num_memory_tokens, cfg.sliding_window
    for eviction, keep in (("upstream", window - 1), ("exact", window)):
        cache = tiny.new_cache(2, eviction=eviction)
        tiny(torch.randint(0, cfg.vocab_size, (2, 50)), cache)
        assert cache.positions.tolist() == [meta + 50] * 2
        for i in range(cfg.num_hidden_layers):
            if not cfg.is_producer(i):
                assert cache.key_cache[i] is None and cache.value_cache[i] is None
                continue
            length = meta + 50 if cfg.is_global(i) else meta + keep
            assert cache.key_cache[i].shape == (2, length, cfg.num_key_value_heads, cfg.qk_head_dim)
            assert cache.value_cache[i].shape == (2, length, cfg.num_key_value_heads, cfg.v_dim)
            assert cache.conv_states[i].shape == (2, cfg.d_inner, cfg.mamba_d_conv)
            assert cache.ssm_states[i].shape == (2, cfg.d_inner, cfg.mamba_d_state)


def test_state_dtype_is_configurable_and_defaults_to_model_dtype(tiny):
    bf16 = tiny.to(torch.bfloat16)
    cache = bf16.new_cache(1)
    bf16(torch.randint(0, 257, (1, 9)), cache)
    assert cache.ssm_states[0].dtype == torch.bfloat16 and cache.conv_states[0].dtype == torch.bfloat16
    cache32 = bf16.new_cache(1, state_dtype=torch.float32)
    bf16(torch.randint(0, 257, (1, 9)), cache32)
    assert cache32.ssm_states[0].dtype == torch.float32


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
def test_half_precision_model_tracks_fp32(seed, dtype, tol):
    """Whole-model logits, 8 layers deep, with upstream's init scale (half-precision noise compounds
    per layer, hence 3e-2 for bf16's 8-bit mantissa)."""
    model = load_model("tiny", seed=seed)
    prompt = torch.randint(0, 257, (2, 30))
    ref = model(prompt)
    out = model.to(dtype)(prompt)
    assert out.dtype == torch.float32                             # logits are always fp32
    assert rel_err(out, ref) <= tol


def test_tiny_preset_exercises_every_feature():
    cfg = preset("tiny")
    assert cfg.num_memory_tokens > 0
    assert any(not cfg.is_global(i) for i in range(cfg.num_hidden_layers))
    assert cfg.global_attn_idx
    assert sorted(len(g) for g in cfg.kv_reuse_group)[:2] == [2, 3]
    assert cfg.sliding_window + cfg.num_memory_tokens < 64        # the window binds at short lengths


def test_checkpoint_names_and_shapes_of_hymba_1_5b():
    """Spot checks against hymba-architecture.md §6, on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = HymbaForCausalLM(preset("hymba-1.5b"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert model.num_parameters() == 1_522_797_824
    expected = {
        "model.embed_tokens.weight": (32001, 1600),
        "model.memory_tokens": (128, 1600),
        "model.final_layernorm.weight": (1600,),
        "model.layers.0.mamba.in_proj.weight": (8960, 1600),     # global, producer
        "model.layers.1.mamba.in_proj.weight": (8960, 1600),     # producer of [1, 2]
        "model.layers.2.mamba.in_proj.weight": (8000, 1600),     # consumer
        "model.layers.18.mamba.in_proj.weight": (8000, 1600),    # consumer in [16, 17, 18]
        "model.layers.5.mamba.conv1d.weight": (3200, 1, 4),
        "model.layers.5.mamba.conv1d.bias": (3200,),
        "model.layers.5.mamba.x_proj.0.weight": (132, 3200),
        "model.layers.5.mamba.dt_proj.0.weight": (3200, 100),
        "model.layers.5.mamba.dt_proj.0.bias": (3200,),
        "model.layers.5.mamba.A_log.0": (3200, 16),
        "model.layers.5.mamba.D.0": (3200,),
        "model.layers.5.mamba.dt_layernorm.weight": (100,),
        "model.layers.5.mamba.B_layernorm.weight": (16,),
        "model.layers.5.mamba.C_layernorm.weight": (16,),
        "model.layers.5.mamba.pre_avg_layernorm1.weight": (3200,),
        "model.layers.5.mamba.pre_avg_layernorm2.weight": (3200,),
        "model.layers.5.mamba.out_proj.weight": (1600, 3200),
        "model.layers.5.input_layernorm.weight": (1600,),
        "model.layers.5.pre_moe_layernorm.weight": (1600,),
        "model.layers.5.moe.experts.0.gate_proj.weight": (5504, 1600),
        "model.layers.5.moe.experts.0.up_proj.weight": (5504, 1600),
        "model.layers.5.moe.experts.0.down_proj.weight": (1600, 5504),
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    producers = [i for i in range(32) if model.config.is_producer(i)]
    assert producers == [0, 1, 3, 5, 7, 9, 11, 13, 15, 16, 19, 21, 23, 25, 27, 29, 31]
    assert len(shapes) == 3 + 32 * 19 + 1                           # + the tied lm_head entry


def test_hymba_1_5b_cache_is_79_mib_at_8k_fp16():
    size = HybridMambaAttentionDynamicCache.size_bytes(preset("hymba-1.5b"), 8192, torch.float16)
    assert abs(size / 2**20 - 79.1) < 0.1


def test_rope_uses_the_static_ntk_base():
    assert abs(preset("hymba-1.5b").rope_base - 74534.83) < 0.01


def test_meta_tokens_are_prepended_once_and_dropped(tiny):
    """Changing the meta tokens changes the output; logits exist only for the text tokens."""
    prompt = torch.randint(0, 257, (1, 5))
    before = tiny(prompt)
    assert before.shape == (1, 5, 257)
    with torch.no_grad():
        tiny.model.memory_tokens.add_(0.5)
    assert rel_err(tiny(prompt), before) > 1e-3
