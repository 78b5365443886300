"""Serving runtime on CPU: ring-buffer cache geometry against the reference cache, runtime generation
against `model.generate`, bucket selection, sampling determinism. The CUDA kernels and CUDA graphs
are checked by the GPU tests (`pytest -m gpu tests/gpu`)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hymba_deploy import cuda as cuda_backend
from hymba_deploy import ops as hymba_ops
from hymba_deploy.cache import HybridMambaAttentionDynamicCache
from hymba_deploy.config import preset
from hymba_deploy.errors import HymbaDeployError
from hymba_deploy.kernels import REFERENCE, ReferenceKernels
from hymba_deploy.serving import (
    DynamicCacheView,
    HymbaServingCache,
    PackedWeights,
    SamplingParams,
    ServingConfig,
    ServingRuntime,
    filter_logits,
    sample,
    select_bucket,
)

from hymba_deploy.parity.tolerances import rel_err


def _runtime(model, **config) -> ServingRuntime:
    return ServingRuntime(model, ServingConfig(**config))


def _advance(ref, tokens: int) -> None:
    """Advance a reference cache by `tokens` positions, as the model does once per step."""
    if hasattr(ref, "positions"):
        ref.positions = ref.positions + tokens
    else:                                                                   # before issue 14's per-row cache
        ref.seen_tokens += tokens


def _positions_cache(cfg, batch, n_prompt, steps, eviction):
    """Drive the reference cache and a serving cache with keys that encode their position; yield, after
    every step, (positions the reference step attends over, positions the serving cache holds), per layer."""
    meta = cfg.num_memory_tokens
    Hkv, dqk, dv = cfg.num_key_value_heads, cfg.qk_head_dim, cfg.v_dim
    ref = HybridMambaAttentionDynamicCache(cfg, batch, torch.float32, eviction=eviction)
    srv = HymbaServingCache(cfg, batch, n_prompt + steps, torch.float32, eviction=eviction)

    def kv(start, T):
        pos = torch.arange(start, start + T, dtype=torch.float32)
        return (pos.view(1, T, 1, 1).expand(batch, T, Hkv, dqk).clone(),
                pos.view(1, T, 1, 1).expand(batch, T, Hkv, dv).clone())

    producers = [i for i in range(cfg.num_hidden_layers) if cfg.is_producer(i)]
    T0 = meta + n_prompt
    seen = {}
    for i in producers:                                                     # prefill
        k, v = kv(0, T0)
        seen[i] = ref.update_kv(i, k, v)[0]
        srv.store_prefill(i, k, v)
    _advance(ref, T0)
    srv.set_length(n_prompt)
    for step in range(steps):
        out = {}
        for i in producers:
            k, v = kv(meta + srv.text_len, 1)
            rk = ref.update_kv(i, k, v)[0]
            srv.store_decode(i, k, v, srv.slot_index(i, srv.pos))
            L = srv.kv_len(i, srv.text_len + 1)
            out[i] = (sorted(rk[0, :, 0, 0].tolist()), sorted(srv.key_cache[i][0, :L, 0, 0].tolist()),
                      sorted(srv.value_cache[i][0, :L, 0, 0].tolist()))
        srv.set_length(srv.text_len + 1)
        _advance(ref, 1)
        yield out


@pytest.mark.parametrize("eviction", ["upstream", "exact"])
@pytest.mark.parametrize("n_prompt", [1, 5, 16, 40])
def test_ring_buffer_holds_exactly_the_keys_a_reference_decode_step_sees(eviction, n_prompt):
    cfg = preset("tiny")
    for out in _positions_cache(cfg, 2, n_prompt, 3 * cfg.sliding_window, eviction):
        for layer, (ref_pos, srv_k, srv_v) in out.items():
            assert srv_k == ref_pos, (layer, ref_pos, srv_k)
            assert srv_v == ref_pos


@pytest.mark.parametrize("eviction", ["upstream", "exact"])
def test_rows_at_different_positions_hold_and_read_exactly_their_own_keys(eviction):
    """Rows of one serving cache at different positions (prompts of 1, below the window, past window + meta,
    longest), each decode step writing every row's key at its own slot (`decode_slots`) and reading its own
    count (`decode_counts`): per row, the slots read hold exactly the positions the reference cache of that
    prompt alone attends over, `decode_counts` is the reference's c_b + 1, and `kv_counts` its stored c_b (the
    contract's rule: p_b global, M + min(p_b − M, keep) SWA)."""
    cfg = preset("tiny")
    meta, Hkv, dqk, dv = cfg.num_memory_tokens, cfg.num_key_value_heads, cfg.qk_head_dim, cfg.v_dim
    prompts = [1, 10, 30, 40]
    steps = 2 * cfg.sliding_window
    B = len(prompts)
    srv = HymbaServingCache(cfg, B, max(prompts) + steps, torch.float32, eviction=eviction)
    refs = [HybridMambaAttentionDynamicCache(cfg, 1, torch.float32, eviction=eviction) for _ in prompts]

    def kv(positions):                                                     # keys/values = their position
        pos = torch.as_tensor(positions, dtype=torch.float32)
        pos = pos.view(-1, 1, 1, 1)
        return pos.expand(-1, 1, Hkv, dqk).clone(), pos.expand(-1, 1, Hkv, dv).clone()

    producers = [i for i in range(cfg.num_hidden_layers) if cfg.is_producer(i)]
    for b, n in enumerate(prompts):                                         # batch-of-one prefill per row
        k, v = (t.transpose(0, 1) for t in kv(range(meta + n)))             # (1, M + n, Hkv, d)
        for i in producers:
            refs[b].update_kv(i, k, v)
            srv.store_prefill(i, k, v, start=b)
        _advance(refs[b], meta + n)
        srv.set_rows([b], n)
    assert srv.lengths == prompts and srv.pos.tolist() == [meta + n for n in prompts]
    for _ in range(steps):
        p = srv.positions()
        k, v = kv(p)                                                        # (B, 1, Hkv, d): row b at p_b
        for i in producers:
            before = [len(r.key_cache[i][0]) for r in refs]
            assert srv.kv_counts(i) == before, (i, srv.kv_counts(i), before)
            keep = refs[0].keep(i)
            assert before == [pb if keep is None else meta + min(pb - meta, keep) for pb in p]
            srv.store_decode(i, k, v, srv.decode_slots(i, srv.pos))
            counts = srv.decode_counts(i, srv.pos)
            assert counts.dtype == torch.int32 and counts.tolist() == [c + 1 for c in before]
            for b, r in enumerate(refs):
                attended = r.update_kv(i, k[b:b + 1], v[b:b + 1])[0]
                want = sorted(attended[0, :, 0, 0].tolist())
                assert sorted(srv.key_cache[i][b, :int(counts[b]), 0, 0].tolist()) == want, (i, b)
                assert sorted(srv.value_cache[i][b, :int(counts[b]), 0, 0].tolist()) == want, (i, b)
        for r in refs:
            _advance(r, 1)
        srv.pos += 1
        srv.advance()
    assert srv.lengths == [n + steps for n in prompts]


