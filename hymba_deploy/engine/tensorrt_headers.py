"""The TensorRT C++ headers that libhymba_plugins.so compiles against (nothing links libnvinfer).

`find_headers()` looks where plugin projects look, in this order:

1. `$TensorRT_ROOT`, else `$TENSORRT_DIR`: a TensorRT folder holding `include/NvInferRuntime.h` (an unpacked
   TensorRT tar, a container's SDK). A variable that is set but points elsewhere is an error naming it.
2. An installed SDK: `SYSTEM_INCLUDE_DIRS` (Debian/Ubuntu's `libnvinfer-dev`, `/usr/local/tensorrt`), then a tar
   install beside the `libnvinfer.so` found on `$LD_LIBRARY_PATH` (`<lib folder>/../include`).
3. The headers of NVIDIA's open-source TensorRT release `PINNED_VERSION` (the `include/` folder of its source
   archive), downloaded once into `user_cache_dir()/tensorrt-headers/` and checked against a sha256.
   `$HYMBA_TENSORRT_HEADERS_URL` and `$HYMBA_TENSORRT_HEADERS_SHA256` replace the pin (a mirror, a `file://` archive).

When none works, one `HymbaDeployError` names the three ways and why the download did not happen.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import HymbaDeployError
from ..fileio import user_cache_dir

HEADER = "NvInferRuntime.h"
ROOT_VARS = ("TensorRT_ROOT", "TENSORRT_DIR")
SYSTEM_INCLUDE_DIRS = (Path(f"/usr/include/{platform.machine()}-linux-gnu"), Path("/usr/include"),
                       Path("/usr/local/tensorrt/include"))
URL_VAR, SHA256_VAR = "HYMBA_TENSORRT_HEADERS_URL", "HYMBA_TENSORRT_HEADERS_SHA256"

# The open-source TensorRT release whose headers the plugins are written against (GitHub's source archive
# of the release tag; its top folder holds include/).
PINNED_VERSION = "11.1"
PINNED_URL = "https://github.com/NVIDIA/TensorRT/archive/refs/tags/v11.1.tar.gz"
# Not recorded: the archive could not be fetched where this pin was written, and no trusted source gave its
# sha256. Until a maintainer records it, the download runs only with $HYMBA_TENSORRT_HEADERS_SHA256 set.
PINNED_SHA256: str | None = None


@dataclass(frozen=True)
class TensorRTHeaders:
    include_dir: Path       # holds NvInferRuntime.h
    version: str            # "11.1.0", from NvInferVersion.h
    source: str             # how it was found, for messages and the library's build record


class HeadersUnavailable(Exception):
    """The download could not run or did not give usable headers; the message says why."""


def header_version(include_dir: Path) -> str | None:
    """"major.minor.patch" of the headers in `include_dir` (NvInferVersion.h), or None when unreadable."""
    header = Path(include_dir) / "NvInferVersion.h"
    if not header.is_file():
        return None
    text = header.read_text(errors="replace")
    parts = []
    for field in ("MAJOR", "MINOR", "PATCH"):
        # TensorRT 11 defines NV_TENSORRT_MAJOR as TRT_MAJOR_ENTERPRISE; older headers give the number.
        m = (re.search(rf"#define\s+TRT_{field}_ENTERPRISE\s+(\d+)", text)
             or re.search(rf"#define\s+NV_TENSORRT_{field}\s+(\d+)", text))
        if not m:
            return None
        parts.append(m.group(1))
    return ".".join(parts)


def find_headers(progress: Callable[[str], None] | None = None) -> TensorRTHeaders:
    """The first of the three places above that has the headers; a `HymbaDeployError` when none does."""
    for var in ROOT_VARS:
        root = os.environ.get(var)
        if root:
            include = _include_under(Path(root))
            if include is None:
                raise HymbaDeployError(f"{var}={root}: no include/{HEADER} there; point {var} at the TensorRT "
                                       f"folder that holds include/ (or unset it)")
            return _described(include, f"{var}={root}")
    for include in installed_include_dirs():
        if (include / HEADER).is_file():
            return _described(include, f"installed TensorRT ({include})")
    url, sha256 = download_source()
    try:
        include = download_headers(url, sha256, progress)
    except HeadersUnavailable as why:
        raise HymbaDeployError(none_found_message(url, str(why))) from None
    return _described(include, f"downloaded from {url}")


def installed_include_dirs() -> list[Path]:
    """Where an installed TensorRT SDK keeps its headers: the usual folders, then `<lib>/../include` for each
    `$LD_LIBRARY_PATH` folder holding libnvinfer.so (a tar install)."""
    dirs = list(SYSTEM_INCLUDE_DIRS)
    for entry in filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)):
        lib = Path(entry)
        if lib.is_dir() and any(lib.glob("libnvinfer.so*")):
            dirs.append(lib.parent / "include")
    return dirs


def download_source() -> tuple[str, str | None]:
    """(url, sha256) of the headers archive: the environment's override, else the pin."""
    url = os.environ.get(URL_VAR) or PINNED_URL
    sha256 = os.environ.get(SHA256_VAR) or (PINNED_SHA256 if url == PINNED_URL else None)
    return url, (sha256.strip().lower() if sha256 else None)


