"""`hymba-deploy generate`: greedy generation from token ids, or from text with the checkpoint's tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_model
from .errors import HymbaDeployError


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise HymbaDeployError(f"--ids {text!r}: expected comma-separated integers such as 1,2,3") from None
    if not ids:
        raise HymbaDeployError("--ids is empty")
    return ids


def load_tokenizer(spec: str):
    path = Path(spec) / "tokenizer.json"
    if not path.is_file():
        raise HymbaDeployError(f"--prompt needs a tokenizer: {path} does not exist (use --ids instead)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise HymbaDeployError("--prompt needs the 'tokenizers' package: pip install tokenizers") from None
    return Tokenizer.from_file(str(path))


def generate(spec: str, ids: list[int] | None = None, prompt: str | None = None, max_new_tokens: int = 16,
             dtype: str | None = None, eviction: str = "upstream", seed: int = 0) -> dict:
    if (ids is None) == (prompt is None):
        raise HymbaDeployError("give exactly one of --ids and --prompt")
    tokenizer = load_tokenizer(spec) if prompt is not None else None
    if tokenizer is not None:
        ids = tokenizer.encode(prompt).ids
    model = load_model(spec, dtype=dtype, seed=seed)
    vocab = model.config.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise HymbaDeployError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    out = model.generate(torch.tensor([ids]), max_new_tokens, eviction=eviction)[0].tolist()
    result = {"prompt_ids": ids, "new_ids": out[len(ids):]}
    if tokenizer is not None:
        result["text"] = tokenizer.decode(result["new_ids"])
    return result