def test_ragged_named_states_round_trip_in_the_contracts_layout():
    """`named_states` of rows at different positions: row b's c_b K/V entries first (in position order), zeros
    after; `load_named_states` with per-row positions restores the same rows, lengths and positions."""
    cfg = preset("tiny")
    meta = cfg.num_memory_tokens
    g = torch.Generator().manual_seed(0)
    src = HymbaServingCache(cfg, 3, 48, torch.float32)
    src.fill_random(1, g)
    for b, n in enumerate([3, 20, 45]):
        src.set_rows([b], n)
    states = src.named_states()
    dst = HymbaServingCache(cfg, 4, 48, torch.float32)
    assert dst.load_named_states(states, src.positions()) == 3
    assert dst.lengths[:3] == [3, 20, 45] and dst.pos[:3].tolist() == [meta + 3, meta + 20, meta + 45]
    again = dst.named_states(rows=3)
    for name, t in states.items():
        assert torch.equal(again[name], t), name
    for name, kind, layer in HybridMambaAttentionDynamicCache.state_names(cfg):
        if kind == "key":
            counts = src.kv_counts(layer)
            assert states[name].shape[1] == max(counts)
            for b, c in enumerate(counts):
                assert not states[name][b, c:].any()                        # padding entries: zeros
    with pytest.raises(HymbaDeployError, match="2 positions for 3 rows"):
        dst.load_named_states(states, [meta + 3, meta + 20])


def test_kv_layouts_hold_the_same_keys_and_head_major_streams_are_contiguous():
    cfg = preset("tiny")
    meta, Hkv, dqk, dv = cfg.num_memory_tokens, cfg.num_key_value_heads, cfg.qk_head_dim, cfg.v_dim
    caches = {lay: HymbaServingCache(cfg, 2, 40, torch.float32, kv_layout=lay) for lay in ("head_major", "time_major")}
    g = torch.Generator().manual_seed(0)
    n = 30                                                                  # past the tiny window: ring wraps
    prefill = {i: (torch.randn(2, meta + n, Hkv, dqk, generator=g), torch.randn(2, meta + n, Hkv, dv, generator=g))
               for i in range(cfg.num_hidden_layers) if cfg.is_producer(i)}
    step = {i: (torch.randn(2, 1, Hkv, dqk, generator=g), torch.randn(2, 1, Hkv, dv, generator=g)) for i in prefill}
    for c in caches.values():
        for i, (k, v) in prefill.items():
            c.store_prefill(i, k, v)
        c.set_length(n)
        for i, (k, v) in step.items():
            c.store_decode(i, k, v, c.slot_index(i, c.pos))
    hm, tm = caches["head_major"], caches["time_major"]
    for i in prefill:
        assert torch.equal(hm.key_cache[i], tm.key_cache[i]) and torch.equal(hm.value_cache[i], tm.value_cache[i])
        S = hm.slots(i)
        assert hm.key_cache[i].stride() == (Hkv * S * dqk, dqk, S * dqk, 1)         # (B, Hkv, S, d) storage
        assert tm.key_cache[i].is_contiguous()
    with pytest.raises(HymbaDeployError, match="kv_layout"):
        HymbaServingCache(cfg, 1, 8, torch.float32, kv_layout="paged")


def test_serving_cache_geometry_of_hymba_1_5b():
    cfg = preset("hymba-1.5b")
    c = HymbaServingCache.__new__(HymbaServingCache)                     # geometry only, no buffers
    c.config, c.meta, c.max_context = cfg, 128, 8192
    c.ring = cfg.sliding_window                                             # upstream: keep 1023 + the new one
    assert c.slots(0) == 128 + 8192 and c.slots(1) == 128 + 1024
    assert c.slot(1, 1023) == 128 + 1023 and c.slot(1, 1024) == 128
    assert c.kv_len(1, 5000) == 128 + 1024 and c.kv_len(15, 5000) == 128 + 5000


def test_serving_cache_preallocates_and_never_reallocates(tiny):
    runtime = _runtime(tiny, max_context=48, buckets=(2,))
    cache = runtime.cache(2)
    ptrs = [t.data_ptr() for t in cache.key_cache + cache.value_cache + cache.conv_states + cache.ssm_states if t is not None]
    runtime.generate(torch.randint(3, 257, (2, 20)), 8)
    assert ptrs == [t.data_ptr() for t in cache.key_cache + cache.value_cache + cache.conv_states + cache.ssm_states if t is not None]
    assert cache.text_len == 20 + 7


