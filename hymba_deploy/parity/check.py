"""`hymba-deploy check`: the same random prompts through PyTorch (the reference), ONNX Runtime, the
engines and (on request, `--runtime cuda`) the serving runtime on the cuda kernels, compared after prefill
and after each of K decode steps.

Multi-step and stateful: every runtime feeds its own `present.*` outputs back as the next step's
`past.*` inputs (as a deployment does), and all runtimes decode the same token (the reference's
greedy choice), so errors that accumulate in the cache show up step by step.

Ragged case (issue #14, on by default): one batch of right-padded prompts of different lengths (at the
window + meta tokens, a single token, above, below; within the prompt limits), each row compared against
its prompt run ALONE through the reference: the row's logits at its valid positions, its valid K/V
entries (the first c_b), its conv and SSM states, after the prefill and after every decode step (each row
decodes its own greedy token, at its own position). Every output is compared:
logits and each cache tensor (max abs, rel L2, cosine; NaN/Inf separately) against the tolerance of
the lower of the two precisions. On a failure, the first failing step is re-run with per-layer outputs
marked and the first divergent layer is named. Backends that cannot run here are "not run: <reason>";
an engine folder that is missing, empty or unreadable is an error, never "not run".
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..contract import GRAPHS, LENGTHS_INPUT, POSITIONS_INPUT, graph_file
from ..errors import HymbaDeployError
from ..exporters.manifest import verify_export
from ..runtime import OnnxRuntimeRunner, ServingRunner, TensorRTRunner, TorchRunner
from ..runtime.greedy import decode_feed, prefill_feed
from ..runtime.onnxruntime_runner import CUDA_PROVIDER, provider_name, providers_for
from ..runtime.tensorrt_runner import engine_unavailable
from .compare import TOLERANCES, compare_outputs
from .localize import localize

REFERENCE = "torch"
RUNTIMES = ("cuda",)                  # runtimes compared on request (`--runtime`): the serving runtime
_PRECISION_ORDER = ("bfloat16", "float16", "float32")     # lowest first


def _metadata(path: Path) -> dict:
    """The graph's `hymba.*` metadata; a graph of another op version is refused (re-export)."""
    from ..engine.onnx_inputs import check_op_version, load_graph, metadata
    proto = load_graph(path)
    check_op_version(path, proto)
    return metadata(proto)


def _load_reference(model, dtype: str, seed: int, onnx_config: dict, device: str):
    import torch

    from ..checkpoint import load_model, parse_dtype
    from ..config import HymbaConfig
    if isinstance(model, str):
        model = load_model(model, dtype=dtype, seed=seed)
    else:
        model = model.to(parse_dtype(dtype))
    model = model.to(torch.device(device)).eval()
    if model.config.to_dict() != HymbaConfig.from_dict(onnx_config).to_dict():
        raise HymbaDeployError("MODEL's config differs from the one the ONNX was exported from "
                               "(hymba.config metadata): pass the MODEL (and --seed) used for `export`")
    return model


def _tolerances(ref_dtype: str, onnx_dtype: str, override: dict | None) -> dict:
    low = min(ref_dtype, onnx_dtype, key=_PRECISION_ORDER.index)
    return {"": dict(override or TOLERANCES[low])}


def _cache_io(meta: dict, config) -> list[tuple[str, str]]:
    if "cache_io" in meta:
        return [tuple(p) for p in json.loads(meta["cache_io"])]
    from ..cache import HybridMambaAttentionDynamicCache as Cache
    return Cache.io_pairs(config)


@dataclass
class _Plan:
    """What one check compares: the export's graphs and metadata, the reference, tolerances, prompts."""
    onnx_dir: Path
    graphs: dict[str, Path]
    needed: list[str]
    meta: dict
    onnx_dtype: str
    ref_dtype: str
    eviction: str
    tolerances: dict
    reference_model: object
    cache_io: list[tuple[str, str]]
    logits_to_keep: int
    max_prompt_len: int
    max_seq_len: int
    max_batch: int | None = None          # the engines' profile, when engines are compared


