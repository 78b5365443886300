"""`hymba-deploy generate` on every backend for one batch of prompts of different lengths: each row's tokens
are those its prompt generates alone (the ragged-batch contract); --ids / --ids-file / --prompt parsing and
errors; backends that cannot run here say "not run" and exit 1."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from deploy_helpers import built_rtx_engines, exported_tiny, rtx_available, tiny_with_tokenizer
from hymba_deploy import load_model
from hymba_deploy.cli import main

# tiny: 8 meta tokens, window 16. Lengths 1, below the window, above window + meta, the longest; 60 new tokens
# take every row more than 40 steps past the window, within the export's --max-seq-len 128.
PROMPT_LENGTHS = (1, 10, 30, 45)
NEW = 60


def run(*args):
    return CliRunner().invoke(main, ["generate", *map(str, args)])


def prompts(lengths=PROMPT_LENGTHS, seed=5) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def id_args(batch) -> list[str]:
    return [a for p in batch for a in ("--ids", ",".join(map(str, p)))]


def alone(model, prompt, new=NEW) -> list[int]:
    """The reference's greedy tokens for `prompt` as a batch of one."""
    return model.generate(torch.tensor([prompt]), new)[0, len(prompt):].tolist()


def lines(result) -> list[list[int]]:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return [[int(t) for t in line.split(",")] for line in result.output.strip().splitlines()]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", seed=0)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return exported_tiny(tmp_path_factory)           # fp32, seed 0, --max-seq-len 128, prefill + decode


# ---- equal-length batches: the graphs' loop, input order, output format ----------------------------------
def test_onnxruntime_equal_length_batch_matches_the_reference_row_by_row(onnx_dir, tiny):
    batch = prompts((12, 12, 12))
    got = lines(run("tiny", *id_args(batch), "--backend", "onnxruntime", "--onnx", onnx_dir,
                    "--max-new-tokens", 20))
    assert got == [alone(tiny, p, 20) for p in batch]            # one line per prompt, in input order


def test_onnxruntime_one_new_token_needs_only_the_prefill(onnx_dir, tiny):
    batch = prompts((7,))
    assert lines(run("tiny", *id_args(batch), "--backend", "onnxruntime", "--onnx", onnx_dir,
                     "--max-new-tokens", 1)) == [alone(tiny, batch[0], 1)]


# ---- --ids-file ------------------------------------------------------------------------------------------
def test_ids_file_is_the_same_batch_as_repeated_ids(tmp_path, tiny):
    batch = prompts((3, 5))
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(" , ".join(map(str, p)) for p in batch[:1]) + "\n\n"
                    + ",".join(map(str, batch[1])) + ",\n")         # spaces, a blank line, a trailing comma
    from_file = lines(run("tiny", "--ids-file", path, "--max-new-tokens", 4))
    assert from_file == lines(run("tiny", *id_args(batch), "--max-new-tokens", 4))
    assert from_file == [alone(tiny, p, 4) for p in batch]


@pytest.mark.parametrize("text,message", [
    ("1,2\n3,x,4\n", "{path}:2: '3,x,4': expected comma-separated integers"),
    ("1,2\n,\n", "{path}:2: is empty"),
    ("\n \n", "--ids-file {path}: no prompts"),
    ("1,2\n1,999\n", "token ids [999] are outside the vocabulary [0, 257)"),
])
def test_ids_file_errors_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "prompts.txt"
    path.write_text(text)
    result = run("tiny", "--ids-file", path)
    assert result.exit_code == 1 and f"error: {message.format(path=path)}" in result.output, result.output


@pytest.mark.parametrize("args,message", [
    (("--ids-file", "{tmp}/gone.txt"), "--ids-file {tmp}/gone.txt: no such file"),
    (("--ids", "1", "--ids-file", "{tmp}/gone.txt"), "give exactly one of --ids, --ids-file and --prompt"),
    ((), "give exactly one of --ids, --ids-file and --prompt"),
    (("--ids", "1", "--backend", "onnxruntime"), "--backend onnxruntime needs --onnx DIR"),
    (("--ids", "1", "--backend", "tensorrt"), "--backend tensorrt needs --engine DIR"),
    (("--ids", "1", "--backend", "onnxruntime", "--onnx", "{tmp}"), "{tmp}/manifest.json not found"),
    (("--ids", "1", "--backend", "cuda", "--device", "cpu"), "--device cpu: --backend cuda runs on the GPU only"),
])
def test_argument_errors(tmp_path, args, message):
    result = run("tiny", *(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 1 and f"error: {message.format(tmp=tmp_path)}" in result.output, result.output


# ---- the export must be MODEL's --------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (("hymba-1.5b", "--ids", "1"), "was exported from another model: its config differs from hymba-1.5b's in"),
    (("tiny", "--ids", "1", "--seed", "1"), "was exported from tiny with --seed 0 (its random weights), not --seed 1"),
    (("tiny", "--ids", "1", "--dtype", "float16"), "--dtype float16: --onnx {onnx} was made with float32"),
    (("tiny", "--ids", "1", "--eviction", "exact"), "--eviction exact: --onnx {onnx} was made with upstream"),
    (("tiny", "--ids", "1,2", "--max-new-tokens", 127),
     "the 2-token prompt plus 127 new tokens exceed the 128 tokens {onnx} was exported for (--max-seq-len 128)"),
])
def test_an_export_that_is_not_models_is_refused(onnx_dir, args, message):
    result = CliRunner().invoke(main, ["generate", *map(str, args), "--backend", "onnxruntime", "--onnx", onnx_dir])
    assert result.exit_code == 1 and message.format(onnx=onnx_dir) in result.output, result.output


