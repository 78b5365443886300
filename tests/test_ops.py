"""The three reference ops: fast CPU implementations equal the ground truth, states carry exactly."""

from __future__ import annotations

import pytest
import torch

from hymba_deploy.parity.tolerances import rel_err
from hymba_deploy import ops


def scan_inputs(batch, T, d, n, with_state, dtype=torch.float32):
    x = torch.randn(batch, T, d, dtype=dtype)
    dt = torch.randn(batch, T, d, dtype=dtype)
    A = -torch.exp(torch.randn(d, n))                      # fp32, negative
    B = torch.randn(batch, T, n, dtype=dtype)
    C = torch.randn(batch, T, n, dtype=dtype)
    D = torch.randn(d)
    z = torch.randn(batch, T, d, dtype=dtype)
    dt_bias = torch.randn(d)
    h0 = torch.randn(batch, d, n) if with_state else None
    return x, dt, A, B, C, D, z, dt_bias, h0


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", [1, 2, 17, 129])
@pytest.mark.parametrize("chunk_size", [0, 1, 5, 64])
def test_chunked_scan_equals_sequential(T, with_state, chunk_size):
    args = scan_inputs(2, T, 12, 8, with_state)
    y_ref, s_ref = ops.selective_scan_ref(*args)
    y, s = ops.selective_scan(*args, chunk_size=chunk_size)
    assert y.dtype == args[0].dtype and s.dtype == torch.float32
    assert rel_err(y, y_ref) <= 1e-6, rel_err(y, y_ref)
    assert rel_err(s, s_ref) <= 1e-6, rel_err(s, s_ref)


def test_scan_resumes_from_its_last_state():
    """Scanning [0, T) at once equals scanning [0, t) then [t, T) from the returned state, and a
    T = 1 step (decode) is the same op."""
    x, dt, A, B, C, D, z, dt_bias, _ = scan_inputs(3, 40, 16, 4, False)
    y_all, s_all = ops.selective_scan(x, dt, A, B, C, D, z, dt_bias)
    cut = 23
    y1, s1 = ops.selective_scan(x[:, :cut], dt[:, :cut], A, B[:, :cut], C[:, :cut], D, z[:, :cut], dt_bias)
    ys, s = [y1], s1
    for t in range(cut, 40):
        sl = slice(t, t + 1)
        y_t, s = ops.selective_scan(x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], D, z[:, sl], dt_bias, s)
        ys.append(y_t)
    assert rel_err(torch.cat(ys, 1), y_all) <= 1e-6
    assert rel_err(s, s_all) <= 1e-6


def test_scan_matches_the_formula_by_hand():
    """One channel, one state, two steps: the recurrence of hymba-architecture.md §3.8 written out."""
    x = torch.tensor([[[0.5], [-1.0]]])
    dt = torch.tensor([[[0.3], [25.0]]])                   # 25 + bias > 20: softplus is the identity
    A, B, C = torch.tensor([[-0.7]]), torch.tensor([[[2.0], [0.5]]]), torch.tensor([[[1.5], [-2.0]]])
    D, z, bias, h0 = torch.tensor([0.25]), torch.tensor([[[0.1], [-0.4]]]), torch.tensor([0.2]), torch.tensor([[[0.9]]])
    d0 = torch.nn.functional.softplus(torch.tensor(0.5))
    d1 = torch.tensor(25.2)
    h1 = torch.exp(d0 * -0.7) * 0.9 + d0 * 2.0 * 0.5
    h2 = torch.exp(d1 * -0.7) * h1 + d1 * 0.5 * -1.0
    silu = torch.nn.functional.silu
    expected = torch.stack([(1.5 * h1 + 0.25 * 0.5) * silu(torch.tensor(0.1)),
                            (-2.0 * h2 + 0.25 * -1.0) * silu(torch.tensor(-0.4))])
    for fn in (ops.selective_scan_ref, ops.selective_scan):
        y, s = fn(x, dt, A, B, C, D, z, bias, h0)
        assert torch.allclose(y.flatten(), expected, rtol=1e-6), (y.flatten(), expected)
        assert torch.allclose(s.flatten(), h2.reshape(1), rtol=1e-6)


