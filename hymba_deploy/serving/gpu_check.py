"""GPU parity check of the `cuda` backend and the serving runtime against the `reference` backend.

    PYTHONPATH=. python3 -m hymba_deploy.serving.gpu_check --out check.json [--quick] [--skip-ops]

1. Builds the extension from the plugin kernel sources (timed).
2. Op level: each plugin kernel through the extension against `<op>_ref` (fp32 and bf16), including the
   in-place decode forms the serving runtime uses.
3. Greedy tokens, fp32: `tiny` (prompt longer than its 16-token window, 96 new tokens) and
   `hymba-1.5b`-shaped random weights (prompt 1000, 160 new tokens: 136 past the 1024 window), batch 2:
   reference backend `model.generate` vs the serving engine with CUDA graphs, without graphs, and the
   model's own forward on the cuda backend; the engine's prefill logits against its `prefill_impl="model"`
   (the model's forward into the serving cache), recorded.
   The Triton decode kernels (gemm.py) against float64 references, fp16 and bf16.
4. bf16 logits: teacher-forced over the reference's tokens, per-step norm-relative error of the engine's
   logits against the reference backend's (both with bf16 SSM state, as upstream). The engine runs its
   default decode GEMMs (the Triton kernels of gemm.py where triton is installed), and once with cuBLAS.
Exit status 1 when any check fails. Without CUDA it prints why and exits 0 (nothing to check).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import torch

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def rel_err(out, ref) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all() or not torch.isfinite(ref).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def random_model(spec: str, dtype, device, seed: int = 0, sharpen: bool = False):
    """A preset with random weights (upstream's init) built directly on `device` (fast for 1.5B)."""
    from ..config import preset
    from ..model import HymbaForCausalLM

    cfg = preset(spec)
    with torch.device("meta"):
        model = HymbaForCausalLM(cfg)
    model = model.to_empty(device=device)
    model.lm_head.weight = model.model.embed_tokens.weight
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device(device):
        model.init_weights(gen)
        if sharpen:   # attention far from uniform, distinct norm weights (as tests/conftest.py `sharpen`)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "layernorm" in name:
                        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
                    elif p.dim() == 2 and "A_log" not in name and "embed" not in name:
                        p.copy_(torch.randn(p.shape, generator=gen) * (p.shape[1] ** -0.5))
    return model.to(dtype).eval().requires_grad_(False)


def check_ops(ext, device) -> list[dict]:
    from ..cuda import forced_decode_attention
    from ..ops import causal_conv1d_ref, selective_scan_ref, windowed_attention_ref

    g = torch.Generator(device=device).manual_seed(0)
    out = []

    def rnd(*shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(shape, generator=g, device=device) * scale).to(dtype)

    for dtype in (torch.float32, torch.bfloat16):
        tol = TOL[dtype]
        # selective scan: prefill from zero and decode in place (fp32 state).
        for T, init in ((129, False), (1, True)):
            b, I, N = 3, 320, 16
            x, z = rnd(b, T, I, dtype=dtype), rnd(b, T, I, dtype=dtype)
            dt = rnd(b, T, I, dtype=dtype, scale=0.5)
            A = -torch.rand(I, N, generator=g, device=device) * 4 - 0.1
            Bm, Cm = rnd(b, T, N, dtype=dtype), rnd(b, T, N, dtype=dtype)
            D, bias = rnd(I), rnd(I, scale=0.5)
            h0 = rnd(b, I, N) if init else None
            y_ref, s_ref = selective_scan_ref(x, dt, A, Bm, Cm, D, z, bias, h0)
            if init:
                state = h0.clone()
                y, s = ext.selective_scan(x, dt, A, Bm, Cm, D, z, bias, state, 20.0, None, state)
                ok_alias = s.data_ptr() == state.data_ptr()
            else:
                y, s = ext.selective_scan(x, dt, A, Bm, Cm, D, z, bias, None, 20.0, None, None)
                ok_alias = True
            e = max(rel_err(y, y_ref), rel_err(s, s_ref))
            out.append({"op": "selective_scan", "dtype": str(dtype), "T": T, "in_place": init, "rel_err": e,
                        "pass": bool(e <= tol and ok_alias)})
        # causal conv: prefill (strided x as in the model) and in-place decode.
        for T, init in ((151, False), (1, True)):
            b, I, K = 2, 3200 // 4, 4
            wide = rnd(b, T, 3 * I, dtype=dtype)
            x = wide[:, :, I:2 * I]                                         # non-contiguous, like in_proj slices
            w, bias = rnd(I, K, dtype=dtype, scale=0.5), rnd(I, dtype=dtype)
            st = rnd(b, I, K, dtype=dtype) if init else None
            y_ref, s_ref = causal_conv1d_ref(x, w, bias, st, "silu")
            if init:
                state = st.clone()
                y, s = ext.causal_conv1d(x, w, bias, state, True, None, state)
            else:
                y, s = ext.causal_conv1d(x, w, bias, None, True, None, None)
            e = max(rel_err(y, y_ref), rel_err(s, s_ref))
            out.append({"op": "causal_conv1d", "dtype": str(dtype), "T": T, "in_place": init, "rel_err": e,
                        "pass": bool(e <= tol)})
        # windowed attention: prefill with window + meta, decode over a strided buffer view.
        for Tq, Tk, window in ((203, 203, 64), (1, 300, 0), (1, 200, 1024)):
            b, Hq, Hkv, dqk, dv = 2, 25, 5, 64, 128
            q = rnd(b, Tq, Hq, dqk, dtype=dtype)
            kbuf, vbuf = rnd(b, Tk + 17, Hkv, dqk, dtype=dtype), rnd(b, Tk + 17, Hkv, dv, dtype=dtype)
            k, v = kbuf[:, :Tk], vbuf[:, :Tk]
            ref = windowed_attention_ref(q, k, v, window, 8, 0.125)
            o = ext.windowed_attention(q, k, v, window, 8, 0.125, None)
            e = rel_err(o, ref)
            out.append({"op": "windowed_attention", "dtype": str(dtype), "Tq": Tq, "Tk": Tk, "window": window,
                        "rel_err": e, "pass": bool(e <= tol)})
        # Device-side key count over a larger buffer (graph-captured global layers), every decode kernel
        # (split-KV at batch 2, tensor-core at batch 64 and 128: 320 and 640 (batch, kv head) tiles; fp32:
        # general kernel).
        for b, n, window, path in ((2, 777, 0, "auto"), (64, 4321, 0, "auto"), (64, 1500, 1024, "mma"),
                                   (128, 1300, 1024, "auto"), (2, 900, 0, "flash")):
            Hq, Hkv, dqk, dv = 25, 5, 64, 128
            q = rnd(b, 1, Hq, dqk, dtype=dtype)
            kbuf, vbuf = rnd(b, n + 300, Hkv, dqk, dtype=dtype), rnd(b, n + 300, Hkv, dv, dtype=dtype)
            ref = windowed_attention_ref(q, kbuf[:, :n], vbuf[:, :n], window, 128, 0.125)
            kv_len = torch.tensor([n], dtype=torch.int32, device=device)
            with forced_decode_attention(path):
                o = ext.windowed_attention(q, kbuf, vbuf, window, 128, 0.125, None, kv_len)
            e = rel_err(o, ref)
            out.append({"op": "windowed_attention", "dtype": str(dtype), "batch": b, "Tq": 1, "Tk": n,
                        "capacity": n + 300, "kv_len_device": True, "kernel": path, "window": window,
                        "rel_err": e, "pass": bool(e <= tol)})
    return out


def check_gemms(device, configs: dict | None = None) -> list[dict]:
    """The Triton decode kernels (gemm.py) against their float64 references: split-K with the engine's tilings
    on the hymba-1.5b shapes and on shapes whose K is no multiple of the K tile; `ssm_inputs` on the
    hymba-1.5b widths (R = 100, N = 16, padded x_proj rows and dt_proj columns) and on tiny-model widths;
    1 to 200 rows (two row tiles), fresh random inputs, fp16 and bf16. configs: the engine's tilings
    (TRITON_GEMMS) with these replacing some."""
    from . import gemm
    from .engine import TRITON_GEMMS

    tilings = {**TRITON_GEMMS, **(configs or {})}

    if not gemm.available():
        return [{"op": "triton_gemms", "error": "triton not importable", "pass": False}]
    out = []
    g = torch.Generator(device=device).manual_seed(int(time.time()))

    def rnd(*shape, dtype, scale=1.0):
        return (torch.randn(shape, generator=g, device=device) * scale).to(dtype)

    cases = [((136, 3200), tilings.get("x_proj")), ((1600, 3200), tilings.get("out_proj")),
             ((1600, 5504), tilings.get("down_proj")), ((200, 1000), gemm.GemmConfig(64, 64, 3, 4, 3)),
             ((40, 96), gemm.GemmConfig(32, 64, 2, 4, 3))]
    cases = [(shape, cfg) for shape, cfg in cases if cfg is not None]
    for dtype in (torch.bfloat16, torch.float16):
        for (N, K), cfg in cases:
            for M in (1, 5, 37, 128, 200):
                x, w = rnd(M, K, dtype=dtype), rnd(N, K, dtype=dtype, scale=K ** -0.5)
                e = rel_err(gemm.linear_splitk(x, w, cfg).float().sum(0), gemm.linear_reference(x, w))
                out.append({"op": "linear_splitk", "dtype": str(dtype), "M": M, "N": N, "K": K,
                            "config": cfg.as_dict(), "rel_err": e, "pass": bool(e <= TOL[dtype])})
        for (I, R, N, pad, S), cfg in (((3200, 100, 16, 8, 10), tilings.get("ssm_inputs")),
                                       ((128, 4, 8, 8, 3), gemm.SsmInputsConfig(32, 64, 3)),
                                       ((320, 20, 16, 1, 1), gemm.SsmInputsConfig(16, 128, 1))):
            for M in (1, 37, 128, 200):
                wd, wb, wc = (rnd(n, dtype=dtype, scale=0.3) + 1 for n in (R, N, N))
                dtw = torch.zeros(I, -(-R // pad) * pad, device=device, dtype=dtype)
                dtw[:, :R] = rnd(I, R, dtype=dtype, scale=R ** -0.5)
                parts = rnd(S, M, -(-(R + 2 * N) // pad) * pad, dtype=torch.float32 if S > 1 else dtype)
                xp = parts.float().sum(0).to(dtype)                         # the x_proj output the model sees
                got = gemm.ssm_inputs(parts, wd, wb, wc, dtw, 1e-6, cfg)
                ref = gemm.ssm_inputs_reference(xp, wd, wb, wc, dtw, 1e-6)
                e = max(rel_err(a, b) for a, b in zip(got, ref))
                out.append({"op": "ssm_inputs", "dtype": str(dtype), "M": M, "I": I, "R": R, "N": N, "splits": S,
                            "config": cfg and cfg.as_dict(), "rel_err": e, "pass": bool(e <= TOL[dtype])})
    return out


def check_greedy(spec: str, batch: int, prompt: int, new: int, device, seed: int) -> dict:
    from .. import cuda as backend
    from .engine import HymbaServingEngine

    model = random_model(spec, torch.float32, device, seed, sharpen=(spec == "tiny"))
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, prompt), generator=torch.Generator().manual_seed(seed)).to(device)
    backend.set_backend("reference")
    t0 = time.perf_counter()
    ref = model.generate(ids, new)
    t_ref = time.perf_counter() - t0
    backend.set_backend("cuda")
    model.backend = "cuda"
    t0 = time.perf_counter()
    model_cuda = model.generate(ids, new)                                  # the model itself, cuda kernels
    t_model = time.perf_counter() - t0
    engine = HymbaServingEngine(model, max_context=prompt + new, buckets=(batch,))
    t0 = time.perf_counter()
    served = engine.generate(ids, new)
    t_engine = time.perf_counter() - t0
    graph_segments = len(engine.graphs[batch].graphs) if batch in engine.graphs else 0
    eager_engine = HymbaServingEngine(model, max_context=prompt + new, buckets=(batch,), use_graphs=False)
    served_eager = eager_engine.generate(ids, new)
    # The engine's prefill body against the model's own forward into the same serving cache (recorded).
    model_prefill = HymbaServingEngine(model, max_context=prompt + new, buckets=(batch,), prefill_impl="model")
    prefill_err = rel_err(eager_engine.prefill(ids, eager_engine.cache(batch)),
                          model_prefill.prefill(ids, model_prefill.cache(batch)))

    def first_diff(a):
        diff = (a != ref).any(0).nonzero()
        return None if diff.numel() == 0 else int(diff[0]) - prompt

    window = model.config.sliding_window
    res = {
        "model": spec, "dtype": "float32", "batch": batch, "prompt": prompt, "new_tokens": new,
        "tokens_past_window": max(0, prompt + new - window - 1),
        "distinct_new_tokens": int(ref[:, prompt:].unique().numel()),
        "engine_graphs_equal": bool(torch.equal(served, ref)), "engine_graphs_first_diff": first_diff(served),
        "engine_eager_equal": bool(torch.equal(served_eager, ref)),
        "model_cuda_backend_equal": bool(torch.equal(model_cuda, ref)),
        "graph_segments": graph_segments, "prefill_logits_rel_err_vs_model_forward": prefill_err,
        "seconds": {"reference_generate": t_ref, "model_cuda_generate": t_model, "engine_generate": t_engine},
    }
    res["pass"] = res["engine_graphs_equal"] and res["engine_eager_equal"] and res["model_cuda_backend_equal"]
    del model, engine, eager_engine, model_prefill
    torch.cuda.empty_cache()
    return res


def _teacher_forced(model, ids, new, tokens=None):
    """Reference runtime logits (new, B, V) over `tokens` (greedy from its own logits when None)."""
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


def check_bf16_logits(spec: str, batch: int, prompt: int, new: int, device, seed: int,
                      gemm_configs: dict | None = None) -> dict:
    """bf16 logits, teacher-forced on the fp32 reference's greedy tokens. The bar follows PyTorch's own
    bf16 error (house rule 8): the engine's error against the fp32 reference must be at most twice the
    reference backend's bf16 error against the same fp32 reference."""
    from .. import cuda as backend
    from .engine import HymbaServingEngine

    model = random_model(spec, torch.float32, device, seed, sharpen=(spec == "tiny"))
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt),
                        generator=torch.Generator().manual_seed(seed)).to(device)
    backend.set_backend("reference")
    ref32, tokens = _teacher_forced(model, ids, new)
    model = model.to(torch.bfloat16)
    ref16, _ = _teacher_forced(model, ids, new, tokens)
    ref16_err = [rel_err(a, b) for a, b in zip(ref16, ref32)]
    backend.set_backend("cuda")
    model.backend = "cuda"
    out = {"reference_bf16_vs_fp32": {"max_rel_err": max(ref16_err), "mean_rel_err": sum(ref16_err) / new}}
    variants = (("engine_bf16_state", dict(ssm_state_dtype=torch.bfloat16, gemm_configs=gemm_configs)),
                ("engine_fp32_state", dict(ssm_state_dtype=torch.float32, gemm_configs=gemm_configs)),
                ("engine_fp32_state_cublas_gemms", dict(ssm_state_dtype=torch.float32, decode_gemms="cublas")))
    for state_name, kw in variants:
        engine = HymbaServingEngine(model, max_context=prompt + new, buckets=(batch,), **kw)
        c = engine.cache(batch)
        if engine.graphs_possible(c) and prompt + new - 1 >= c.ring:
            engine.capture(batch)
        lg = [engine.prefill(ids, c)]
        for t in range(1, new):
            lg.append(engine.decode(c, tokens[t - 1]).clone())
        e32 = [rel_err(a, b) for a, b in zip(lg, ref32)]
        e16 = [rel_err(a, b) for a, b in zip(lg, ref16)]
        out[state_name] = {"decode_gemms": engine.decode_gemms,
                           "vs_fp32_max_rel_err": max(e32), "vs_fp32_mean_rel_err": sum(e32) / new,
                           "vs_reference_bf16_max_rel_err": max(e16)}
        engine.release()
    bound = 2 * max(ref16_err) + 1e-3
    res = {"model": spec, "dtype": "bfloat16", "batch": batch, "prompt": prompt, "steps": new, **out,
           "bound_vs_fp32": bound}
    res["pass"] = all(out[k]["vs_fp32_max_rel_err"] <= bound for k, _ in variants)
    del model
    torch.cuda.empty_cache()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="tiny model only")
    ap.add_argument("--skip-ops", action="store_true",
                    help="skip step 2 (op-level kernel and Triton GEMM checks): the engine-level stages only")
    ap.add_argument("--gemm-configs", default=None,
                    help="JSON file of Triton decode tilings (gemm_bench --best-out) to check instead of the defaults")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: skipped, no CUDA device (the cuda backend and CUDA graphs need one)")
        return 0
    from .. import cuda as backend

    device = torch.device("cuda")
    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0 = time.perf_counter()
    ext = backend.load_extension(verbose=False)
    results["extension_build_s"] = time.perf_counter() - t0

    def dump():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)
    print(f"extension ready in {results['extension_build_s']:.1f} s", flush=True)
    from .gemm import load_configs

    gemm_configs = load_configs(args.gemm_configs) if args.gemm_configs else None
    results["gemm_configs"] = args.gemm_configs and {k: c and c.as_dict() for k, c in gemm_configs.items()}
    results["ops"] = [] if args.skip_ops else check_ops(ext, device) + check_gemms(device, gemm_configs)
    results["ops_checked"] = not args.skip_ops
    print(json.dumps(results["ops"], indent=1), flush=True)
    dump()
    results["greedy"], results["bf16"] = [], []
    stages = [("greedy", check_greedy, ("tiny", 2, 24, 96), {}),
              ("bf16", check_bf16_logits, ("tiny", 2, 24, 48), dict(gemm_configs=gemm_configs))]
    if not args.quick:
        stages += [("greedy", check_greedy, ("hymba-1.5b", 2, 1000, 160), {}),
                   ("bf16", check_bf16_logits, ("hymba-1.5b", 2, 1000, 64), dict(gemm_configs=gemm_configs))]
    for kind, fn, fargs, kw in stages:
        # Each stage builds its own model (preset × dtype) and engines: fresh compile caches, so that the shapes
        # and dtypes of all stages do not add up past dynamo's recompile limit on the engine's compiled glue
        # (a hard error under fullgraph=True), as they would in no server (one model per process).
        torch._dynamo.reset()
        try:
            r = fn(*fargs, device, 0, **kw)
        except Exception as e:                                              # recorded; later stages still run
            r = {"model": fargs[0], "error": traceback.format_exc()[-3000:], "pass": False}
            print(f"{kind} {fargs[0]} failed: {e}", flush=True)
        results[kind].append(r)
        print(json.dumps(r), flush=True)
        dump()
    passed = all(r["pass"] for r in results["ops"] + results["greedy"] + results["bf16"])
    results["pass"] = passed
    dump()
    print("gpu_check:", "PASS" if passed else "FAIL", "" if results["ops_checked"] else "(op-level checks skipped)",
          flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