@dataclass
class _Candidate:
    """A runtime compared against the reference: its status and, when it runs, its runner factory per graph
    (capture_layers -> an inactive runner)."""
    status: dict
    factories: dict[str, Callable] = field(default_factory=dict)


def check(model, onnx_dir, engine_dir=None, prompts: int = 2, steps: int = 3, dtype: str | None = None,
          seed: int = 0, max_prompt_len: int = 48, batch_size: int = 1, device: str = "cpu",
          tolerances: dict | None = None, plugin_library=None, runtimes: tuple[str, ...] = (),
          ragged: bool = True, progress: Callable[[str], None] | None = None) -> dict:
    """Compare torch, ONNX Runtime, engines and (`runtimes`, e.g. ("cuda",)) the serving runtime; returns the
    report (report["ok"]: every runtime that ran passed, and at least one ran; report["not_run"]: the
    runtimes that did not run).

    `engine_dir`'s engines are checked before any work (HymbaDeployError when missing or unreadable);
    `plugin_library` (`--plugins`) is the plugin library they may load (default: the project's build).
    `ragged`: also run the ragged case (module docstring), after the `prompts` uniform batches.
    Steps: plan (inputs, metadata, reference) -> candidates (which runtimes run) -> run and compare ->
    localise each failure -> report."""
    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    if prompts < 1 or steps < 0 or batch_size < 1:
        raise HymbaDeployError("--prompts and --batch-size must be ≥ 1 and --steps ≥ 0")
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise HymbaDeployError(f"--runtime {', '.join(unknown)}: choose among {', '.join(RUNTIMES)}")
    plan = _plan(model, onnx_dir, steps, dtype, seed, max_prompt_len, device, tolerances, say)
    engines = _engines(engine_dir, plan.needed) if engine_dir is not None else None
    # In this order: the engines' profile may narrow the prompt length the serving runtime is sized for.
    candidates = {"onnxruntime": _onnxruntime(plan, device),
                  "tensorrt": _tensorrt(plan, engine_dir, engines, plugin_library, batch_size, steps),
                  "cuda": _serving_cuda(plan, model, seed, batch_size, steps) if "cuda" in runtimes
                  else _Candidate({"status": "not requested", "reason": "no --runtime cuda given"})}
    ref_factory = {g: (lambda cap, g=g: TorchRunner(plan.reference_model, g, plan.eviction, capture_layers=cap,
                                                     logits_to_keep=plan.logits_to_keep))
                   for g in plan.needed}
    rng = np.random.default_rng(seed)                             # prompt lengths, then prompts
    lengths = _prompt_lengths(plan, prompts, steps, rng)
    ragged_rows = _ragged_lengths(plan, steps) if ragged else []
    rows, first_failure = _run_and_compare(plan, ref_factory, candidates, lengths, batch_size, steps, rng, say,
                                           ragged_rows)
    for name, cand in candidates.items():
        if cand.status["status"] == "pending":
            _conclude(name, cand, rows, first_failure.get(name), ref_factory, plan.tolerances, say)
    status = {name: cand.status for name, cand in candidates.items()}
    ran = [n for n, s in status.items() if s["status"] in ("passed", "failed", "error")]
    ok = bool(ran) and all(status[n]["status"] == "passed" for n in ran)
    return {"ok": ok, "not_run": [n for n, s in status.items() if s["status"] == "not run"],
            "model": model if isinstance(model, str) else type(model).__name__, "onnx": str(plan.onnx_dir),
            "engine": str(engine_dir) if engine_dir else None,
            "reference": {"runtime": REFERENCE, "dtype": plan.ref_dtype, "device": device},
            "onnx_dtype": plan.onnx_dtype, "eviction": plan.eviction, "tolerances": plan.tolerances, "seed": seed,
            "prompts": [{"batch": batch_size, "tokens": n} for n in lengths]
            + ([{"batch": len(ragged_rows), "tokens": ragged_rows, "ragged": True}] if ragged_rows else []),
            "steps": steps,
            "runtimes": status, "results": rows, "seconds": round(time.perf_counter() - t_start, 2)}


