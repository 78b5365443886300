"""The `cuda` backend and the serving runtime on a GPU, against the `reference` backend.

- The torch extension's ops (the plugin kernels through hymba_deploy/cuda/csrc) in the forms the serving runtime
  calls them: in-place decode states, strided inputs, a device-side key count over a larger K/V buffer, each
  decode-attention kernel forced; float64 ground truth, hymba_deploy.parity.tolerances's rule.
- The Triton decode GEMMs (serving/gemm.py) against their float64 references.
- Greedy tokens, fp32: the serving runtime with and without CUDA graphs and the model on the cuda backend give
  exactly the reference backend's tokens (tiny: prompt past its 16-token window; hymba-1.5b shapes: 136 tokens
  past the 1024 window).
- bf16 logits, teacher-forced on the fp32 reference's tokens: the runtime's error against the fp32 reference
  within the rule's bound of the reference backend's own bf16 error.
- Ragged batches (issue 14), fp32: prompts of 1, below the window, past window + meta and the longest in one
  batch give per row exactly the tokens of that prompt alone through the same runtime, graph-replayed and
  eager, and logits (teacher-forced) within the fp32 model tolerance of the prompt alone's; a row replaced by a
  new prompt between graph-replayed steps decodes as that prompt alone, the others unchanged, no new capture.
"""

from __future__ import annotations

import pytest
import torch

from hymba_deploy import cuda as backend
from hymba_deploy.checkpoint import random_model
from hymba_deploy.contract import SOFTPLUS_THRESHOLD
from hymba_deploy.kernels import REFERENCE
from hymba_deploy.ops import causal_conv1d_ref, selective_scan_ref, windowed_attention_ref
from hymba_deploy.parity.tolerances import MODEL_TOLERANCES, kernel_bound, rel_err

from .common import check, generator, ground_truth, seed_of

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="session")
def ext(cuda):
    return backend.load_extension()


def _rnd(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(shape, generator=g, device="cuda") * scale).to(dtype)


def _meta(op, case, dtype):
    return dict(op=op, case=case, dtype=dtype, path="extension", seed=seed_of(op, case, dtype))


DTYPES = ("float32", "bfloat16")


