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


if __name__ == "__main__":
    main()
