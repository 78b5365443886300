"""Artifact writing: every file we produce appears whole or not at all (house rule 14).

`atomic_write(dest, write)` lets `write(tmp_path)` fill a temporary file beside `dest` (same file system),
gives it the mode a plain `open()` would, then renames it over `dest`; on any failure the temporary
file is removed and `dest` is untouched. `sha256_file` streams a file of any size. `user_cache_dir()` is
the per-user folder for what hymba-deploy downloads or builds once (TensorRT headers, the plugin library).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable


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


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/hymba-deploy`, else `~/.cache/hymba-deploy` (not created here)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hymba-deploy"
