"""Atomic file and folder writes: a killed run never leaves a half-written file that a rerun trusts."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

from xtremedistil.errors import XtremeDistilError
from xtremedistil.faults import disk_full_point as _disk_full_simulated, kill_point


def write_json_atomic(path: str | Path, payload) -> None:
    """Writes JSON to a temp file beside `path`, then renames it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with _removed_on_error(temp):
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the permissions open() would
    put_in_place(temp, path, f"json:{path.name}")


def save_keras_weights(model, path: str | Path) -> None:
    """`model.save_weights(path)` (the `.weights.h5` format), built in memory and written with one plain write.

    HDF5 writing straight to a file that hits a full disk leaves the library with unflushable buffers: measured
    here on a 64 MB tmpfs, Keras's own save raised, then h5py printed "Exception ignored" tracebacks while
    closing the file and the process died of SIGSEGV. A write of finished bytes fails as a plain OSError.
    """
    from tf_keras.src.saving import saving_lib

    class _Bytes:                      # the "archive" H5IOStore hands the finished file to
        data = b""

        def writestr(self, _name, data):
            self.data = bytes(data)

    captured = _Bytes()
    store = saving_lib.H5IOStore(Path(path).name, archive=captured, mode="w")
    saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_trackables=set())
    store.close()
    Path(path).write_bytes(captured.data)


def put_in_place(temp: str | Path, path: str | Path, point: str) -> None:
    """Renames a fully written `temp` (file or folder) over `path` (atomic on one filesystem). Kill point
    `point` sits just before the rename: a run killed there leaves the temp, which nothing reads; a write that
    fails (a full disk) removes it."""
    with _removed_on_error(temp):
        kill_point(point, temp)
        os.replace(temp, path)


@contextlib.contextmanager
def written_in_place(path: str | Path, point: str, temp: str | Path | None = None):
    """`with written_in_place(path, point) as temp:` write `temp` (default `.NAME.tmp` beside `path`); when the
    block ends it is put in place. If writing fails (a full disk, a converter error) the temp is removed and
    `path` keeps what it had."""
    path = Path(path)
    temp = Path(temp) if temp is not None else path.with_name(f".{path.name}.tmp")
    with _removed_on_error(temp):
        yield temp
    put_in_place(temp, path, point)


def append_line(path: str | Path, line: str, point: str) -> None:
    """Appends one line to a log others read back (`measurements.jsonl`). A disk that fills mid-line leaves a
    cut last line: readers skip it, and the next append first trims it so no later line is glued to it."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with open(path, "ab") as handle:
        end = handle.tell()
        if end:
            with open(path, "rb") as reader:
                reader.seek(end - 1)
                if reader.read(1) != b"\n":
                    reader.seek(0)
                    handle.truncate(reader.read().rfind(b"\n") + 1)
        try:
            kill_point(point, None)
            if _disk_full_simulated(point):
                handle.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, f"No space left on device (simulated at {point})", str(path))
            handle.write(data)
        finally:
            handle.flush()


def remove_path(path: str | Path) -> None:
    """Removes a file or a folder (with what is in it), if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _removed_on_error(temp: str | Path):
    try:
        yield
    except BaseException:
        remove_path(temp)
        raise


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
        kill_point(f"dir:{final.name}", temp)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        temp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        temp.rename(final)