# ---- devices and backends that cannot run here -----------------------------------------------------------
def test_onnxruntime_on_cuda_without_onnxruntime_gpu_is_a_clear_error(onnx_dir):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: the CUDA provider exists")
    result = run("tiny", "--ids", "1,2", "--backend", "onnxruntime", "--onnx", onnx_dir, "--device", "cuda")
    assert result.exit_code == 1
    assert f"error: ONNX Runtime on cuda needs onnxruntime-gpu: this onnxruntime {onnxruntime.__version__} has " \
           f"the providers" in result.output


def test_providers_for_cuda_turns_tf32_off(monkeypatch):
    import onnxruntime

    from hymba_deploy.runtime.onnxruntime_runner import providers_for
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers_for("cuda") == [("CUDAExecutionProvider", {"use_tf32": "0", "device_id": "0"}), "CPUExecutionProvider"]
    assert providers_for("cuda:1")[0] == ("CUDAExecutionProvider", {"use_tf32": "0", "device_id": "1"})


@pytest.mark.skipif(rtx_available() is not None, reason=str(rtx_available()))
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the engines may run")
def test_tensorrt_without_a_gpu_is_not_run(onnx_dir, tmp_path_factory):
    engines = built_rtx_engines(tmp_path_factory)          # valid sm80 engines, which cannot execute here
    result = run("tiny", "--ids", "1,2", "--ids", "3", "--backend", "tensorrt", "--engine", engines)
    assert result.exit_code == 1 and result.output.strip() == "not run: no CUDA GPU on this machine", result.output
    result = run("tiny", "--ids", "1", "--backend", "tensorrt", "--engine", onnx_dir)      # no engines there
    assert result.exit_code == 1 and f"error: {onnx_dir}: no .engine files" in result.output, result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the cuda backend runs")
def test_cuda_backend_without_a_gpu_is_not_run():
    result = run("tiny", "--ids", "1,2", "--ids", "3", "--backend", "cuda")
    assert result.exit_code == 1 and result.output.strip() == "not run: no CUDA device"


def test_generate_help_shows_the_options():
    result = run("--help")
    assert result.exit_code == 0
    for option in ("--ids", "--ids-file", "--prompt", "--backend", "reference|onnxruntime|tensorrt|cuda", "--onnx",
                   "--engine", "--device", "--max-new-tokens", "--eviction", "--dtype", "--seed"):
        assert option in result.output, option


def test_text_stays_on_its_prompts_line(tmp_path):
    tiny_with_tokenizer(tmp_path)
    result = run(tmp_path, "--ids", "5,9,200", "--ids", "7,8,9", "--max-new-tokens", 3)
    assert result.exit_code == 0, result.output
    model = load_model(str(tmp_path))
    for line, prompt in zip(result.output.strip().split("\n"), ([5, 9, 200], [7, 8, 9]), strict=True):
        ids, text = line.split("\t")
        expected = alone(model, prompt, 3)
        assert ids == ",".join(map(str, expected))
        assert json.loads(text) == " ".join(f"w{i}" if i else "[UNK]" for i in expected)


def test_bench_onnxruntime_on_cuda_without_onnxruntime_gpu_is_not_run(tmp_path):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: the CUDA provider exists")
    result = CliRunner().invoke(main, ["bench", "--runtimes", "onnxruntime", "--models", "tiny", "--ort-device", "cuda",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())["results"]["tiny"]["onnxruntime"]
    assert report["status"] == "not run" and "ONNX Runtime on cuda needs onnxruntime-gpu" in report["reason"]


# ---- prompts of different lengths: each row is its prompt alone ------------------------------------------
RAGGED = (30, 1, 45, 10)          # out of order: the output keeps the input order


def test_reference_ragged_batch_rows_equal_each_prompt_alone(tiny):
    batch = prompts(RAGGED)
    assert lines(run("tiny", *id_args(batch), "--max-new-tokens", NEW)) == [alone(tiny, p) for p in batch]


def test_onnxruntime_ragged_batch_equals_the_reference_alone(onnx_dir, tiny):
    """ONNX Runtime's greedy tokens for a ragged batch, 60 steps (every row > 40 steps past the window), are
    the reference's for each prompt alone."""
    batch = prompts(RAGGED)
    got = lines(run("tiny", *id_args(batch), "--backend", "onnxruntime", "--onnx", onnx_dir, "--max-new-tokens", NEW))
    assert got == [alone(tiny, p) for p in batch]


def test_greedy_loop_over_last_token_prefill_logits(tiny):
    """The graphs' loop with a prefill that returns each row's last-token logits (`--prefill-logits last`),
    over the torch runners (the exported graphs' I/O, no export needed)."""
    from hymba_deploy.cache import HybridMambaAttentionDynamicCache as Cache
    from hymba_deploy.runtime import TorchRunner
    from hymba_deploy.runtime.greedy import GreedyGenerator
    batch = prompts(RAGGED)
    runners = [TorchRunner(tiny, "prefill", logits_to_keep=1), TorchRunner(tiny, "decode")]
    gen = GreedyGenerator(*runners, Cache.io_pairs(tiny.config), tiny.config.num_memory_tokens, "last")
    with runners[0], runners[1]:
        assert gen.generate(batch, 30) == [alone(tiny, p, 30) for p in batch]


def test_serving_runtime_ragged_batch_on_the_reference_kernels(tiny):
    """The `cuda` backend's code path (ServingRuntime.generate with lengths) on the CPU reference kernels."""
    from hymba_deploy.generation import ServingBackend
    batch = prompts(RAGGED)
    assert ServingBackend(tiny, "upstream").generate(batch, 30) == [alone(tiny, p, 30) for p in batch]