def headers_cache() -> Path:
    return user_cache_dir() / "tensorrt-headers"


def download_headers(url: str, sha256: str | None, progress: Callable[[str], None] | None = None) -> Path:
    """The include folder of the archive at `url`, fetched once into `headers_cache()/<sha256 prefix>/include`.

    The archive must match `sha256`; its `include/` (at its top or one folder down) is unpacked into a
    temporary folder and renamed into place, so the cache holds whole, checked headers or nothing, also with
    several processes at once. `HeadersUnavailable` says why no headers came.
    """
    say = progress or (lambda msg: None)
    if not sha256:
        raise HeadersUnavailable(
            f"this hymba-deploy records no sha256 for that archive, so it does not download it unchecked; "
            f"set {SHA256_VAR} to the sha256 of the archive once you have checked it")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise HeadersUnavailable(f"{SHA256_VAR}={sha256!r} is not a sha256 (64 hex digits)")
    final = headers_cache() / sha256[:16]
    if (final / "include" / HEADER).is_file():
        return final / "include"
    try:
        headers_cache().mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=headers_cache(), prefix=".download-"))
    except OSError as e:
        raise HeadersUnavailable(f"the cache folder {headers_cache()} is not writable ({e})") from None
    try:
        archive = work / "archive"
        got = _fetch(url, archive, say)
        if got != sha256:
            raise HeadersUnavailable(f"the archive's sha256 is {got}, not the expected {sha256} "
                                     f"(another or a damaged file); nothing was kept")
        _unpack_include(archive, work / "tree")
        try:
            os.rename(work / "tree", final)
        except OSError:
            if not (final / "include" / HEADER).is_file():      # not another process's finished copy
                raise
        say(f"TensorRT headers in {final / 'include'}")
        return final / "include"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def none_found_message(url: str, why: str) -> str:
    return (
        f"building libhymba_plugins.so needs the TensorRT C++ headers ({HEADER}), and none were found. "
        f"Any one of these provides them:\n"
        f"  1. set TensorRT_ROOT to a TensorRT folder that holds include/{HEADER} (an unpacked TensorRT tar, "
        f"for example);\n"
        f"  2. install TensorRT's development headers (Debian/Ubuntu: the libnvinfer-dev package; or a TensorRT "
        f"SDK in /usr/local/tensorrt);\n"
        f"  3. let hymba-deploy download the open-source TensorRT {PINNED_VERSION} headers once, from {url} into "
        f"{headers_cache()}: not done here, because {why}.\n"
        f"Or pass --plugins PATH to a libhymba_plugins.so built elsewhere.")


# ---- helpers -------------------------------------------------------------------------------------------

def _include_under(root: Path) -> Path | None:
    for include in (root / "include", root):
        if (include / HEADER).is_file():
            return include
    return None


def _described(include: Path, source: str) -> TensorRTHeaders:
    version = header_version(include)
    if version is None:
        raise HymbaDeployError(f"{include}: has {HEADER} but no readable NvInferVersion.h, so which TensorRT "
                               f"these headers belong to is unknown (found through {source})")
    return TensorRTHeaders(include.resolve(), version, source)


def _fetch(url: str, dest: Path, say: Callable[[str], None]) -> str:
    """Stream `url` into `dest`, reporting every tenth; return the sha256 of what arrived."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            size = f"{total / 1e6:.1f} MB" if total else "size unknown"
            say(f"downloading the TensorRT headers archive ({size}) from {url}")
            done, reported = 0, 0
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                digest.update(block)
                done += len(block)
                step = total // 10 if total else 8 << 20
                if done - reported >= step:
                    reported = done
                    say(f"  {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else ""))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise HeadersUnavailable(f"it could not be downloaded ({reason})") from None
    return digest.hexdigest()


def _unpack_include(archive: Path, dest: Path) -> None:
    """Unpack the archive's `include/` folder (at its top or one folder down) as `dest/include`."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            prefix = next((m.name[: -len(HEADER)] for m in members if m.isfile()
                           and re.fullmatch(rf"([^/]+/)?include/{re.escape(HEADER)}", m.name)), None)
            if prefix is None:
                raise HeadersUnavailable(f"the archive has no include/{HEADER} at its top or one folder down")
            chosen = []
            for m in members:
                if m.name.startswith(prefix) and (m.isfile() or m.isdir()):
                    m.name = "include/" + m.name[len(prefix):]
                    chosen.append(m)
            tar.extractall(dest, members=chosen, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise HeadersUnavailable(f"the archive could not be unpacked ({e})") from None
