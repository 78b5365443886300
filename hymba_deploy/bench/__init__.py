"""`hymba-deploy bench`: prefill latency and decode throughput of each runtime (torch, onnxruntime,
tensorrt, cuda), with memory figures; `run.bench(BenchSettings)` from Python.

Modules: `settings` (runtimes, defaults, `BenchSettings`), `run` (the command: every model × runtime into
bench.json/.md/.png), `timing` (clocks, percentiles, OOM halving, copy bandwidth), `states` (random cache
contents), one module per runtime measured (`reference`: torch; `graphs`: onnxruntime and tensorrt;
`serving`: cuda, with `serving_run` its report's sections and `profile` its kernel time by category),
`report` (Markdown tables and the plot).
"""
