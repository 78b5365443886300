"""The `hymba-deploy` command line: one thin command per job, library imported inside the body (so
`--help` stays instant), user errors (`HymbaDeployError`) printed and turned into exit code 1."""

from __future__ import annotations

import functools
import json
import sys

import click


def _user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from hymba_deploy.errors import HymbaDeployError
        try:
            return fn(*args, **kwargs)
        except HymbaDeployError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
    return wrapper


@click.group()
@click.version_option(package_name="hymba-deploy")
def main():
    """Deploy NVIDIA Hymba: PyTorch -> ONNX -> TensorRT, with parity checks and benchmarks.

    MODEL is a preset (tiny, hymba-1.5b; random weights) or a Hugging Face checkpoint directory.
    """


@main.command()
@click.argument("model")
@click.option("--context", default=8192, show_default=True, help="Context length (text tokens) for the cache size.")
@click.option("--dtype", default="float16", show_default=True, help="Cache dtype: float32, float16, bfloat16.")
@click.option("--batch-size", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_user_errors
def info(model, context, dtype, batch_size, as_json):
    """Parameter count, per-layer kind and cache size of MODEL (no weights allocated)."""
    from hymba_deploy.info import format_info, model_info
    result = model_info(model, context=context, dtype=dtype, batch_size=batch_size)
    click.echo(json.dumps(result, indent=2) if as_json else format_info(result))


@main.command()
@click.argument("model")
@click.option("--ids", help="Prompt token ids, comma-separated (e.g. 1,2,3).")
@click.option("--prompt", help="Prompt text; needs tokenizer.json in the checkpoint and the tokenizers package.")
@click.option("--max-new-tokens", default=16, show_default=True)
@click.option("--dtype", default=None, help="float32, float16 or bfloat16 (default: the checkpoint's; fp32 for presets).")
@click.option("--eviction", type=click.Choice(["upstream", "exact"]), default="upstream", show_default=True,
              help="Decode-time sliding-window eviction rule (see HybridMambaAttentionDynamicCache).")
@click.option("--seed", default=0, show_default=True, help="Seed of a preset's random weights.")
@_user_errors
def generate(model, ids, prompt, max_new_tokens, dtype, eviction, seed):
    """Greedy generation with the PyTorch reference model."""
    from hymba_deploy.generation import generate as run, parse_ids
    result = run(model, ids=parse_ids(ids) if ids is not None else None, prompt=prompt,
                 max_new_tokens=max_new_tokens, dtype=dtype, eviction=eviction, seed=seed)
    click.echo(",".join(map(str, result["new_ids"])))
    if "text" in result:
        click.echo(result["text"])


@main.command()
@click.argument("model")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory for prefill.onnx, decode.onnx and manifest.json.")
@click.option("--graphs", default="prefill,decode", show_default=True, help="Comma-separated graphs to export.")
@click.option("--dtype", default=None, help="float32, float16 or bfloat16 (default: the checkpoint's; fp32 for presets).")
@click.option("--opset", default=18, show_default=True, help="ONNX opset of the default domain (18-23).")
@click.option("--max-seq-len", default=None, type=int,
              help="Upper bound of the dynamic sequence axes (default: the config's seq_length).")
@click.option("--eviction", type=click.Choice(["upstream", "exact"]), default="upstream", show_default=True,
              help="Decode-time sliding-window eviction rule baked into decode.onnx.")
@click.option("--prefill-logits", type=click.Choice(["all", "last"]), default="all", show_default=True,
              help="Prefill returns logits of every prompt token, or of the last one only.")
@click.option("--seed", default=0, show_default=True, help="Seed of a preset's random weights.")
@_user_errors
def export(model, out_dir, graphs, dtype, opset, max_seq_len, eviction, prefill_logits, seed):
    """Export MODEL to ONNX: prefill and decode graphs with hymba custom ops (runs in stock ONNX Runtime)."""
    from hymba_deploy.exporters.onnx_export import export as run, format_summary
    manifest = run(model, out_dir, graphs=graphs, dtype=dtype, opset=opset, max_seq_len=max_seq_len,
                   eviction=eviction, seed=seed, prefill_logits=prefill_logits,
                   progress=lambda msg: click.echo(f"... {msg}", err=True))
    click.echo(format_summary(manifest, out_dir))


def _reexec_with_library_path(directory) -> None:
    """TensorRT-RTX needs its private libtensorrt_rtx.so folder on LD_LIBRARY_PATH at process start
    (hymba_deploy.engine.backends): run this same command again with it, once."""
    import os
    if os.environ.get("HYMBA_DEPLOY_REEXEC"):
        return
    env = dict(os.environ, HYMBA_DEPLOY_REEXEC="1",
               LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(directory), os.environ.get("LD_LIBRARY_PATH")])))
    click.echo(f"... restarting with LD_LIBRARY_PATH={directory} (TensorRT-RTX needs libtensorrt_rtx.so)", err=True)
    os.execve(sys.executable, [sys.executable, "-m", "cli", *sys.argv[1:]], env)