# ---- 1. plan -------------------------------------------------------------------------------------------
def _plan(model, onnx_dir, steps, dtype, seed, max_prompt_len, device, tolerances, say) -> _Plan:
    """The export's graphs (verified against their manifest), metadata, tolerances and the reference model."""
    from ..checkpoint import parse_dtype
    onnx_dir = Path(onnx_dir)
    graphs = {g: onnx_dir / graph_file(g) for g in GRAPHS}
    needed = ["prefill"] + (["decode"] if steps else [])
    missing = [str(graphs[g]) for g in needed if not graphs[g].is_file()]
    if missing:
        raise HymbaDeployError(f"--onnx {onnx_dir}: {', '.join(missing)} not found; run `hymba-deploy export` first")
    verify_export(onnx_dir, needed, progress=say)
    meta = _metadata(graphs["prefill"])
    if "config" not in meta:
        raise HymbaDeployError(f"{graphs['prefill']}: no hymba.config metadata; export it with `hymba-deploy export`")
    onnx_dtype = meta.get("dtype", "float32")
    ref_dtype = str(parse_dtype(dtype or onnx_dtype)).replace("torch.", "")
    tols = _tolerances(ref_dtype, onnx_dtype, tolerances)
    say(f"reference: PyTorch {ref_dtype} on {device}; ONNX exported in {onnx_dtype}; tolerance {tols['']}")
    ref_model = _load_reference(model, ref_dtype, seed, json.loads(meta["config"]), device)
    return _Plan(onnx_dir, graphs, needed, meta, onnx_dtype, ref_dtype, meta.get("eviction", "upstream"), tols,
                 ref_model, _cache_io(meta, ref_model.config),
                 1 if meta.get("prefill_logits") == "last" else 0,     # the export's `--prefill-logits`
                 max_prompt_len, int(meta.get("max_seq_len", 8192)))


def _prompt_lengths(plan: _Plan, prompts: int, steps: int, rng: np.random.Generator) -> list[int]:
    """Prompt lengths, the longest allowed first (within --max-prompt-len, the export's max_seq_len and any
    engine profile)."""
    upper = max(1, min(plan.max_prompt_len, plan.max_seq_len - steps))
    return [upper] + [int(x) for x in rng.integers(1, upper + 1, prompts - 1)]


