"""`hymba-deploy generate`: greedy generation from token ids, or from text with the checkpoint's tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import config_of, load_model
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


def check_request(config, ids: list[int], max_new_tokens: int) -> None:
    """Refuse, before any weights are loaded, a request the model cannot serve: token ids outside the
    vocabulary, or a prompt plus new tokens beyond `seq_length`, the context the model holds."""
    vocab = config.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise HymbaDeployError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    if max_new_tokens < 0:
        raise HymbaDeployError(f"--max-new-tokens {max_new_tokens}: must be ≥ 0")
    if len(ids) + max_new_tokens > config.seq_length:
        raise HymbaDeployError(
            f"--max-new-tokens {max_new_tokens}: the {len(ids)}-token prompt plus {max_new_tokens} new tokens exceed "
            f"the {config.seq_length} tokens the model holds (config field 'seq_length'); give at most "
            f"{max(0, config.seq_length - len(ids))}")


def generate(spec: str, ids: list[int] | None = None, prompt: str | None = None, max_new_tokens: int = 16,
             dtype: str | None = None, eviction: str = "upstream", seed: int = 0) -> dict:

    if (ids is None) == (prompt is None):
        raise HymbaDeployError("give exactly one of --ids and --prompt")
    config = config_of(spec)
    tokenizer = load_tokenizer(spec) if prompt is not None else None
    if tokenizer is not None:
        ids = tokenizer.encode(prompt).ids
    check_request(config, ids, max_new_tokens)
    model = load_model(spec, dtype=dtype, seed=seed)
    out = model.generate(torch.tensor([ids]), max_new_tokens, eviction=eviction)[0].tolist()
    result = {"prompt_ids": ids, "new_ids": out[len(ids):]}
    if tokenizer is not None:
        result["text"] = tokenizer.decode(result["new_ids"])
    return result