# ---------------------------------------------------------------------------------------------- extension ops

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,in_place", [(129, False), (1, True)], ids=["prefill_T129", "decode_in_place"])
def test_extension_selective_scan(ext, record, dtype, T, in_place):
    g, dt = generator("scan", T, dtype), getattr(torch, dtype)
    b, I, N = 3, 320, 16
    inp = dict(x=_rnd(g, b, T, I, dtype=dt), dt=_rnd(g, b, T, I, dtype=dt, scale=0.5),
               A=-torch.rand(I, N, generator=g, device="cuda") * 4 - 0.1, B=_rnd(g, b, T, N, dtype=dt),
               C=_rnd(g, b, T, N, dtype=dt), D=_rnd(g, I), z=_rnd(g, b, T, I, dtype=dt), dt_bias=_rnd(g, I, scale=0.5),
               initial_state=_rnd(g, b, I, N) if in_place else None)
    ref64, torch_out = ground_truth(selective_scan_ref, inp)
    state = inp["initial_state"].clone() if in_place else None
    y, s = ext.selective_scan(**dict(inp, initial_state=state), softplus_threshold=SOFTPLUS_THRESHOLD, y=None, last_state=state)
    if in_place:
        assert s.data_ptr() == state.data_ptr(), "last_state was not written in place"
    check(record, _meta("selective_scan", f"T{T}_in_place{in_place}", dtype), {"y": y, "last_state": s},
          dict(zip(("y", "last_state"), ref64)), dict(zip(("y", "last_state"), torch_out)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,in_place", [(151, False), (1, True)], ids=["prefill_T151_strided", "decode_in_place"])
def test_extension_causal_conv1d(ext, record, dtype, T, in_place):
    g, dt = generator("conv", T, dtype), getattr(torch, dtype)
    b, I, K = 2, 800, 4
    x = _rnd(g, b, T, 3 * I, dtype=dt)[:, :, I:2 * I]                   # strided, like the in_proj slices
    inp = dict(x=x, weight=_rnd(g, I, K, dtype=dt, scale=0.5), bias=_rnd(g, I, dtype=dt),
               conv_state=_rnd(g, b, I, K, dtype=dt) if in_place else None)
    ref64, torch_out = ground_truth(causal_conv1d_ref, inp, activation="silu")
    state = inp["conv_state"].clone() if in_place else None
    y, s = ext.causal_conv1d(x, inp["weight"], inp["bias"], state, True, None, state)
    names = ("y", "new_conv_state")
    check(record, _meta("causal_conv1d", f"T{T}_in_place{in_place}", dtype), dict(zip(names, (y, s))),
          dict(zip(names, ref64)), dict(zip(names, torch_out)))


# (batch, Tq, valid keys, buffer capacity, window, meta, kernel forced, device-side key count)
ATTN = [(2, 203, 203, 220, 64, 8, "auto", False), (2, 1, 300, 317, 0, 8, "auto", False),
        (2, 1, 200, 217, 1024, 8, "auto", False),
        # graph-captured global layers: the key count on the device, every decode kernel
        (2, 1, 777, 1077, 0, 128, "auto", True), (64, 1, 4321, 4621, 0, 128, "auto", True),
        (64, 1, 1500, 1800, 1024, 128, "mma", True), (128, 1, 1300, 1600, 1024, 128, "auto", True),
        (2, 1, 900, 1200, 0, 128, "flash", True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,Tq,n,cap,window,meta,kernel,device_len", ATTN,
                         ids=[f"b{a[0]}_Tq{a[1]}_Tk{a[2]}_w{a[4]}_{a[6]}{'_kvlen' if a[7] else ''}" for a in ATTN])
def test_extension_windowed_attention(ext, record, dtype, b, Tq, n, cap, window, meta, kernel, device_len):
    g, dt = generator("attn", b, Tq, n, kernel, dtype), getattr(torch, dtype)
    Hq, Hkv = 25, 5
    q = _rnd(g, b, Tq, Hq, 64, dtype=dt)
    kbuf, vbuf = _rnd(g, b, cap, Hkv, 64, dtype=dt), _rnd(g, b, cap, Hkv, 128, dtype=dt)
    inp = dict(q=q, k=kbuf[:, :n], v=vbuf[:, :n])
    ref64, torch_out = ground_truth(windowed_attention_ref, inp, window=window, num_meta=meta, scale=0.125)
    with backend.forced_decode_attention(kernel):
        assert ext.kernel_choice("attention") == kernel
        if device_len:
            kv_len = torch.tensor([n], dtype=torch.int32, device="cuda")
            out = ext.windowed_attention(q, kbuf, vbuf, window, meta, 0.125, None, kv_len)
        else:
            out = ext.windowed_attention(q, inp["k"], inp["v"], window, meta, 0.125, None)
    check(record, dict(_meta("windowed_attention", f"b{b}_Tq{Tq}_Tk{n}_w{window}", dtype), kernel=kernel,
                       kv_len_device=device_len), {"out": out}, {"out": ref64[0]}, {"out": torch_out[0]})


# ---------------------------------------------------------------------------------------------- Triton GEMMs

def _gemm():
    from hymba_deploy.serving import gemm
    if not gemm.available():
        pytest.skip("triton is not importable: the Triton decode GEMMs are not in use here")
    return gemm


def _splitk_cases():
    from hymba_deploy.serving import gemm
    from hymba_deploy.serving.runtime import TRITON_GEMMS
    return [("x_proj", (136, 3200), TRITON_GEMMS.get("x_proj")), ("out_proj", (1600, 3200), TRITON_GEMMS.get("out_proj")),
            ("down_proj", (1600, 5504), TRITON_GEMMS.get("down_proj")),
            ("odd_K", (200, 1000), gemm.GemmConfig(64, 64, 3, 4, 3)), ("small", (40, 96), gemm.GemmConfig(32, 64, 2, 4, 3))]


@pytest.mark.parametrize("dtype", ("bfloat16", "float16"))
@pytest.mark.parametrize("M", (1, 5, 37, 128, 200))
@pytest.mark.parametrize("case", range(5), ids=["x_proj", "out_proj", "down_proj", "odd_K", "small"])
def test_triton_linear_splitk(cuda, record, dtype, M, case):
    """Split-K with the runtime's tilings on the hymba-1.5b shapes and on K no multiple of the K tile; PyTorch's
    own error: x @ w.T in the dtype."""
    gemm = _gemm()
    name, (N, K), cfg = _splitk_cases()[case]
    if cfg is None:
        pytest.skip(f"the runtime has no Triton tiling for {name}")
    g, dt = generator("splitk", name, M, dtype), getattr(torch, dtype)
    x, w = _rnd(g, M, K, dtype=dt), _rnd(g, N, K, dtype=dt, scale=K ** -0.5)
    out = gemm.linear_splitk(x, w, cfg).float().sum(0)
    check(record, dict(_meta("linear_splitk", f"{name}_M{M}", dtype), config=cfg.as_dict()), {"out": out},
          {"out": gemm.linear_reference(x, w)}, {"out": x @ w.t()})


def _gemv_cases():
    from hymba_deploy.serving.gemm import GemmConfig
    from hymba_deploy.serving.runtime import TRITON_GEMVS
    return [("in_proj", (8960, 1600), TRITON_GEMVS.get("in_proj")), ("x_proj", (136, 3200), TRITON_GEMVS.get("x_proj")),
            ("out_proj", (1600, 3200), TRITON_GEMVS.get("out_proj")),
            ("down_proj", (1600, 5504), TRITON_GEMVS.get("down_proj")),
            ("odd_N_K", (200, 1000), GemmConfig(32, 64, 3, 4, 3, "gemv")),
            ("small_one_range", (40, 96), GemmConfig(16, 64, 1, 4, 3, "gemv"))]


@pytest.mark.parametrize("dtype", ("bfloat16", "float16"))
@pytest.mark.parametrize("M", (1, 3, 8, 16, 37))
@pytest.mark.parametrize("case", range(6),
                         ids=["in_proj", "x_proj", "out_proj", "down_proj", "odd_N_K", "small_one_range"])
def test_triton_gemv(cuda, record, dtype, M, case):
    """The `gemv` kernel (weight rows as the MMA's row operand) with the runtime's small-batch tilings on the
    hymba-1.5b shapes, on N and K no multiple of the tiles, rows 1 to past 16; output poisoned with NaN first
    (every element written); PyTorch's own error: x @ w.T in the dtype."""
    gemm = _gemm()
    name, (N, K), cfg = _gemv_cases()[case]
    if cfg is None:
        pytest.skip(f"the runtime has no gemv tiling for {name}")
    g, dt = generator("gemv", name, M, dtype), getattr(torch, dtype)
    x, w = _rnd(g, M, K, dtype=dt), _rnd(g, N, K, dtype=dt, scale=K ** -0.5)
    out = torch.full((cfg.splits, M, N), float("nan"), device="cuda", dtype=torch.float32 if cfg.splits > 1 else dt)
    got = gemm.linear_splitk(x, w, cfg, out).float().sum(0)
    check(record, dict(_meta("linear_gemv", f"{name}_M{M}", dtype), config=cfg.as_dict()), {"out": got},
          {"out": gemm.linear_reference(x, w)}, {"out": x @ w.t()})


@pytest.mark.parametrize("dtype", ("bfloat16", "float16"))
@pytest.mark.parametrize("M", (1, 5, 8, 16))
@pytest.mark.parametrize("name,F_,K", [("gate_up", 5504, 1600), ("odd_F_K", 120, 1000)], ids=["gate_up", "odd_F_K"])
def test_triton_linear_glu(cuda, record, dtype, M, name, F_, K):
    """`linear_glu` (silu(gate) · up in the gemv epilogue) with the runtime's tiling on hymba-1.5b's MLP and on F, K
    no multiple of the tiles; poisoned output; PyTorch's own error: F.linear then silu · up in the dtype."""
    gemm = _gemm()
    from hymba_deploy.serving.runtime import TRITON_GEMVS, silu_mul
    cfg = TRITON_GEMVS.get("gate_up") if name == "gate_up" else gemm.GemmConfig(32, 64, 1, 4, 3, "gemv")
    if cfg is None:
        pytest.skip("the runtime has no gemv tiling for gate_up")
    g, dt = generator("glu", name, M, dtype), getattr(torch, dtype)
    x, w = _rnd(g, M, K, dtype=dt), _rnd(g, 2 * F_, K, dtype=dt, scale=2 * K ** -0.5)
    out = torch.full((M, F_), float("nan"), device="cuda", dtype=dt)
    got = gemm.linear_glu(x, w, cfg, out)
    check(record, dict(_meta("linear_glu", f"{name}_M{M}", dtype), config=cfg.as_dict()), {"out": got},
          {"out": gemm.glu_reference(x, w)}, {"out": silu_mul(*(x @ w.t()).chunk(2, dim=-1))})


def _conv_inputs(g, M, K, W, dt):
    """Pre-conv x (M, K) as a strided view (the in_proj output's x columns), conv weight / bias, and a state
    (M, K, W) laid out channel-fastest like HymbaServingCache.conv_states."""
    wide = _rnd(g, M, K + 24, dtype=dt)
    x = wide[:, 8:8 + K]
    cw, cb = _rnd(g, K, W, dtype=dt, scale=0.5), _rnd(g, K, dtype=dt, scale=0.2)
    state = _rnd(g, M, W, K, dtype=dt).transpose(1, 2)
    return x, cw, cb, state


@pytest.mark.parametrize("dtype", ("bfloat16", "float16"))
@pytest.mark.parametrize("M", (1, 3, 8, 16))
@pytest.mark.parametrize("case", ["x_proj", "odd_N_K"])
def test_triton_linear_conv(cuda, record, dtype, M, case):
    """`linear_conv` (the decode conv + SiLU in the gemv prologue, then x_proj) on hymba-1.5b's x_proj with the
    runtime's tiling and on N, K no multiple of the tiles; outputs poisoned; xc against the float64 conv, the
    product against float64 x_proj of the conv output in the dtype (PyTorch's own errors: the conv op and
    F.linear in the dtype); the state is left exactly as it was."""
    gemm = _gemm()
    from hymba_deploy.ops.causal_conv1d import causal_conv1d_ref
    from hymba_deploy.serving.runtime import TRITON_GEMVS
    (N, K), cfg = {"x_proj": ((136, 3200), TRITON_GEMVS.get("x_proj")),
                   "odd_N_K": ((40, 1000), gemm.GemmConfig(16, 64, 3, 4, 3, "gemv"))}[case]
    if cfg is None:
        pytest.skip("the runtime has no gemv tiling for x_proj")
    g, dt = generator("linear_conv", case, M, dtype), getattr(torch, dtype)
    x, cw, cb, state = _conv_inputs(g, M, K, 4, dt)
    w = _rnd(g, N, K, dtype=dt, scale=K ** -0.5)
    before = state.clone()
    out = torch.full((cfg.splits, M, N), float("nan"), device="cuda", dtype=torch.float32 if cfg.splits > 1 else dt)
    xc = torch.full((M, K), float("nan"), device="cuda", dtype=dt)
    part, xc = gemm.linear_conv(x, cw, cb, state, w, cfg, out, xc)
    xc64 = causal_conv1d_ref(x[:, None].double(), cw.double(), cb.double(), state.double())[0][:, 0]
    xc_torch = causal_conv1d_ref(x[:, None], cw, cb, state)[0][:, 0]
    check(record, dict(_meta("linear_conv", f"{case}_M{M}", dtype), config=cfg.as_dict()),
          {"xc": xc, "out": part.float().sum(0)},
          {"xc": xc64, "out": gemm.linear_reference(xc_torch, w)}, {"xc": xc_torch, "out": xc_torch @ w.t()})
    assert torch.equal(state, before), "linear_conv wrote the conv state"


@pytest.mark.parametrize("M", (1, 5, 16, 37))
def test_triton_ssm_inputs_shifts_the_conv_state(cuda, record, M):
    """`ssm_inputs(..., conv=(x, state))` leaves dt, B, C as without it and shifts the state exactly: tap j
    takes tap j + 1, x enters last (channel ranges of several programs, rows past one row block)."""
    gemm = _gemm()
    from hymba_deploy.serving.runtime import TRITON_GEMVS
    I, R, N, dt = 3200, 100, 16, torch.bfloat16
    cfg = TRITON_GEMVS.get("ssm_inputs") or gemm.SsmInputsConfig(16, 32, 100)
    g = generator("ssm_inputs_conv", M)
    wd, wb, wc = (_rnd(g, n, dtype=dt, scale=0.3) + 1 for n in (R, N, N))
    dtw = _rnd(g, I, 104, dtype=dt, scale=R ** -0.5)
    parts = _rnd(g, 8, M, 136)
    x, _, _, state = _conv_inputs(g, M, I, 4, dt)
    want = torch.cat([state[..., 1:], x[..., None]], dim=-1)
    plain = gemm.ssm_inputs(parts, wd, wb, wc, dtw, 1e-6, cfg)
    got = gemm.ssm_inputs(parts, wd, wb, wc, dtw, 1e-6, cfg, conv=(x, state))
    same = all(torch.equal(a, b) for a, b in zip(got, plain)) and torch.equal(state, want)
    record(dict(op="ssm_inputs_conv_shift", case=f"M{M}", dtype="bfloat16", passed=same))
    assert same, "ssm_inputs with conv changed dt/B/C or shifted the conv state wrongly"


SSM = [("hymba_1.5b", (3200, 100, 16, 8, 10)), ("tiny_widths", (128, 4, 8, 8, 3)),
       ("no_pad_1_split", (320, 20, 16, 1, 1)), ("hymba_1.5b_gemv", (3200, 100, 16, 8, 8))]


@pytest.mark.parametrize("dtype", ("bfloat16", "float16"))
@pytest.mark.parametrize("M", (1, 37, 128, 200))
@pytest.mark.parametrize("name,dims", SSM, ids=[s[0] for s in SSM])
def test_triton_ssm_inputs(cuda, record, dtype, M, name, dims):
    """`ssm_inputs` (dt_proj(norm(dt)), norm(B), norm(C) from x_proj's partial sums) on the hymba-1.5b widths
    (R = 100, N = 16, padded rows and columns) and tiny ones; PyTorch's own error: the float64 result rounded
    to the dtype (the least any result in that dtype has)."""
    gemm = _gemm()
    from hymba_deploy.serving.runtime import TRITON_GEMMS, TRITON_GEMVS
    I, R, N, pad, S = dims
    cfg = {"hymba_1.5b": TRITON_GEMMS.get("ssm_inputs"), "tiny_widths": gemm.SsmInputsConfig(32, 64, 3),
           "no_pad_1_split": gemm.SsmInputsConfig(16, 128, 1), "hymba_1.5b_gemv": TRITON_GEMVS.get("ssm_inputs")}[name]
    g, dt = generator("ssm_inputs", name, M, dtype), getattr(torch, dtype)
    wd, wb, wc = (_rnd(g, n, dtype=dt, scale=0.3) + 1 for n in (R, N, N))
    dtw = torch.zeros(I, -(-R // pad) * pad, device="cuda", dtype=dt)
    dtw[:, :R] = _rnd(g, I, R, dtype=dt, scale=R ** -0.5)
    parts = _rnd(g, S, M, -(-(R + 2 * N) // pad) * pad, dtype=torch.float32 if S > 1 else dt)
    xp = parts.float().sum(0).to(dt)                                      # the x_proj output the model sees
    got = gemm.ssm_inputs(parts, wd, wb, wc, dtw, 1e-6, cfg)
    ref = gemm.ssm_inputs_reference(xp, wd, wb, wc, dtw, 1e-6)
    names = ("dt", "B", "C")
    check(record, dict(_meta("ssm_inputs", f"{name}_M{M}", dtype), config=cfg and cfg.as_dict()),
          dict(zip(names, got)), dict(zip(names, ref)), {n: r.to(dt) for n, r in zip(names, ref)})


# ---------------------------------------------------------------------------------------------- whole model

def _model(spec: str, seed: int):
    """fp32 random weights on the GPU; `tiny` sharpened (attention far from uniform, distinct norms)."""
    from conftest import sharpen                                          # tests/conftest.py

    torch._dynamo.reset()   # one model per test: the compiled glue's recompile limit is per process
    model = random_model(spec, torch.float32, "cuda", seed)
    return sharpen(model, seed) if spec == "tiny" else model


def _prompt(model, batch, prompt, seed):
    return torch.randint(3, model.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(seed)).cuda()


GREEDY = [("tiny", 2, 24, 96), ("hymba-1.5b", 2, 1000, 160)]


@pytest.mark.parametrize("spec,batch,prompt,new", GREEDY, ids=[g[0] for g in GREEDY])
def test_greedy_tokens_equal_the_reference(cuda, record, spec, batch, prompt, new):
    seed = seed_of("greedy", spec)
    model = _model(spec, seed).use_kernels(REFERENCE)
    ids = _prompt(model, batch, prompt, seed)
    ref = model.generate(ids, new)
    model.use_kernels(backend.kernel_backend("cuda"))
    outs = {"model_cuda_backend": model.generate(ids, new)}
    graphs = _runtime(model, prompt + new, batch)
    outs["runtime_graphs"] = graphs.generate(ids, new)
    eager = _runtime(model, prompt + new, batch, use_graphs=False)
    outs["runtime_eager"] = eager.generate(ids, new)
    # recorded, not bounded: the runtime's prefill body against the model's own forward into the same cache
    body = _runtime(model, prompt + new, batch, prefill_impl="model")
    prefill_err = rel_err(eager.prefill(ids, eager.cache(batch)), body.prefill(ids, body.cache(batch)))
    first_diff = {k: _first_diff(v, ref, prompt) for k, v in outs.items()}
    record(dict(op="greedy", case=spec, dtype="float32", seed=seed, batch=batch, prompt=prompt, new_tokens=new,
                tokens_past_window=max(0, prompt + new - model.config.sliding_window - 1),
                distinct_new_tokens=int(ref[:, prompt:].unique().numel()), first_diff=first_diff,
                graph_segments=len(graphs.graphs[batch].graphs) if batch in graphs.graphs else 0,
                prefill_logits_rel_err_vs_model_forward=prefill_err,
                passed=all(d is None for d in first_diff.values())))
    assert all(d is None for d in first_diff.values()), f"first differing new token: {first_diff} [seed {seed}]"


def _runtime(model, max_context: int, batch: int, **config):
    from hymba_deploy.serving import ServingConfig, ServingRuntime
    return ServingRuntime(model, ServingConfig(max_context=max_context, buckets=(batch,), **config))


def _first_diff(out, ref, prompt):
    diff = (out != ref).any(0).nonzero()
    return None if diff.numel() == 0 else int(diff[0]) - prompt


def _teacher_forced(model, ids, new, tokens=None):
    """Reference-backend logits of `new` steps; greedy from its own logits when tokens is None."""
    cache = model.new_cache(ids.shape[0])
    logits, chosen = [], []
    with torch.no_grad():
        step = ids
        for t in range(new):
            lg = model(step, cache)[:, -1]
            logits.append(lg)
            step = lg.argmax(-1, keepdim=True) if tokens is None else tokens[t]
            chosen.append(step)
    return logits, chosen


BF16 = [("tiny", 2, 24, 48), ("hymba-1.5b", 2, 1000, 64)]
VARIANTS = {"bf16_state": dict(ssm_state_dtype=torch.bfloat16), "fp32_state": dict(ssm_state_dtype=torch.float32),
            "fp32_state_cublas_gemms": dict(ssm_state_dtype=torch.float32, decode_gemms="cublas")}


@pytest.mark.parametrize("spec,batch,prompt,new", BF16, ids=[b[0] for b in BF16])
def test_bf16_logits_within_the_reference_backends_own_error(cuda, record, spec, batch, prompt, new):
    """bf16 logits of the runtime (its default decode GEMMs, and cuBLAS; bf16 and fp32 SSM state), teacher-forced
    on the fp32 reference's greedy tokens: the largest per-step error against the fp32 reference within the
    rule's bound of the reference backend's own bf16 error against it."""
    seed = seed_of("bf16", spec)
    model = _model(spec, seed).use_kernels(REFERENCE)
    ids = _prompt(model, batch, prompt, seed)
    ref32, tokens = _teacher_forced(model, ids, new)
    model = model.to(torch.bfloat16)
    ref16, _ = _teacher_forced(model, ids, new, tokens)
    own = max(rel_err(a, b) for a, b in zip(ref16, ref32))
    bound = kernel_bound(torch.bfloat16, own)
    model.use_kernels(backend.kernel_backend("cuda"))
    errs = {}
    for name, kw in VARIANTS.items():
        runtime = _runtime(model, prompt + new, batch, **kw)
        c = runtime.cache(batch)
        if runtime.graphs_possible(c) and prompt + new - 1 >= c.ring:
            runtime.capture(batch)
        lg = [runtime.prefill(ids, c)] + [runtime.decode(c, tokens[t - 1]).clone() for t in range(1, new)]
        errs[name] = {"decode_gemms": runtime.decode_gemms, "max_rel_err": max(map(rel_err, lg, ref32))}
        runtime.release()
    passed = all(e["max_rel_err"] <= bound for e in errs.values())
    record(dict(op="bf16_logits", case=spec, dtype="bfloat16", seed=seed, batch=batch, prompt=prompt, steps=new,
                reference_bf16_vs_fp32=own, bound=bound, runtime=errs, passed=passed))
    assert passed, f"{errs} > bound {bound:.3e} (reference backend's own bf16 error {own:.3e}) [seed {seed}]"


# ---------------------------------------------------------------------------------------------- ragged batches

def _padded(model, lengths, seed):
    """Right-padded prompts (b, max(lengths)) on the GPU (padding: token 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(3, model.config.vocab_size, (n,), generator=g)
    return ids.cuda()


def _forced(runtime, cache, first_logits, tokens, rows):
    """Logits of a prefill's first token and of decode steps fed `tokens` (rows, steps) -> list of (rows, V)."""
    out = [first_logits.float()]
    pad = torch.zeros(cache.batch_size - rows, 1, dtype=torch.int64, device="cuda")
    for t in range(tokens.shape[1]):
        out.append(runtime.decode(cache, torch.cat([tokens[:, t:t + 1], pad]))[:rows].float().clone())
    return out


# (spec, lengths: 1, below the window, past window + meta, the longest; in mixed order, new tokens)
RAGGED = [("tiny", [30, 1, 40, 10], 48), ("hymba-1.5b", [1, 700, 1300, 1200], 24)]


@pytest.mark.parametrize("spec,lengths,new", RAGGED, ids=[r[0] for r in RAGGED])
def test_ragged_batch_gives_each_row_its_prompt_alone(cuda, record, spec, lengths, new):
    """fp32, cuda kernels: `generate(ids, new, lengths=...)` of the ragged batch equals, per row, that prompt's
    `generate` alone (batch of one) through the same runtime, with the decode step graph-replayed and eager; the
    batch's logits, teacher-forced on its own tokens, within the fp32 model tolerance of the prompt alone's."""
    from hymba_deploy.serving import ServingConfig, ServingRuntime

    seed = seed_of("ragged", spec)
    model = _model(spec, seed).use_kernels(backend.kernel_backend("cuda"))
    ids, B, T = _padded(model, lengths, seed), len(lengths), max(lengths)
    bound = MODEL_TOLERANCES["float32"]["rel_l2"]
    report, passed = {}, True
    for mode, kw in (("graphs", {}), ("eager", dict(use_graphs=False))):
        rt = ServingRuntime(model, ServingConfig(max_context=T + new, buckets=(1, B), **kw))
        out = rt.generate(ids, new, lengths=torch.tensor(lengths))
        assert out.shape == (B, T + new) and torch.equal(out[:, :T], ids)
        alone = [rt.generate(ids[b:b + 1, :n], new)[0, n:] for b, n in enumerate(lengths)]
        first_diff = [_first_diff(out[b:b + 1, T:], a[None], 0) for b, a in enumerate(alone)]
        cache = rt.cache(B)
        cache.reset()
        first = torch.cat([rt.prefill(ids[b:b + 1, :n], cache, rows=[b]) for b, n in enumerate(lengths)])
        batch = _forced(rt, cache, first, out[:, T:T + new - 1], B)
        errs = []
        for b, n in enumerate(lengths):
            one = rt.cache(1)
            lone = _forced(rt, one, rt.prefill(ids[b:b + 1, :n], one), out[b:b + 1, T:T + new - 1], 1)
            errs.append(max(rel_err(x[b:b + 1], y) for x, y in zip(batch, lone)))
        graphs = {k: len(g.graphs) for k, g in rt.graphs.items()}
        report[mode] = dict(first_diff=first_diff, max_logits_rel_err=errs, graph_segments=graphs,
                            replays={k: g.replays for k, g in rt.graphs.items()})
        passed &= all(d is None for d in first_diff) and max(errs) <= bound
        if mode == "graphs":
            passed &= graphs == {1: 1, B: 1} and rt.graphs[B].replays >= 2 * (new - 1)
        rt.release()
    record(dict(op="ragged_batch", case=spec, dtype="float32", seed=seed, lengths=lengths, new_tokens=new,
                window=model.config.sliding_window, meta=model.config.num_memory_tokens, bound=bound, **report,
                passed=passed))
    assert passed, f"{report} (bound {bound:.1e}) [seed {seed}]"


REPLACE = [("tiny", [12, 30, 5, 20], 25, 9, 30), ("hymba-1.5b", [100, 1200, 5, 600], 1100, 8, 16)]


@pytest.mark.parametrize("spec,lengths,new_prompt,before,after", REPLACE, ids=[r[0] for r in REPLACE])
def test_row_replaced_between_graph_replays_decodes_as_its_prompt_alone(cuda, record, spec, lengths, new_prompt,
                                                                        before, after):
    """fp32, cuda kernels, one captured decode graph: a ragged batch decodes `before` steps, row 2 is re-started with
    a new prompt (`prefill(..., rows=[2])`), `after` more steps: row 2's tokens from there are the new prompt's
    alone, the other rows' those of their prompts alone, every step a replay of the one graph (no capture)."""
    from hymba_deploy.serving import ServingConfig, ServingRuntime

    seed = seed_of("replace", spec)
    model = _model(spec, seed).use_kernels(backend.kernel_backend("cuda"))
    ids, B = _padded(model, lengths, seed), len(lengths)
    fresh = _padded(model, [new_prompt], seed + 1)
    rt = ServingRuntime(model, ServingConfig(max_context=max(max(lengths) + before + after, new_prompt + after) + 1,
                                             buckets=(1, B)))
    alone = [rt.generate(ids[b:b + 1, :n], 1 + before + after)[0, n:] for b, n in enumerate(lengths)]
    fresh_alone = rt.generate(fresh, 1 + after)[0, new_prompt:]
    graph = rt.capture(B)
    captures = rt.captures
    cache = rt.cache(B)
    cache.reset()
    logits = torch.cat([rt.prefill(ids[b:b + 1, :n], cache, rows=[b]) for b, n in enumerate(lengths)])
    tokens = [logits.argmax(-1, keepdim=True)]
    for _ in range(before):
        tokens.append(rt.decode(cache, tokens[-1]).argmax(-1, keepdim=True))
    first = rt.prefill(fresh, cache, rows=[2])                              # row 2 finished: a new prompt
    tokens[-1] = tokens[-1].clone()
    tokens[-1][2] = first.argmax(-1)
    mark = len(tokens) - 1
    for _ in range(after):
        tokens.append(rt.decode(cache, tokens[-1]).argmax(-1, keepdim=True))
    got = torch.cat(tokens, 1)
    diffs = {b: _first_diff(got[b:b + 1], alone[b][None], 0) for b in (0, 1, 3)}
    diffs[2] = _first_diff(got[2:3, mark:], fresh_alone[None], 0)
    diffs["2_before"] = _first_diff(got[2:3, :mark], alone[2][None, :mark], 0)
    passed = (all(d is None for d in diffs.values()) and rt.captures == captures
              and graph.replays == before + after and len(graph.graphs) == 1)
    record(dict(op="ragged_replace_row", case=spec, dtype="float32", seed=seed, lengths=lengths,
                new_prompt=new_prompt, steps_before=before, steps_after=after, first_diff=diffs,
                captures=rt.captures, replays=graph.replays, passed=passed))
    assert passed, f"{diffs}, captures {rt.captures} (was {captures}), replays {graph.replays} [seed {seed}]"


def test_forced_decode_attention_sets_the_extensions_kernel_choice(ext):
    before = ext.kernel_choice("attention")
    with backend.forced_decode_attention("split"):
        assert ext.kernel_choice("attention") == "split"
    assert ext.kernel_choice("attention") == before
    with pytest.raises(RuntimeError, match="unknown kernel choice"):
        ext.set_kernel_choice("attention", "fastest")
