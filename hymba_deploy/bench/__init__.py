"""Latency and throughput of the torch, ONNX Runtime and TensorRT backends (`hymba-deploy bench`):
`hymba_deploy.bench.bench.bench(...)`, or `python -m hymba_deploy.bench` where click is missing."""