def test_packed_weights_keep_the_model_and_are_shared_explicitly(tiny):
    """The runtime re-packs gate/up and pads lm_head, x_proj, dt_proj into buffers the model's parameters
    then view: the model's own logits are unchanged; a second runtime given the first's `PackedWeights` uses
    the same buffers; another model's are refused."""
    ids = torch.randint(3, 257, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = tiny(ids)
    config = ServingConfig(max_context=16, buckets=(2,))
    e1 = ServingRuntime(tiny, config)
    e2 = ServingRuntime(tiny, config, packed=e1.packed)
    with torch.no_grad():
        assert torch.equal(tiny(ids), before)
    assert e2.packed is e1.packed and isinstance(e1.packed, PackedWeights)
    mlp = tiny.model.layers[0].moe.experts[0]
    F_ = mlp.gate_proj.weight.shape[0]
    packed = e1.packed
    assert mlp.gate_proj.weight.data_ptr() == packed.gate_up[0].data_ptr()
    assert mlp.up_proj.weight.data_ptr() == packed.gate_up[0][F_:].data_ptr()
    assert packed.lm_head.shape[0] % 8 == 0 and packed.lm_head.shape[0] >= tiny.config.vocab_size
    assert not packed.lm_head[tiny.config.vocab_size:].any()                # padding rows are zeros
    assert packed.x_proj[0].shape[0] % 8 == 0 and packed.dt_proj[0].shape[1] % 8 == 0
    assert not e1.ssm_priority(2)                                           # CPU: one stream, no priority
    assert ServingRuntime(tiny, config.with_(prioritize_ssm=True)).ssm_priority(1)
    from hymba_deploy import load_model
    with pytest.raises(HymbaDeployError, match="another model"):
        ServingRuntime(load_model("tiny"), config, packed=packed)


@pytest.mark.parametrize("eviction,n_prompt", [("upstream", 27), ("exact", 27), ("upstream", 3)])
def test_engine_prefill_equals_the_model_forward(tiny, eviction, n_prompt):
    """The runtime's prefill body (packed weights, its glue functions, the ops over the whole prompt) is the
    model's forward: the reference runtime's last-token logits, and the serving-cache contents of the model's
    own forward through DynamicCacheView (K/V slots, conv and SSM states; all else untouched), past the window
    (the SWA rings wrap) and for a prompt shorter than the meta tokens."""
    ids = torch.randint(3, 257, (2, n_prompt))
    with torch.no_grad():
        ref = tiny(ids, tiny.new_cache(2, eviction))[:, -1]
    runtimes = [_runtime(tiny, max_context=32, buckets=(3,), eviction=eviction, prefill_impl=impl)
               for impl in ("model", "runtime")]
    caches = [e.cache(3) for e in runtimes]
    for c in caches:                                                        # same poison in both, 3 rows
        c.fill_random(5, torch.Generator().manual_seed(1))
    logits = [e.prefill(ids, c) for e, c in zip(runtimes, caches)]
    assert rel_err(logits[0], ref) < 1e-5 and rel_err(logits[1], ref) < 1e-5
    by_model, by_runtime = caches
    assert by_runtime.lengths == by_model.lengths == [n_prompt] * 3 and torch.equal(by_runtime.pos, by_model.pos)
    for name in ("key_cache", "value_cache", "conv_states", "ssm_states"):
        for i, (want, got) in enumerate(zip(getattr(by_model, name), getattr(by_runtime, name))):
            if want is None:
                continue
            L = by_model.kv_len(i, n_prompt) if name in ("key_cache", "value_cache") else want.shape[1]
            assert rel_err(got[:2, :L], want[:2, :L]) < 1e-5, (name, i)
            assert torch.equal(got[:2, L:], want[:2, L:]) and torch.equal(got[2:], want[2:]), (name, i)


def test_prefill_checks_its_arguments(tiny):
    runtime = _runtime(tiny, max_context=8, buckets=(1,))
    for n in (0, 9):
        with pytest.raises(HymbaDeployError, match="max_context 8"):
            runtime.prefill(torch.randint(3, 257, (1, n)), runtime.cache(1))
    with pytest.raises(HymbaDeployError, match="prefill_impl"):
        _runtime(tiny, max_context=8, prefill_impl="graph")


@pytest.mark.parametrize("eviction,n_prompt,new", [("upstream", 20, 16), ("exact", 20, 16), ("upstream", 5, 16)])
def test_engine_greedy_tokens_equal_reference_generate(tiny, eviction, n_prompt, new):
    ids = torch.randint(3, 257, (2, n_prompt))
    ref = tiny.generate(ids, new, eviction=eviction)
    runtime = _runtime(tiny, max_context=n_prompt + new, buckets=(1, 2, 4), eviction=eviction)
    assert torch.equal(runtime.generate(ids, new), ref)


def test_engine_decode_logits_track_reference_cache(tiny):
    """Teacher-forced: the runtime's per-step logits equal the reference runtime's (fp32)."""
    ids = torch.randint(3, 257, (2, 18))
    ref_cache = tiny.new_cache(2)
    runtime = _runtime(tiny, max_context=40, buckets=(2,))
    cache = runtime.cache(2)
    step = ids
    lg_srv = runtime.prefill(ids, cache)
    for _ in range(12):
        lg_ref = tiny(step, ref_cache)[:, -1]
        assert rel_err(lg_srv, lg_ref) < 1e-5
        step = lg_ref.argmax(-1, keepdim=True)
        lg_srv = runtime.decode(cache, step)


def _ragged(model, lengths, seed=0):
    """Right-padded prompts (b, max(lengths)) of the given lengths (padding: token 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(3, model.config.vocab_size, (n,), generator=g)
    return ids


# tiny: 8 meta tokens, window 16: a prompt of 1, one below the window, one past window + meta, the longest;
# in mixed order, with a run of equal lengths prefilled together, and a padded bucket
RAGGED = [([30, 1, 40, 10], "upstream"), ([30, 1, 40, 10], "exact"), ([10, 10, 40], "upstream")]


@pytest.mark.parametrize("lengths,eviction", RAGGED, ids=["-".join(map(str, r)) + f"-{e}" for r, e in RAGGED])
def test_ragged_generate_gives_each_row_what_its_prompt_gives_alone(tiny, eviction, lengths):
    """`generate(ids, new, lengths=...)` (right-padded, the contract's convention) -> (b, T + new): the padded
    prompts, then per row exactly the tokens of that prompt alone (the reference model's generate), decoding past
    every window."""
    ids, new = _ragged(tiny, lengths), 20
    runtime = _runtime(tiny, max_context=max(lengths) + new, buckets=(1, 2, 4), eviction=eviction)
    out = runtime.generate(ids, new, lengths=torch.tensor(lengths))
    assert out.shape == (len(lengths), ids.shape[1] + new) and torch.equal(out[:, :ids.shape[1]], ids)
    for b, n in enumerate(lengths):
        alone = tiny.generate(ids[b:b + 1, :n], new, eviction=eviction)[0, n:]
        assert torch.equal(out[b, ids.shape[1]:], alone), (b, n)


class _DeviceCounts(ReferenceKernels):
    """The reference ops, with `attn` taking per-row key counts as the cuda kernels do on the GPU (over whole
    K/V buffers, row b's keys [0, kv_len[b])): drives the decode path that a captured graph runs, on the CPU."""

    name = "device-counts"

    def device_kv_len(self, device) -> bool:
        return True

    def attn(self, q, k, v, window, num_meta, scale, out=None, kv_len=None):
        if kv_len is None:
            return super().attn(q, k, v, window, num_meta, scale, out)
        assert kv_len.dtype == torch.int32 and kv_len.shape == (q.shape[0],)
        res = torch.cat([self.windowed_attention(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], window, num_meta, scale)
                         for b, n in enumerate(kv_len.tolist())])
        return res if out is None else out.copy_(res)


def test_device_count_decode_path_gives_each_row_what_its_prompt_gives_alone(tiny):
    """The decode step as the cuda kernels run it (every attention, global and SWA, inside the step over whole
    buffers with per-row device counts from `decode_counts`; no host lengths): a ragged batch, and a row
    replaced mid-way, give each row the tokens of its prompt alone (reference model)."""
    lengths, new = [30, 1, 40, 10], 20
    ids = _ragged(tiny, lengths)
    try:
        tiny.use_kernels(_DeviceCounts())
        runtime = _runtime(tiny, max_context=64, buckets=(4,))
        assert runtime.device_counts()
        out = runtime.generate(ids, new, lengths=lengths)
    finally:
        tiny.use_kernels(REFERENCE)
    for b, n in enumerate(lengths):
        assert torch.equal(out[b, 40:], tiny.generate(ids[b:b + 1, :n], new)[0, n:]), (b, n)


def _steps(runtime, cache, logits, tokens_of, steps, rows):
    """Decode `steps` steps from `logits` (b, V) feeding tokens_of(step, greedy tokens) -> per-step logits."""
    out = [logits]
    for t in range(steps):
        token = tokens_of(t, logits.argmax(-1, keepdim=True))
        pad = torch.zeros(cache.batch_size - rows, 1, dtype=torch.int64)
        logits = runtime.decode(cache, torch.cat([token, pad]))[:rows]
        out.append(logits)
    return out


def test_ragged_batch_logits_equal_each_prompt_alone(tiny):
    """Teacher-forced on the batch's greedy tokens: every row's prefill and decode logits equal those of its
    prompt alone through the same runtime (fp32 bound)."""
    lengths, steps = [30, 1, 40, 10], 20
    ids = _ragged(tiny, lengths)
    runtime = _runtime(tiny, max_context=64, buckets=(1, 4))
    cache = runtime.cache(4)
    cache.reset()
    first = torch.cat([runtime.prefill(ids[b:b + 1, :n], cache, rows=[b]) for b, n in enumerate(lengths)])
    assert cache.lengths == lengths
    chosen = []
    batch = _steps(runtime, cache, first, lambda t, greedy: chosen.append(greedy) or greedy, steps, 4)
    for b, n in enumerate(lengths):
        one = runtime.cache(1)
        alone = _steps(runtime, one, runtime.prefill(ids[b:b + 1, :n], one), lambda t, g: chosen[t][b:b + 1], steps, 1)
        errs = [rel_err(x[b:b + 1], y) for x, y in zip(batch, alone)]
        assert max(errs) < 1e-5, (b, n, errs)


def test_a_row_replaced_between_steps_decodes_as_its_new_prompt_alone(tiny):
    """Continuous batching's building block: a batch decodes, one row is re-started with a new prompt
    (`prefill(..., rows=[r])`) between two steps; that row's next tokens are the new prompt's alone, the other
    rows' tokens are unchanged."""
    lengths, before, after = [12, 30, 5, 20], 9, 14
    ids = _ragged(tiny, lengths, seed=1)
    new_prompt = _ragged(tiny, [25], seed=2)
    runtime = _runtime(tiny, max_context=80, buckets=(1, 4))
    alone = [runtime.generate(ids[b:b + 1, :n], 1 + before + after)[0, n:] for b, n in enumerate(lengths)]
    replaced_alone = runtime.generate(new_prompt, 1 + after)[0, 25:]
    cache = runtime.cache(4)
    cache.reset()
    logits = torch.cat([runtime.prefill(ids[b:b + 1, :n], cache, rows=[b]) for b, n in enumerate(lengths)])
    tokens = [logits.argmax(-1, keepdim=True)]
    for _ in range(before):
        tokens.append(runtime.decode(cache, tokens[-1]).argmax(-1, keepdim=True))
    first = runtime.prefill(new_prompt, cache, rows=[2])                   # row 2 finished: a new prompt
    assert cache.lengths == [n + before for n in lengths[:2]] + [25, lengths[3] + before]
    tokens[-1] = tokens[-1].clone()
    tokens[-1][2] = first.argmax(-1)
    mark = len(tokens) - 1
    for _ in range(after):
        tokens.append(runtime.decode(cache, tokens[-1]).argmax(-1, keepdim=True))
    got = torch.cat(tokens, 1)                                              # (4, 1 + before + after)
    for b in (0, 1, 3):
        assert torch.equal(got[b], alone[b]), b
    assert torch.equal(got[2, mark:], replaced_alone)
    assert torch.equal(got[2, :mark], alone[2][:mark])


def test_ragged_requests_and_row_prefills_are_checked(tiny):
    runtime = _runtime(tiny, max_context=24, buckets=(4,))
    ids = _ragged(tiny, [5, 3])
    with pytest.raises(HymbaDeployError, match="lengths: 3 values for 2 prompts"):
        runtime.generate(ids, 2, lengths=[5, 3, 1])
    with pytest.raises(HymbaDeployError, match=r"lengths: \[0\] outside 1..5"):
        runtime.generate(ids, 2, lengths=[5, 0])
    with pytest.raises(HymbaDeployError, match="max_context"):
        runtime.generate(ids, 21, lengths=[5, 3])
    assert runtime.generate(ids, 20, lengths=[5, 3]).shape == (2, 25)   # the longest row decides
    cache = runtime.cache(4)
    for rows in ([0, 0], [1], [3, 4]):
        with pytest.raises(HymbaDeployError, match="distinct rows"):
            runtime.prefill(ids, cache, rows=rows)
    runtime.prefill(ids[:1, :5], cache)
    runtime.prefill(_ragged(tiny, [24]), cache, rows=[1])
    with pytest.raises(HymbaDeployError, match=r"row\(s\) \[1\] hold max_context 24"):
        runtime.decode(cache, torch.zeros(4, 1, dtype=torch.int64))


def test_padded_bucket_rows_do_not_change_results(tiny):
    ids = torch.randint(3, 257, (3, 20))
    e4 = _runtime(tiny, max_context=40, buckets=(4,))
    e3 = _runtime(tiny, max_context=40, buckets=(3,))
    assert torch.equal(e4.generate(ids, 6), e3.generate(ids, 6))


def test_bf16_engine_logits_track_reference_bf16(seed):
    """bf16, teacher-forced: the runtime (bf16 SSM state, as upstream) stays within bf16 tolerance."""
    from conftest import sharpen
    from hymba_deploy import load_model

    model = sharpen(load_model("tiny", seed=seed), seed).to(torch.bfloat16)
    ids = torch.randint(3, 257, (2, 20))
    ref_cache = model.new_cache(2)
    runtime = _runtime(model, max_context=32, buckets=(2,))
    assert runtime.ssm_state_dtype == torch.bfloat16                       # reference kernels: upstream rounding
    cache = runtime.cache(2)
    step, lg_srv = ids, runtime.prefill(ids, cache)
    for _ in range(8):
        lg_ref = model(step, ref_cache)[:, -1]
        assert rel_err(lg_srv, lg_ref) < 1e-2
        step = lg_ref.argmax(-1, keepdim=True)
        lg_srv = runtime.decode(cache, step)


@pytest.mark.parametrize("batch,bucket", [(1, 1), (2, 2), (3, 4), (8, 8), (9, 16), (100, 128), (128, 128)])
def test_select_bucket(batch, bucket):
    assert select_bucket(batch) == bucket


@pytest.mark.parametrize("batch", [0, 129])
def test_select_bucket_rejects_what_no_bucket_holds(batch):
    with pytest.raises(HymbaDeployError):
        select_bucket(batch)


def test_sampling_is_deterministic_per_seed(tiny):
    ids = torch.randint(3, 257, (2, 20))
    runtime = _runtime(tiny, max_context=40, buckets=(2,))
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    a, b = runtime.generate(ids, 8, p), runtime.generate(ids, 8, p)
    c = runtime.generate(ids, 8, SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_limits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 100, generator=g)
    greedy = logits.argmax(-1, keepdim=True)
    assert torch.equal(sample(logits, SamplingParams()), greedy)
    assert torch.equal(sample(logits, SamplingParams(temperature=1.0, top_k=1), g), greedy)
    assert torch.equal(sample(logits, SamplingParams(temperature=2.0, top_p=1e-6), g), greedy)
    kept = torch.isfinite(filter_logits(logits, 5, 1.0)).sum(-1)
    assert kept.tolist() == [5, 5, 5, 5]
    draws = torch.cat([sample(logits, SamplingParams(temperature=1.0, top_k=3), g) for _ in range(50)], 1)
    top3 = logits.topk(3, -1).indices
    assert all(set(draws[r].tolist()) <= set(top3[r].tolist()) for r in range(4))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, 0, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, 0, 0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, 0, 0.81)).tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_sampling_params_are_validated(bad):
    with pytest.raises(HymbaDeployError):
        SamplingParams(**bad).validate()


def test_engine_rejects_overlong_requests(tiny):
    runtime = _runtime(tiny, max_context=30, buckets=(1,))
    with pytest.raises(HymbaDeployError):
        runtime.generate(torch.randint(3, 257, (1, 20)), 12)


def test_dynamic_cache_view_counts_positions_like_the_reference(tiny):
    cache = HymbaServingCache(tiny.config, 1, 32, torch.float32)
    view = DynamicCacheView(cache, 1)
    assert view.is_empty() and view.seen_tokens == 0
    tiny.model(torch.randint(3, 257, (1, 10)), view)
    assert cache.text_len == 10 and view.seen_tokens == tiny.config.num_memory_tokens + 10
    assert int(cache.pos) == tiny.config.num_memory_tokens + 10


def test_cuda_kernels_without_gpu_name_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cuda_backend, "_ext", None)
    with pytest.raises(HymbaDeployError, match="reference"):
        cuda_backend.kernel_backend("cuda")
    with pytest.raises(HymbaDeployError, match="tensorrt"):
        cuda_backend.kernel_backend("tensorrt")
    assert cuda_backend.kernel_backend("reference") is REFERENCE


