"""Weight-free copies of exported graphs, for benchmarking ONNX Runtime where exporting is too slow.

Exporting hymba-1.5b takes minutes of CPU time, and its 6 GB of fp32 weights cannot travel to a
benchmark machine with the code. `strip` keeps each graph (a few MB: nodes, function bodies, metadata,
initializer names/shapes/dtypes) and drops the weight bytes; `fill` writes random weights of the same
shapes back (N(0, 0.02), like the presets' random init) as external data, so ONNX Runtime runs the very
graph that was exported. Timing does not depend on the weight values; numerics do, so a filled graph is
for `bench`, never for `check`.

    python -m hymba_deploy.bench.skeleton strip EXPORT_DIR SKELETON_DIR
    python -m hymba_deploy.bench.skeleton fill SKELETON_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

GRAPHS = ("prefill", "decode")
MARK = "skeleton.json"


def strip(src, dst) -> Path:
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    info = {}
    for g in GRAPHS:
        if not (src / f"{g}.onnx").is_file():
            continue
        proto = onnx.load(str(src / f"{g}.onnx"), load_external_data=False)
        tensors = []
        for t in proto.graph.initializer:
            external = uses_external_data(t)
            nbytes = ExternalDataInfo(t).length if external else len(t.raw_data)
            if external or nbytes > 1024:              # keep tiny constants (shapes, eps) verbatim
                tensors.append(t.name)
                del t.external_data[:]
                t.data_location = onnx.TensorProto.DEFAULT
                t.ClearField("raw_data")
                for field in ("float_data", "int32_data", "int64_data", "double_data"):
                    t.ClearField(field)
        onnx.save(proto, str(dst / f"{g}.onnx"))
        info[g] = tensors
    for extra in ("manifest.json",):
        if (src / extra).is_file():
            shutil.copy(src / extra, dst / extra)
    (dst / MARK).write_text(json.dumps({"stripped": info}, indent=1))
    return dst


def fill(directory, seed: int = 0, std: float = 0.02) -> Path:
    """Give every stripped initializer random values, streamed into `<graph>.onnx.data` beside the graph
    (one tensor in memory at a time: hymba-1.5b's 6 GB never sit in RAM at once)."""
    import onnx
    from onnx import helper

    directory = Path(directory)
    stripped = json.loads((directory / MARK).read_text())["stripped"]
    rng = np.random.default_rng(seed)
    block = (rng.standard_normal(1 << 20) * std).astype(np.float32)        # tiled: fast and finite
    for g, names in stripped.items():
        path = directory / f"{g}.onnx"
        location = f"{g}.onnx.data"
        proto = onnx.load(str(path), load_external_data=False)
        wanted = set(names)
        offset = 0
        with open(directory / location, "wb") as data:
            for t in proto.graph.initializer:
                if t.name not in wanted:
                    continue
                n = int(np.prod(t.dims)) if len(t.dims) else 1
                dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
                values = np.resize(block, n).astype(dtype) if dtype.kind == "f" else np.zeros(n, dtype)
                raw = values.tobytes()
                pad = -offset % 4096                                        # page-aligned, as onnx does
                data.write(b"\0" * pad)
                offset += pad
                data.write(raw)
                del t.external_data[:]
                t.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
                offset += len(raw)
        onnx.save(proto, str(path))
    return directory


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 3 and argv[0] == "strip":
        print(strip(argv[1], argv[2]))
    elif len(argv) == 2 and argv[0] == "fill":
        print(fill(argv[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
