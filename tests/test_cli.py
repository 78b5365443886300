"""The `hymba-deploy` commands `info` and `generate`, through click's runner."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from deploy_helpers import tiny_with_tokenizer
from hymba_deploy import cli
from hymba_deploy import load_model
from hymba_deploy.checkpoint import save_pretrained


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_info_hymba_1_5b_reports_params_layers_and_79_mib_cache():
    result = run("info", "hymba-1.5b")
    assert result.exit_code == 0, result.output
    assert "1,522,797,824" in result.output
    assert "79.1 MiB at 8192 tokens, float16" in result.output
    data = json.loads(run("info", "hymba-1.5b", "--json", "--context", "1024", "--dtype", "bfloat16").output)
    kinds = {layer["layer"]: (layer["attention"], layer["kv"]) for layer in data["layers"]}
    assert kinds[0] == ("global", "producer")
    assert kinds[17] == ("swa(1024)", "consumer of 16")
    assert data["cache"]["dtype"] == "bfloat16"


def test_info_reads_a_checkpoint_directory(tmp_path):
    save_pretrained(load_model("tiny"), tmp_path)
    result = run("info", tmp_path)
    assert result.exit_code == 0 and "parameters  475,968" in result.output


def test_generate_from_ids_matches_the_library():
    result = run("generate", "tiny", "--ids", "1,2,3", "--max-new-tokens", "5", "--seed", "3")
    assert result.exit_code == 0, result.output
    expected = load_model("tiny", seed=3).generate(torch.tensor([[1, 2, 3]]), 5)[0, 3:].tolist()
    assert result.output.strip() == ",".join(map(str, expected))


def test_generate_with_prompt_uses_the_checkpoint_tokenizer(tmp_path):
    tiny_with_tokenizer(tmp_path)
    result = run("generate", tmp_path, "--prompt", "w5 w9 w200", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    ids_line, text_line = result.output.strip().split("\t")              # one line: ids, tab, the text as JSON
    expected = load_model(str(tmp_path)).generate(torch.tensor([[5, 9, 200]]), 4)[0, 3:].tolist()
    assert ids_line == ",".join(map(str, expected))
    assert json.loads(text_line) == " ".join(f"w{i}" if i else "[UNK]" for i in expected)


@pytest.mark.parametrize("args,message", [
    (("info", "nope"), "neither a preset"),
    (("generate", "tiny", "--ids", "1,x"), "expected comma-separated integers"),
    (("generate", "tiny", "--ids", "1,999"), "outside the vocabulary"),
    (("generate", "tiny"), "exactly one of --ids, --ids-file and --prompt"),
    (("generate", "tiny", "--prompt", "hi"), "needs a tokenizer"),
    (("generate", "tiny", "--ids", "1", "--dtype", "int8"), "dtype 'int8'"),
])
def test_user_errors_exit_1_with_a_message(args, message):
    result = run(*args)
    assert result.exit_code == 1
    assert message in result.output


def test_info_checks_the_weights_against_the_config_from_the_headers(tmp_path, monkeypatch):
    save_pretrained(load_model("tiny"), tmp_path)
    result = run("info", tmp_path)
    assert "weights     " in result.output and "model.safetensors: names, shapes and dtypes" in result.output
    data = json.loads((tmp_path / "config.json").read_text())
    data["intermediate_size"] = 128                              # the weights are for 96
    (tmp_path / "config.json").write_text(json.dumps(data))
    import safetensors.torch
    monkeypatch.setattr(safetensors.torch, "load_file", None)   # no tensor data may be read
    result = run("info", tmp_path)
    assert result.exit_code == 1
    assert "wrong shape model.layers.0.moe.experts.0.up_proj.weight: model.safetensors has [96, 64], expected [128, 64]" in result.output


def test_max_new_tokens_beyond_the_context_is_refused_before_loading(monkeypatch):
    import hymba_deploy.generation as generation

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(generation, "load_model", no_load)
    result = run("generate", "tiny", "--ids", "1,2,3", "--max-new-tokens", "510")   # tiny holds 512 tokens
    assert result.exit_code == 1
    assert "--max-new-tokens 510: the 3-token prompt plus 510 new tokens exceed the 512 tokens the model holds " \
           "(config field 'seq_length'); give at most 509" in result.output
    result = run("generate", "tiny", "--ids", "1", "--max-new-tokens", "-1")
    assert result.exit_code == 1 and "--max-new-tokens -1: must be ≥ 0" in result.output