def _ragged_lengths(plan: _Plan, steps: int) -> list[int]:
    """The ragged batch's text lengths: at the window + meta tokens, 1, above (the longest allowed), below
    (half of window + meta); each within the prompt limits, at most the engines' batch rows. A model whose
    limits cannot hold two different lengths gets no ragged case ([])."""
    cfg = plan.reference_model.config
    windows = [cfg.layer_window(i) for i in range(cfg.num_hidden_layers) if cfg.layer_window(i) > 0]
    span = max(windows, default=0) + cfg.num_memory_tokens
    upper = max(1, min(plan.max_prompt_len, plan.max_seq_len - steps))
    rows = [min(n, upper) for n in (span, 1, max(upper, span + 1), max(1, span // 2))]
    rows = rows[:plan.max_batch] if plan.max_batch else rows
    return rows if len(set(rows)) > 1 else []


# ---- 2. candidates: which runtimes run, and their runners ---------------------------------------------
def _onnxruntime(plan: _Plan, device: str) -> _Candidate:
    try:
        import onnxruntime as ort
    except ImportError:
        return _Candidate({"status": "not run", "reason": "onnxruntime is not installed (pip install onnxruntime)"})
    try:                                          # --device cuda: the CUDA provider, TF32 off, or "not run"
        providers = providers_for(device)
    except HymbaDeployError as e:
        return _Candidate({"status": "not run", "reason": str(e)})
    first = provider_name(providers[0])
    return _Candidate({"status": "pending", "detail": f"onnxruntime {ort.__version__} {first}"
                                                      + (" (TF32 off)" if first == CUDA_PROVIDER else "")},
                      {g: (lambda cap, p=plan.graphs[g]: OnnxRuntimeRunner(p, providers, capture_layers=cap))
                       for g in plan.needed})


def _tensorrt(plan: _Plan, engine_dir, engines, plugin_library, batch_size: int, steps: int) -> _Candidate:
    """The engines of --engine; narrows `plan.max_prompt_len` to their optimisation profile."""
    if engine_dir is None:
        return _Candidate({"status": "not requested", "reason": "no --engine DIR given"})
    reason = next((r for r in (engine_unavailable(p, plugin_library) for p in engines.values()) if r), None)
    if reason:
        return _Candidate({"status": "not run", "reason": reason})
    # Prompts and decode steps must stay inside the engines' optimisation profile.
    axes = _profile_axes(engines["prefill"])
    plan.max_prompt_len = min(plan.max_prompt_len, axes["seq"][2] - steps)
    plan.max_batch = axes["batch"][2]
    if batch_size > axes["batch"][2] or plan.max_prompt_len < 1:
        raise HymbaDeployError(f"the engines' profile (batch <= {axes['batch'][2]}, seq <= {axes['seq'][2]}) "
                               f"cannot hold --batch-size {batch_size} with {steps} decode steps")
    return _Candidate({"status": "pending", "detail": str(engine_dir)},
                      {g: (lambda cap, p=engines[g]: TensorRTRunner(p, user_library=plugin_library))
                       for g in plan.needed})


def _serving_cuda(plan: _Plan, model, seed: int, batch_size: int, steps: int) -> _Candidate:
    """The serving runtime on the cuda kernels, in the export's dtype, on a copy of MODEL (its weights get
    packed); "not run" without a CUDA GPU."""
    import torch

    from ..checkpoint import parse_dtype
    if not torch.cuda.is_available():
        return _Candidate({"status": "not run", "reason": "no CUDA GPU on this machine"})
    from ..cuda import load_model as load_on_cuda, kernel_backend
    from ..serving import ServingConfig, ServingRuntime
    try:
        kernels = kernel_backend("cuda")
        if isinstance(model, str):
            served = load_on_cuda(model, dtype=plan.onnx_dtype, seed=seed, kernels=kernels)
        else:
            served = copy.deepcopy(plan.reference_model).to("cuda", parse_dtype(plan.onnx_dtype)).use_kernels(kernels)
        buckets = {batch_size, len(_ragged_lengths(plan, steps)) or batch_size}    # the ragged batch's too
        runtime = ServingRuntime(served, ServingConfig(max_context=plan.max_prompt_len + steps, buckets=tuple(buckets),
                                                       eviction=plan.eviction))
    except HymbaDeployError as e:
        return _Candidate({"status": "error", "reason": str(e)})
    return _Candidate({"status": "pending", "detail": f"serving runtime, cuda kernels, {plan.onnx_dtype}, "
                                                      f"GEMMs {runtime.decode_gemms}"},
                      {g: (lambda cap, g=g: ServingRunner(runtime, g, plan.logits_to_keep, name=f"cuda-{g}"))
                       for g in plan.needed})


# ---- 3. run and compare ---------------------------------------------------------------------------------
def _run_and_compare(plan: _Plan, ref_factory, candidates: dict[str, _Candidate], lengths: list[int],
                     batch_size: int, steps: int, rng: np.random.Generator, say,
                     ragged_rows: list[int] = ()) -> tuple[list[dict], dict[str, dict]]:
    """Every prompt through prefill and `steps` decode steps in the reference and each pending candidate, each
    feeding its own present.* back (all decode the reference's greedy token). Returns the comparison rows and
    each candidate's first failing step (with its feed, for localisation). A candidate that raises is marked
    "error" and drops out."""
    vocab = plan.reference_model.config.vocab_size
    pending = {name: c for name, c in candidates.items() if c.status["status"] == "pending"}
    runners = {name: {g: c.factories[g](False) for g in plan.needed} for name, c in pending.items()}
    reference = {g: ref_factory[g](False) for g in plan.needed}
    rows: list[dict] = []
    first_failure: dict[str, dict] = {}
    active = [r for rs in [reference, *runners.values()] for r in rs.values()]
    try:
        for r in active:
            r.activate()
        for p, length in enumerate(lengths):
            ids = rng.integers(0, vocab, (batch_size, length)).astype(np.int64)
            say(f"prompt {p + 1}/{len(lengths)}: {batch_size} x {length} tokens, {steps} decode steps")
            feeds = {name: prefill_feed(ids, [length] * batch_size) for name in ["ref", *runners]}
            meta = plan.reference_model.config.num_memory_tokens
            for step in range(steps + 1):
                graph = "prefill" if step == 0 else "decode"
                label = "prefill" if step == 0 else f"decode {step}"
                ref_out = reference[graph].infer(feeds["ref"])
                token = ref_out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)   # (B, 1)
                positions = np.full(batch_size, meta + length + step, dtype=np.int64)
                feeds["ref"] = decode_feed(ref_out, token, positions, plan.cache_io)
                for name, rs in runners.items():
                    if pending[name].status["status"] == "error":
                        continue
                    try:
                        out = rs[graph].infer(feeds[name])
                    except Exception as e:                          # a runtime failure is a result too
                        pending[name].status = {"status": "error", "reason": f"{type(e).__name__}: {e}"}
                        continue
                    step_rows = compare_outputs(out, ref_out, plan.tolerances, names=list(ref_out))
                    rows.extend({"runtime": name, "prompt": p, "step": label, **row} for row in step_rows)
                    bad = [r for r in step_rows if not r["ok"]]
                    if bad and name not in first_failure:
                        first_failure[name] = {"prompt": p, "step": label, "graph": graph,
                                               "outputs": [r["output"] for r in bad][:8], "feed": dict(feeds[name])}
                    feeds[name] = decode_feed(out, token, positions, plan.cache_io)
        if ragged_rows:
            _run_ragged(plan, reference, runners, pending, ragged_rows, len(lengths), steps, rng, say, rows,
                        first_failure)
    finally:
        for r in active:
            r.deactivate()
    return rows, first_failure


def _run_ragged(plan: _Plan, reference: dict, runners: dict, pending: dict, ragged_rows: list[int], p: int,
                steps: int, rng: np.random.Generator, say, rows: list[dict], first_failure: dict) -> None:
    """The ragged case (prompt number `p`): each row's prompt alone through the reference (prefill, then
    `steps` greedy decode steps), then the right-padded batch through each candidate whose graphs take
    `lengths`, every row compared against its prompt alone after each step. Appends to `rows`/`first_failure`."""
    vocab, meta = plan.reference_model.config.vocab_size, plan.reference_model.config.num_memory_tokens
    B, T = len(ragged_rows), max(ragged_rows)
    ids = np.zeros((B, T), dtype=np.int64)                          # right padding (token 0; never seen)
    for b, n in enumerate(ragged_rows):
        ids[b, :n] = rng.integers(0, vocab, n)
    say(f"prompt {p + 1} (ragged): rows of {', '.join(map(str, ragged_rows))} tokens, {steps} decode steps, "
        f"each row against its prompt alone")
    alone = []                                                      # per row: the reference's outputs per step
    for b, n in enumerate(ragged_rows):
        feed, outs = prefill_feed(ids[b:b + 1, :n], [n]), []
        for step in range(steps + 1):
            out = reference["prefill" if step == 0 else "decode"].infer(feed)
            token = out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
            outs.append((out, token))
            feed = decode_feed(out, token, [meta + n + step], plan.cache_io)
        alone.append(outs)
    for name, rs in runners.items():
        if pending[name].status["status"] == "error":
            continue
        takes = [g for g, key in (("prefill", LENGTHS_INPUT), ("decode", POSITIONS_INPUT))
                 if g in rs and key not in rs[g].input_names()]
        if takes:
            pending[name].status["ragged"] = f"not run: its {' and '.join(takes)} graph takes no per-row lengths"
            continue
        feed = prefill_feed(ids, ragged_rows)
        for step in range(steps + 1):
            graph, label = ("prefill", "prefill") if step == 0 else ("decode", f"decode {step}")
            try:
                out = rs[graph].infer(feed)
            except Exception as e:                                  # a runtime failure is a result too
                pending[name].status = {"status": "error", "reason": f"ragged batch: {type(e).__name__}: {e}"}
                break
            for b, n in enumerate(ragged_rows):
                ref = alone[b][step][0]
                mine = {k: out[k][b][:ref[k].shape[1]] for k in ref if k in out}   # the row's valid part
                step_rows = compare_outputs(mine, {k: v[0] for k, v in ref.items()}, plan.tolerances,
                                            names=list(ref))
                rows.extend({"runtime": name, "prompt": p, "row": b, "tokens": n, "step": label, **row}
                            for row in step_rows)
                bad = [r for r in step_rows if not r["ok"]]
                if bad and name not in first_failure:
                    first_failure[name] = {"prompt": p, "row": b, "step": label, "graph": graph,
                                           "outputs": [r["output"] for r in bad][:8]}
            token = np.concatenate([alone[b][step][1] for b in range(B)])          # (B, 1)
            positions = np.array([meta + n + step for n in ragged_rows], dtype=np.int64)
            feed = decode_feed(out, token, positions, plan.cache_io)
        if pending[name].status["status"] != "error":
            pending[name].status["ragged"] = f"compared: rows of {', '.join(map(str, ragged_rows))} tokens"


# ---- 4. localise, conclude ------------------------------------------------------------------------------
def _conclude(name: str, cand: _Candidate, rows: list[dict], failure: dict | None, ref_factory, tolerances,
              say) -> None:
    """A candidate that ran: passed or failed with its counts and worst output; a failure localised to the
    first divergent layer by re-running its first failing step."""
    mine = [r for r in rows if r["runtime"] == name]
    worst = max(mine, key=lambda r: r.get("rel_l2", float("inf")), default=None)
    cand.status.update({"status": "failed" if failure else "passed",
                        "compared": len(mine), "failed": sum(not r["ok"] for r in mine),
                        "worst": {k: worst[k] for k in ("prompt", "step", "output", "max_abs", "rel_l2", "cosine")
                                  if k in worst} if worst else None})
    if failure:
        feed = failure.pop("feed", None)
        cand.status["first_failure"] = failure
        if feed is None:                 # a ragged row: its reference is the prompt alone, not this batch
            return
        say(f"{name} fails at prompt {failure['prompt'] + 1} {failure['step']}: localising")
        cand.status["localization"] = localize(ref_factory[failure["graph"]], cand.factories[failure["graph"]],
                                               feed, tolerances)


def _engines(engine_dir, needed: list[str]) -> dict[str, Path]:
    """{graph: engine path} of `--engine DIR` for the graphs the check needs, each engine and sidecar checked
    (`artifact.read_engine`): a missing DIR, one without engines, or a missing or unreadable engine is an error."""
    from ..engine import artifact
    folder = Path(engine_dir)
    artifact.engine_files(folder)
    engines = {}
    for g in needed:
        path = folder / f"{g}{artifact.ENGINE_SUFFIX}"
        if not path.is_file():
            raise HymbaDeployError(f"--engine {folder}: {path.name} not found (the check runs "
                                   f"{' and '.join(needed)}); build it with `hymba-deploy build`")
        artifact.read_engine(path)
        engines[g] = path
    return engines


def _profile_axes(engine: Path) -> dict:
    """{"batch": [min, opt, max], "seq": [...]} of the engine's optimisation profile (from its sidecar)."""
    from ..engine import artifact
    sidecar = artifact.read_sidecar(engine)
    try:
        axes = sidecar["profiles"][0]["axes"]
        if all(len([int(x) for x in axes[axis]]) == 3 for axis in ("batch", "seq")):
            return axes
    except (IndexError, KeyError, TypeError, ValueError):
        pass
    raise HymbaDeployError(f"{artifact.sidecar_path(engine)}: no optimisation profile with batch and seq "
                           f"axes (min, opt, max)")


def summary_line(report: dict) -> str:
    """PASS or FAIL, with how many of the requested runtimes did not run (one that did not run never
    passes; the engines are requested by --engine)."""
    not_run = report.get("not_run", [])
    verdict = "PASS" if report["ok"] else "FAIL"
    requested = sum(s.get("status") != "not requested" for s in report["runtimes"].values())
    ran = requested - len(not_run)
    if ran == 0:
        return f"{verdict}: no runtime ran ({len(not_run)} not run: {', '.join(not_run)})"
    if not not_run:
        return f"{verdict} ({ran} of {ran} runtimes ran)"
    return f"{verdict} ({ran} of {requested} runtimes ran; {len(not_run)} not run: {', '.join(not_run)})"


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def format_report(report: dict) -> str:
    ref = report["reference"]
    lines = [f"reference: {ref['runtime']} {ref['dtype']} ({ref['device']}); ONNX {report['onnx_dtype']}; "
             f"prompts {', '.join(_prompt_text(p) for p in report['prompts'])} tokens; {report['steps']} decode steps; "
             f"tolerance rel_l2 <= {report['tolerances']['']['rel_l2']:g}, cosine >= {report['tolerances']['']['cosine']:g}",
             f"{'runtime':<12} {'prompt':>6} {'step':<9} {'outputs':>7} {'failed':>6}  {'worst output':<24} "
             f"{'max_abs':>9} {'rel_l2':>9} {'cosine':>10}  result"]
    groups: dict[tuple, list] = {}
    for row in report["results"]:
        groups.setdefault((row["runtime"], row["prompt"], row.get("row"), row["step"]), []).append(row)
    for (runtime, prompt, b, step), rows in groups.items():
        worst = max(rows, key=lambda r: r.get("rel_l2", float("inf")))
        failed = sum(not r["ok"] for r in rows)
        label = f"{prompt + 1}" if b is None else f"{prompt + 1}.{b + 1}"        # ragged: prompt.row
        lines.append(f"{runtime:<12} {label:>6} {step:<9} {len(rows):>7} {failed:>6}  {worst['output']:<24} "
                     f"{_fmt(worst.get('max_abs'), '9.2e')} {_fmt(worst.get('rel_l2'), '9.2e')} "
                     f"{_fmt(worst.get('cosine'), '10.7f')}  {'FAIL' if failed else 'pass'}")
    for name, s in report["runtimes"].items():
        if s["status"] in ("not run", "not requested", "error"):
            lines.append(f"{name:<12} {s['status']}: {s['reason']}")
        else:
            lines.append(f"{name:<12} {s['status']} ({s['compared']} comparisons, {s['failed']} failed)")
        if s.get("ragged"):
            lines.append(f"{'':<12} ragged batch (each row against its prompt alone): {s['ragged']}")
        ff = s.get("first_failure")
        if ff and "row" in ff:
            lines.append(f"{'':<12} first failure at prompt {ff['prompt'] + 1} row {ff['row'] + 1}, {ff['step']}: "
                         f"{', '.join(ff['outputs'][:4])}")
        loc = s.get("localization")
        if loc:
            ff = s["first_failure"]
            found = loc["first_divergent"]
            where = (f"first divergent layer: {found['module']} ({found['evidence']}: rel_l2 {found['rel_l2']:.2e})"
                     if found else "no single layer exceeds the tolerance (divergence after the last layer: "
                                   "final norm or lm_head)")
            lines.append(f"{'':<12} first failure at prompt {ff['prompt'] + 1}, {ff['step']}: {', '.join(ff['outputs'][:4])}; "
                         f"{where}; by {loc['method']}")
    lines.append(summary_line(report))
    return "\n".join(lines)


def _prompt_text(prompt: dict) -> str:
    if prompt.get("ragged"):
        return f"ragged {'/'.join(map(str, prompt['tokens']))}"
    return str(prompt["tokens"])


def write_report(report: dict, path) -> None:
    from ..fileio import atomic_write_json
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report, default=float)