def test_scan_output_dtype_follows_x():
    args = scan_inputs(1, 9, 8, 4, True, dtype=torch.bfloat16)
    y, s = ops.selective_scan(*args)
    y_ref, s_ref = ops.selective_scan_ref(*args)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel_err(y, y_ref) <= 1e-2 and rel_err(s, s_ref) <= 1e-6


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 37])
def test_conv_equals_reference_and_torch_conv1d(T):
    x, w, b = torch.randn(2, T, 10), torch.randn(10, 4), torch.randn(10)
    y_ref, s_ref = ops.causal_conv1d_ref(x, w, b)
    y, s = ops.causal_conv1d(x, w, b)
    # Upstream's definition: nn.Conv1d(padding=K-1) truncated to T, then SiLU (§3.2).
    conv = torch.nn.functional.conv1d(x.transpose(1, 2), w[:, None, :], b, padding=3, groups=10)[..., :T]
    expected = torch.nn.functional.silu(conv).transpose(1, 2)
    assert rel_err(y_ref, expected) <= 1e-6 and rel_err(y, expected) <= 1e-6
    # The state is the last 4 inputs, zero-padded on the left (upstream F.pad(x, (4 - T, 0))).
    padded = torch.nn.functional.pad(x.transpose(1, 2), (4, 0))[..., -4:]
    assert torch.equal(s, padded) and torch.equal(s_ref, padded)


@pytest.mark.parametrize("cut", [1, 3, 4, 9])
def test_conv_with_carried_state_equals_conv_over_concatenation(cut):
    x, w, b = torch.randn(3, 20, 6), torch.randn(6, 4), torch.randn(6)
    y_all, s_all = ops.causal_conv1d(x, w, b)
    y1, s1 = ops.causal_conv1d(x[:, :cut], w, b)
    ys, s = [y1], s1
    for t in range(cut, 20):          # decode: T = 1 each, same op
        y_t, s = ops.causal_conv1d_ref(x[:, t:t + 1], w, b, s)
        ys.append(y_t)
    assert rel_err(torch.cat(ys, 1), y_all) <= 1e-6
    assert torch.equal(s, s_all)


def test_conv_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        ops.causal_conv1d(torch.randn(1, 2, 3), torch.randn(3, 4), None, activation="gelu")


@pytest.mark.parametrize("Tq,Tk,window,num_meta", [(30, 30, 8, 3), (30, 30, 0, 3), (1, 30, 8, 3),
                                                   (5, 41, 16, 8), (12, 12, 100, 0)])
def test_window_mask_equals_brute_force(Tq, Tk, window, num_meta):
    mask = ops.window_mask(Tq, Tk, window, num_meta)
    for i in range(Tq):
        q = Tk - Tq + i
        for kv in range(Tk):
            allowed = kv <= q and (window <= 0 or q - kv <= window or kv < num_meta)
            assert bool(mask[i, kv]) == allowed, (i, kv)


@pytest.mark.parametrize("Tq,Tk", [(25, 25), (1, 25), (4, 25)])
@pytest.mark.parametrize("window", [0, 6])
def test_attention_equals_reference(Tq, Tk, window):
    q, k, v = torch.randn(2, Tq, 6, 8), torch.randn(2, Tk, 2, 8), torch.randn(2, Tk, 2, 16)
    out = ops.windowed_attention(q, k, v, window, 3, 0.3)
    ref = ops.windowed_attention_ref(q, k, v, window, 3, 0.3)
    assert out.shape == (2, Tq, 6, 16)
    assert rel_err(out, ref) <= 1e-6