@main.command()
@click.argument("src", metavar="DIR_OR_ONNX")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the engines and sidecars.")
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt-rtx", show_default=True)
@click.option("--target", type=click.Choice(["sm80", "sm86", "sm89", "sm90", "sm120", "current"]), default="current",
              show_default=True, help="GPU to build for (TensorRT-RTX cross-builds; TensorRT builds for this GPU).")
@click.option("--plugins", "plugin_library", type=click.Path(dir_okay=False), default=None,
              help="Plugin library (default: $HYMBA_PLUGIN_LIB, else the project's libhymba_plugins.so, "
                   "built on first use into ~/.cache/hymba-deploy).")
@click.option("--profile", default=None,
              help="Optimisation profile, e.g. batch=1:8:32,seq=1:512:8192 (MAX = export limit).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file to read and update (full TensorRT; TensorRT-RTX has none).")
@click.option("--workspace", "workspace_mib", type=int, default=None, help="Builder workspace limit in MiB.")
@_user_errors
def build(src, out_dir, backend, target, plugin_library, profile, timing_cache, workspace_mib):
    """Build TensorRT / TensorRT-RTX engines from exported prefill.onnx / decode.onnx with our plugins."""
    from hymba_deploy.engine.backends import LibraryPathNeeded
    from hymba_deploy.engine.build import build as run, format_summary
    try:
        results = run(src, out_dir, backend=backend, target=target, plugin_library=plugin_library, profile=profile,
                      timing_cache=timing_cache, workspace_mib=workspace_mib,
                      progress=lambda msg: click.echo(f"... {msg}", err=True))
    except LibraryPathNeeded as e:
        _reexec_with_library_path(e.directory)
        raise
    click.echo(format_summary(results))


@main.command()
@click.argument("engine", type=click.Path())
@click.option("--all-layers", is_flag=True, help="List every layer, not only our plugin layers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--plugins", "plugin_library", type=click.Path(dir_okay=False), default=None,
              help="Plugin library the engine inspector may load, if its sha256 is the one recorded at build "
                   "(default: the project's build; never the path the sidecar names).")
@_user_errors
def inspect(engine, all_layers, as_json, plugin_library):
    """Layers (engine inspector), our plugin layers and I/O of ENGINE (a .engine file or a build directory)."""
    from hymba_deploy.engine.inspect import format_inspection, inspect_engine
    result = inspect_engine(engine, plugin_library)
    click.echo(json.dumps(result, indent=2) if as_json else format_inspection(result, all_layers))


@main.command()
@click.argument("model")
@click.option("--onnx", "onnx_dir", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--engine", "engine_dir", type=click.Path(file_okay=False), default=None,
              help="Build directory (engines).")
@click.option("--prompts", default=2, show_default=True, help="Number of random prompts.")
@click.option("--steps", default=3, show_default=True, help="Decode steps after each prefill.")
@click.option("--dtype", default=None,
              help="Reference dtype (default: the ONNX's); tolerances follow the lower precision.")
@click.option("--seed", default=0, show_default=True,
              help="Seed of a preset's weights (as for export) and of the prompts.")