class _OnCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: drives `CudaKernels`' routing without a GPU."""

    @property
    def is_cuda(self):
        return True


class _RecordingExtension:
    """Stands in for the compiled extension: records each call (function, args) and returns a marker."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, fn):
        def call(*args):
            self.calls.append((fn, args))
            return (f"{fn} result", f"{fn} state")
        return call


def test_cuda_kernels_route_cuda_tensors_to_the_extension_and_cpu_tensors_to_the_reference():
    """Every call of `CudaKernels`, the model's and the runtime's in-place ones: CUDA tensors go to the
    extension function of the same op with its argument order (softplus threshold, in-place state buffers),
    CPU tensors to the reference ops (the extension untouched, results equal to `REFERENCE`'s), and every
    extension function called is one the binding defines. Checked to fail: swapping `scan_`'s state and `y`
    arguments, routing `windowed_attention` to the reference for CUDA tensors, and dropping the `x.is_cuda`
    test of `causal_conv1d` each fail it."""
    ext = _RecordingExtension()
    kern = cuda_backend.CudaKernels(ext)
    g = torch.Generator().manual_seed(0)
    B, T, I, N, K, H, d = 1, 3, 8, 4, 4, 2, 8
    x, dt, z = (torch.randn(B, T, I, generator=g) for _ in range(3))
    A, Bm, Cm = -torch.rand(I, N, generator=g), torch.randn(B, T, N, generator=g), torch.randn(B, T, N, generator=g)
    w, bias, D, dt_bias = torch.randn(I, K, generator=g), torch.randn(I, generator=g), torch.rand(I), torch.rand(I)
    q, k, v = (torch.randn(B, T, H, d, generator=g) for _ in range(3))
    conv_state, ssm_state = torch.zeros(B, I, K), torch.zeros(B, I, N)

    # CPU tensors: the reference ops, the extension never called.
    for got, want in ((kern.selective_scan(x, dt, A, Bm, Cm, D, z, dt_bias), REFERENCE.selective_scan(x, dt, A, Bm, Cm, D, z, dt_bias)),
                      (kern.causal_conv1d(x, w, bias), REFERENCE.causal_conv1d(x, w, bias)),
                      ((kern.windowed_attention(q, k, v, 2, 1, 0.5),), (REFERENCE.windowed_attention(q, k, v, 2, 1, 0.5),)),
                      ((kern.conv_(x, w, bias, conv_state.clone(), fresh=True),), (REFERENCE.conv_(x, w, bias, conv_state.clone(), fresh=True),)),
                      ((kern.scan_(x, dt, A, Bm, Cm, D, z, dt_bias, ssm_state.clone()),), (REFERENCE.scan_(x, dt, A, Bm, Cm, D, z, dt_bias, ssm_state.clone()),))):
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert ext.calls == []

    # "CUDA" tensors: the extension, with the binding's argument order.
    cx, cq = x.as_subclass(_OnCuda), q.as_subclass(_OnCuda)
    kern.selective_scan(cx, dt, A, Bm, Cm, D, z, dt_bias, ssm_state)
    kern.causal_conv1d(cx, w, bias, conv_state)
    kern.windowed_attention(cq, k, v, 2, 1, 0.5)
    kern.conv_(cx, w, bias, conv_state)
    kern.scan_(cx, dt, A, Bm, Cm, D, z, dt_bias, ssm_state, fresh=True)
    kern.attn(cq, k, v, 2, 1, 0.5, out=v, kv_len=torch.ones(1, dtype=torch.int32))
    names = [fn for fn, _ in ext.calls]
    assert names == ["selective_scan", "causal_conv1d", "windowed_attention", "causal_conv1d", "selective_scan",
                     "windowed_attention"]
    assert set(names) <= set(cuda_backend.binding_functions())
    scan, conv, attn, conv_, scan_, attn_ = (args for _, args in ext.calls)
    threshold = hymba_ops.SOFTPLUS_THRESHOLD
    assert scan[8] is ssm_state and scan[9:] == (threshold, None, None)         # new state returned
    assert conv[3] is not None and conv[4:] == (True, None, None)
    assert attn[3:] == (2, 1, 0.5, None, None)                                    # no out, every row Tk keys
    assert conv_[3] is conv_state and conv_[4:6] == (True, None) and conv_[6] is conv_state   # written in place
    assert scan_[8] is None and scan_[9:11] == (threshold, None) and scan_[11] is ssm_state   # fresh, in place
    assert attn_[6] is v and attn_[7] is not None
    assert kern.device_kv_len("cuda") and not REFERENCE.device_kv_len("cuda")


def test_model_runs_the_kernels_it_was_built_with(tiny):
    """Which kernels a model runs is its own (constructor / `use_kernels`), not a process-wide flag: a
    recording backend sees every layer's three ops, another model meanwhile runs the reference ops."""
    from hymba_deploy import HymbaForCausalLM
    from hymba_deploy.kernels import ReferenceKernels

    class Recording(ReferenceKernels):
        name = "recording"

        def __init__(self):
            self.ops = []

        def selective_scan(self, *args):
            self.ops.append("scan")
            return super().selective_scan(*args)

        def causal_conv1d(self, *args, **kw):
            self.ops.append("conv")
            return super().causal_conv1d(*args, **kw)

        def windowed_attention(self, *args):
            self.ops.append("attn")
            return super().windowed_attention(*args)

    rec = Recording()
    built = HymbaForCausalLM(tiny.config, kernels=rec)
    assert built.kernels is rec and tiny.kernels is REFERENCE
    ids = torch.randint(3, 257, (1, 5))
    with torch.no_grad():
        tiny(ids)
        assert rec.ops == []
        built(ids)
    assert rec.ops == ["attn", "conv", "scan"] * tiny.config.num_hidden_layers
    other = Recording()
    assert tiny.use_kernels(other) is tiny and tiny.kernels is other
    tiny.use_kernels(REFERENCE)


def test_serving_states_are_channel_fastest_views():
    cfg = preset("tiny")
    c = HymbaServingCache(cfg, 2, 8, torch.float32)
    assert c.conv_states[0].shape == (2, cfg.d_inner, cfg.mamba_d_conv) and c.conv_states[0].stride(1) == 1
    assert c.ssm_states[0].shape == (2, cfg.d_inner, cfg.mamba_d_state) and c.ssm_states[0].stride(1) == 1


def test_cuda_extension_builds_from_the_plugin_sources():
    """What `load_extension` compiles is the binding plus the plugin kernel sources from the package's one
    plugin directory, and nothing it needs to link is left out: every plugin function the binding calls
    (`hymba::*Launch` / `*Check`) is defined in a listed source, every dtype the launchers dispatch to is
    explicitly instantiated in one, and every header the binding includes resolves under that directory.
    Checked to fail: dropping the "_bf16" suffix from `kernel_sources` (the bf16 instantiations go missing)
    and listing only the launchers fail it."""
    import re

    from hymba_deploy.engine import plugins

    assert cuda_backend.PLUGINS_DIR == plugins.PLUGIN_SOURCES                 # one lookup: the package's _plugins
    sources = cuda_backend.extension_sources()
    assert sources[0] == cuda_backend.CSRC and all(f.is_file() for f in sources)
    assert all(f.parent.parent == cuda_backend.PLUGINS_DIR for f in sources[1:])
    binding = cuda_backend.CSRC.read_text()
    for header in re.findall(r'#include "([^"]+)"', binding):
        assert (cuda_backend.PLUGINS_DIR / header).is_file(), header
    text = "\n".join(f.read_text() for f in sources[1:])
    called = set(re.findall(r"hymba::(\w+(?:Launch|Check))\(", binding))
    assert len(called) == 2 * len(cuda_backend.OPS)
    for fn in called:
        assert re.search(rf"^\S.*\b{fn}\([^;]*\)\s*$", text, re.M), f"{fn} is defined in no listed source"
    dispatched = set(re.findall(r"return (\w+LaunchT)<(\w+)>\(", text))
    assert {t for _, t in dispatched} == {"float", "__half", "__nv_bfloat16"}
    for fn, t in dispatched:
        assert re.search(rf"template cudaError_t {fn}<{t}>\(", text), f"{fn}<{t}> is instantiated in no listed source"


def test_forced_decode_attention_sets_and_restores_the_kernel_choice(monkeypatch):
    """The context manager drives the extension's kernel-choice setter (plugins/common/kernel_choice.h) and puts
    the previous choice back, also when the block raises; tests/gpu checks the real extension."""
    class FakeExtension:
        choice = "split"

        def kernel_choice(self, family):
            assert family == "attention"
            return self.choice

        def set_kernel_choice(self, family, choice):
            assert family == "attention"
            self.choice = choice

    ext = FakeExtension()
    monkeypatch.setattr(cuda_backend, "load_extension", lambda verbose=False: ext)
    with cuda_backend.forced_decode_attention("mma"):
        assert ext.choice == "mma"
    assert ext.choice == "split"
    with pytest.raises(RuntimeError):
        with cuda_backend.forced_decode_attention("flash"):
            raise RuntimeError("inside")
    assert ext.choice == "split"


def test_compiled_elementwise_glue_matches_eager_and_writes_the_cache_in_place(tiny):
    """The GPU runtime runs its elementwise glue through torch.compile (`rope_store` mutates the K/V cache
    inside the compiled function); on CPU the same compiled functions give the eager runtime's logits and
    cache contents, decoding past the window."""
    ids = torch.randint(3, 257, (2, 18))
    n_ctx = 18 + tiny.config.sliding_window + 8
    runtimes = [_runtime(tiny, max_context=n_ctx, buckets=(2,), compile_elementwise=c) for c in (False, True)]
    caches = [e.cache(2) for e in runtimes]
    logits = [e.prefill(ids, c) for e, c in zip(runtimes, caches)]
    for _ in range(tiny.config.sliding_window + 4):
        assert rel_err(logits[1], logits[0]) < 1e-5
        step = logits[0].argmax(-1, keepdim=True)
        logits = [e.decode(c, step) for e, c in zip(runtimes, caches)]
    for i, k in enumerate(caches[0].key_cache):
        if k is not None:
            assert rel_err(caches[1].key_cache[i], k) < 1e-5 and rel_err(caches[1].value_cache[i], caches[0].value_cache[i]) < 1e-5


# ---- Triton decode GEMMs (gemm.py): what can be checked without a GPU --------------------------------------
def _torch_linear_splitk(x, w, cfg, out=None):
    """CPU stand-in for gemm.linear_splitk with its contract: (splits, M, N) fp32 partial sums over the
    same K ranges (the kernel's own numerics are checked on the GPU by tests/gpu/test_serving_gpu.py)."""
    kps = cfg.k_per_split(x.shape[1])
    out = torch.stack([x[:, s * kps:(s + 1) * kps].float() @ w[:, s * kps:(s + 1) * kps].float().t()
                       for s in range(cfg.splits)])
    return out if cfg.splits > 1 else out.to(x.dtype)


def _torch_linear_glu(x, w, cfg, out=None):
    """CPU stand-in for gemm.linear_glu: F.linear, then the runtime's silu_mul."""
    from hymba_deploy.serving.runtime import silu_mul

    return silu_mul(*torch.nn.functional.linear(x, w).chunk(2, dim=-1))


def _torch_ssm_inputs(partials, w_dt, w_B, w_C, dt_proj, eps, cfg, conv=None):
    """CPU stand-in for gemm.ssm_inputs: the runtime's own eager ops on the summed partials; conv = (x, state):
    the state shifted by one step, x entering last."""
    from hymba_deploy.serving.runtime import dbc_norms

    R, N = w_dt.shape[0], w_B.shape[0]
    dt, Bm, Cm = dbc_norms(partials.sum(0).to(w_dt.dtype), w_dt, w_B, w_C, R, N, eps, dt_proj.shape[1])
    if conv is not None:
        x, state = conv
        state.copy_(torch.cat([state[..., 1:], x[..., None]], dim=-1))
    return dt @ dt_proj.t(), Bm, Cm


def _torch_linear_conv(x, conv_w, conv_b, state, w, cfg, out=None, xc=None):
    """CPU stand-in for gemm.linear_conv: the conv op's decode step (the state read, not written), then the
    split-K stand-in on its output."""
    from hymba_deploy.ops.causal_conv1d import causal_conv1d_ref

    xc = causal_conv1d_ref(x[:, None], conv_w, conv_b, state)[0][:, 0]
    return _torch_linear_splitk(xc, w, cfg), xc


@pytest.mark.parametrize("gemv_max_rows,conv_in_gemv", [(0, True), (8, True), (8, False)],
                         ids=["gemm_tilings", "gemv_tilings", "gemv_tilings_conv_kernel"])
def test_triton_gemm_branch_of_the_decode_step_matches_cublas_branch(tiny, monkeypatch, gemv_max_rows, conv_in_gemv):
    """The runtime's Triton-kernel branch (split-K partials summed in add_partials_rms_norm and in
    ssm_inputs; at small batches also in_proj's one-range product, gate_up's silu · up and the conv inside
    x_proj's launch with the state shifted in ssm_inputs) wired with CPU stand-ins of the kernels gives the
    cuBLAS branch's logits, past the window, with splits that do not divide K evenly."""
    from hymba_deploy.serving import runtime as runtime_mod
    from hymba_deploy.serving.gemm import GemmConfig

    monkeypatch.setattr(runtime_mod.gemm, "linear_splitk", _torch_linear_splitk)
    monkeypatch.setattr(runtime_mod.gemm, "linear_glu", _torch_linear_glu)
    monkeypatch.setattr(runtime_mod.gemm, "ssm_inputs", _torch_ssm_inputs)
    conv_calls = []
    monkeypatch.setattr(runtime_mod.gemm, "linear_conv",
                        lambda *a, **k: (conv_calls.append(1), _torch_linear_conv(*a, **k))[1])
    ids = torch.randint(3, 257, (2, 18))
    n_ctx = 18 + tiny.config.sliding_window + 8
    plain = _runtime(tiny, max_context=n_ctx, buckets=(2,))
    odd = {"x_proj": GemmConfig(block_k=16, splits=7), "out_proj": GemmConfig(block_k=16, splits=3),
           "down_proj": GemmConfig(block_k=16, splits=5)}
    tri = _runtime(tiny, max_context=n_ctx, buckets=(2,), gemm_configs=odd, gemv_max_rows=gemv_max_rows,
                   gemv_configs={k: replace(c, kernel="gemv") for k, c in odd.items()}, conv_in_gemv=conv_in_gemv)
    tri.decode_gemms = "triton"                     # what gemm.resolve_decode_gemms picks on a GPU with triton
    assert set(tri.gemm_configs) == {"x_proj", "ssm_inputs", "out_proj", "down_proj"}
    assert set(tri.triton_tilings(2)) == ({"in_proj", "x_proj", "ssm_inputs", "out_proj", "gate_up", "down_proj"}
                                          if gemv_max_rows else set(tri.gemm_configs))
    assert "down_proj" not in _runtime(tiny, max_context=8, gemm_configs={"down_proj": None}).gemm_configs
    assert "gate_up" not in _runtime(tiny, max_context=8, gemv_configs={"gate_up": None}).gemv_configs
    caches = [plain.cache(2), tri.cache(2)]
    logits = [e.prefill(ids, c) for e, c in zip((plain, tri), caches)]
    for _ in range(tiny.config.sliding_window + 4):
        step = logits[0].argmax(-1, keepdim=True)
        logits = [e.decode(c, step) for e, c in zip((plain, tri), caches)]
        assert rel_err(logits[1], logits[0]) < 1e-5
    assert bool(conv_calls) == (gemv_max_rows > 0 and conv_in_gemv)    # the branch under test ran


def test_decode_gemm_choice_is_validated_and_cpu_runs_cublas(tiny, monkeypatch):
    """'auto' resolves once, at construction, to what can run; 'triton' where it cannot says why (triton
    missing, a CPU model, an fp32 model)."""
    from hymba_deploy.serving import gemm
    from hymba_deploy.serving.gemm import GemmConfig

    assert _runtime(tiny, max_context=8).decode_gemms == "cublas"
    with pytest.raises(HymbaDeployError, match="decode_gemms 'cutlass'"):
        _runtime(tiny, max_context=8, decode_gemms="cutlass")
    with pytest.raises(HymbaDeployError, match="gemm_configs: no GEMM named qkv"):
        _runtime(tiny, max_context=8, gemm_configs={"qkv": None})
    with pytest.raises(HymbaDeployError, match="gemv_configs: no GEMM named lm_head"):
        _runtime(tiny, max_context=8, gemv_configs={"lm_head": None})
    with pytest.raises(HymbaDeployError, match="gemv_configs: in_proj takes a gemv tiling of one K range"):
        _runtime(tiny, max_context=8, gemv_configs={"in_proj": GemmConfig(splits=2, kernel="gemv")})
    with pytest.raises(HymbaDeployError, match="GEMM kernel 'cutlass'"):
        GemmConfig(kernel="cutlass")
    cuda = torch.device("cuda")
    monkeypatch.setattr(gemm, "triton", None)
    with pytest.raises(HymbaDeployError, match="decode_gemms='triton': triton is not installed"):
        _runtime(tiny, max_context=8, decode_gemms="triton")
    assert gemm.resolve_decode_gemms("auto", cuda, torch.bfloat16) == "cublas"
    monkeypatch.setattr(gemm, "triton", object())                       # installed
    assert gemm.resolve_decode_gemms("auto", cuda, torch.bfloat16) == "triton"
    assert gemm.resolve_decode_gemms("cublas", cuda, torch.bfloat16) == "cublas"
    with pytest.raises(HymbaDeployError, match="on CUDA models"):
        _runtime(tiny, max_context=8, decode_gemms="triton")
    with pytest.raises(HymbaDeployError, match="float16/bfloat16"):
        gemm.resolve_decode_gemms("triton", cuda, torch.float32)


def test_add_partials_rms_norm_is_add_rms_norm_of_the_sum():
    from hymba_deploy.serving.runtime import add_partials_rms_norm, add_rms_norm

    h, w = torch.randn(4, 1, 48), torch.rand(48) + 0.5
    parts = torch.randn(3, 4, 48, dtype=torch.float64).float()
    got = add_partials_rms_norm(h, parts, w, 1e-6)
    ref = add_rms_norm(h, parts.sum(0).unsqueeze(1), w, 1e-6)
    assert all(rel_err(a, b) < 1e-6 for a, b in zip(got, ref))


@pytest.mark.parametrize("K,block_k,splits", [(1600, 64, 4), (5504, 64, 4), (3200, 128, 3), (1000, 64, 3), (64, 64, 4)])
def test_gemm_split_ranges_cover_k_once(K, block_k, splits):
    from hymba_deploy.serving.gemm import GemmConfig

    c = GemmConfig(block_k=block_k, splits=splits)
    kps = c.k_per_split(K)
    assert kps % block_k == 0
    covered = [k for s in range(splits) for k in range(s * kps, min((s + 1) * kps, K))]
    assert covered == list(range(K))
    assert [c.block_m(m) for m in (1, 5, 16, 37, 128, 200)] == [16, 16, 16, 64, 128, 128]


def test_gemm_tiling_files_load_and_a_bad_one_is_named(tmp_path):
    from hymba_deploy.serving.gemm import GemmConfig
    from hymba_deploy.serving.gemm import load_configs as load_gemm_configs

    from hymba_deploy.serving.gemm import SsmInputsConfig

    good = tmp_path / "best.json"
    good.write_text('{"out_proj": {"block_n": 64, "block_k": 64, "splits": 4, "num_warps": 8, "num_stages": 5}, '
                    '"ssm_inputs": {"block_m": 32, "block_i": 64, "programs_i": 2}, "down_proj": null}')
    assert load_gemm_configs(str(good)) == {"out_proj": GemmConfig(64, 64, 4, 8, 5), "down_proj": None,
                                            "ssm_inputs": SsmInputsConfig(32, 64, 2)}
    bad = tmp_path / "bad.json"
    bad.write_text('{"out_proj": {"tile": 3}}')
    with pytest.raises(HymbaDeployError, match="not a GEMM tiling file"):
        load_gemm_configs(str(bad))
