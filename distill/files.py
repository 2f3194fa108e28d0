"""Atomic file and folder writes: a killed run never leaves a half-written file that a rerun trusts."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

from xtremedistil.errors import XtremeDistilError
from xtremedistil.faults import kill_point


def write_json_atomic(path: str | Path, payload) -> None:
    """Writes JSON to a temp file beside `path`, then renames it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the permissions open() would
    put_in_place(temp, path, f"json:{path.name}")


def put_in_place(temp: str | Path, path: str | Path, point: str) -> None:
    """Renames a fully written `temp` over `path` (atomic on one filesystem). Kill point `point` sits just
    before the rename: a run killed there leaves the temp file, which nothing reads."""
    kill_point(point)
    os.replace(temp, path)


def path_size(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder (a SavedModel, a bundle)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def read_json(path: str | Path, fix: str | None = None):
    """JSON from `path`; a damaged file (cut off, garbled, not UTF-8) is one clear error naming it and `fix`."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        raise XtremeDistilError(f"{path}: damaged ({reason}); "
                                f"{fix or 'delete it and rerun the command that wrote it'}") from None


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's content (hashed once per process while its size and mtime stay the same).

    Cache signatures use it, not the path or the mtime: a data folder copied afresh (new mtimes, same bytes)
    or moved keeps its caches, and a file edited in place does not."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha1()
        for block in _blocks(path):
            digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def file_crc32(path: str | Path) -> int:
    """CRC-32 of a file's bytes (about 1 GB/s): recorded beside results a rerun reuses, checked before reuse."""
    crc = 0
    for block in _blocks(path):
        crc = zlib.crc32(block, crc)
    return crc


def _blocks(path: str | Path, size: int = 1 << 22):
    with open(path, "rb") as handle:
        while block := handle.read(size):
            yield block


@contextlib.contextmanager
def atomic_directory(final: str | Path):
    """Yields a temp folder beside `final`; on success it replaces `final` in one rename.

    On an exception the temp folder is removed and `final` is left as it was; temp folders of a killed
    earlier run are removed first (one writer per folder at a time).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):   # left by a killed run: never read, only removed
        shutil.rmtree(stale, ignore_errors=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield temp
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    kill_point(f"dir:{final.name}")
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        temp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        temp.rename(final)
