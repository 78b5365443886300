"""Artifact writing: every file we produce appears whole or not at all (house rule 14).

`atomic_write(dest, write)` lets `write(tmp_path)` fill a temporary file beside `dest` (same file system),
gives it the mode a plain `open()` would, then renames it over `dest`; on any failure the temporary
file is removed and `dest` is untouched. `sha256_file` streams a file of any size. `user_cache_dir()` is
the per-user folder for what hymba-deploy downloads or builds once (TensorRT headers, the plugin library).

`resolve_inside(folder, name, what)` is how a file named by an artifact (a shard in a safetensors index,
a file in an export manifest, an ONNX graph's external weights) is opened: artifacts get shared and
downloaded, so a name that leads outside the artifact's folder is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import HymbaDeployError


def atomic_write(dest, write: Callable[[str], None]) -> Path:
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                    # mkstemp's 0600 -> the usual file mode
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


def atomic_write_bytes(dest, data) -> Path:
    return atomic_write(dest, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(dest, text: str) -> Path:
    return atomic_write(dest, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(dest, obj, **dump_kwargs) -> Path:
    return atomic_write_text(dest, json.dumps(obj, indent=2, **dump_kwargs))


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def resolve_inside(folder, name, what) -> Path:
    """`folder / name`, resolved, when it stays inside `folder`; else HymbaDeployError naming `what` (the
    file that names it) and `name`.

    Refused: an absolute name, an empty one, any `..` component, and a name whose symlinks (the file's or a
    folder's on the way) lead out of `folder`. Whether the file exists is the caller's question."""
    folder = Path(folder)
    text = str(name) if isinstance(name, (str, os.PathLike)) else None
    if not text or "\0" in text:
        raise HymbaDeployError(f"{what}: names {name!r}, which is not a file name")
    rel = Path(text)
    if rel.is_absolute() or ".." in rel.parts:
        raise HymbaDeployError(f"{what}: names {text!r}, outside its folder {folder} (absolute or '..' "
                               f"paths are refused)")
    root = folder.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise HymbaDeployError(f"{what}: names {text!r}, a symlink leading outside its folder {folder} "
                               f"(to {target})")
    return target


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/hymba-deploy`, else `~/.cache/hymba-deploy` (not created here)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hymba-deploy"