@click.option("--max-prompt-len", default=48, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Device of the PyTorch reference.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also write the full report here.")
@click.option("--plugins", "plugin_library", type=click.Path(dir_okay=False), default=None,
              help="Plugin library for the engines, if its sha256 is the one recorded at build (default: the "
                   "project's build).")
@click.option("--runtime", "runtimes", multiple=True, type=click.Choice(["cuda"]),
              help="Also compare this runtime: cuda = the serving runtime on our CUDA kernels, in the ONNX's dtype "
                   "(needs a GPU; else 'not run').")
@click.option("--strict", is_flag=True, help="Exit 1 when any backend did not run (for CI jobs).")
@_user_errors
def check(model, onnx_dir, engine_dir, prompts, steps, dtype, seed, max_prompt_len, device, json_out,
          plugin_library, runtimes, strict):
    """Parity of PyTorch, ONNX Runtime, engines and (--runtime cuda) the serving runtime over prefill and K
    decode steps; exit 1 on failure (with --strict also when a backend did not run)."""
    from hymba_deploy.parity.check import check as run, format_report, write_report
    report = run(model, onnx_dir, engine_dir=engine_dir, prompts=prompts, steps=steps, dtype=dtype, seed=seed,
                 max_prompt_len=max_prompt_len, device=device, plugin_library=plugin_library,
                 runtimes=tuple(runtimes), progress=lambda msg: click.echo(f"... {msg}", err=True))
    click.echo(format_report(report))
    if json_out:
        write_report(report, json_out)
    sys.exit(0 if report["ok"] and not (strict and report["not_run"]) else 1)


@main.command()
@click.option("--backend", type=click.Choice(["suite", "cuda"]), default="suite", show_default=True,
              help="suite: the --backends below; cuda: the serving runtime on our CUDA kernels (GPU; paper setup "
                   "defaults: hymba-1.5b, 8k context, batches 1,8,32,128, bf16), compared with the reference.")
@click.option("--models", default=None, help="Comma-separated presets or checkpoint dirs [suite: tiny; cuda: hymba-1.5b].")
@click.option("--backends", default="torch,onnxruntime", show_default=True, help="torch, onnxruntime, tensorrt.")
@click.option("--out", "out_dir", default="bench/out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (the default is git-ignored; bench/results/ holds committed results).")
@click.option("--device", default=None, help="torch device (default: cuda when available).")
@click.option("--dtype", default=None, help="torch dtype (default: bfloat16 on GPU, float32 on CPU).")
@click.option("--onnx-dtype", default="float32", show_default=True, help="dtype of on-the-fly ONNX exports.")
@click.option("--prefill-lengths", default=None, help="[suite: 128,512,2048; cuda: 1024,4096,8192]")
@click.option("--decode-batches", default=None, help="[suite: 1,8,32; cuda: 1,8,32,128]")
@click.option("--context", default=None, type=int, help="Cache length (tokens) for decode [suite: 1024; cuda: 8192].")
@click.option("--warmup", default=2, show_default=True)
@click.option("--iters", default=10, show_default=True)
@click.option("--decode-steps", default=16, show_default=True)
@click.option("--paper", is_flag=True, help="Also the paper's setup: 8k context, batch 128, halving on OOM.")
@click.option("--onnx", default=None, help="MODEL=DIR,... exported graphs (default: exported on the fly).")
@click.option("--engine", default=None, help="MODEL=DIR,... built engines.")
@click.option("--time-budget", default=600.0, show_default=True, help="Seconds; later sections are skipped.")
@click.option("--ort-prefill-lengths", default=None, help="ONNX Runtime's prompt lengths (default: --prefill-lengths).")
@click.option("--ort-decode-batches", default=None, help="ONNX Runtime's batches (default: --decode-batches).")
@click.option("--ort-iters", type=int, default=None, help="ONNX Runtime's timed iterations and decode steps.")
@click.option("--plugins", "plugin_library", type=click.Path(dir_okay=False), default=None,
              help="Plugin library for the engines, if its sha256 is the one recorded at build (default: the "
                   "project's build).")
@_user_errors
def bench(backend, models, backends, out_dir, device, dtype, onnx_dtype, prefill_lengths, decode_batches, context,
          warmup, iters, decode_steps, paper, onnx, engine, time_budget, ort_prefill_lengths, ort_decode_batches,
          ort_iters, plugin_library):
    """Prefill latency and decode throughput per backend: bench.json, bench.md and bench.png in --out
    (with --backend cuda: serving_cuda.json)."""
    if backend == "cuda":
        from pathlib import Path

        from hymba_deploy.serving.bench import run as run_cuda
        ints = lambda text: tuple(int(x) for x in text.split(",") if x)  # noqa: E731
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        out = str(Path(out_dir) / "serving_cuda.json")
        run_cuda(models or "hymba-1.5b", dtype=dtype or "bfloat16", context=context or 8192,
                 batches=ints(decode_batches or "1,8,32,128"), prefill=ints(prefill_lengths or "1024,4096,8192"),
                 steps=max(decode_steps, 8), out=out, log=lambda *a, **k: click.echo(" ".join(map(str, a)), err=True))
        click.echo(f"wrote {out}")
        return
    from hymba_deploy.bench.bench import bench as run
    from hymba_deploy.bench.report import to_markdown
    report = run(models=models or "tiny", backends=backends, out_dir=out_dir, device=device, dtype=dtype,
                 prefill_lengths=prefill_lengths or "128,512,2048", decode_batches=decode_batches or "1,8,32",
                 context=context or 1024, warmup=warmup,
                 iters=iters, decode_steps=decode_steps, paper=paper, onnx_dirs=onnx, engine_dirs=engine,
                 onnx_dtype=onnx_dtype, time_budget_s=time_budget, ort_prefill_lengths=ort_prefill_lengths,
                 ort_decode_batches=ort_decode_batches, ort_iters=ort_iters, plugin_library=plugin_library,
                 progress=lambda msg: click.echo(f"... {msg}", err=True))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