@pytest.mark.parametrize("Tq,Tk,window,num_meta", [(1, 30, 8, 3), (5, 41, 16, 8), (12, 12, 0, 2), (4, 9, 100, 0)])
def test_window_mask_per_row_equals_brute_force(Tq, Tk, window, num_meta):
    kv_lengths = torch.tensor([Tq, Tk, (Tq + Tk) // 2], dtype=torch.int32)
    mask = ops.window_mask(Tq, Tk, window, num_meta, kv_lengths=kv_lengths)
    assert mask.shape == (3, 1, Tq, Tk)
    for b, length in enumerate(kv_lengths.tolist()):
        for i in range(Tq):
            q = length - Tq + i
            for kv in range(Tk):
                allowed = kv <= q and (window <= 0 or q - kv <= window or kv < num_meta)
                assert bool(mask[b, 0, i, kv]) == allowed, (b, i, kv)


@pytest.mark.parametrize("Tq", [1, 4])
@pytest.mark.parametrize("group", [1, 5])
@pytest.mark.parametrize("window", [0, 6])
def test_attention_with_kv_lengths_equals_each_row_alone(Tq, group, window):
    """Per-row key counts: the op (fp32) against the float64 reference, and the reference against each row
    run alone over its own keys only. Keys past a row's count hold large values: any leak shows."""
    g = torch.Generator().manual_seed(7)
    B, Tk, Hkv, d_qk, d_v, meta = 3, 23, 2, 12, 20, 3
    kv_lengths = torch.tensor([Tq, Tk, 13], dtype=torch.int32)
    q = torch.randn(B, Tq, Hkv * group, d_qk, generator=g)
    k, v = torch.randn(B, Tk, Hkv, d_qk, generator=g), torch.randn(B, Tk, Hkv, d_v, generator=g)
    for b, length in enumerate(kv_lengths.tolist()):
        k[b, length:], v[b, length:] = 1e4, -1e4
    out = torch.ops.hymba.windowed_attention(q, k, v, window, meta, 0.3, kv_lengths)
    ref = ops.windowed_attention_ref(q.double(), k.double(), v.double(), window, meta, 0.3, kv_lengths)
    assert out.shape == (B, Tq, Hkv * group, d_v) and out.dtype == torch.float32
    assert rel_err(out, ref) <= 1e-5
    for b, length in enumerate(kv_lengths.tolist()):
        alone = ops.windowed_attention_ref(q[b:b + 1].double(), k[b:b + 1, :length].double(),
                                           v[b:b + 1, :length].double(), window, meta, 0.3)
        assert rel_err(ref[b:b + 1], alone) <= 1e-12
    full = torch.full((B,), Tk, dtype=torch.int32)                  # kv_lengths = Tk: the op without them
    assert torch.equal(ops.windowed_attention_ref(q, k, v, window, meta, 0.3, full),
                       ops.windowed_attention_ref(q, k, v, window, meta, 0.3))


@pytest.mark.parametrize("kv_lengths,match", [([2, 9], "must lie in"), ([5, 10], "must lie in"),
                                              ([5], r"must be \(2,\) int32"), ([5.0, 5.0], "int32")])
def test_attention_refuses_bad_kv_lengths(kv_lengths, match):
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)
    lengths = torch.tensor(kv_lengths)
    lengths = lengths.to(torch.int32) if not lengths.dtype.is_floating_point else lengths
    for fn in (ops.windowed_attention, ops.windowed_attention_ref):
        with pytest.raises(ValueError, match=match):
            fn(q, k, v, 0, 0, 0.3, lengths)


def test_attention_decode_row_equals_prefill_row():
    """A decode step (1 query over the cache) equals the last row of prefill attention."""
    q, k, v = torch.randn(1, 30, 4, 8), torch.randn(1, 30, 2, 8), torch.randn(1, 30, 2, 16)
    full = ops.windowed_attention(q, k, v, 5, 2, 0.35)
    last = ops.windowed_attention(q[:, -1:], k, v, 5, 2, 0.35)
    assert rel_err(last, full[:, -1:]) <= 1e-6


def test_attention_gqa_maps_query_head_to_kv_head_h_div_group():
    q, k, v = torch.randn(1, 7, 4, 8), torch.randn(1, 7, 2, 8), torch.randn(1, 7, 2, 16)
    out = ops.windowed_attention(q, k, v, 0, 0, 0.5)
    for h in range(4):
        single = ops.windowed_attention(q[:, :, h:h + 1], k[:, :, h // 2:h // 2 + 1], v[:, :, h // 2:h // 2 + 1], 0, 0, 0.5)
        assert rel_err(out[:, :, h:h + 1], single) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_custom_ops_pass_opcheck_fake_kernels_match_real_outputs(dtype):
    """torch.library.opcheck: schema, fake (meta) kernels against the real outputs (shapes, dtypes and
    strides: torch.compile of the model asserts them), autograd registration. Inputs as the model passes
    them, including a strided x (a slice of the fused projection)."""
    g = torch.Generator().manual_seed(0)
    B, T, D, N, K = 2, 5, 16, 4, 4
    wide = torch.randn(B, T, 3 * D, generator=g).to(dtype)
    x = wide[:, :, D:2 * D]
    scan_args = (x, torch.randn(B, T, D, generator=g).to(dtype), -torch.rand(D, N, generator=g),
                 torch.randn(B, T, N, generator=g).to(dtype), torch.randn(B, T, N, generator=g).to(dtype),
                 torch.randn(D, generator=g), torch.randn(B, T, D, generator=g).to(dtype),
                 torch.randn(D, generator=g), torch.randn(B, D, N, generator=g))
    torch.library.opcheck(torch.ops.hymba.selective_scan.default, scan_args)
    for T_ in (T, 1):
        conv_args = (wide[:, :T_, D:2 * D], torch.randn(D, K, generator=g).to(dtype), torch.randn(D, generator=g).to(dtype),
                     torch.randn(B, D, K, generator=g).to(dtype), "silu")
        torch.library.opcheck(torch.ops.hymba.causal_conv1d.default, conv_args)
    q = torch.randn(B, 1, 4, 8, generator=g).to(dtype)
    k = torch.randn(B, 9, 2, 8, generator=g).to(dtype)
    v = torch.randn(B, 9, 2, 6, generator=g).to(dtype)
    torch.library.opcheck(torch.ops.hymba.windowed_attention.default, (q, k, v, 4, 2, 0.3))
    torch.library.opcheck(torch.ops.hymba.windowed_attention.default, (q.expand(B, 9, 4, 8).contiguous(), k, v, 0, 0, 0.3))
    kv_lengths = torch.tensor([9, 4], dtype=torch.int32)
    torch.library.opcheck(torch.ops.hymba.windowed_attention.default, (q, k, v, 4, 2, 0.3, kv_lengths))
    torch.library.opcheck(torch.ops.hymba.windowed_attention.default, (q.expand(B, 3, 4, 8).contiguous(), k, v, 0, 0, 0.3,
                                                                       kv_lengths))


def test_reference_model_decodes_under_torch_compile(tiny):
    """torch.compile of the whole reference model (prefill, then decode steps over the dynamic cache) gives
    the eager logits: the custom ops' fake kernels hold (a stride mismatch made inductor assert)."""
    torch._dynamo.reset()
    model = tiny
    ids = torch.randint(3, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    caches = [model.new_cache(2), model.new_cache(2)]
    compiled = torch.compile(model)
    with torch.no_grad():
        ref = [model(ids, caches[0])]
        out = [compiled(ids, caches[1])]
        for j in range(3):
            tok = ids[:, j:j + 1]
            ref.append(model(tok, caches[0]))
            out.append(compiled(tok, caches[1]))
    torch._dynamo.reset()
    for r, o in zip(ref, out):
        assert rel_err(o, r) <= 1e-5
