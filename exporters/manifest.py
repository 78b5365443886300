"""`manifest.json` of an export folder: reading it, and checking the folder's files against it.

`hymba-deploy export` writes the manifest last; it names every file of every graph it exported with
its size and sha256. `verify_export` is what `build` and `check` run before they read a graph: the
manifest must be readable, every file it lists must be there unchanged, and no graph file may sit in
the folder that the manifest does not describe (a graph from another export). Each error names the
file at fault. Only JSON is read here, never a graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from hymba_deploy.contract import GRAPHS, graph_file
from hymba_deploy.errors import HymbaDeployError
from hymba_deploy.fileio import resolve_inside, sha256_file

MANIFEST = "manifest.json"
REEXPORT = "re-export the folder with `hymba-deploy export`"


def read_manifest(folder) -> dict:
    """The manifest of export folder `folder`, its structure checked: {"graphs": {graph: {"files":
    {name: {"bytes": int, "sha256": str}}, ...}}, ...}."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise HymbaDeployError(f"{path} not found: {Path(folder)} is not an export folder ({REEXPORT}, or pass "
                               f"one .onnx file)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise HymbaDeployError(f"{path}: not a readable JSON file ({e}); {REEXPORT}") from None
    graphs = manifest.get("graphs") if isinstance(manifest, dict) else None
    if not isinstance(graphs, dict) or not graphs:
        raise HymbaDeployError(f"{path}: no 'graphs' object; {REEXPORT}")
    for graph, entry in graphs.items():
        if graph not in GRAPHS:
            raise HymbaDeployError(f"{path}: unknown graph {graph!r} (expected {' or '.join(GRAPHS)})")
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, dict) or graph_file(graph) not in files:
            raise HymbaDeployError(f"{path}: graph {graph!r} does not list its files ({graph_file(graph)} first)")
        for name, info in files.items():
            resolve_inside(folder, name, path)               # no absolute path, '..' or symlink leading out
            if not (isinstance(info, dict) and type(info.get("bytes")) is int
                    and isinstance(info.get("sha256"), str)):
                raise HymbaDeployError(f"{path}: file {name!r} of graph {graph!r} has no bytes and sha256")
    return manifest


def verify_export(folder, graphs=None, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Check export folder `folder` against its manifest; return {graph: path of <graph>.onnx} for the
    graphs it lists (only `graphs`, when given, each of which it must list).

    Refused, naming the file: no or unreadable manifest; a listed file missing, or with another size or
    sha256 than the manifest records (stale or modified); a `<graph>.onnx` or `<graph>.onnx.data` in the
    folder that the manifest does not list (from another export).
    """
    say = progress or (lambda msg: None)
    folder = Path(folder)
    manifest = read_manifest(folder)
    path = folder / MANIFEST
    listed = {name for entry in manifest["graphs"].values() for name in entry["files"]}
    for g in GRAPHS:
        for name in (graph_file(g), graph_file(g) + ".data"):
            if (folder / name).exists() and name not in listed:
                raise HymbaDeployError(f"{folder / name}: not described by {path} (a file from another export); "
                                       f"remove it or {REEXPORT}")
    wanted = list(manifest["graphs"]) if graphs is None else list(graphs)
    absent = [g for g in wanted if g not in manifest["graphs"]]
    if absent:
        raise HymbaDeployError(f"{path} lists the graphs {', '.join(manifest['graphs'])}, not "
                               f"{', '.join(absent)}; export them with `hymba-deploy export --graphs`")
    for g in wanted:
        for name, info in manifest["graphs"][g]["files"].items():
            file = resolve_inside(folder, name, path)
            if not file.is_file():
                raise HymbaDeployError(f"{file}: listed in {path} but missing; {REEXPORT}")
            say(f"verifying {file} against {MANIFEST}")
            size = file.stat().st_size
            why = (f"{size} bytes, the manifest says {info['bytes']}" if size != info["bytes"] else
                   "its sha256 differs from the manifest's" if sha256_file(file) != info["sha256"] else None)
            if why:
                raise HymbaDeployError(f"{file}: not the file {path} describes ({why}): stale or modified; "
                                       f"{REEXPORT}")
    return {g: folder / graph_file(g) for g in wanted}
